"""Reward-model scoring: the reward of sequences, and of every prefix of them.

The bottom layer of the toolkit: ``data_prep`` (reference scoring), ``sp_prm``
(training and evaluation) and ``decoding`` (the RM scorer) all read rewards
through :class:`RewardScorer`. It imports nothing else from the project.

Two ways to score prefixes of a response:

* **one pass** (decoder-only RMs that read the reward at the last token): the
  score head applied to position ``i`` of the full sequence is the reward of the
  prefix ending at ``i``, because causal attention never lets position ``i``
  see later tokens. Every prefix of a response costs one forward pass.
* **per prefix** (encoders such as BERT/DeBERTa, or a decoder with a
  structural suffix): each prefix is its own sequence; batched, sorted by length.

Rewards are read at the last *real* token from the attention mask, never by
searching for ``pad_token_id`` (which equals EOS in many chat models, so a
complete response ending in EOS would otherwise be pooled one token early).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

# Model types whose sequence classifier is an encoder (bidirectional): prefixes
# need their own pass. Everything with a ``score`` head that is not listed here
# is treated as decoder-only (Llama, Gemma, Mistral, Qwen, GPT-2, ...).
_ENCODER_TYPES = {
    "bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "albert", "xlm-roberta",
    "modernbert", "mpnet", "camembert", "longformer", "big_bird", "funnel", "xlnet", "t5", "bart",
}


def is_causal_reward_model(model: PreTrainedModel) -> bool:
    """Whether the model reads its reward at the last token of a causal backbone."""
    model = unwrap(model)
    return model.config.model_type not in _ENCODER_TYPES and hasattr(model, "score")


def unwrap(model: Any) -> Any:
    """The transformers model under a peft / DDP wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif type(model).__name__.startswith("Peft") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def per_position_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Score head applied at every position of a decoder RM: ``[batch, seq]`` in fp32."""
    inner = unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    # Explicit positions: models with absolute position embeddings (GPT-2) would otherwise shift
    # under left padding; rotary models (Llama) are unaffected either way.
    position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return inner.score(hidden).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def sequence_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward of each padded sequence (``[batch]``, fp32), with or without gradients.

    Decoders: any padding side. Encoders read their first position ([CLS]), so they
    need right padding (what :func:`pad` and :class:`RewardScorer` use).
    """
    if is_causal_reward_model(model):
        rewards = per_position_rewards(model, input_ids, attention_mask)
        return rewards.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[:, 0].float()


def pad(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if not len(s):
            raise ValueError(f"sequence {i} is empty")
        row = torch.as_tensor(list(s), dtype=torch.long)
        if side == "right":
            ids[i, : len(s)], mask[i, : len(s)] = row, 1
        else:
            ids[i, width - len(s):], mask[i, width - len(s):] = row, 1
    return ids, mask


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, longest first, by token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and ((len(batch) + 1) * width > max_tokens or len(batch) >= max_batch):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class RewardScorer:
    """Batched reward scoring with a frozen sequence-classification model.

    Args:
        model: any ``AutoModelForSequenceClassification`` with one output.
        pad_token_id: id used for padding (only positions under the mask are read).
        max_batch_tokens: padded tokens per forward pass.
        max_batch_size: rows per forward pass.
        causal: force the decoder (one-pass) or encoder (per-prefix) path; ``None`` detects it.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_token_id: int | None = None,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        causal: bool | None = None,
    ) -> None:
        if getattr(unwrap(model).config, "num_labels", 1) != 1:
            raise ValueError(f"a reward model must have one output (num_labels=1), got {model.config.num_labels}")
        self.model = model.eval()
        self.pad_token_id = pad_token_id if pad_token_id is not None else (model.config.pad_token_id or 0)
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.causal = is_causal_reward_model(model) if causal is None else causal
        if self.causal and not hasattr(unwrap(model), "score"):
            raise ValueError("causal=True needs a decoder RM with a `score` head")
        self.forward_passes = 0
        self.tokens_scored = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _batches(self, sequences: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        lengths = [len(s) for s in sequences]
        for idx in length_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            ids, mask = pad([sequences[i] for i in idx], self.pad_token_id)
            self.forward_passes += 1
            self.tokens_scored += int(mask.sum())
            yield idx, ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Reward of each sequence, read at its last token: ``[n]`` fp32 on CPU."""
        out = torch.empty(len(sequences), dtype=torch.float32)
        for idx, ids, mask in self._batches(sequences):
            out[idx] = sequence_rewards(self.model, ids, mask).cpu()
        return out

    @torch.no_grad()
    def score_positions(
        self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """One pass per sequence; the reward read at each given token index (decoder RMs only)."""
        if not self.causal:
            raise ValueError("score_positions needs a decoder-only reward model; use score() per prefix")
        out: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
        for idx, ids, mask in self._batches(sequences):
            rewards = per_position_rewards(self.model, ids, mask).cpu()
            for row, i in enumerate(idx):
                pos = torch.as_tensor(list(positions[i]), dtype=torch.long)
                if len(pos) and (pos.min() < 0 or pos.max() >= len(sequences[i])):
                    raise IndexError(f"sequence {i}: positions outside [0, {len(sequences[i])})")
                out[i] = rewards[row, pos]
        return out
