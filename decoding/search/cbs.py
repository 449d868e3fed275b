"""Chunk-level beam search, CBS (Zhou et al., 2024), the SP-PRM paper's Algorithm 3; TBS is CBS with L = 1.

Per prompt the search holds ``H``, at most ``W`` beams (partial responses). One round:

1. every incomplete beam forks into ``K`` successors and each samples a chunk of up to ``L``
   tokens (EOS ends it early; ``L = None`` samples to the end of the response budget) -- all
   successors of all beams of all prompts in one batched decode;
2. one scorer call over every successor of every prompt;
3. ``H`` <- the top ``W`` by score among the new successors and the beams of ``H`` that were
   already finished (they stay in the running, as in Algorithm 3, where the loop continues
   while *any* beam is incomplete). Ties go to the finished beams, then to the earlier successor.

A beam is finished when it ended with EOS or its response budget (``max_new_tokens``) is spent;
the search ends when all ``W`` beams of every prompt are finished, and returns ``H`` with the
best beam by score. ``H`` starts as ``W`` empty beams of the same prompt (Algorithm 3, line 1),
so the first round draws ``W * K`` independent samples.

Seeds: the successor ``j`` of the beam in slot ``b`` at round ``r`` uses
``candidate_seed(seed, prompt.id, b, r, j)``; with ``W = 1, L = None`` the only round draws
``(0, 0, j)``, Best-of-N's seeds, so CBS(W = 1, K = N, L = inf) *is* Best-of-N.

Fast path: the prompt is prefilled once; forking a beam into ``K`` successors and keeping the
winners are ``PolicyState.select`` (cache rows copied, never recomputed), so each round costs the
new chunk tokens through the policy; a decoder scorer scores them through its prefix cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from decoding.backend import PolicyBackend
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.search.core import Candidate, SearchResult, argmax, expand, prefill, rank_top, score
from decoding.types import Prompt


def check_beam_args(beam_width: int, successors: int, chunk_length: int | None, max_new_tokens: int) -> None:
    """Clear errors for a search that could not run (shared with ``sp-prm decode``'s config check)."""
    if beam_width < 0 or successors < 0 or beam_width * successors == 0:
        raise ValueError(f"beam search needs W * K >= 1 (beam width W={beam_width}, successors K={successors})")
    if chunk_length is not None and chunk_length < 1:
        raise ValueError(f"beam search chunk length L must be >= 1 (or null for whole responses), got {chunk_length}")
    if max_new_tokens < 1:
        raise ValueError(f"beam search: max_new_tokens must be >= 1, got {max_new_tokens}")


@dataclass
class CbsParams:
    """CBS / TBS: W beams, K successors each, chunks of L tokens (L = 1: TBS)."""

    beam_width: int = field(default=8, metadata={"help": "Beams kept per round W (paper: 8)."})
    successors: int = field(default=8, metadata={"help": "Successors per beam K (paper: 8)."})
    chunk_length: int | None = field(
        default=30, metadata={"help": "Chunk length L (paper: 30); 1 = TBS; null = whole responses."})

    def __post_init__(self) -> None:
        try:
            check_beam_args(self.beam_width, self.successors, self.chunk_length, 1)
        except ValueError as e:
            raise ValueError(f"search.cbs (beam_width, successors, chunk_length): {e}") from None


def chunk_beam_search(
    policy: PolicyBackend,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    beam_width: int,
    successors: int,
    chunk_length: int | None,
    params: SamplingParams,
    max_new_tokens: int,
    seed: int = 0,
    aggregation: str | None = None,
) -> list[SearchResult]:
    """CBS / TBS over a batch of prompts; returns each prompt's final beams (at most ``W``). See module docstring."""
    check_beam_args(beam_width, successors, chunk_length, max_new_tokens)
    if not prompts:
        return []
    aggregation = aggregation or scorer.default_aggregation
    W, K = beam_width, successors
    state = prefill(policy, prompts)
    rows = [i for i in range(len(prompts)) for _ in range(W)]
    state = state.select(rows)
    live = [Candidate(prompt=i, subtree=b) for i in range(len(prompts)) for b in range(W)]
    finished: dict[int, list[Candidate]] = {i: [] for i in range(len(prompts))}

    round_ = 0
    while live:
        remaining = [max_new_tokens - len(c.token_ids) for c in live]
        budgets = remaining if chunk_length is None else [min(chunk_length, r) for r in remaining]
        # Feed the chunk's last token only if some row may be continued next round.
        feed_final = any(b < r for b, r in zip(budgets, remaining))
        state, children = expand(policy, state, live, prompts, K, params, seed, round_, budgets,
                                 stop_at_delimiter=False, feed_final=feed_final)
        score(scorer, policy, prompts, children, aggregation)
        by_prompt: dict[int, list[int]] = {}
        for r, c in enumerate(children):
            by_prompt.setdefault(c.prompt, []).append(r)
        keep_rows: list[int] = []
        next_live: list[Candidate] = []
        for i, child_rows in by_prompt.items():
            # Finished beams of H first (they win ties), then this round's successors in order.
            pool = [(None, c) for c in finished[i]] + [(r, children[r]) for r in child_rows]
            top = rank_top([c.score for _, c in pool], W)
            finished[i] = []
            for slot, t in enumerate(top):
                row, c = pool[t]
                c.subtree = slot  # the slot gives the next round's seeds: two kept siblings must differ
                if row is None or c.eos or len(c.token_ids) >= max_new_tokens:
                    finished[i].append(c)
                else:
                    keep_rows.append(row)
                    next_live.append(c)
        state = state.select(keep_rows)
        state.compact()
        live = next_live
        round_ += 1

    results = []
    for i, p in enumerate(prompts):
        beams = sorted(finished[i], key=lambda c: c.subtree)  # slot order: best first at the last ranking
        results.append(SearchResult(p, beams, argmax([c.score for c in beams])))
    return results


def run(policy: PolicyBackend, scorer: Scorer, prompts: Sequence[Prompt], params: CbsParams,
        sampling: SamplingParams, max_new_tokens: int, seed: int = 0,
        aggregation: str | None = None) -> list[SearchResult]:
    """The registry entry (``decoding.search.SEARCHES``)."""
    return chunk_beam_search(policy, scorer, prompts, params.beam_width, params.successors, params.chunk_length,
                             sampling, max_new_tokens, seed, aggregation)
