"""The scorer interface every search is written against: ``score(prompts, partials) -> rewards``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from decoding.types import Meter, Partial, Prompt


class Scorer(Protocol):
    """What a search needs from a scorer: rewards ``[n]`` (fp32) for (prompt, partial response) pairs.

    ``additive``: the score of a prefix is the sum of its steps' increments (REAR), so a search
    records increments (``Candidate.record``); ``default_aggregation`` names how step scores combine.
    """

    additive: bool
    default_aggregation: str
    meter: Meter

    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor: ...


def check_lengths(prompts: Sequence[Prompt], partials: Sequence[Partial]) -> None:
    if len(prompts) != len(partials):
        raise ValueError(f"score got {len(prompts)} prompts for {len(partials)} responses")
