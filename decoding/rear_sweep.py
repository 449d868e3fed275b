"""A REAR lambda sweep for Best-of-N at the cost of one run.

REAR's score of a response is a linear mix of two sums of log-probs of its tokens
(response tokens plus the stop token when it is complete)::

    A = sum_t log pi(a_t | q, a_<t)          question-only context
    B = sum_t log pi(a_t | q + p, a_<t)      full context (preference included)
    S(lambda) = (1 - lambda) * A + lambda * B

Best-of-N samples its candidates from the full context with seeds that do not
depend on the scorer, so the candidates are the same for every lambda and only
the selection changes. :func:`best_of_n_terms` samples the N candidates once
(through :func:`decoding.search.best_of_n.best_of_n` itself) and keeps ``A``, ``B`` and
the number of summed tokens of each; :func:`select` then picks the candidate for
any lambda, with or without length normalisation (``S / tokens``), exactly as
``best_of_n(policy, RearScorer(policy, lam, length_normalize=...), ...)`` would:
the same float32 arithmetic, the same tie rule (lowest index).

``lam = inf`` is accepted by :func:`rear_scores` as the limit ``B - A`` (the
ordering of ``S / lambda`` as lambda grows); ``RearScorer`` itself takes finite
lambdas only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from decoding.policy import Policy, SamplingParams
from decoding.scorers import RearScorer, rear_combine
from decoding.search.best_of_n import best_of_n
from decoding.search.core import Candidate, argmax
from decoding.types import Meter, Partial, Prompt


@dataclass
class TermsResult:
    """One prompt's N candidates with their REAR terms (``A``, ``B``: fp32 ``[n]``; ``n_terms``: summed tokens)."""

    prompt: Prompt
    candidates: list[Candidate]
    A: torch.Tensor
    B: torch.Tensor
    n_terms: list[int]


def rear_scores(
    A: torch.Tensor | Sequence[float],
    B: torch.Tensor | Sequence[float],
    n_terms: Sequence[int],
    lam: float,
    length_normalize: bool = False,
) -> torch.Tensor:
    """REAR scores from the two sums, with ``RearScorer.score``'s arithmetic (fp32).

    ``lam = 0`` and ``lam = 1`` use ``A`` and ``B`` alone (as ``RearScorer`` does, which
    never computes the other term there), ``lam = inf`` gives ``B - A``.
    """
    A = torch.as_tensor(A, dtype=torch.float32)
    B = torch.as_tensor(B, dtype=torch.float32)
    if lam < 0 or math.isnan(lam):
        raise ValueError(f"REAR lambda must be >= 0, got {lam}")
    n = n_terms if length_normalize else None
    if math.isinf(lam):
        return rear_combine(torch.zeros_like(A), B - A, 1.0, n)  # the limit: S / lambda -> B - A
    # RearScorer.terms leaves the term lambda does not use at 0; do the same for identical float results.
    if lam == 0.0:
        B = torch.zeros_like(B)
    elif lam == 1.0:
        A = torch.zeros_like(A)
    return rear_combine(A, B, lam, n)


def select(result: TermsResult, lam: float, length_normalize: bool = False) -> int:
    """Index of the candidate Best-of-N with REAR(``lam``) would return (ties: lowest index)."""
    return argmax(rear_scores(result.A, result.B, result.n_terms, lam, length_normalize).tolist())


class _TermsRecorder:
    """A scorer for ``best_of_n`` that computes both REAR sums of every candidate and keeps them."""

    additive = True
    default_aggregation = "sum"

    def __init__(self, rear: RearScorer) -> None:
        self.rear = rear
        self.meter = rear.meter
        self.A = torch.empty(0)
        self.B = torch.empty(0)
        self.n_terms: list[int] = []

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        self.meter.add("scorer_calls", sorted({p.index for p in prompts}))
        self.A, self.B = self.rear.terms(prompts, partials)
        self.n_terms = [len(r.token_ids) + len(r.end_ids) for r in partials]
        return self.B


def best_of_n_terms(
    policy: Policy,
    prompts: Sequence[Prompt],
    n: int,
    params: SamplingParams,
    max_new_tokens: int,
    seed: int = 0,
    cache: bool = True,
    max_batch_tokens: int = 16384,
    max_batch_size: int = 64,
    meter: Meter | None = None,
) -> list[TermsResult]:
    """Sample N candidates per prompt (as ``best_of_n`` does) and compute REAR's ``A`` and ``B`` once for each.

    ``B`` reuses the sampling log-probs; ``A`` is one teacher-forced pass per candidate
    over the question-only context (cached per prompt). Every prompt needs a
    question-only context (a preference).
    """
    for p in prompts:
        if p.question_messages is None:
            raise ValueError(f"record {p.id!r}: the REAR sweep needs a preference (a question-only context)")
    # The lambda given here only decides that both terms are computed (any value other than 0 and 1).
    rear = RearScorer(policy, lam=0.5, cache=cache, max_batch_tokens=max_batch_tokens,
                      max_batch_size=max_batch_size, meter=meter or policy.meter)
    recorder = _TermsRecorder(rear)
    results = best_of_n(policy, recorder, prompts, n, params, max_new_tokens, seed)
    out = []
    for i, r in enumerate(results):
        rows = slice(i * n, (i + 1) * n)
        out.append(TermsResult(r.prompt, r.candidates, recorder.A[rows].clone(), recorder.B[rows].clone(),
                               recorder.n_terms[rows]))
    return out
