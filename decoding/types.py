"""Small shared types: prompts, (partial) responses, step-score aggregation, compute accounting."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sp_prm.formatting import split_prefill

Message = dict[str, str]


@dataclass
class Prompt:
    """One prompt to decode.

    Attributes:
        id: stable record id (seeds and resume are keyed on it, never on batch position).
        messages: the full context the policy samples from (preference included).
        question_messages: the same conversation without the preference (REAR's question-only
            context); ``None`` when the record has no separate preference.
        question: the question text (for output and GenRM).
        preference: the preference text, if any.
        index: the prompt's index in the run (its accounting group).
        meta: input-record fields copied into the output record (``DataConfig.keep_fields``).

    When ``messages`` ends with an assistant message, that message is a *prefill*: the
    response's forced start, which the policy continues and every scorer reads as the
    first part of the response (``sp_prm.formatting.split_prefill``).
    """

    id: str
    messages: list[Message]
    question_messages: list[Message] | None = None
    question: str = ""
    preference: str | None = None
    index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prefill(self) -> str:
        """The response's forced start (``""`` when the conversation does not end with an assistant message)."""
        return split_prefill(self.messages)[1]

    @property
    def context_messages(self) -> list[Message]:
        """``messages`` without the prefill: the conversation as the user wrote it."""
        return split_prefill(self.messages)[0]


@dataclass
class Partial:
    """A (partial) response as every scorer reads it.

    ``token_ids`` are the policy's response tokens (no end token); ``end_ids`` is
    the policy's stop token when the response is complete (empty otherwise);
    ``logprobs`` (optional) are the policy's log-probs of ``token_ids + end_ids``
    under ``Prompt.messages``, computed while sampling (REAR reuses them).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    complete: bool = False
    end_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None


AGGREGATIONS = ("last", "min", "prod", "mean", "sum")


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """Aggregate one candidate's step scores by name.

    ``last``: the latest score (an ORM/PRM scoring the whole prefix); ``min``/``prod``:
    search-and-learn's PRM aggregations (``prod`` is meant for scores in [0, 1]);
    ``mean``; ``sum`` (REAR: the sum of per-step increments is the prefix's score).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    if not len(step_scores):
        return float("-inf")
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "prod":
        return float(math.prod(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    return float(sum(step_scores))


def candidate_seed(seed: int, prompt_id: str, *path: int) -> int:
    """A seed for one candidate: a hash of the run seed, the prompt's id and the candidate's path.

    Independent of batch composition and of which other prompts run, so results
    reproduce across batch sizes and resumed runs. Searches use ``path = (subtree,
    step, child)``; Best-of-N candidate ``j`` is ``(0, 0, j)``.
    """
    text = ":".join([str(seed), prompt_id, *map(str, path)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class Meter:
    """Compute counters per accounting group (the prompt's index in the run)."""

    # ``*_cached``: prompt tokens an engine backend (vLLM) served from its prefix cache instead of
    # computing them (0 on the HF backend, whose forks never recompute a prefix at all).
    FIELDS = ("policy_tokens_generated", "policy_tokens_prefilled", "scorer_tokens", "scorer_calls",
              "policy_tokens_cached", "scorer_tokens_cached")

    def __init__(self) -> None:
        self.counts: dict[str, dict[int, int]] = {k: defaultdict(int) for k in self.FIELDS}

    def add(self, name: str, groups: Sequence[int], values: Sequence[int] | int = 1) -> None:
        values = [values] * len(groups) if isinstance(values, int) else values
        for g, v in zip(groups, values):
            self.counts[name][g] += int(v)

    def total(self, name: str) -> int:
        return sum(self.counts[name].values())

    def for_group(self, group: int) -> dict[str, int]:
        return {k: self.counts[k].get(group, 0) for k in self.FIELDS}
