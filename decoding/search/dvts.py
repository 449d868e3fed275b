"""DVTS (Beeching et al.): ``n / width`` independent subtrees, each a greedy step-level search.

Per prompt there are ``n // width`` subtrees. At every step each live subtree
forks its current prefix into ``width`` children, samples one step for each
(ending after a token containing the step delimiter, at EOS, or at the step's
token cap), scores all children of all subtrees of all prompts in one scorer
call, and keeps its best child by the aggregated step scores.

A subtree stops when its kept child is complete (EOS), when the response token
budget is spent, or after ``max_steps`` steps; at the last allowed step children
sample to the end of the response (no delimiter stop, as search-and-learn does)
unless ``finish_last_step`` is off. A stopped subtree contributes its ``width``
final children as completions (siblings that stopped at a delimiter or a budget
are marked incomplete), so every prompt gets exactly ``n`` completions; the best
is the highest-scoring kept child over the subtrees.

Nothing task-specific (no math answer rule) is built in. The REAR paper's setting:
``n = 16, width = 4`` (4 initial nodes), steps split on line breaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from decoding.backend import PolicyBackend
from decoding.policy import SamplingParams
from decoding.scorers import Scorer
from decoding.search.core import Candidate, SearchResult, argmax, expand, prefill, score
from decoding.types import Prompt


@dataclass
class DvtsParams:
    """DVTS: n / width independent subtrees, each a greedy step-level search."""

    n: int = field(default=8, metadata={"help": "Completions per prompt: subtrees x width."})
    width: int = field(default=4, metadata={"help": "Children per subtree per step (n / width subtrees)."})
    max_steps: int = field(default=16, metadata={"help": "Step budget."})
    max_step_tokens: int = field(default=64, metadata={"help": "Token cap of one step."})
    delimiter: str = field(default="\n", metadata={"help": "Text that ends a step (default: line break)."})
    finish_last_step: bool = field(default=True, metadata={"help": "The last step samples to the end."})

    def __post_init__(self) -> None:
        if self.n < 1 or self.width < 1 or self.n % self.width:
            raise ValueError(f"search.dvts.n={self.n} must be a positive multiple of search.dvts.width={self.width}")
        if self.max_steps < 1 or self.max_step_tokens < 1:
            raise ValueError("search.dvts.max_steps and search.dvts.max_step_tokens must be >= 1")
        if not self.delimiter:
            raise ValueError("search.dvts.delimiter must be non-empty")


def dvts(
    policy: PolicyBackend,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    n: int,
    width: int,
    params: SamplingParams,
    max_new_tokens: int,
    max_steps: int = 32,
    max_step_tokens: int = 256,
    seed: int = 0,
    aggregation: str | None = None,
    finish_last_step: bool = True,
) -> list[SearchResult]:
    """Run DVTS on a batch of prompts; see the module docstring."""
    if n < 1 or width < 1:
        raise ValueError(f"dvts: n and width must be >= 1, got n={n}, width={width}")
    if n % width:
        raise ValueError(f"dvts: n={n} must be a multiple of width={width} (n / width subtrees)")
    if max_steps < 1 or max_step_tokens < 1 or max_new_tokens < 1:
        raise ValueError("dvts: max_steps, max_step_tokens and max_new_tokens must be >= 1")
    if not prompts:
        return []
    aggregation = aggregation or scorer.default_aggregation
    subtrees = n // width
    state = prefill(policy, prompts)
    rows = [i for i in range(len(prompts)) for _ in range(subtrees)]
    state = state.select(rows)
    live = [Candidate(prompt=i, subtree=k % subtrees) for k, i in enumerate(rows)]
    finished: dict[int, list[tuple[int, list[Candidate], Candidate]]] = {i: [] for i in range(len(prompts))}

    for step in range(max_steps):
        if not live:
            break
        last = step == max_steps - 1
        remaining = [max_new_tokens - len(c.token_ids) for c in live]
        budgets = [r if (last and finish_last_step) else min(max_step_tokens, r) for r in remaining]
        state, children = expand(policy, state, live, prompts, width, params, seed, step, budgets,
                                 stop_at_delimiter=not (last and finish_last_step), feed_final=not last)
        score(scorer, policy, prompts, children, aggregation)
        keep_rows, next_live = [], []
        for i, parent in enumerate(live):
            group = children[i * width: (i + 1) * width]
            b = argmax([c.score for c in group])
            best = group[b]
            if best.eos or last or len(best.token_ids) >= max_new_tokens:
                finished[parent.prompt].append((parent.subtree, group, best))
            else:
                keep_rows.append(i * width + b)
                next_live.append(best)
        state = state.select(keep_rows)
        state.compact()
        live = next_live

    results = []
    for i, p in enumerate(prompts):
        trees = sorted(finished[i], key=lambda t: t[0])
        completions = [c for _, group, _ in trees for c in group]
        winners = [best for _, _, best in trees]
        best = winners[argmax([w.score for w in winners])]
        results.append(SearchResult(p, completions, next(k for k, c in enumerate(completions) if c is best)))
    return results


def run(policy: PolicyBackend, scorer: Scorer, prompts: Sequence[Prompt], params: DvtsParams,
        sampling: SamplingParams, max_new_tokens: int, seed: int = 0,
        aggregation: str | None = None) -> list[SearchResult]:
    """The registry entry: DVTS with ``params.delimiter`` as the policy's step delimiter."""
    policy.delimiter = params.delimiter
    return dvts(policy, scorer, prompts, params.n, params.width, sampling, max_new_tokens, params.max_steps,
                params.max_step_tokens, seed, aggregation, params.finish_last_step)
