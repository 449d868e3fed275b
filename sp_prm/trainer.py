"""``SPPRMTrainer``: a ``trl.RewardTrainer`` for Bradley-Terry reward models on (partial) pairs.

It is TRL's reward trainer with three things replaced: the collator (one batch
holds many prefixes of a pair, read inside shared sequences), the loss (Eq. 3's
per-pair weights and the split-invariant normalisation below) and the logged
statistics. Everything else is TRL's: ``RewardConfig``'s fields
(``center_rewards_coefficient``, ``disable_dropout``, ``max_length``,
``pad_to_multiple_of``, ``activation_offloading``, ...), its dataset handling (our
datasets carry ``chosen_ids`` / ``rejected_ids``, so TRL does not re-tokenize
them; a plain TRL dataset is tokenized by ``sp-prm train --loss orm`` through the
prefix format first), its PEFT wrapping (``peft_config``) and its tags.

Loss of pair ``i`` with rewards ``r_w``, ``r_l`` and weight ``w_i``::

    l_i = -w_i * log sigmoid(r_w - r_l)  [+ c * (r_w + r_l)^2]     (Eq. 3; Eq. 2 and orm: w_i = 1)

**Normalisation.** The loss of an optimizer step is ``sum_i l_i / N`` where
``N`` is the number of pairs in that step: over every micro-batch of the
gradient accumulation and every process. It is the Monte-Carlo estimate of
Eq. 3's expectation, so it does not depend on how the step is split: per-device
batch 1 x accumulation 4 gives the same loss and gradients as batch 4 x
accumulation 1, and the same on 2 processes (tests/test_train.py). We do *not*
divide by ``sum_i w_i``: that would renormalise every batch's weights to mean 1,
undoing the absolute scale of ``1/H`` between batches (a batch of confident
long-prefix pairs would get the same step size as a batch of near-ties), and it
is not split-invariant without a second all-reduce. The scale of the weights is
set where they are made (``sp-prm prepare --weight_cap / --weight_normalize``).

``N`` comes from ``Trainer.get_batch_samples``, which sees every micro-batch of
a step before the first forward (``_get_num_items_in_batch`` below counts pairs
and sums the count over processes). Each micro-batch's loss is
``sum(l_i) / N * world_size`` because DDP and DeepSpeed *average* gradients over
processes; ``loss_is_scaled_for_ga = True`` stops the Trainer dividing by the
accumulation steps a second time.

**Rewards.** Decoder-only RMs: the score head's output at every position is
captured with a forward hook on the head while the *wrapped* model (DDP,
DeepSpeed, peft) runs its own forward -- so gradient synchronisation and ZeRO-3
parameter gathering work as usual -- and each pair reads its rewards at
``(sequence, token index)`` from the collator (multi-prefix: many prefixes per
sequence). Encoders: the model's pooled logit per sequence.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from trl import RewardTrainer

from sp_prm.collator import GroupedShuffleSampler
from sp_prm.scoring import is_causal_reward_model, unwrap


def score_head(model: Any) -> torch.nn.Module:
    """The module that maps hidden states to the reward (``score`` for decoder RMs)."""
    inner = unwrap(model)
    head = getattr(inner, "score", None)
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no `score` head; per-position rewards need a decoder RM")
    return head


@functools.lru_cache(maxsize=32)
def _forward_takes_position_ids(cls: type) -> bool:
    try:
        return "position_ids" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def _accepts_position_ids(model: Any) -> bool:
    return _forward_takes_position_ids(type(unwrap(model)))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens whatever the padding side (left padding shifts nothing)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def forward_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[S, L]`` per-position rewards (causal) or ``[S]`` sequence rewards (encoder), fp32.

    Runs the wrapped model's own forward (see the module docstring).
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _accepts_position_ids(model):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    if not causal:
        return model(**kwargs).logits[:, 0].float()
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(**kwargs, use_cache=False)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the score head was not called in the forward pass")
    return captured[-1].squeeze(-1).float()


def pair_rewards(model: Any, batch: dict[str, Any], causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected reward of every pair of a collated batch."""
    out = forward_rewards(model, batch["input_ids"], batch["attention_mask"], causal)
    if causal:
        return out[batch["chosen_seq"], batch["chosen_pos"]], out[batch["rejected_seq"], batch["rejected_pos"]]
    return out[batch["chosen_seq"]], out[batch["rejected_seq"]]


def pair_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor | None, center_coefficient: float | None
) -> torch.Tensor:
    """Per-pair loss ``-w log sigmoid(r_w - r_l) [+ c (r_w + r_l)^2]``, unreduced."""
    losses = -F.logsigmoid(chosen - rejected)
    if weight is not None:
        losses = weight.to(losses.dtype) * losses
    if center_coefficient:
        losses = losses + center_coefficient * (chosen + rejected) ** 2
    return losses


class _PadOnlyTokenizer:
    """What ``RewardTrainer.__init__`` reads from a tokenizer, for callers that pass none.

    Our datasets are already token ids and our collator knows the pad id, so a
    trainer built without ``processing_class`` (tests, benchmarks) needs no real
    tokenizer; this stands in during ``__init__`` only (nothing is saved from it).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token = self.eos_token = "<pad>"
        self.pad_token_id = pad_token_id

    def get_vocab(self) -> dict[str, int]:
        return {"<pad>": self.pad_token_id}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.pad_token_id


class SPPRMTrainer(RewardTrainer):
    """``trl.RewardTrainer`` on collated (partial) pair batches (see :mod:`sp_prm.collator`).

    Args (besides ``RewardTrainer``'s):
        loss_type: ``weighted`` (use the batch's ``weight``), ``unweighted`` or ``orm`` (w = 1).
        center_rewards_coefficient: the centring term; ``None`` takes ``args.center_rewards_coefficient``.
        causal: read rewards per position (decoder RM); ``None`` detects it from the model.
        group_by_pair: keep the partial pairs of one source pair in the same batch (multi-prefix).
    """

    # compute_loss already divides by the pairs of the whole accumulated step.
    loss_is_scaled_for_ga = True
    _tag_names = ["trl", "reward-trainer", "sp-prm"]

    def __init__(
        self,
        *args: Any,
        loss_type: str = "weighted",
        center_rewards_coefficient: float | None = None,
        causal: bool | None = None,
        group_by_pair: bool = False,
        **kwargs: Any,
    ) -> None:
        names = ("model", "args", "data_collator", "train_dataset", "eval_dataset", "processing_class")
        kwargs.update(zip(names, args))
        config, collator = kwargs.get("args"), kwargs.get("data_collator")
        stand_in = kwargs.get("processing_class") is None and hasattr(collator, "pad_token_id")
        if stand_in:
            kwargs["processing_class"] = _PadOnlyTokenizer(collator.pad_token_id)
        # sp-prm train builds the model itself (resolve(), dtype, ZeRO-3 ordering) and has already applied
        # model_init_kwargs; RewardTrainer would warn that they are ignored.
        init_kwargs = getattr(config, "model_init_kwargs", None)
        if config is not None:
            config.model_init_kwargs = None
        try:
            super().__init__(**kwargs)
        finally:
            if config is not None:
                config.model_init_kwargs = init_kwargs
        if stand_in:
            self.processing_class = None
        self.loss_type = loss_type
        self.center_rewards_coefficient = (
            self.args.center_rewards_coefficient if center_rewards_coefficient is None else center_rewards_coefficient
        )
        self.causal = is_causal_reward_model(self.model) if causal is None else causal
        self.group_by_pair = group_by_pair
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._maxes: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._last_log_time = time.perf_counter()
        self._micro_batches = 0

    # -- data -----------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.group_by_pair and "id" in getattr(dataset, "column_names", []):
            return GroupedShuffleSampler(dataset["id"], self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Pairs in the accumulated step, summed over processes: the ``N`` of the normalisation."""
        if not batch_samples:
            return None
        n = torch.tensor(sum(int(b["weight"].numel()) for b in batch_samples), device=device)
        if self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return n

    # -- loss -----------------------------------------------------------------------------------------------
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        chosen, rejected = pair_rewards(model, inputs, self.causal)
        weight = inputs["weight"] if self.loss_type == "weighted" else None
        losses = pair_losses(chosen, rejected, weight, self.center_rewards_coefficient)
        if num_items_in_batch is not None:
            loss = losses.sum() / num_items_in_batch * self.args.world_size
        else:
            loss = losses.mean()
        if not torch.isfinite(loss.detach()):
            ids = inputs.get("pair_ids", [])
            pos = inputs["positions"].tolist() if "positions" in inputs else []
            raise FloatingPointError(
                f"non-finite loss ({float(loss.detach())}) at global step {self.state.global_step}, "
                f"micro-batch {self._micro_batches} of the run ({len(ids)} pairs): pair ids {ids[:8]}"
                f"{' ...' if len(ids) > 8 else ''}, positions {pos[:8]}; rewards finite: "
                f"{bool(torch.isfinite(chosen).all() and torch.isfinite(rejected).all())}, "
                f"weights finite: {bool(torch.isfinite(inputs['weight']).all())}"
            )
        self._record(inputs, chosen.detach(), rejected.detach(), "train" if model.training else "eval")
        if return_outputs:
            return loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}
        return loss

    def _record(self, inputs: dict[str, Any], chosen: torch.Tensor, rejected: torch.Tensor, mode: str) -> None:
        if mode == "train":
            self._micro_batches += 1
        sums, maxes = self._sums[mode], self._maxes[mode]
        margin = chosen - rejected
        rewards = torch.cat([chosen, rejected])
        weight = inputs["weight"].float()
        sums["pairs"] += len(chosen)
        sums["correct"] += float((margin > 0).sum())
        sums["margin"] += float(margin.sum())
        sums["reward"] += float(rewards.sum())
        sums["reward_sq"] += float((rewards**2).sum())
        sums["weight"] += float(weight.sum())
        sums["tokens"] += float(inputs["attention_mask"].sum())
        sums["padded_tokens"] += float(inputs["attention_mask"].numel())
        sums["flat_tokens"] += float(inputs["flat_tokens"])
        sums["sequences"] += float(inputs["input_ids"].shape[0])
        maxes["weight"] = max(maxes["weight"], float(weight.max()) if len(weight) else 0.0)

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        logits = torch.stack([out["rewards_chosen"], out["rewards_rejected"]], dim=1)
        labels = torch.stack([inputs["weight"], inputs["positions"].to(inputs["weight"].dtype)], dim=1)
        return loss.detach(), logits, labels

    # -- logging --------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        sums, maxes = self._sums[mode], self._maxes[mode]
        keys = ["pairs", "correct", "margin", "reward", "reward_sq", "weight", "tokens", "padded_tokens",
                "flat_tokens", "sequences"]
        # Every process calls log(); sum the counters so the numbers cover the whole step.
        totals = torch.tensor([sums[k] for k in keys] + [maxes["weight"]], dtype=torch.float64,
                              device=self.args.device)
        if self.args.world_size > 1:
            gathered = self.accelerator.gather(totals[None])
            totals = torch.cat([gathered[:, :-1].sum(0), gathered[:, -1].max()[None]])
        t = dict(zip(keys + ["weight_max"], totals.tolist()))
        prefix = "" if mode == "train" else "eval_"
        if t["pairs"] > 0:
            n = t["pairs"]
            mean = t["reward"] / (2 * n)
            logs[f"{prefix}accuracy"] = t["correct"] / n
            logs[f"{prefix}margin"] = t["margin"] / n
            logs[f"{prefix}rewards/mean"] = mean
            logs[f"{prefix}rewards/std"] = max(t["reward_sq"] / (2 * n) - mean**2, 0.0) ** 0.5
            logs[f"{prefix}weight/mean"] = t["weight"] / n
            logs[f"{prefix}weight/max"] = t["weight_max"]
            if mode == "train":
                elapsed = max(time.perf_counter() - self._last_log_time, 1e-9)
                logs["tokens_per_second"] = t["tokens"] / elapsed
                logs["pairs_per_second"] = n / elapsed
                # < 1 when prefixes share forward passes: tokens actually run / tokens of a flat batch.
                logs["token_ratio_vs_flat"] = t["tokens"] / max(t["flat_tokens"], 1.0)
                logs["padding_fraction"] = 1.0 - t["tokens"] / max(t["padded_tokens"], 1.0)
        if mode == "train":
            self._last_log_time = time.perf_counter()
        self._sums[mode], self._maxes[mode] = defaultdict(float), defaultdict(float)
        super().log(logs, start_time)


# Prefix-length buckets (response tokens t) of the evaluation's agreement rates: short prefixes are
# where an ORM disagrees with itself most (the paper's Fig. 2), so they are reported separately.
LENGTH_BUCKETS = ((1, 8), (9, 32), (33, 128), (129, None))


def compute_pair_metrics(eval_pred: Any) -> dict[str, float]:
    """Weighted accuracy and accuracy per prefix length, from ``prediction_step``'s outputs.

    ``predictions``: ``[P, 2]`` chosen / rejected rewards; ``label_ids``: ``[P, 2]`` weight and
    position t. (Plain accuracy, margin and reward statistics are logged by :meth:`SPPRMTrainer.log`.)
    """
    rewards = torch.as_tensor(eval_pred.predictions, dtype=torch.float64)
    labels = torch.as_tensor(eval_pred.label_ids, dtype=torch.float64)
    weight, position = labels[:, 0], labels[:, 1]
    correct = (rewards[:, 0] > rewards[:, 1]).double()
    metrics = {"weighted_accuracy": float((correct * weight).sum() / weight.sum().clamp(min=1e-12))}
    for lo, hi in LENGTH_BUCKETS:
        inside = (position >= lo) & ((position <= hi) if hi is not None else torch.ones_like(position, dtype=torch.bool))
        if inside.any():
            metrics[f"accuracy_t{lo}-{hi if hi is not None else 'max'}"] = float(correct[inside].mean())
    return metrics
