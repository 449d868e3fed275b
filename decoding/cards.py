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

Fast path: nothing is re-prefilled. A rejected segment is rolled back in place
(``KVState.rollback`` turns its columns into holes; the row's saved next-token distribution is
restored), so the retry continues from the cached prefix; a decoder scorer's prefix cache crops to
the common prefix the same way. The published CARDS code turns the KV cache off instead. Only the
fallback to an *earlier* best candidate re-feeds its segment (``Policy.extend``, counted as prefill).

Seeds: attempt ``a`` of segment ``s`` of a prompt samples with ``candidate_seed(seed, id, 0, s, a)``;
its soft-acceptance uniform uses ``candidate_seed(seed, id, 1, s, a)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from decoding.backend import require_token_level
from decoding.core import Candidate, SearchResult
from decoding.policy import Policy, PolicyState, SamplingParams, choose_tokens
from decoding.scorers import Scorer
from decoding.types import Partial, Prompt, aggregate, candidate_seed

ACCEPTANCE = ("hard", "soft")


@dataclass
class CardsParams:
    """CARDS knobs (see the module docstring)."""

    tau_u: float = 7.0
    r_start: float = 0.0
    r_end: float = 0.0
    acceptance: str = "hard"
    beta: float = 1.0
    max_rejections: int = 4
    max_segment_tokens: int = 64

    def __post_init__(self) -> None:
        if self.tau_u <= 0:
            raise ValueError(f"cards: tau_u must be > 0 (nats), got {self.tau_u}")
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"cards: acceptance must be one of {ACCEPTANCE}, got {self.acceptance!r}")
        if self.beta <= 0:
            raise ValueError(f"cards: beta must be > 0, got {self.beta}")
        if self.max_rejections < 0 or self.max_segment_tokens < 1:
            raise ValueError("cards: max_rejections must be >= 0 and max_segment_tokens >= 1")

    def threshold(self, length: int, max_new_tokens: int) -> float:
        return self.r_start + (self.r_end - self.r_start) * min(1.0, length / max_new_tokens)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's distribution given as log-probs ``[rows, V]``."""
    p = logprobs.exp()
    return -(p * logprobs.masked_fill(p == 0, 0.0)).sum(-1)


@torch.no_grad()
def sample_segments(
    policy: Policy, state: PolicyState, seeds: Sequence[int], params: SamplingParams, budgets: Sequence[int],
    tau_u: float,
) -> list[tuple[list[int], list[float], bool]]:
    """Sample one segment per row (state updated in place): ``(tokens, logprobs, eos)``.

    Like ``Policy.sample`` (same inverse-CDF draws from per-row seeded uniforms), except that a row
    stops *before* a token whose distribution has entropy >= ``tau_u`` (once it has one token),
    and an EOS token is returned in ``tokens`` with ``eos`` set (it is not fed).
    """
    rows = len(state)
    horizon = max(budgets, default=0)
    out: list[tuple[list[int], list[float], bool]] = [([], [], False) for _ in range(rows)]
    if rows == 0 or horizon <= 0:
        return out
    device = state.next_logprobs.device
    uniforms = torch.stack([torch.rand(horizon, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                            for s in seeds]).to(device)
    active = [b > 0 for b in budgets]
    stops = set(policy.stop_ids)
    for t in range(horizon):
        if t:
            ent = entropy(state.next_logprobs).tolist()
            for i in range(rows):
                if active[i] and ent[i] >= tau_u:
                    active[i] = False  # high uncertainty: the next token opens a new segment
        act = [i for i in range(rows) if active[i]]
        if not act:
            break
        tok = choose_tokens(state.next_logprobs, uniforms[:, t], params)
        lp = state.next_logprobs.gather(1, tok[:, None]).squeeze(1)
        tok_l, lp_l = tok.tolist(), lp.tolist()
        feed: list[list[int]] = [[] for _ in range(rows)]
        for i in act:
            toks, lps, _ = out[i]
            toks.append(tok_l[i])
            lps.append(lp_l[i])
            if tok_l[i] in stops:
                out[i] = (toks, lps, True)
                active[i] = False
                continue
            feed[i] = [tok_l[i]]
            if len(toks) >= budgets[i]:
                active[i] = False
        policy.meter.add("policy_tokens_generated", [state.groups[i] for i in act])
        fed = [i for i in range(rows) if feed[i]]
        if fed:
            hidden, _ = state.forward(policy.backbone, feed, policy.pad_id)
            fed_t = torch.as_tensor(fed, device=hidden.device)
            nl = state.next_logprobs.clone()
            nl[fed_t] = policy.logits(hidden[fed_t, 0]).log_softmax(-1)
            state.next_logprobs = nl
    return out


def _partial(policy: Policy, c: Candidate, toks: list[int], lps: list[float], eos: bool) -> Partial:
    body = c.token_ids + (toks[:-1] if eos else toks)
    return Partial(policy.decode(body), body, eos, toks[-1:] if eos else [], c.logprobs + lps)


def cards(
    policy: Policy,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    cp: CardsParams,
    params: SamplingParams,
    max_new_tokens: int,
    seed: int = 0,
    aggregation: str | None = None,
) -> list[SearchResult]:
    """CARDS over a batch of prompts; one response per prompt. See the module docstring."""
    require_token_level(policy, "cards")
    if max_new_tokens < 1:
        raise ValueError(f"cards: max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    aggregation = aggregation or scorer.default_aggregation
    state = policy.prefill([policy.encode(p.messages) for p in prompts], [p.index for p in prompts])
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
        segs = sample_segments(policy, state, seeds, params, budgets, cp.tau_u)
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
                g = torch.Generator().manual_seed(candidate_seed(seed, prompts[ci].id, 1, segment[ci], attempt[ci]))
                # exp of a non-positive number: min(1, exp(x)) without overflow for large margins.
                ok = float(torch.rand(1, generator=g, dtype=torch.float64)) < math.exp(min(0.0, (rew - thr) / cp.beta))
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
            previous = c.prefix_scores[-1] if (scorer.additive and c.prefix_scores) else 0.0
            c.prefix_scores.append(rew)
            c.step_scores.append(rew - previous if scorer.additive else rew)
            c.score = aggregate(c.step_scores, aggregation)
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
    policy: Policy,
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
    from decoding.best_of_n import best_of_n

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
