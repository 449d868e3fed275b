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


def original_prefix(cut_tok: Any, response: str, side: EncodedResponse, t: int) -> str:
    """The response's own text up to the end of its ``t``-th cut token.

    Decoding the cut ids would lose the case and spacing of an uncased or normalising tokenizer
    (MiniLM decodes "Hello, World" as "hello, world"), and the policy must continue the real text.
    The response is tokenized alone (with its leading space, as the plain transcript has it); when
    those ids are not the ones the rendering produced, the decoded text is the fallback.
    """
    if t >= side.length:
        return response if not side.response_truncated else cut_tok.decode(side.content_ids)
    for body in (" " + response, response):
        try:
            enc = cut_tok(body, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # a slow tokenizer has no offsets
            break
        if list(enc["input_ids"][:t]) == list(side.content_ids[:t]):
            return body[: enc["offset_mapping"][t - 1][1]].lstrip()
    return cut_tok.decode(side.content_ids[:t])


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
        responses: Sequence[str] | None = None,
    ) -> list[torch.Tensor]:
        """Reward of each side's prefix at each of its positions (response tokens kept).

        ``responses``: each side's original text. A model with another tokenizer then reads the
        response's own text up to the cut (:func:`original_prefix`), not the decoded cut ids, which an
        uncased cut tokenizer (MiniLM) would hand to a cased model lowercased.
        """
        end = self.fmt.end_marker
        if self.one_pass and not any(s.suffix_ids for s in sides):
            seqs = [s.sequence(None, end) for s in sides]
            index = [[s.reward_index(t, end) for t in pos] for s, pos in zip(sides, positions)]
            return self.scorer.score_positions(seqs, index)
        # One pass per prefix; identical sequences (a clipped shorter side repeats) are scored once.
        unique: dict[tuple[int, ...], int] = {}
        where: list[list[int]] = []
        for k, (side, pos, msgs) in enumerate(zip(sides, positions, messages)):
            rows = []
            for t in pos:
                if self.same_tokenizer:
                    seq = tuple(side.sequence(t, end))
                else:
                    text = (original_prefix(self.cut_tokenizer, responses[k], side, t) if responses is not None
                            else self.cut_tokenizer.decode(side.content_ids[:t]))
                    own = encode(self.tokenizer, msgs, text, self.fmt)
                    seq = tuple(own.sequence_for(self.fmt, complete=side.is_complete(t)))
                rows.append(unique.setdefault(seq, len(unique)))
            where.append(rows)
        rewards = self.scorer.score(list(unique)) if unique else torch.empty(0)
        return [rewards[torch.as_tensor(rows, dtype=torch.long)] for rows in where]
