"""Configuration of ``sp-prm train``: a ``transformers.TrainingArguments`` with the SP-PRM fields.

Every ``TrainingArguments`` field (learning rate, batch size, accumulation,
``deepspeed``, ``report_to``, ``push_to_hub``, ...) is set the usual way, in the
recipe or as ``--key value``. The fields added here group into:

* **model**: ``model_name_or_path``, ``dtype``, ``trust_remote_code``, ``disable_dropout``;
* **data**: ``dataset`` (a folder written by ``sp-prm prepare``, or for ``loss: orm``
  a raw preference source), ``format``/``columns``/``split``/``limit`` for raw
  sources, ``eval_fraction``, ``prefix`` (the one prefix representation shared
  with ``data_prep`` and ``decoding``; read from the dataset card when null);
* **loss**: ``loss`` (``weighted`` = Eq. 3, ``unweighted`` = Eq. 2, ``orm`` = full pairs),
  ``center_rewards_coefficient``, ``multi_prefix``, ``padding_side``;
* **LoRA**: ``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``;
* **run**: ``resume`` (hub: the usual ``push_to_hub``, ``hub_model_id``, ``hub_private_repo``).

Defaults changed from ``TrainingArguments``: ``output_dir='outputs/sp-prm'``,
``logging_steps=10``, ``report_to='none'`` (wandb needs an explicit
``report_to: wandb``), ``remove_unused_columns=False`` (the collator reads the
token-id columns itself), ``save_strategy='epoch'``, ``num_train_epochs=1``
(the paper trains one epoch), ``lr_scheduler_type='linear'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from sp_prm.formatting import PrefixFormat

LOSSES = ("weighted", "unweighted", "orm")


def _coerce_yaml(config: Any) -> None:
    """Undo YAML 1.1 surprises: ``5e-6`` is read as a string, ``no`` as ``False``."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is False and f.name.endswith("_strategy"):  # save_strategy: no
            setattr(config, f.name, "no")
            continue
        if not isinstance(value, str):
            continue
        hint = hints.get(f.name)
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
        for kind in (int, float):
            if kind in options and str not in options:
                try:
                    setattr(config, f.name, kind(float(value)) if kind is int and float(value).is_integer() else kind(value))
                except ValueError:
                    pass
                break


# (old name, new name) of TrainingArguments fields renamed within the supported transformers range.
RENAMED_FIELDS = (
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


def renamed_keys(field_names: set[str]) -> dict[str, str]:
    """Map each renamed recipe key to the name the installed ``TrainingArguments`` has.

    transformers 5.20 renamed ``gradient_checkpointing`` to ``activation_checkpointing``, while the
    vLLM extra pins ``transformers<5.20``: recipes may use either name and run on both releases.
    """
    out = {}
    for old, new in RENAMED_FIELDS:
        if new in field_names:
            out[old] = new
        elif old in field_names:
            out[new] = old
    return out


@dataclass
class SPPRMConfig(TrainingArguments):
    """Train a reward model: SP-PRM on partial pairs (weighted Eq. 3 / unweighted Eq. 2) or an ORM on full pairs."""

    # --- model ---
    model_name_or_path: str = field(
        default="builtin:all-minilm-l6-v2",
        metadata={"help": "Backbone or RM to fine-tune: hub id, local folder, or builtin:all-minilm-l6-v2 / "
                  "builtin:smollm2-135m-instruct. A fresh one-output score head is added when missing."},
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "Dtype the weights are loaded in: float32, bfloat16 or float16 (use bf16: true for "
                  "mixed precision on GPU instead)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set every dropout probability to 0 (TRL's reward-model default)."}
    )
    # --- data ---
    dataset: str = field(
        default="outputs/hh-rlhf-sst-minilm",
        metadata={"help": "weighted/unweighted: a folder written by `sp-prm prepare`. orm: a preference source "
                  "for data_prep.loaders (jsonl/parquet file, save_to_disk folder, hub id, builtin:hh-rlhf-sample)."},
    )
    format: str = field(default="auto", metadata={"help": "orm only: auto, hh-rlhf, tldr or pairs (data_prep.loaders)."})
    columns: dict[str, str] = field(
        default_factory=dict, metadata={"help": "orm only: column mapping for the pairs format."}
    )
    split: str = field(default="train", metadata={"help": "orm only: split of a hub dataset."})
    on_bad_rows: str = field(
        default="error",
        metadata={"help": "orm only: a jsonl line that is not a JSON object: error (names file:line) or skip (counted)."},
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N source pairs (orm) or partial pairs."})
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of source pairs (by pair id, so all prefixes of a pair fall on one "
                  "side) for evaluation; 0 disables evaluation."},
    )
    prefix: PrefixFormat | None = field(
        default=None,
        metadata={"help": "Prefix representation (template, end_marker, max tokens). null: taken from the prepared "
                  "dataset's card (partial pairs) or PrefixFormat defaults (orm). Must match the card when both are given."},
    )
    # --- loss ---
    loss: str = field(
        default="weighted",
        metadata={"help": "weighted: -w log sigmoid(r_w - r_l) on partial pairs (Eq. 3, weights from the dataset); "
                  "unweighted: Eq. 2 (w = 1); orm: Bradley-Terry on full pairs (trains the reference RM)."},
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Add coef * (r_w + r_l)^2 per pair (keeps rewards centred at 0, as in TRL). null: off."},
    )
    multi_prefix: str = field(
        default="auto",
        metadata={"help": "auto/true/false: score every prefix of a source pair from one forward pass over its "
                  "longest sequences. auto: on for decoder-only RMs; encoders always use one pass per prefix. "
                  "When on, the partial pairs of a source pair are kept together by the sampler (this replaces "
                  "train_sampling_strategy); when off, train_sampling_strategy: group_by_length cuts padding."},
    )
    padding_side: str = field(
        default="right",
        metadata={"help": "Padding side of decoder training batches (rewards are read at the last real token either way); "
                  "encoders are always right-padded, their pooler reads the first token."},
    )
    # --- LoRA ---
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter (score head fully trained and saved)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get adapters; null: all linear layers except the head."}
    )
    # --- run ---
    dry_run: bool = field(
        default=False,
        metadata={"help": "Check the config, the hub (push_to_hub), the data, the checkpoint to resume and that the "
                  "model loads, then stop before training: nothing is written."},
    )
    resume: bool = field(
        default=True,
        metadata={"help": "Continue from the last checkpoint in output_dir when there is one (its run config must "
                  "match this one)."},
    )

    # Changed TrainingArguments defaults (see the module docstring).
    output_dir: str | None = field(default="outputs/sp-prm", metadata={"help": "Where checkpoints and the model go."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "none, wandb, tensorboard, ... (wandb: set WANDB_MODE=offline to stay local)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns; the SP-PRM collator reads the token ids itself."}
    )
    save_strategy: str = field(default="epoch", metadata={"help": "no, steps or epoch."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (the paper trains one)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule (paper: linear)."})

    @staticmethod
    def key_aliases() -> dict[str, str]:
        """Recipe keys renamed between supported transformers releases -> the installed release's name."""
        return renamed_keys({f.name for f in dataclasses.fields(TrainingArguments)})

    def __post_init__(self) -> None:
        _coerce_yaml(self)
        if isinstance(self.prefix, dict):
            self.prefix = PrefixFormat(**self.prefix)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if str(self.multi_prefix).lower() not in ("auto", "true", "false"):
            raise ValueError(f"multi_prefix must be auto, true or false, got {self.multi_prefix!r}")
        self.multi_prefix = str(self.multi_prefix).lower()
        if self.on_bad_rows not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {self.on_bad_rows!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, got {self.padding_side!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.hub_token:
            # Tokens come from the environment (HF_TOKEN) only, so no recipe or log ever holds one.
            raise ValueError("hub_token must not be set in a config; export HF_TOKEN instead")
        if self.eval_fraction > 0 and self.eval_strategy in ("no", None):
            self.eval_strategy = "epoch"
        super().__post_init__()

    def to_dict(self) -> dict[str, Any]:
        """Not dead code: transformers' logging integrations call it (TensorBoardCallback through
        ``to_json_string``, WandbCallback and others directly), and ``json.dumps`` fails on a PrefixFormat."""
        d = super().to_dict()
        if isinstance(d.get("prefix"), PrefixFormat):
            d["prefix"] = d["prefix"].to_dict()
        return d


def help_text() -> str:
    """``--help``: the SP-PRM fields first, then every ``TrainingArguments`` field."""
    from sp_prm.config import describe

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    changed = {"output_dir", "logging_steps", "report_to", "remove_unused_columns", "save_strategy",
               "num_train_epochs", "lr_scheduler_type"}
    lines = describe(SPPRMConfig).splitlines()
    head, own, rest, block = lines[:2], [], [], []
    for line in lines[2:] + ["  --"]:  # sentinel flushes the last block
        if line.startswith("  --") and block:
            name = block[0].split()[0][2:].split(".")[0]
            (own if name not in base or name in changed else rest).extend(block)
            block = []
        block.append(line)
    return "\n".join(head + ["SP-PRM options (and changed defaults):", *own, "",
                              "transformers.TrainingArguments options:", *rest])
