#!/usr/bin/env bash
# The GPU suite on the GPU machine, in one line from the repository root:   bash bench/gpu_suite.sh [gpu_suite.py options]
# Installs the wheels carried in .whl/ (made on the CPU machine by ../shared/gpu/make-wheels.sh: trl, datasets,
# deepspeed and their pure-Python dependencies, which the GPU machine's image lacks) into the git-ignored
# .gpu-site/, puts it first on PYTHONPATH, then runs bench/gpu_suite.py. Results go to $OUT (the device tool's
# folder that comes back) when it is set, else results/gpu_suite/.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu-site .whl/*.whl
elif ! python3 -c "import trl, datasets, deepspeed" 2>/dev/null; then
  echo "gpu_suite.sh: no .whl/ here and trl/datasets/deepspeed are missing: run ../shared/gpu/make-wheels.sh on the" \
       "CPU machine and carry .whl along" >&2
  exit 2
fi
export PYTHONPATH="$PWD/.gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec python3 bench/gpu_suite.py --out "${OUT:-results/gpu_suite}" "$@"
