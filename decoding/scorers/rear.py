"""REAR (the REAR paper, Eq. 9-10 with gamma = 1): the scorer, its two sums, and the post-hoc lambda sweep.

REAR's score of a (partial) response is a linear mix of two sums of the policy's log-probs of the
response tokens (plus the stop token when the response is complete: it is the episode's last
action), named ``A`` and ``B`` everywhere in this package::

    A = sum_t log pi(a_t | q, a_<t)          question-only context
    B = sum_t log pi(a_t | q + p, a_<t)      full context (preference included)
    S(lambda) = (1 - lambda) * A + lambda * B            (rear_combine: the one place of this arithmetic)

:class:`RearScorer` computes ``S`` for a search. ``B`` reuses the sampling log-probs carried by the
``Partial``; ``A`` comes from the policy backend's ``logprob_cache``: on HF an incremental forward
over a second, ``PrefixCache``-managed cache; on vLLM the engine's prompt log-probs over
[context + response], the shared prompt read from its prefix cache. ``lambda = 1`` is the policy's
own log-likelihood. ``length_normalize=True`` (an option, not the paper's default) divides S by
the number of summed tokens; the score is then no longer a sum of step increments, so the scorer
reports ``additive = False`` and aggregates by ``last``.

The sweep: Best-of-N samples its candidates from the full context with seeds that do not depend
on the scorer, so the candidates are the same for every lambda and only the selection changes.
:func:`best_of_n_terms` samples the N candidates once (through ``best_of_n`` itself) and keeps
``A``, ``B`` and the number of summed tokens of each; :func:`select` then picks the candidate for
any lambda, with or without length normalisation, exactly as
``best_of_n(policy, RearScorer(policy, lam, length_normalize=...), ...)`` would: the same float32
arithmetic, the same tie rule (lowest index). ``lam = inf`` is accepted by :func:`rear_scores` as
the limit ``B - A`` (the ordering of ``S / lambda`` as lambda grows); ``RearScorer`` itself takes
finite lambdas only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from decoding.backend import PolicyBackend
from decoding.policy import SamplingParams
from decoding.scorers.base import check_lengths
from decoding.types import Meter, Partial, Prompt

if TYPE_CHECKING:
    from decoding.search.core import Candidate


def rear_combine(A: torch.Tensor, B: torch.Tensor, lam: float, n_terms: Sequence[int] | None = None) -> torch.Tensor:
    """REAR(lambda) from its two sums: ``(1 - lam) * A + lam * B``, divided by each response's number of
    summed tokens when ``n_terms`` is given (length normalisation). The one place this arithmetic lives,
    so the post-hoc lambda sweep (:func:`select`) picks exactly what the scorer would."""
    s = (1.0 - lam) * A + lam * B
    if n_terms is not None:
        s = s / torch.tensor([max(1, int(k)) for k in n_terms], dtype=s.dtype)
    return s


class RearScorer:
    """REAR(lambda) on the policy itself. See the module docstring.

    Args:
        policy: the sampling policy (its model gives both log-likelihoods).
        lam: lambda >= 0; 1 = the policy's own log-likelihood; the paper's best is about 20.
        reuse_generation_logprobs: take the full-context term from ``Partial.logprobs`` when
            present (they come from the same model and context while sampling).
        cache: keep the teacher-forced cache across calls (``False``: recompute; for checks).
        length_normalize: score S / (number of summed tokens) instead of S (default: the paper's sum).
    """

    additive = True
    default_aggregation = "sum"

    def __init__(
        self,
        policy: PolicyBackend,
        lam: float = 20.0,
        reuse_generation_logprobs: bool = True,
        cache: bool = True,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        meter: Meter | None = None,
        length_normalize: bool = False,
    ) -> None:
        if lam < 0:
            raise ValueError(f"REAR lambda must be >= 0, got {lam}")
        self.policy = policy
        self.lam = float(lam)
        self.length_normalize = bool(length_normalize)
        if self.length_normalize:  # S / len is not a sum of per-step increments
            self.additive = False
            self.default_aggregation = "last"
        self.reuse = reuse_generation_logprobs
        self.meter = meter or policy.meter
        # The backend computes the teacher-forced sums: HF through a second KV cache kept across
        # calls, vLLM through the engine's prompt log-probs with its prefix cache.
        self.cache = policy.logprob_cache(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                                          enabled=cache, meter=self.meter)
        self._encoded: dict[tuple[str, str], list[int]] = {}

    def _prompt_ids(self, prompt: Prompt, which: str) -> list[int]:
        key = (prompt.id, which)
        if key not in self._encoded:
            if which == "question":
                if prompt.question_messages is None:
                    raise ValueError(
                        f"record {prompt.id!r}: REAR needs a preference (a question-only context); "
                        "give the record a preference field or mark the preference turn"
                    )
                self._encoded[key] = self.policy.encode(prompt.question_messages)
            else:
                self._encoded[key] = self.policy.encode(prompt.messages)
        return self._encoded[key]

    def terms(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)``: the question-only and full-context sums of each response's log-probs (0 where lambda skips it)."""
        check_lengths(prompts, partials)
        n = len(partials)
        A, B = torch.zeros(n), torch.zeros(n)
        seqs, starts, slots = [], [], []
        groups = [p.index for p in prompts]
        for j, (p, r) in enumerate(zip(prompts, partials)):
            response = list(r.token_ids) + list(r.end_ids)
            if self.lam != 1.0:
                ids = self._prompt_ids(p, "question")
                seqs.append(ids + response)
                starts.append(len(ids))
                slots.append(("A", j))
            if self.lam != 0.0:
                if self.reuse and r.logprobs is not None and len(r.logprobs) == len(response):
                    B[j] = float(sum(r.logprobs))
                else:
                    ids = self._prompt_ids(p, "full")
                    seqs.append(ids + response)
                    starts.append(len(ids))
                    slots.append(("B", j))
        if seqs:
            values = self.cache.values(seqs, [groups[j] for _, j in slots], starts)
            for (which, j), v, s in zip(slots, values, starts):
                (A if which == "A" else B)[j] = v[s:].sum()
        return A, B

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        if not partials:
            return torch.empty(0)
        self.meter.add("scorer_calls", sorted({p.index for p in prompts}))
        A, B = self.terms(prompts, partials)
        n_terms = [len(r.token_ids) + len(r.end_ids) for r in partials] if self.length_normalize else None
        return rear_combine(A, B, self.lam, n_terms)


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
    scores = rear_scores(result.A, result.B, result.n_terms, lam, length_normalize).tolist()
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: lowest index, as the search's argmax


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
    policy: PolicyBackend,
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
    from decoding.search.best_of_n import best_of_n  # here: the search package imports the scorers

    results = best_of_n(policy, recorder, prompts, n, params, max_new_tokens, seed)
    out = []
    for i, r in enumerate(results):
        rows = slice(i * n, (i + 1) * n)
        out.append(TermsResult(r.prompt, r.candidates, recorder.A[rows].clone(), recorder.B[rows].clone(),
                               recorder.n_terms[rows]))
    return out
