"""Configuration of ``sp-prm train``: a ``trl.RewardConfig`` with the SP-PRM fields.

Every ``TrainingArguments`` field (learning rate, batch size, accumulation,
``deepspeed``, ``report_to``, ``push_to_hub``, ...) and every ``trl.RewardConfig``
field (``center_rewards_coefficient``, ``disable_dropout``, ``max_length``,
``trust_remote_code``, ``model_init_kwargs``, ``pad_to_multiple_of``,
``dataset_num_proc``, ...) is set the usual way, in the recipe or as
``--key value``, with TRL's name and meaning. The fields added here group into:

* **model**: ``model_name_or_path``, ``dtype``;
* **data**: ``dataset`` (a folder written by ``sp-prm prepare``, or for ``loss: orm``
  a raw preference source), ``format``/``columns``/``split``/``limit`` for raw
  sources, ``eval_fraction``, ``prefix`` (the one prefix representation shared
  with ``data_prep`` and ``decoding``; read from the dataset card when null);
* **loss**: ``loss`` (``weighted`` = Eq. 3, ``unweighted`` = Eq. 2, ``orm`` = full pairs),
  ``multi_prefix``, ``padding_side`` (TRL's ``center_rewards_coefficient`` adds its centring term);
* **LoRA**: ``use_peft``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``;
* **run**: ``resume`` (hub: the usual ``push_to_hub``, ``hub_model_id``, ``hub_private_repo``).

Defaults changed from ``RewardConfig``: ``output_dir='outputs/sp-prm'``,
``report_to='none'`` (wandb needs an explicit ``report_to: wandb``),
``remove_unused_columns=False`` (the collator reads the token-id columns itself),
``save_strategy='epoch'``, ``num_train_epochs=1`` (the paper trains one epoch),
``lr_scheduler_type='linear'``, ``bf16=False`` (TRL turns bf16 on by default;
fp32 keeps the CPU runs and the exactness tests exact -- set ``bf16: true`` on
GPU), gradient (activation) checkpointing off (TRL: on; these RMs are small),
``max_length=None`` (TRL: 1024: our prepared sequences are already bounded by
``prefix.max_*_tokens``; a set ``max_length`` drops longer pairs as in TRL).
TRL's own ``learning_rate`` default (1e-4) and ``logging_steps`` (10) are kept.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from trl import RewardConfig

from data_prep.loaders import ON_BAD_ROWS, PreferenceSource, Sample, source_field
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


_TRL_FIELDS = {f.name for f in dataclasses.fields(RewardConfig)}


@dataclass
class SPPRMConfig(RewardConfig):
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
    if "trust_remote_code" not in _TRL_FIELDS:  # TRL 1.0's RewardConfig has none
        trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    # --- data ---
    dataset: str = field(
        default="outputs/hh-rlhf-sst-minilm",
        metadata={"help": "weighted/unweighted: a folder written by `sp-prm prepare`. orm: a preference source "
                  "for data_prep.loaders (jsonl/parquet file, save_to_disk folder, hub id, builtin:hh-rlhf-sample)."},
    )
    # loss: orm reads `dataset` as a preference source: the block's options, with PreferenceSource's help.
    format: str = source_field("format")
    columns: dict[str, str] = source_field("columns")
    split: str = source_field("split")
    data_dir: str | None = source_field("data_dir")
    sample: Sample = source_field("sample")
    limit: int | None = field(
        default=None,
        metadata={"help": "The first N source rows (orm) or partial pairs, in file order (sample: N pairs drawn "
                  "from the whole source, orm)."},
    )
    on_bad_rows: str = source_field("on_bad_rows")
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

    # Changed RewardConfig defaults (see the module docstring).
    output_dir: str | None = field(default="outputs/sp-prm", metadata={"help": "Where checkpoints and the model go."})
    bf16: bool | None = field(
        default=False, metadata={"help": "bf16 mixed precision (TRL's default is on; ours is fp32, exact on CPU)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Alias of activation_checkpointing (TRL's default is on; ours is off)."}
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Drop pairs whose chosen or rejected ids are longer (TRL's meaning). null (TRL: 1024): keep "
                  "all; the prefix format already bounds the lengths."},
    )
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
        if isinstance(self.sample, dict):
            self.sample = Sample(**self.sample)
        if self.sample.active and self.loss != "orm":
            raise ValueError("sample draws from a raw preference source (loss: orm); sample the source pairs when "
                             "preparing partial pairs (sp-prm prepare --sample.fraction ...)")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if str(self.multi_prefix).lower() not in ("auto", "true", "false"):
            raise ValueError(f"multi_prefix must be auto, true or false, got {self.multi_prefix!r}")
        self.multi_prefix = str(self.multi_prefix).lower()
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {self.on_bad_rows!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, got {self.padding_side!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("eos_token", "chat_template_path"):
            if getattr(self, name, None) is not None:
                # TRL applies these to the tokenizer before it tokenizes; our ids are made by the prefix format
                # (sp_prm.formatting) and must match what decoding scores, so changing them here would do nothing.
                raise ValueError(f"{name} is not used by sp-prm train: the prefix format (prefix.template, "
                                 "prefix.end_marker) fixes how sequences are rendered")
        if self.hub_token:
            # Tokens come from the environment (HF_TOKEN) only, so no recipe or log ever holds one.
            raise ValueError("hub_token must not be set in a config; export HF_TOKEN instead")
        if self.eval_fraction > 0 and self.eval_strategy in ("no", None):
            self.eval_strategy = "epoch"
        super().__post_init__()

    def source_block(self) -> PreferenceSource:
        """``dataset`` and its options as the preference-source block (loss: orm)."""
        return PreferenceSource(source=self.dataset, format=self.format, columns=self.columns, split=self.split,
                                data_dir=self.data_dir, subset="all", sample=self.sample, limit=self.limit,
                                on_bad_rows=self.on_bad_rows)

    def to_dict(self) -> dict[str, Any]:
        """Not dead code: transformers' logging integrations call it (TensorBoardCallback through
        ``to_json_string``, WandbCallback and others directly), and ``json.dumps`` fails on a PrefixFormat."""
        d = super().to_dict()
        if isinstance(d.get("prefix"), PrefixFormat):
            d["prefix"] = d["prefix"].to_dict()
        if isinstance(d.get("sample"), Sample):
            d["sample"] = dataclasses.asdict(d["sample"])
        return d


def help_text() -> str:
    """``--help``: the SP-PRM fields first, then every ``TrainingArguments`` field."""
    from sp_prm.config import describe

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    reward = _TRL_FIELDS - base
    changed = {"output_dir", "report_to", "remove_unused_columns", "save_strategy", "num_train_epochs",
               "lr_scheduler_type", "bf16", "gradient_checkpointing", "max_length"}
    lines = describe(SPPRMConfig).splitlines()
    head, own, trl, rest, block = lines[:2], [], [], [], []
    for line in lines[2:] + ["  --"]:  # sentinel flushes the last block
        if line.startswith("  --") and block:
            name = block[0].split()[0][2:].split(".")[0]
            if name in changed or (name not in base and name not in reward):
                own.extend(block)
            else:
                (trl if name in reward else rest).extend(block)
            block = []
        block.append(line)
    return "\n".join(head + ["SP-PRM options (and changed defaults):", *own, "",
                              "trl.RewardConfig options:", *trl, "",
                              "transformers.TrainingArguments options:", *rest])
