"""``sp-prm train``: fit an SP-PRM (or the reference ORM) with ``transformers.Trainer``.

One process::

    sp-prm train --config recipes/hh-rlhf/train_sst_minilm.yaml

Several, with DeepSpeed ZeRO-3::

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m sp_prm.train --config recipe.yaml

Steps: parse the config (starting DeepSpeed's process group over gloo first when
there is no GPU), load the pairs, build the model *after* the training
arguments and through ``from_pretrained`` so that it is created under
``deepspeed.zero.Init`` with ZeRO-3, train (resuming from the last checkpoint in
``output_dir``), evaluate, save with the prefix representation recorded in the
model's config, write a model card, and optionally push.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, load_from_disk

from data_prep.loaders import in_eval_subset
from sp_prm.collator import PairCollator
from sp_prm.config import load_config, parse_overrides
from sp_prm.formatting import PrefixFormat, PromptTooLong, encode
from sp_prm.models import load_tokenizer, resolve
from sp_prm.scoring import is_causal_reward_model, unwrap
from sp_prm.train_config import SPPRMConfig

logger = logging.getLogger("sp_prm.train")

RUN_FILE = "sp_prm_run.json"
# Fields that must agree between a run and the checkpoint it resumes from.
RUN_KEYS = ("model_name_or_path", "loss", "dataset_fingerprint", "prefix", "use_peft", "lora_r", "multi_prefix")


class IncompatibleCheckpoint(ValueError):
    """The checkpoint in output_dir was written by a run with another configuration."""


# -- distributed set-up ------------------------------------------------------------------------------------
def init_distributed_for(argv: list[str]) -> list[str]:
    """Start DeepSpeed's process group over gloo when DeepSpeed is asked for and there is no GPU.

    Must run before ``TrainingArguments`` are built: their device set-up creates
    the accelerator state, which otherwise asks DeepSpeed for NCCL. Returns the
    arguments, with ``--ddp_backend gloo`` added in that case: accelerate counts
    the processes only when it is given a backend (with none it assumes one
    process, and DeepSpeed then rejects the batch sizes).
    """
    config_path, overrides = parse_overrides(argv)
    import yaml

    values = (yaml.safe_load(Path(config_path).read_text()) or {}) if config_path and Path(config_path).exists() else {}
    values.update(overrides)
    uses_deepspeed = bool(values.get("deepspeed")) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if not uses_deepspeed or torch.cuda.is_available():
        return argv
    import deepspeed

    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                         ("MASTER_PORT", "29511")):
        os.environ.setdefault(key, default)
    deepspeed.init_distributed(dist_backend="gloo")
    # Do not set use_cpu here: with cpu=True accelerate never selects DeepSpeed (it falls back to
    # MULTI_CPU DDP around a model that zero.Init already partitioned). Without a GPU the default
    # device is the CPU anyway.
    return argv if "ddp_backend" in values else [*argv, "--ddp_backend", "gloo"]


# -- data --------------------------------------------------------------------------------------------------
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_partial_pairs(config: SPPRMConfig) -> tuple[Dataset, dict[str, Any], PrefixFormat]:
    """A dataset written by ``sp-prm prepare``, its card, and the prefix format it was built with."""
    folder = Path(config.dataset)
    card_path = folder / "card.json"
    if not card_path.exists():
        raise FileNotFoundError(
            f"{folder}: not a dataset written by `sp-prm prepare` (no card.json). Run `sp-prm prepare` first, "
            "or use loss: orm to train on a raw preference source"
        )
    card = json.loads(card_path.read_text())
    data = load_from_disk(str(folder))
    missing = {"id", "chosen_ids", "rejected_ids", "weight"} - set(data.column_names)
    if missing:
        raise ValueError(f"{folder}: columns {sorted(missing)} missing; re-run `sp-prm prepare`")
    prep = card.get("config", {})
    if config.loss == "weighted":
        weighted = bool(prep.get("reference_model")) and "ref_gap" in data.column_names and len(data) > 0 \
            and data[0]["ref_gap"] is not None
        if not weighted:
            raise ValueError(
                f"loss=weighted needs preference weights, but {folder} was prepared without a reference RM "
                "(every weight is 1 and the ref_* columns are empty). Prepare it with --reference_model, or train "
                "the paper's unweighted ablation with --loss unweighted"
            )
    card_prefix = PrefixFormat(**prep["prefix"]) if isinstance(prep.get("prefix"), dict) else None
    prefix = config.prefix or card_prefix or PrefixFormat()
    if config.prefix is not None and card_prefix is not None and config.prefix != card_prefix:
        raise ValueError(
            f"prefix {config.prefix} differs from the one the dataset was built with ({card_prefix}); the ids in "
            "the dataset fix the representation -- drop `prefix` from the config or re-prepare the data"
        )
    if config.limit is not None:
        data = data.select(range(min(config.limit, len(data))))
    return data, card, prefix


def load_full_pairs(config: SPPRMConfig, tokenizer: Any) -> tuple[Dataset, dict[str, Any], PrefixFormat]:
    """Full (prompt, chosen, rejected) pairs from a raw source, tokenized for an ORM."""
    from data_prep.loaders import load_preferences

    if (Path(config.dataset) / "card.json").exists():
        raise ValueError(
            f"{config.dataset} is a partial-pair dataset from `sp-prm prepare`; loss=orm trains on full responses: "
            "pass the raw preference source (e.g. builtin:hh-rlhf-sample) as --dataset"
        )
    prefix = config.prefix or PrefixFormat()
    pairs, report = load_preferences(config.dataset, config.format, config.columns, config.split, config.limit)
    rows: dict[str, list] = {"id": [], "chosen_ids": [], "rejected_ids": [], "weight": [], "position": []}
    skipped = 0
    for pair in pairs:
        try:
            chosen = encode(tokenizer, pair["prompt"], pair["chosen"], prefix)
            rejected = encode(tokenizer, pair["prompt"], pair["rejected"], prefix)
        except PromptTooLong:
            skipped += 1
            continue
        if chosen.length == 0 or rejected.length == 0:
            skipped += 1
            continue
        rows["id"].append(pair["id"])
        rows["chosen_ids"].append(chosen.sequence_for(prefix))
        rows["rejected_ids"].append(rejected.sequence_for(prefix))
        rows["weight"].append(1.0)
        rows["position"].append(max(chosen.length, rejected.length))
    if not rows["id"]:
        raise ValueError(f"{config.dataset}: no usable pair (loader report {report.to_dict()}, skipped {skipped})")
    card = {"source": config.dataset, "loader": report.to_dict(), "skipped_at_tokenization": skipped,
            "fingerprint": _fingerprint([config.dataset, config.format, config.columns, config.split, config.limit,
                                         prefix.legacy_dict()])}
    return Dataset.from_dict(rows), card, prefix


def split_eval(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out whole source pairs (all their prefixes) by a hash of the pair id.

    The same hash as ``load_preferences(subset="eval")`` and ``sp-prm evaluate-rm``'s default
    subset: with the same ``eval_fraction`` the pairs held out here are exactly the ones those
    tools evaluate on, so no tool ever evaluates on a pair another one trained on. The split does
    not depend on ``seed`` (kept in the signature for callers).
    """
    if fraction <= 0:
        return data, None
    held = [in_eval_subset(str(i), fraction) for i in data["id"]]
    train_idx = [k for k, h in enumerate(held) if not h]
    eval_idx = [k for k, h in enumerate(held) if h]
    if not eval_idx or not train_idx:
        raise ValueError(
            f"eval_fraction={fraction} leaves an empty train or eval split ({len(data)} rows); data that was "
            "already split with load_preferences(subset=...) needs eval_fraction 0 (or a larger one)"
        )
    return data.select(train_idx), data.select(eval_idx)


# -- model -------------------------------------------------------------------------------------------------
def build_model(config: SPPRMConfig, tokenizer: Any) -> Any:
    """The reward model, built after the training arguments (ZeRO-3 ``zero.Init``), with optional LoRA."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve(config.model_name_or_path), num_labels=1, dtype=getattr(torch, config.dtype),
        trust_remote_code=config.trust_remote_code,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if config.use_peft:
        from peft import LoraConfig, get_peft_model

        head = "score" if hasattr(model, "score") else "classifier"
        lora = LoraConfig(
            task_type="SEQ_CLS", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules or "all-linear", modules_to_save=[head],
        )
        model = get_peft_model(model, lora)
    return model


def run_record(config: SPPRMConfig, data_card: dict[str, Any], prefix: PrefixFormat) -> dict[str, Any]:
    return {
        "model_name_or_path": config.model_name_or_path,
        "loss": config.loss,
        "dataset": config.dataset,
        "dataset_fingerprint": data_card.get("fingerprint"),
        "prefix": prefix.to_dict(),
        "use_peft": config.use_peft,
        "lora_r": config.lora_r if config.use_peft else None,
        "multi_prefix": config.multi_prefix,
        "center_rewards_coefficient": config.center_rewards_coefficient,
    }


def check_resume(output_dir: Path, record: dict[str, Any]) -> str | None:
    """The last checkpoint to resume from, after checking it belongs to a compatible run."""
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    last = get_last_checkpoint(str(output_dir))
    if last is None:
        return None
    saved_path = output_dir / RUN_FILE
    if not saved_path.exists():
        raise IncompatibleCheckpoint(
            f"{last} was not written by `sp-prm train` (no {RUN_FILE} in {output_dir}); use another output_dir "
            "or --resume false"
        )
    saved = json.loads(saved_path.read_text())
    if isinstance(saved.get("prefix"), dict):  # older runs wrote end_marker as a boolean
        saved["prefix"] = PrefixFormat(**saved["prefix"]).to_dict()
    diff = {k: (saved.get(k), record.get(k)) for k in RUN_KEYS if saved.get(k) != record.get(k)}
    if diff:
        lines = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise IncompatibleCheckpoint(
            f"cannot resume from {last}: it was trained with another configuration ({lines}). Use another "
            "output_dir, or --resume false to start over (existing checkpoints will be overwritten)"
        )
    return last


# -- entry -------------------------------------------------------------------------------------------------
def train(config: SPPRMConfig, callbacks: list[Any] | None = None) -> Any:
    """Run training as configured; returns the trainer (its model is the trained RM)."""
    from sp_prm.hub import push_to_hub, write_model_card
    from sp_prm.trainer import SPPRMTrainer, compute_pair_metrics

    tokenizer = load_tokenizer(config.model_name_or_path, config.trust_remote_code)
    if config.loss == "orm":
        data, data_card, prefix = load_full_pairs(config, tokenizer)
    else:
        data, data_card, prefix = load_partial_pairs(config)
        made_with = data_card.get("config", {}).get("model_name_or_path")
        if made_with and made_with != config.model_name_or_path:
            theirs = load_tokenizer(made_with, config.trust_remote_code)
            if theirs.get_vocab() != tokenizer.get_vocab():
                raise ValueError(
                    f"{config.dataset} was tokenized for {made_with}, whose vocabulary differs from "
                    f"{config.model_name_or_path}'s; prepare the data with --model_name_or_path {config.model_name_or_path}"
                )
    if config.loss == "unweighted":
        # In memory (no map): a map would write cache files into the prepared dataset's folder.
        data = data.remove_columns("weight").add_column("weight", [1.0] * len(data))
    if config.train_sampling_strategy == "group_by_length" and config.length_column_name not in data.column_names:
        # transformers' LengthGroupedSampler reads lengths from this column (our rows have no input_ids):
        # batches of similar length pad less on the flat (encoder) path.
        lengths = [max(len(c), len(r)) for c, r in zip(data["chosen_ids"], data["rejected_ids"])]
        data = data.add_column(config.length_column_name, lengths)
    train_data, eval_data = split_eval(data, config.eval_fraction, config.seed)

    output_dir = Path(config.output_dir)
    record = run_record(config, data_card, prefix)
    last = check_resume(output_dir, record) if config.resume else None

    model = build_model(config, tokenizer)
    previous = getattr(unwrap(model).config, "sp_prm", None)
    if isinstance(previous, dict) and isinstance(previous.get("prefix"), dict) \
            and PrefixFormat(**previous["prefix"]) != prefix:
        raise IncompatibleCheckpoint(
            f"{config.model_name_or_path} was trained on prefixes rendered as {previous['prefix']}, but the data "
            f"uses {prefix.to_dict()}; prepare the data with the model's prefix settings"
        )
    # Record the prefix representation in the model's config (so in every checkpoint and the final
    # model): decoding must score prefixes exactly the way they were trained.
    unwrap(model).config.sp_prm = {**record, "base_model": config.model_name_or_path}
    causal = is_causal_reward_model(model)
    if config.multi_prefix == "true" and not causal:
        raise ValueError("multi_prefix=true needs a decoder-only RM; encoders see the whole input (one pass per prefix)")
    multi = causal and config.multi_prefix != "false"
    # Encoders pool their first token ([CLS]); left padding would put a pad there.
    padding_side = config.padding_side if causal else "right"
    collator = PairCollator(tokenizer.pad_token_id, multi_prefix=multi, padding_side=padding_side)

    # We push once, at the end, with our own model card (not on every save).
    push, config.push_to_hub = config.push_to_hub, False
    trainer = SPPRMTrainer(
        model=model, args=config, data_collator=collator, train_dataset=train_data, eval_dataset=eval_data,
        processing_class=tokenizer, compute_metrics=compute_pair_metrics if eval_data is not None else None,
        loss_type=config.loss, center_rewards_coefficient=config.center_rewards_coefficient, causal=causal,
        group_by_pair=multi, callbacks=callbacks,
    )
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_FILE).write_text(json.dumps(record, indent=2))
    if last:
        logger.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    metrics = dict(result.metrics)
    if eval_data is not None:
        metrics.update(trainer.evaluate())

    trainer.save_model(str(output_dir))
    trainer.save_metrics("all", metrics)
    if trainer.is_world_process_zero():
        write_model_card(output_dir, config, record, data_card, metrics, train_data)
    if push and trainer.is_world_process_zero():
        push_to_hub(output_dir, config.hub_model_id or output_dir.name, private=config.hub_private_repo is not False)
    return trainer


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        from sp_prm.train_config import help_text

        print(help_text())
        raise SystemExit(0)
    argv = init_distributed_for(argv)
    config = load_config(SPPRMConfig, argv)
    train(config)


if __name__ == "__main__":
    main()
