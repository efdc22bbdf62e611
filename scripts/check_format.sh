#!/usr/bin/env bash
# Fails when a C++/CUDA source under cpp/ is not formatted as .clang-format says.
# Fix with: clang-format -i $(git ls-files 'cpp/*.cpp' 'cpp/*.hpp' 'cpp/*.cu' 'cpp/*.cuh')
# Formatting differs between clang-format releases; this checks with major version 18
# (pip install clang-format==18.1.8).
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
version=$("$CLANG_FORMAT" --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ "$version" != 18 ]; then
  echo "check_format.sh: expected clang-format 18, found '$("$CLANG_FORMAT" --version)'" >&2
  exit 2
fi
mapfile -t files < <(git ls-files 'cpp/*.cpp' 'cpp/*.hpp' 'cpp/*.cu' 'cpp/*.cuh')
"$CLANG_FORMAT" --dry-run --Werror "${files[@]}"
echo "check_format.sh: ${#files[@]} files formatted"
