"""The search registry: every search is one module here, and ``SEARCHES`` maps names to them.

A search module defines its params dataclass (help text, its own checks in ``__post_init__``)
beside one function with the signature every search shares::

    run(policy, scorer, prompts, params, sampling, max_new_tokens, seed=0, aggregation=None)
        -> list[SearchResult]        # one per prompt: its candidates, the best one, compute in policy.meter

Adding a decoder is one module, one line in ``SEARCHES`` and one test: ``sp-prm decode`` then takes
``search: {method: <name>, max_new_tokens: ..., <name>: {<its params>}}`` and the recipe parser,
``--help`` and the backend check follow from the entry. ``token_level`` searches read the policy's
next-token distribution at every token (``decoding.backend.TokenLevelBackend``: the HF backend);
``prepare`` (optional) fills params calibrated on prompts before decoding (CARDS' thresholds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from decoding.search import args, best_of_n, cards, cbs, dvts
from decoding.search.core import Candidate, SearchResult, argmax, expand, rank_top, score


@dataclass(frozen=True)
class Search:
    """One registry entry: the params dataclass, the run function and what the search needs."""

    params: type
    run: Callable[..., list[SearchResult]]
    token_level: bool = False
    why: str = ""  # token-level: why it needs the next-token distribution (named in the backend error)
    prepare: Callable[..., Any] | None = None  # (policy, scorer, prompts, params, sampling, max_new_tokens, seed)


SEARCHES: dict[str, Search] = {
    "best_of_n": Search(best_of_n.BestOfNParams, best_of_n.run),
    "dvts": Search(dvts.DvtsParams, dvts.run),
    "cbs": Search(cbs.CbsParams, cbs.run),
    "args": Search(args.ArgsParams, args.run, token_level=True, why=args.NEEDS),
    "cards": Search(cards.CardsParams, cards.run, token_level=True, why=cards.NEEDS, prepare=cards.prepare),
}

# Flat keys of the old SearchConfig (before each search had its own block) -> where they live now.
MOVED_KEYS = {
    "n": "search.best_of_n.n or search.dvts.n",
    **{k: f"search.dvts.{k}" for k in ("width", "max_steps", "max_step_tokens", "delimiter", "finish_last_step")},
    **{k: f"search.cbs.{k}" for k in ("beam_width", "successors", "chunk_length")},
    **{f"args_{k}": f"search.args.{k}" for k in ("k", "w", "mode")},
    **{f"cards_{k}": f"search.cards.{k}" for k in ("tau_u", "r_start", "r_end", "acceptance", "beta",
                                                   "max_rejections", "max_segment_tokens", "calibration_prompts",
                                                   "calibration_quantile")},
}


def _search_config() -> type:
    """``SearchConfig``: ``method``, ``max_new_tokens`` and one params block per registry entry."""

    def post_init(self: Any) -> None:
        if self.method not in SEARCHES:
            raise ValueError(f"search.method must be one of {tuple(SEARCHES)}, got {self.method!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"search.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name, entry in SEARCHES.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, entry.params(**value))

    def params(self: Any) -> Any:
        """The chosen method's params block."""
        return getattr(self, self.method)

    fields: list[tuple[str, Any, Any]] = [
        ("method", str, field(default="best_of_n", metadata={"help": f"One of {tuple(SEARCHES)}."})),
        ("max_new_tokens", int, field(default=128, metadata={"help": "Token budget per response."})),
    ]
    fields += [(name, entry.params, field(default_factory=entry.params,
                                          metadata={"help": (entry.params.__doc__ or name).strip()}))
               for name, entry in SEARCHES.items()]
    return dataclasses.make_dataclass(
        "SearchConfig", fields, namespace={
            "__post_init__": post_init, "params": property(params), "moved_keys": staticmethod(lambda: MOVED_KEYS),
            "__doc__": "Which search, its token budget, and each search's own params block.",
            "__module__": __name__,
        })


SearchConfig = _search_config()

__all__ = ["SEARCHES", "MOVED_KEYS", "Search", "SearchConfig", "SearchResult", "Candidate", "argmax", "expand",
           "rank_top", "score"]
