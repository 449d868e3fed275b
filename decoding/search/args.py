"""ARGS (Khanov et al., 2024), the SP-PRM paper's Algorithm 2: reward-guided token-level decoding.

At every token, for every live prompt:

1. take the policy's top-``k`` next tokens ``v`` (from the cached next-token distribution);
2. score the ``k`` extensions ``[x, y, v]`` with the scorer -- **one** scorer call for all
   ``k`` candidates of all prompts of the batch;
3. ``score(v) = log pi(v | x, y) + w * r([x, y, v])``; greedy mode takes the argmax (ties: the
   more likely token), sampling mode draws from ``softmax(score / temperature)`` over the ``k``.

Why log-probs and not raw logits: per row they differ by one constant (the log-partition), so
the argmax and the softmax over the ``k`` candidates are identical; log-probs are what the
policy state already holds, and what REAR-style scorers reuse.

The scale of ``w`` (``w_units``): ``raw`` adds ``w * r`` in the scorer's own units (the paper);
``spread`` adds ``w * r / std_k(r)``, ``std_k`` the population standard deviation of the guide's
rewards over the ``k`` candidates of that step and row (``w`` then reads "log-prob nats per reward
standard deviation", comparable across guides whose raw scales differ by orders of magnitude;
a step whose ``k`` rewards are all equal adds nothing). The policy-side term is unchanged.

Fast path: the policy is prefilled once and each chosen token is fed once (one batched forward
per token over all live prompts). A decoder scorer (``RewardModelScorer`` on a causal RM, REAR,
GenRM) goes through its ``PrefixCache``: the ``k`` candidates share the previous step's chosen
prefix, which is already cached, so a step costs about ``k`` new tokens through the scorer
instead of ``k * (prompt + response)`` tokens. An encoder RM has no prefix cache (bidirectional
attention: every position changes when a token is appended), so each candidate is re-encoded in
full -- correct, but the scorer cost grows with the response; a warning says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decoding.backend import TokenLevelBackend, require_token_level
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.search.core import Candidate, SearchResult, prefill
from decoding.types import Partial, Prompt, candidate_seed

ARGS_MODES = ("greedy", "sample")
W_UNITS = ("raw", "spread")
NEEDS = "ARGS scores the top-k next tokens, so it needs the next-token distribution at every token"


@dataclass
class ArgsParams:
    """ARGS: at every token, the top-k next tokens by log pi + w * reward."""

    k: int = field(default=30, metadata={"help": "Top-k next tokens scored per step (paper: 30)."})
    w: float = field(default=1.5, metadata={"help": "Reward weight w in log pi + w * r (paper: 1.5)."})
    mode: str = field(default="greedy", metadata={"help": f"One of {ARGS_MODES}; sample uses sampling.temperature."})
    w_units: str = field(default="raw", metadata={
        "help": "raw: w multiplies the guide's raw reward (the paper) | spread: w is in units of the guide's reward "
                "spread, w * r / std of the k candidates' rewards at that step (comparable across guides)."})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"search.args.k must be >= 1, got {self.k}")
        if self.mode not in ARGS_MODES:
            raise ValueError(f"search.args.mode must be one of {ARGS_MODES}, got {self.mode!r}")
        if self.w_units not in W_UNITS:
            raise ValueError(f"search.args.w_units must be one of {W_UNITS}, got {self.w_units!r}")


def scorer_cache_note(scorer: Scorer) -> str | None:
    """A sentence naming the cache a scorer cannot use for partial responses, or ``None`` when it has one."""
    if hasattr(scorer, "prefix_cache") and getattr(scorer, "prefix_cache", None) is None:
        why = "an encoder reward model" if not getattr(scorer, "causal", True) else "a scorer built with cache=False"
        return (f"{type(scorer).__name__} is {why}: no prefix KV cache for the scorer, every candidate is "
                "re-scored from its first token (the policy's cache is still used)")
    return None


def check_vocab_k(policy: TokenLevelBackend, k: int, name: str = "k") -> None:
    """Reject a top-k that the policy's vocabulary cannot supply."""
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > policy.vocab_size:
        raise ValueError(f"{name}={k} is larger than the policy's vocabulary ({policy.vocab_size} tokens)")


def extension_partial(policy: TokenLevelBackend, cand: Candidate, token: int, token_lp: float) -> Partial:
    """The candidate ``cand + [token]`` as scorers read it (a stop token completes the response)."""
    if token in policy.stop_ids:
        return Partial(policy.decode(cand.token_ids), list(cand.token_ids), True, [token],
                       cand.logprobs + [token_lp])
    ids = cand.token_ids + [token]
    return Partial(policy.decode(ids), ids, False, [], cand.logprobs + [token_lp])


def pick(scores: torch.Tensor, mode: str, temperature: float, uniform: float) -> int:
    """Index chosen among one row's ``k`` ARGS scores (sorted by policy likelihood, most likely first).

    Greedy: argmax, ties to the lowest index (the more likely token). Sample: inverse-CDF draw
    from ``softmax(scores / temperature)`` with the given uniform in [0, 1).
    """
    if mode == "greedy":
        best = scores.max()
        return int((scores == best).nonzero()[0, 0])
    probs = (scores.double() / temperature).softmax(-1)
    cdf = probs.cumsum(-1)
    idx = int(torch.searchsorted(cdf, torch.tensor([uniform * float(cdf[-1])], dtype=cdf.dtype), right=True)[0])
    return min(idx, len(scores) - 1)


def reward_term(rewards: torch.Tensor, w: float, w_units: str = "raw") -> torch.Tensor:
    """``w * r`` (raw) or ``w * r / std_k(r)`` per row (spread; population std over the row's ``k``).

    A row whose rewards are all equal (std 0) gets 0: a constant per row changes neither the argmax
    nor the softmax over its candidates.
    """
    if w_units == "raw":
        return w * rewards
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    scaled = torch.where(std > 0, rewards / std.clamp_min(torch.finfo(rewards.dtype).tiny), torch.zeros_like(rewards))
    return w * scaled


def args_decode(
    policy: TokenLevelBackend,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    k: int = 30,
    w: float = 1.5,
    max_new_tokens: int = 128,
    mode: str = "greedy",
    temperature: float = 1.0,
    seed: int = 0,
    aggregation: str | None = None,
    w_units: str = "raw",
) -> list[SearchResult]:
    """ARGS over a batch of prompts; one response per prompt. See the module docstring.

    ``Candidate.prefix_scores[t]`` is the scorer's reward of the chosen prefix after token ``t``
    and ``Candidate.score`` aggregates them (``last`` for an RM: the reward of the final response).
    Sampling mode draws token ``t`` of a prompt with ``candidate_seed(seed, prompt.id, 0, t, 0)``.
    """
    require_token_level(policy, "args", NEEDS)
    check_vocab_k(policy, k, "args k")
    if max_new_tokens < 1:
        raise ValueError(f"args: max_new_tokens must be >= 1, got {max_new_tokens}")
    if mode not in ARGS_MODES:
        raise ValueError(f"args: mode must be one of {ARGS_MODES}, got {mode!r}")
    if w_units not in W_UNITS:
        raise ValueError(f"args: w_units must be one of {W_UNITS}, got {w_units!r}")
    if mode == "sample" and temperature <= 0:
        raise ValueError(f"args: sampling needs temperature > 0, got {temperature} (use mode greedy)")
    if not prompts:
        return []
    note = scorer_cache_note(scorer)
    if note:
        warnings.warn(f"args: {note}", stacklevel=2)
    aggregation = aggregation or scorer.default_aggregation
    state = prefill(policy, prompts)
    cands = [Candidate(prompt=i) for i in range(len(prompts))]
    live = list(range(len(prompts)))  # live[r] = the candidate held in state row r
    for t in range(max_new_tokens):
        if not live:
            break
        top = state.next_logprobs.topk(k, dim=-1)  # sorted: most likely first
        top_lp, top_ids = top.values.float().cpu(), top.indices.cpu()
        ids_l, lp_l = top_ids.tolist(), top_lp.tolist()
        partials, owners = [], []
        for r, ci in enumerate(live):
            for j in range(k):
                partials.append(extension_partial(policy, cands[ci], ids_l[r][j], lp_l[r][j]))
                owners.append(prompts[cands[ci].prompt])
        rewards = scorer.score(owners, partials).float().reshape(len(live), k)  # one call, every candidate
        combined = top_lp + reward_term(rewards, w, w_units)
        policy.meter.add("policy_tokens_generated", [prompts[cands[ci].prompt].index for ci in live])
        uniforms = None
        if mode == "sample":
            uniforms = policy.row_uniforms([candidate_seed(seed, prompts[cands[ci].prompt].id, 0, t, 0)
                                            for ci in live], 1)[:, 0].tolist()
        feed: list[int | None] = []
        keep: list[int] = []
        for r, ci in enumerate(live):
            c = cands[ci]
            j = pick(combined[r], mode, temperature, uniforms[r] if uniforms is not None else 0.0)
            token = ids_l[r][j]
            c.record(float(rewards[r, j]), scorer.additive, aggregation)
            if token in policy.stop_ids:
                c.end_ids, c.end_logprobs, c.eos = [token], [lp_l[r][j]], True
                feed.append(None)
                continue
            c.token_ids.append(token)
            c.logprobs.append(lp_l[r][j])
            c.step_ends.append(len(c.token_ids))
            if len(c.token_ids) >= max_new_tokens:
                feed.append(None)  # budget spent: the row is never continued, save its forward
                continue
            feed.append(token)
            keep.append(r)
        if len(keep) < len(live):  # drop finished rows so later forwards skip them
            fed_rows = [feed[r] for r in keep]
            state = state.select(keep)
            live = [live[r] for r in keep]
            state.compact()
            policy.step(state, fed_rows)
        else:
            policy.step(state, feed)
    return [SearchResult(p, [cands[i]], 0) for i, p in enumerate(prompts)]


def run(policy: TokenLevelBackend, scorer: Scorer, prompts: Sequence[Prompt], params: ArgsParams,
        sampling: SamplingParams, max_new_tokens: int, seed: int = 0,
        aggregation: str | None = None) -> list[SearchResult]:
    """The registry entry; sampling mode draws with ``sampling.temperature``."""
    return args_decode(policy, scorer, prompts, params.k, params.w, max_new_tokens, params.mode,
                       sampling.temperature, seed, aggregation, params.w_units)
