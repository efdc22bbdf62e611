#!/usr/bin/env bash
# Build the API reference and the guides (docs/) as HTML into build/docs-html.
# Every Sphinx warning is an error (-W); --keep-going reports them all before failing.
# Needs the docs extra: pip install ".[docs]"
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/docs-html}"
rm -rf "$out" build/docs-doctrees
python -m sphinx -W --keep-going -n -b html -d build/docs-doctrees docs "$out"
echo "API reference and guides: $out/index.html"
