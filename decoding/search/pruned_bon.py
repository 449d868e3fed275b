"""PRM-pruned Best-of-N: Best-of-N that drops weak candidates early on their partial scores.

In the spirit of speculative rejection (Sun et al., 2024): start ``n`` candidates per prompt; at each
checkpoint (every ``every`` tokens, or the token counts of ``schedule``) score every candidate that
is still growing with the guide -- one scorer call over all prompts -- and keep the top fraction
``alpha`` (at least ``min_keep``, rounded up) of each prompt's growing candidates; the rest are
dropped and never sampled again. Candidates that end (EOS) before a checkpoint are finished: they
keep their score and compete at the end. The answer is the best finished candidate by its final
score (ties: the lower candidate index). A guide whose prefix scores agree with its final scores
(an SP-PRM) prunes the right candidates early; an outcome RM reads partial responses it was never
trained on.

Candidate ``j`` of a prompt draws Best-of-N's randomness: seed ``candidate_seed(seed, id, 0, 0, j)``,
its stream continued across checkpoints (``offsets`` on the HF backend; a per-segment seed derived
from it on an engine backend), so with ``alpha = 1`` this *is* Best-of-N token for token on the HF
backend, at the cost of the checkpoint scoring. ``Candidate.subtree`` is ``j``; ``prefix_scores``
holds its checkpoint scores. Only finished candidates are returned (the survivors and the early
finishers, in index order); compute (``policy.meter``) counts every token sampled, pruned ones
included, and every token through the scorer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from decoding.backend import PolicyBackend
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.search.core import Candidate, SearchResult, argmax, prefill, rank_top, score
from decoding.types import Prompt, candidate_seed


@dataclass
class PrunedBonParams:
    """PRM-pruned Best-of-N: n candidates, the top alpha of the growing ones kept at each checkpoint."""

    n: int = field(default=16, metadata={"help": "Candidates started per prompt (N)."})
    alpha: float = field(default=0.5, metadata={
        "help": "Fraction of each prompt's growing candidates kept at a checkpoint (1: plain Best-of-N)."})
    min_keep: int = field(default=1, metadata={"help": "Keep at least this many growing candidates per prompt."})
    every: int | None = field(default=16, metadata={"help": "A checkpoint every this many tokens."})
    schedule: list[int] | None = field(default=None, metadata={
        "help": "Explicit checkpoints (token counts, increasing); overrides every."})

    def __post_init__(self) -> None:
        if self.n < 1 or self.min_keep < 1:
            raise ValueError(f"search.pruned_bon: n and min_keep must be >= 1, got n={self.n}, min_keep={self.min_keep}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"search.pruned_bon.alpha must be in (0, 1], got {self.alpha}")
        if self.schedule is not None:
            self.schedule = [int(t) for t in self.schedule]
            if any(t < 1 for t in self.schedule) or self.schedule != sorted(set(self.schedule)):
                raise ValueError(f"search.pruned_bon.schedule must be increasing positive token counts, "
                                 f"got {self.schedule}")
        elif self.every is None or self.every < 1:
            raise ValueError(f"search.pruned_bon.every must be >= 1 (or give a schedule), got {self.every}")

    def checkpoints(self, max_new_tokens: int) -> list[int]:
        """Token counts at which candidates are scored and pruned (all below ``max_new_tokens``)."""
        points = self.schedule if self.schedule is not None else list(range(self.every, max_new_tokens, self.every))
        return [t for t in points if t < max_new_tokens]

    def keep(self, growing: int) -> int:
        """How many of ``growing`` candidates survive a checkpoint."""
        return min(growing, max(self.min_keep, math.ceil(self.alpha * growing - 1e-9)))


def run(policy: PolicyBackend, scorer: Scorer, prompts: Sequence[Prompt], params: PrunedBonParams,
        sampling: SamplingParams, max_new_tokens: int, seed: int = 0,
        aggregation: str | None = None) -> list[SearchResult]:
    """Pruned Best-of-N over a batch of prompts; see the module docstring."""
    if max_new_tokens < 1:
        raise ValueError(f"pruned_bon: max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    aggregation = aggregation or scorer.default_aggregation
    n = params.n
    state = prefill(policy, prompts).select([i for i in range(len(prompts)) for _ in range(n)])
    live = [Candidate(prompt=i, subtree=j) for i in range(len(prompts)) for j in range(n)]  # state row r: live[r]
    seeds = [candidate_seed(seed, prompts[c.prompt].id, 0, 0, c.subtree) for c in live]
    finished: list[Candidate] = []
    done = 0  # tokens every live candidate has
    for end in [*params.checkpoints(max_new_tokens), max_new_tokens]:
        if not live:
            break
        final = end == max_new_tokens
        samples = policy.sample(state, seeds, sampling, end - done, stop_at_delimiter=False, feed_final=not final,
                                offsets=[done] * len(live))
        for c, s in zip(live, samples):
            c.token_ids += s.token_ids
            c.logprobs += s.logprobs
            c.end_ids, c.end_logprobs, c.eos = s.end_ids, s.end_logprobs, s.eos
            c.step_ends.append(len(c.token_ids))
        done = end
        score(scorer, policy, prompts, live, aggregation)  # one call: every live candidate of every prompt
        growing = [r for r, c in enumerate(live) if not (c.eos or final)]
        finished += [c for c in live if c.eos or final]
        by_prompt: dict[int, list[int]] = {}
        for r in growing:
            by_prompt.setdefault(live[r].prompt, []).append(r)
        keep = sorted(rows[t] for rows in by_prompt.values()
                      for t in rank_top([live[r].score for r in rows], params.keep(len(rows))))
        state = state.select(keep)
        state.compact()
        live, seeds = [live[r] for r in keep], [seeds[r] for r in keep]
    results = []
    for i, p in enumerate(prompts):
        cands = sorted((c for c in finished if c.prompt == i), key=lambda c: c.subtree)
        results.append(SearchResult(p, cands, argmax([c.score for c in cands])))
    return results
