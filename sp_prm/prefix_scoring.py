"""Rewards of response prefixes defined in one token space, read by any reward model.

Prefixes are cut in the token space of a *cut tokenizer* (the model being
trained, or the first model under evaluation). A reward model that shares that
vocabulary reads the very same ids; a decoder-only one then scores all prefixes
of a response in one forward pass. A reward model with another tokenizer reads
each prefix's decoded text re-encoded in its own token space (one pass per
prefix), so several models can be compared on identical prefixes; when that model is a decoder,
every re-encoded prefix whose ids begin a longer prefix of the same response (the common case:
a cut at a word boundary) is read from the longer one's pass instead of a pass of its own.
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
        # One sequence per prefix; identical sequences (a clipped shorter side repeats) are scored once.
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
        seqs = list(unique)
        if not seqs:
            rewards = torch.empty(0)
        elif self.scorer.causal:
            rewards = score_nested(self.scorer, seqs, where)
        else:
            rewards = self.scorer.score(seqs)
        return [rewards[torch.as_tensor(rows, dtype=torch.long)] for rows in where]


def score_nested(scorer: RewardScorer, seqs: Sequence[Sequence[int]], groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Reward of every sequence, with a causal scorer, in one pass per *host*: a sequence whose ids begin a
    longer sequence of its group (``groups``: indices into ``seqs`` that may nest, e.g. one response's
    prefixes) is read at its last position from that sequence's pass (exact: a causal model's state at
    position ``i`` sees tokens ``<= i`` only). A sequence in several groups is hosted once.
    """
    seqs = [tuple(x) for x in seqs]
    host_of = list(range(len(seqs)))
    for group in groups:
        hosts: list[int] = []
        for i in sorted(set(group), key=lambda i: -len(seqs[i])):
            if host_of[i] != i:
                continue  # already read from a longer sequence of another group
            n = len(seqs[i])
            h = next((h for h in hosts if seqs[h][:n] == seqs[i]), None)  # hosts are at least as long
            if h is None:
                hosts.append(i)
            else:
                host_of[i] = h
    for i in range(len(seqs)):  # a host hosted in a later group: follow the chain (nesting is transitive)
        while host_of[host_of[i]] != host_of[i]:
            host_of[i] = host_of[host_of[i]]
    host_ids = sorted(set(host_of))
    slot = {h: j for j, h in enumerate(host_ids)}
    reads: list[list[int]] = [[] for _ in host_ids]
    which: list[tuple[int, int]] = []  # (host slot, index in its reads) of every sequence
    for i, h in enumerate(host_of):
        j = slot[h]
        which.append((j, len(reads[j])))
        reads[j].append(len(seqs[i]) - 1)
    per_host = scorer.score_positions([seqs[h] for h in host_ids], reads)
    return torch.stack([per_host[j][r] for j, r in which]).float()
