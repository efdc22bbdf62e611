#!/usr/bin/env bash
# The gates CI runs beside the tests; each stops the run on its first complaint.
#   lint:  ruff (pyflakes, pycodestyle, isort, bugbear, complexity) over every Python file
#   types: mypy over the typed core (the file list is in pyproject.toml)
#   C++:   clang-format over cpp/ (style in .clang-format)
#   docs:  the Sphinx API reference and tutorials, warnings as errors
# The docstring examples run with the tests (tests/test_docstrings.py).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "ruff";         ruff check .
echo "mypy";         mypy
echo "clang-format"; bash scripts/check_format.sh
echo "sphinx";       bash scripts/build_docs.sh
