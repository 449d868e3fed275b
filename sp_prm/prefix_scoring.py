"""Rewards of response prefixes defined in one token space, read by any reward model.

Prefixes are cut in the token space of a *cut tokenizer* (the model being
trained, or the first model under evaluation). A reward model that shares that
vocabulary reads the very same ids; a decoder-only one then scores all prefixes
of a response in one forward pass. A reward model with another tokenizer reads
each prefix's decoded text re-encoded in its own token space (one pass per
prefix), so several models can be compared on identical prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sp_prm.formatting import EncodedResponse, Message, PrefixFormat, encode
from sp_prm.scoring import RewardScorer


class PrefixScorer:
    """A :class:`RewardScorer` plus the tokenizer it reads, bound to a cut tokenizer."""

    def __init__(self, scorer: RewardScorer, tokenizer: Any, cut_tokenizer: Any, fmt: PrefixFormat) -> None:
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.cut_tokenizer = cut_tokenizer
        self.fmt = fmt
        self.same_tokenizer = tokenizer is cut_tokenizer or tokenizer.get_vocab() == cut_tokenizer.get_vocab()

    @property
    def one_pass(self) -> bool:
        """Whether prefixes are scored with one forward pass per response (not under ``end_marker: always``,
        where every prefix ends in its own completion marker)."""
        return self.scorer.causal and self.same_tokenizer and self.fmt.prefixes_nest

    def score(
        self,
        sides: Sequence[EncodedResponse],
        positions: Sequence[Sequence[int]],
        messages: Sequence[Sequence[Message]],
    ) -> list[torch.Tensor]:
        """Reward of each side's prefix at each of its positions (response tokens kept)."""
        end = self.fmt.end_marker
        if self.one_pass and not any(s.suffix_ids for s in sides):
            seqs = [s.sequence(None, end) for s in sides]
            index = [[s.reward_index(t, end) for t in pos] for s, pos in zip(sides, positions)]
            return self.scorer.score_positions(seqs, index)
        # One pass per prefix; identical sequences (a clipped shorter side repeats) are scored once.
        unique: dict[tuple[int, ...], int] = {}
        where: list[list[int]] = []
        for side, pos, msgs in zip(sides, positions, messages):
            rows = []
            for t in pos:
                if self.same_tokenizer:
                    seq = tuple(side.sequence(t, end))
                else:
                    text = self.cut_tokenizer.decode(side.content_ids[:t])
                    own = encode(self.tokenizer, msgs, text, self.fmt)
                    seq = tuple(own.sequence_for(self.fmt, complete=side.is_complete(t)))
                rows.append(unique.setdefault(seq, len(unique)))
            where.append(rows)
        rewards = self.scorer.score(list(unique)) if unique else torch.empty(0)
        return [rewards[torch.as_tensor(rows, dtype=torch.long)] for rows in where]
