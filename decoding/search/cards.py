"""CARDS (Li et al., 2024), the SP-PRM paper's Algorithm 4: segment-level rejection sampling.

Per prompt, repeat until EOS or the response budget:

1. **Segment**: sample tokens from the policy while the next-token entropy ``H`` (nats, of the
   model's own distribution) stays below ``tau_u`` (paper: 7.0); a segment has at least one token
   (so a high-entropy start cannot stall) and at most ``max_segment_tokens``; EOS ends it.
2. **Score** prefix + segment: one scorer call for the candidate segments of every prompt.
3. **Accept or reject** against a threshold that rises with the response length ``t``::

       threshold(t) = r_start + (r_end - r_start) * min(1, t / max_new_tokens)

   ``hard``: accept iff ``r >= threshold``; ``soft``: accept with probability
   ``min(1, exp((r - threshold) / beta))``. After ``max_rejections`` rejections of the same
   segment the best-scored candidate seen for it is accepted (bounded cost).

The threshold is in the scorer's raw units; :func:`calibrate_thresholds` reads ``r_start`` and
``r_end`` off the scorer's score distribution on a few sampled responses (a quantile of the
scores of short prefixes and of whole responses).

The entropy threshold ``tau_u`` is in nats of the policy's own distribution: the paper's 7.0 suits
Llama-sized vocabularies at temperature 1, but a small instruct model's next-token entropy may
never reach it (one segment per response: CARDS degenerates into whole-response rejection
sampling). ``tau_u_quantile = q`` calibrates it instead (:func:`calibrate_tau_u`): the ``q``
quantile of the entropies of the distributions every token of a few sampled responses was drawn
from, so about ``1 - q`` of the tokens open a new segment.

Fast path: nothing is re-prefilled. A rejected segment is rolled back in place
(``KVState.rollback`` turns its columns into holes; the row's saved next-token distribution is
restored), so the retry continues from the cached prefix; a decoder scorer's prefix cache crops to
the common prefix the same way. The published CARDS code turns the KV cache off instead. Only the
fallback to an *earlier* best candidate re-feeds its segment (``Policy.extend``, counted as prefill).

Seeds: attempt ``a`` of segment ``s`` of a prompt samples with ``candidate_seed(seed, id, 0, s, a)``;
its soft-acceptance uniform uses ``candidate_seed(seed, id, 1, s, a)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decoding.backend import TokenLevelBackend, require_token_level
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.search.core import Candidate, SearchResult, prefill
from decoding.types import Partial, Prompt, candidate_seed

ACCEPTANCE = ("hard", "soft")
NEEDS = "CARDS cuts segments on the next-token entropy, so it needs the next-token distribution at every token"


@dataclass
class CardsParams:
    """CARDS: entropy-cut segments accepted against a rising reward threshold (see the module docstring)."""

    tau_u: float = field(default=7.0, metadata={
        "help": "A segment ends when the next-token entropy (nats) reaches this (paper: 7.0)."})
    r_start: float | None = field(default=None, metadata={
        "help": "Reward threshold at length 0 (the scorer's units); null: calibrate on calibration prompts "
                "(set both for resumable runs)."})
    r_end: float | None = field(default=None, metadata={
        "help": "Threshold at max_new_tokens (rises linearly); null: calibrate."})
    acceptance: str = field(default="hard", metadata={"help": "hard | soft (accept with min(1, exp((r - thr) / beta)))."})
    beta: float = field(default=1.0, metadata={"help": "Soft-acceptance temperature."})
    max_rejections: int = field(default=4, metadata={"help": "Rejections before the best candidate is kept."})
    max_segment_tokens: int = field(default=64, metadata={"help": "Token cap of one segment."})
    calibration_prompts: int = field(default=4, metadata={
        "help": "Prompts sampled (4 responses each) to calibrate null thresholds / tau_u_quantile: the first of the "
                "run's pending prompts, or of calibration_data."})
    calibration_quantile: float = field(default=0.5, metadata={
        "help": "Quantile of the scorer's scores used as the calibrated r_start / r_end."})
    tau_u_quantile: float | None = field(default=None, metadata={
        "help": "Set tau_u to this quantile of the policy's own next-token entropies on the calibration prompts "
                "(e.g. 0.9: ~10% of tokens open a segment); null: use tau_u as given."})
    calibration_data: str | None = field(default=None, metadata={
        "help": "A prompt file (read with the run's data settings) to calibrate on; null: the prompts being decoded."})

    def __post_init__(self) -> None:
        if self.tau_u <= 0:
            raise ValueError(f"search.cards.tau_u must be > 0 (nats), got {self.tau_u}")
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"search.cards.acceptance must be one of {ACCEPTANCE}, got {self.acceptance!r}")
        if self.beta <= 0:
            raise ValueError(f"search.cards.beta must be > 0, got {self.beta}")
        if self.max_rejections < 0 or self.max_segment_tokens < 1:
            raise ValueError("search.cards.max_rejections must be >= 0 and search.cards.max_segment_tokens >= 1")
        if self.calibration_prompts < 1 or not 0 <= self.calibration_quantile <= 1:
            raise ValueError("search.cards.calibration_prompts must be >= 1 and calibration_quantile in [0, 1]")
        if self.tau_u_quantile is not None and not 0 < self.tau_u_quantile < 1:
            raise ValueError(f"search.cards.tau_u_quantile must be in (0, 1) or null, got {self.tau_u_quantile}")

    @property
    def calibrated(self) -> bool:
        """Every threshold is a number (nothing left to calibrate)."""
        return self.r_start is not None and self.r_end is not None and self.tau_u_quantile is None

    def threshold(self, length: int, max_new_tokens: int) -> float:
        if self.r_start is None or self.r_end is None:
            raise ValueError("cards: r_start and r_end are not set; calibrate them first (decoding.search.cards.prepare)")
        return self.r_start + (self.r_end - self.r_start) * min(1.0, length / max_new_tokens)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's distribution given as log-probs ``[rows, V]``."""
    p = logprobs.exp()
    return -(p * logprobs.masked_fill(p == 0, 0.0)).sum(-1)


def _segment(sample) -> tuple[list[int], list[float], bool]:
    """A ``Sample`` as CARDS holds a segment: the stop token (if any) kept at the end, flagged ``eos``."""
    return sample.token_ids + sample.end_ids, sample.logprobs + sample.end_logprobs, sample.eos


def _partial(policy: TokenLevelBackend, c: Candidate, toks: list[int], lps: list[float], eos: bool) -> Partial:
    body = c.token_ids + (toks[:-1] if eos else toks)
    return Partial(policy.decode(body), body, eos, toks[-1:] if eos else [], c.logprobs + lps)


def cards(
    policy: TokenLevelBackend,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    cp: CardsParams,
    params: SamplingParams,
    max_new_tokens: int,
    seed: int = 0,
    aggregation: str | None = None,
) -> list[SearchResult]:
    """CARDS over a batch of prompts; one response per prompt. See the module docstring."""
    require_token_level(policy, "cards", NEEDS)
    if max_new_tokens < 1:
        raise ValueError(f"cards: max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    cp.threshold(0, max_new_tokens)  # refuses uncalibrated thresholds before any work
    aggregation = aggregation or scorer.default_aggregation
    tau_u = cp.tau_u

    def high_entropy(next_logprobs: torch.Tensor) -> torch.Tensor:
        return entropy(next_logprobs) >= tau_u  # the next token opens a new segment

    state = prefill(policy, prompts)
    cands = [Candidate(prompt=i) for i in range(len(prompts))]
    live = list(range(len(prompts)))  # state row r holds cands[live[r]]
    segment = [0] * len(prompts)
    attempt = [0] * len(prompts)
    best: dict[int, tuple[float, list[int], list[float], bool]] = {}  # best rejected candidate of the segment
    while live:
        base_len = state.lengths
        saved = state.next_logprobs.clone()
        budgets = [min(cp.max_segment_tokens, max_new_tokens - len(cands[ci].token_ids)) for ci in live]
        seeds = [candidate_seed(seed, prompts[ci].id, 0, segment[ci], attempt[ci]) for ci in live]
        segs = [_segment(s) for s in policy.sample(state, seeds, params, budgets, stop_before=high_entropy)]
        parts = [_partial(policy, cands[ci], *segs[r]) for r, ci in enumerate(live)]
        rewards = scorer.score([prompts[ci] for ci in live], parts).tolist()
        keep = list(state.lengths)
        refeed: list[list[int]] = [[] for _ in live]
        done: list[bool] = [False] * len(live)
        for r, ci in enumerate(live):
            c, (toks, lps, eos), rew = cands[ci], segs[r], rewards[r]
            length = len(c.token_ids) + len(toks) - (1 if eos else 0)
            thr = cp.threshold(length, max_new_tokens)
            if cp.acceptance == "hard":
                ok = rew >= thr
            else:
                u = policy.row_uniforms([candidate_seed(seed, prompts[ci].id, 1, segment[ci], attempt[ci])], 1)
                # exp of a non-positive number: min(1, exp(x)) without overflow for large margins.
                ok = float(u[0, 0]) < math.exp(min(0.0, (rew - thr) / cp.beta))
            if not ok and attempt[ci] < cp.max_rejections:
                if ci not in best or rew > best[ci][0]:
                    best[ci] = (rew, toks, lps, eos)
                attempt[ci] += 1
                keep[r] = base_len[r]  # reject: roll the segment back, retry from the cached prefix
                continue
            if not ok and ci in best and best[ci][0] > rew:
                # Out of retries: the best candidate seen was an earlier one; re-feed its tokens.
                rew, toks, lps, eos = best[ci]
                keep[r] = base_len[r]
                refeed[r] = toks[:-1] if eos else toks
            best.pop(ci, None)
            attempt[ci] = 0
            segment[ci] += 1
            if eos:
                c.end_ids, c.end_logprobs, c.eos = toks[-1:], lps[-1:], True
                c.token_ids += toks[:-1]
                c.logprobs += lps[:-1]
            else:
                c.token_ids += toks
                c.logprobs += lps
            c.step_ends.append(len(c.token_ids))
            c.record(rew, scorer.additive, aggregation)
            done[r] = c.eos or len(c.token_ids) >= max_new_tokens
        state.rollback(keep)
        rolled = [r for r in range(len(live)) if keep[r] == base_len[r]]
        if rolled:
            nl = state.next_logprobs.clone()
            idx = torch.as_tensor(rolled, device=nl.device)
            nl[idx] = saved[idx]
            state.next_logprobs = nl
        if any(refeed):
            policy.extend(state, refeed)
        still = [r for r in range(len(live)) if not done[r]]
        if len(still) < len(live):
            state = state.select(still)
            live = [live[r] for r in still]
        state.compact()
    return [SearchResult(p, [cands[i]], 0) for i, p in enumerate(prompts)]


def calibrate_thresholds(
    policy: TokenLevelBackend,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    n: int = 4,
    max_new_tokens: int = 64,
    quantile: float = 0.5,
    start_fraction: float = 0.125,
    seed: int = 0,
) -> tuple[float, float]:
    """``(r_start, r_end)`` from the scorer's own score distribution on sampled responses.

    Samples ``n`` responses per prompt (Best-of-N's sampler and seeds), scores the first
    ``start_fraction`` of each response's tokens (at least one) and the whole response, and returns
    the ``quantile`` of each set: with 0.5 about half the early segments pass at first try.
    """
    from decoding.search.best_of_n import best_of_n

    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"calibrate_thresholds: quantile must be in [0, 1], got {quantile}")
    res = best_of_n(policy, scorer, prompts, n, SamplingParams(), max_new_tokens, seed=seed, aggregation="last")
    owners, parts, ends = [], [], []
    for r in res:
        for c in r.candidates:
            ends.append(c.score)
            k = max(1, int(len(c.token_ids) * start_fraction))
            if c.token_ids:
                owners.append(r.prompt)
                parts.append(Partial(policy.decode(c.token_ids[:k]), c.token_ids[:k], False, [], c.logprobs[:k]))
    starts = scorer.score(owners, parts) if parts else torch.tensor(ends)
    return (float(torch.quantile(starts.double(), quantile)), float(torch.quantile(torch.tensor(ends).double(), quantile)))


def sampled_entropies(
    policy: TokenLevelBackend, prompts: Sequence[Prompt], n: int, params: SamplingParams, max_new_tokens: int,
    seed: int = 0,
) -> list[float]:
    """The entropy (nats) of the distribution every token of ``n`` sampled responses per prompt was drawn from.

    Best-of-N's seeds (``candidate_seed(seed, id, 0, 0, j)``); the entropies are read off the policy's
    own next-token distributions while sampling (a ``stop_before`` condition that never stops).
    """
    state = prefill(policy, prompts)
    state = state.select([i for i in range(len(prompts)) for _ in range(n)])
    seeds = [candidate_seed(seed, prompts[i].id, 0, 0, j) for i in range(len(prompts)) for j in range(n)]
    seen = [entropy(state.next_logprobs).tolist()]  # seen[t][row]: before draw t

    def record(next_logprobs: torch.Tensor) -> torch.Tensor:
        seen.append(entropy(next_logprobs).tolist())
        return torch.zeros(next_logprobs.shape[0], dtype=torch.bool)

    samples = policy.sample(state, seeds, params, max_new_tokens, feed_final=False, stop_before=record)
    out: list[float] = []
    for row, s in enumerate(samples):
        out += [seen[t][row] for t in range(len(s.token_ids) + len(s.end_ids))]
    return out


def calibrate_tau_u(
    policy: TokenLevelBackend, prompts: Sequence[Prompt], quantile: float, n: int = 4,
    params: SamplingParams | None = None, max_new_tokens: int = 64, seed: int = 0,
) -> float:
    """``tau_u`` = the ``quantile`` of :func:`sampled_entropies` (about ``1 - quantile`` of tokens open a segment)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"calibrate_tau_u: quantile must be in (0, 1), got {quantile}")
    ent = sampled_entropies(policy, prompts, n, params or SamplingParams(), max_new_tokens, seed)
    if not ent:
        raise ValueError("calibrate_tau_u: the calibration samples have no tokens")
    return max(float(torch.quantile(torch.tensor(ent, dtype=torch.float64), quantile)), 1e-6)


def prepare(policy: TokenLevelBackend, scorer: Scorer, prompts: Sequence[Prompt], cp: CardsParams,
            sampling: SamplingParams, max_new_tokens: int, seed: int = 0) -> CardsParams:
    """Fill the thresholds left to calibration from the first ``calibration_prompts`` of ``prompts``.

    The calibration's compute is charged to negative accounting groups, never to a record.
    Returns ``cp`` itself when there is nothing to calibrate.
    """
    if cp.calibrated or not prompts:
        return cp
    require_token_level(policy, "cards", NEEDS)
    few = [dataclasses.replace(p, index=-1 - i) for i, p in enumerate(prompts[: cp.calibration_prompts])]
    tau_u = cp.tau_u
    if cp.tau_u_quantile is not None:
        tau_u = calibrate_tau_u(policy, few, cp.tau_u_quantile, 4, sampling, max_new_tokens, seed)
    r_start, r_end = cp.r_start, cp.r_end
    if r_start is None or r_end is None:
        cal = calibrate_thresholds(policy, scorer, few, n=4, max_new_tokens=max_new_tokens,
                                   quantile=cp.calibration_quantile, seed=seed)
        r_start = cal[0] if r_start is None else r_start
        r_end = cal[1] if r_end is None else r_end
    return dataclasses.replace(cp, tau_u=tau_u, r_start=r_start, r_end=r_end, tau_u_quantile=None)


def run(policy: TokenLevelBackend, scorer: Scorer, prompts: Sequence[Prompt], params: CardsParams,
        sampling: SamplingParams, max_new_tokens: int, seed: int = 0,
        aggregation: str | None = None) -> list[SearchResult]:
    """The registry entry (thresholds calibrated by ``prepare`` beforehand, or set)."""
    return cards(policy, scorer, prompts, params, sampling, max_new_tokens, seed, aggregation)
