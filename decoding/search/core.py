"""The expand-score-select core every search shares.

A search holds the policy's state (one row per live candidate, over all prompts of
the batch: a KV cache on the HF backend, token ids on the vLLM one; see
``decoding.backend``) and a parallel list of :class:`Candidate`. One step is:

1. ``expand``: fork each row into ``width`` children (``state.select``, no
   recomputation), sample one step for all of them in one batched decode;
2. ``score``: one scorer call over every child of every prompt;
3. select: ``state.select(kept_rows)`` keeps, reorders or drops rows.

Candidate seeds are ``candidate_seed(seed, prompt.id, subtree, step, child)``, so
results do not depend on batch composition or on resuming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decoding.backend import PolicyBackend, SearchState
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.types import Partial, Prompt, aggregate, candidate_seed


@dataclass
class Candidate:
    """One (partial) response under construction.

    ``prompt`` indexes the batch's prompts; ``step_ends[i]`` is the token count after
    step ``i``; ``prefix_scores[i]`` the scorer's score of the prefix after step ``i``;
    ``step_scores`` what is aggregated (increments for additive scorers such as REAR).
    """

    prompt: int
    subtree: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    end_ids: list[int] = field(default_factory=list)
    end_logprobs: list[float] = field(default_factory=list)
    step_ends: list[int] = field(default_factory=list)
    prefix_scores: list[float] = field(default_factory=list)
    step_scores: list[float] = field(default_factory=list)
    eos: bool = False
    score: float = float("-inf")

    @property
    def complete(self) -> bool:
        return self.eos

    def child(self) -> Candidate:
        return Candidate(self.prompt, self.subtree, list(self.token_ids), list(self.logprobs), [], [],
                         list(self.step_ends), list(self.prefix_scores), list(self.step_scores))

    def record(self, value: float, additive: bool, aggregation: str) -> None:
        """Record the scorer's score of this candidate's current prefix; every search books scores here.

        ``prefix_scores`` gets the raw value; ``step_scores`` the increment over the previous prefix
        for an additive scorer (REAR: the prefix's score is the sum of its steps), else the value;
        ``score`` is their aggregate.
        """
        previous = self.prefix_scores[-1] if (additive and self.prefix_scores) else 0.0
        self.prefix_scores.append(float(value))
        self.step_scores.append(float(value) - previous if additive else float(value))
        self.score = aggregate(self.step_scores, aggregation)

    def partial(self, policy: PolicyBackend) -> Partial:
        return Partial(policy.decode(self.token_ids), list(self.token_ids), self.eos, list(self.end_ids),
                       self.logprobs + self.end_logprobs)


def expand(
    policy: PolicyBackend,
    state: SearchState,
    parents: Sequence[Candidate],
    prompts: Sequence[Prompt],
    width: int,
    params: SamplingParams,
    seed: int,
    step: int,
    max_tokens: Sequence[int],
    stop_at_delimiter: bool,
    feed_final: bool = True,
) -> tuple[SearchState, list[Candidate]]:
    """Fork every parent row into ``width`` children and sample one step for all of them at once.

    ``max_tokens[i]`` is parent ``i``'s budget for this step. Children of parent ``i``
    are rows ``i * width .. i * width + width - 1`` of the returned state.
    """
    rows = [i for i in range(len(parents)) for _ in range(width)]
    children_state = state.select(rows) if width != 1 else state
    children = [parents[i].child() for i in rows]
    seeds = [
        candidate_seed(seed, prompts[c.prompt].id, c.subtree, step, k % width) for k, c in enumerate(children)
    ]
    budgets = [max_tokens[i] for i in rows]
    samples = policy.sample(children_state, seeds, params, budgets, stop_at_delimiter, feed_final)
    for c, s in zip(children, samples):
        c.token_ids += s.token_ids
        c.logprobs += s.logprobs
        c.end_ids, c.end_logprobs, c.eos = s.end_ids, s.end_logprobs, s.eos
        c.step_ends.append(len(c.token_ids))
    return children_state, children


def score(
    scorer: Scorer, policy: PolicyBackend, prompts: Sequence[Prompt], candidates: Sequence[Candidate], aggregation: str
) -> torch.Tensor:
    """Score every candidate in one scorer call; records prefix and step scores and the aggregate."""
    if not candidates:
        return torch.empty(0)
    values = scorer.score([prompts[c.prompt] for c in candidates], [c.partial(policy) for c in candidates])
    for c, v in zip(candidates, values.tolist()):
        c.record(v, scorer.additive, aggregation)
    return values


@dataclass
class SearchResult:
    """A prompt's outcome: its candidates (exactly n) and the index of the best."""

    prompt: Prompt
    candidates: list[Candidate]
    best: int

    @property
    def best_candidate(self) -> Candidate:
        return self.candidates[self.best]


def argmax(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the lowest index (deterministic)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def rank_top(scores: Sequence[float], w: int) -> list[int]:
    """Indices of the ``w`` highest scores, best first; ties to the lower index (deterministic)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:w]


def prefill(policy: PolicyBackend, prompts: Sequence[Prompt]) -> SearchState:
    """One batched prefill of every prompt (row ``i`` = prompt ``i``, accounted to its group)."""
    return policy.prefill([policy.encode(p.messages) for p in prompts], [p.index for p in prompts])
