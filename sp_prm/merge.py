"""``sp-prm merge``: fold a LoRA adapter (from ``sp-prm train --use_peft true``) into a plain checkpoint.

The score head was trained in full (peft ``modules_to_save``) and is stored with
the adapter; merging gives an ordinary ``AutoModelForSequenceClassification``
folder that decoding loads without peft. The run record (prefix representation,
loss) is copied into the merged model's config, as a full fine-tune would have it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sp_prm.errors import MissingPathError


@dataclass
class MergeConfig:
    """Merge a LoRA reward-model adapter into its base model and save a plain checkpoint."""

    adapter: str = field(default="outputs/sp-prm", metadata={"help": "Folder written by `sp-prm train --use_peft true`."})
    output_dir: str = field(default="outputs/sp-prm-merged", metadata={"help": "Where the merged model is saved."})
    base_model: str | None = field(
        default=None, metadata={"help": "Base model; null: the one recorded in adapter_config.json."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})


def merge(config: MergeConfig) -> Path:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sp_prm.models import resolve

    adapter = Path(config.adapter)
    if not (adapter / "adapter_config.json").exists():
        raise MissingPathError(f"{adapter}: no adapter_config.json; is this a LoRA run (--use_peft true)?")
    peft_config = PeftConfig.from_pretrained(str(adapter))
    base_name = config.base_model or peft_config.base_model_name_or_path
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve(base_name), num_labels=1, dtype=getattr(torch, config.dtype), trust_remote_code=config.trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    run_file = adapter / "sp_prm_run.json"
    if run_file.exists():
        record: dict[str, Any] = json.loads(run_file.read_text())
        merged.config.sp_prm = {**record, "base_model": base_name, "merged_from": str(adapter)}
    out = Path(config.output_dir)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    print(f"[merge] wrote {out} (base {base_name} + adapter {adapter})")
    return out


def main(argv: list[str] | None = None) -> None:
    from sp_prm.config import load_config

    merge(load_config(MergeConfig, argv))


if __name__ == "__main__":
    main()
