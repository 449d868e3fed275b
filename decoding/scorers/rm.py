"""``ClassifierScorer``: a sequence-classification reward model (an ORM or a trained SP-PRM) as a search scorer.

Any one-output classifier, encoder or decoder, with its own tokenizer. Ids are built with
``sp_prm.formatting.encode`` exactly as in training: the end marker goes where
``PrefixFormat.end_marker`` says (complete responses only by default; ``always``: every prefix,
the SP-PRM authors' mode). Decoder RMs keep the KV cache of the
last call (``PrefixCache``: crop, then extend); encoders go through ``sp_prm.scoring.RewardScorer``
(the raw batched forward over token ids, token-budget batches sorted by length).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from decoding.prefix_cache import PrefixCache
from decoding.scorers.base import check_lengths
from decoding.types import Meter, Partial, Prompt
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.scoring import RewardScorer, unwrap


class ClassifierScorer:
    """A sequence-classification reward model as a scorer. See the module docstring.

    Args:
        model: one-output ``AutoModelForSequenceClassification``.
        tokenizer: the RM's own tokenizer.
        prefix_format: how (prompt, partial response) becomes ids; use the PRM's training format.
        cache: keep a decoder RM's KV cache across calls (no effect for encoders).
    """

    additive = False
    default_aggregation = "last"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prefix_format: PrefixFormat | None = None,
        cache: bool = True,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        meter: Meter | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.format = prefix_format or PrefixFormat()
        self.meter = meter or Meter()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rm = RewardScorer(model, pad_token_id=pad, max_batch_tokens=max_batch_tokens,
                               max_batch_size=max_batch_size)
        self.causal = self.rm.causal
        self._warned_unknown = False
        self.prefix_cache: PrefixCache | None = None
        if self.causal and cache:
            inner = unwrap(model)
            self.prefix_cache = PrefixCache(
                getattr(inner, inner.base_model_prefix), lambda h: inner.score(h).squeeze(-1), kind="reward",
                pad_id=pad, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                meter=self.meter, device=self.rm.device,
            )

    def sequence(self, prompt: Prompt, partial: Partial) -> list[int]:
        """The RM's ids for one (prompt, partial response), as in training."""
        return self._sequence(prompt, partial)[0]

    def _sequence(self, prompt: Prompt, partial: Partial) -> tuple[list[int], bool]:
        """(ids, whether the response has text but not one token the RM's tokenizer knows)."""
        enc = encode(self.tokenizer, prompt.messages, partial.text, self.format)
        unknown = False
        if partial.text.strip():
            unk = getattr(self.tokenizer, "unk_token_id", None)
            unknown = not enc.content_ids or (unk is not None and all(t == unk for t in enc.content_ids))
        # The end marker where the format puts it: complete responses only (default), never, or always.
        return enc.sequence_for(self.format, complete=partial.complete), unknown

    def _check_encodable(self, prompts: Sequence[Prompt], partials: Sequence[Partial], unknown: list[bool]) -> None:
        """Every response unencodable: the RM cannot read this language (error). Some: degenerate samples such
        as one 200-letter 'word' that WordPiece maps to [UNK], scored as encoded (a warning, once)."""
        bad = [i for i, u in enumerate(unknown) if u]
        if not bad:
            return
        i = bad[0]
        what = (f"record {prompts[i].id!r}: the reward model's tokenizer cannot encode the response "
                f"(no known tokens in {partials[i].text[:60]!r})")
        if len(bad) == len(unknown):
            raise ValueError(what)
        if not self._warned_unknown:
            self._warned_unknown = True
            warnings.warn(f"{what}; {len(bad)} of {len(unknown)} responses in this call are scored as unknown "
                          "tokens (warned once per scorer)", stacklevel=4)

    def _encode_call(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> tuple[list[list[int]], list[int]]:
        """One score call's RM ids and prompt groups, its encodability checked and the call counted.

        Shared with the engine scorer (``rm_engine.EngineRewardScorer``), so both read the same ids.
        """
        seqs, unknown = zip(*(self._sequence(p, r) for p, r in zip(prompts, partials)))
        self._check_encodable(prompts, partials, list(unknown))
        groups = [p.index for p in prompts]
        self.meter.add("scorer_calls", sorted(set(groups)))
        return list(seqs), groups

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        check_lengths(prompts, partials)
        if not partials:
            return torch.empty(0)
        seqs, groups = self._encode_call(prompts, partials)
        if self.prefix_cache is not None:
            values = self.prefix_cache.values(seqs, groups)
            return torch.stack([v[-1] for v in values])
        self.meter.add("scorer_tokens", groups, [len(s) for s in seqs])
        return self.rm.score(seqs)
