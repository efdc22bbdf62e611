#!/usr/bin/env bash
# Build the CUDA module, run the GPU tests and the GPU benchmarks in one go (< 8 minutes).
# On a machine without a GPU it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: nothing to check"
  exit 0
fi
nvidia-smi -L
# Wheels of pure-Python test dependencies the GPU machine lacks may be carried in wheels/.
if [ -d wheels ]; then pip install --no-index --find-links wheels -q wheels/*.whl || true; fi
python -m pip install --no-build-isolation -q . 2>&1 | tail -3
python - <<'PY'
import medkern as mk
for name, status in mk.backends().items():
    print(f"{name:6s} {'yes' if status else 'no ':3s} {status.detail}")
PY
python -m pytest -q -k "cuda or cupy or gpu" tests 2>&1 | tail -15
python benchmarks/gpu_bench.py
