"""Best-of-N: sample N responses per prompt, score them all, return the best with every candidate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from decoding.backend import PolicyBackend
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.search.core import Candidate, SearchResult, argmax, expand, prefill, score
from decoding.types import Prompt


@dataclass
class BestOfNParams:
    """Best-of-N: N independent samples per prompt, the best by the scorer."""

    n: int = field(default=8, metadata={"help": "Completions per prompt (N)."})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"search.best_of_n.n must be >= 1, got {self.n}")


def best_of_n(
    policy: PolicyBackend,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    n: int,
    params: SamplingParams,
    max_new_tokens: int,
    seed: int = 0,
    aggregation: str | None = None,
) -> list[SearchResult]:
    """Best-of-N over a batch of prompts: one prefill, N forks, one batched decode, one scorer call.

    Candidate ``j`` of a prompt uses ``candidate_seed(seed, prompt.id, 0, 0, j)``.
    A candidate cut by ``max_new_tokens`` is incomplete (``Candidate.complete`` is False).
    """
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"best_of_n: max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    aggregation = aggregation or scorer.default_aggregation
    state = prefill(policy, prompts)
    parents = [Candidate(prompt=i) for i in range(len(prompts))]
    _, children = expand(policy, state, parents, prompts, n, params, seed, 0, [max_new_tokens] * len(parents),
                         stop_at_delimiter=False, feed_final=False)
    score(scorer, policy, prompts, children, aggregation)
    results = []
    for i, p in enumerate(prompts):
        cands = children[i * n: (i + 1) * n]
        results.append(SearchResult(p, cands, argmax([c.score for c in cands])))
    return results


def run(policy: PolicyBackend, scorer: Scorer, prompts: Sequence[Prompt], params: BestOfNParams,
        sampling: SamplingParams, max_new_tokens: int, seed: int = 0,
        aggregation: str | None = None) -> list[SearchResult]:
    """The registry entry (``decoding.search.SEARCHES``): every search's one signature."""
    return best_of_n(policy, scorer, prompts, params.n, sampling, max_new_tokens, seed, aggregation)
