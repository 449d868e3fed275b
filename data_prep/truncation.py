"""Where to cut a preference pair: token-level (TLT) and stochastic sampling (SST) truncation.

Positions count response tokens in the token space of the model being trained:
position ``t`` keeps the first ``t`` tokens of each response (the paper's
``y_{<t}``, "the t-token prefix"), ``1 <= t <= T`` with ``T = max(|y_w|, |y_l|)``.

* TLT (paper 4.1.1): every ``t = 1..T``.
* SST (paper 4.1.1): draw ``k ~ U{0, ..., 2K}`` once per pair, then ``k`` positions
  ``t_i ~ U{1, ..., T}`` independently (with replacement, as in the paper; set
  ``unique=True`` to drop repeats). The expected number of partial pairs per
  pair is ``K``; a pair with ``k = 0`` contributes nothing.

Randomness is seeded per pair from ``(seed, pair id)``, so the same pair gets
the same positions whatever the order, chunking or resumption of a run.

Past the end of the shorter response (``t > min(|y_w|, |y_l|)``):

* ``clip`` (default, the paper's "pad shorter sequences"): the shorter side is
  its complete response;
* ``drop``: positions beyond the shorter response are discarded, so both sides
  are always cut at the same length.
"""

from __future__ import annotations

import hashlib

import numpy as np


def pair_rng(seed: int, pair_id: str) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha1(pair_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def tlt_positions(chosen_length: int, rejected_length: int) -> list[int]:
    """Every prefix length ``1..T``."""
    return list(range(1, max(chosen_length, rejected_length) + 1))


def sst_positions(
    chosen_length: int, rejected_length: int, k_mean: int, rng: np.random.Generator, unique: bool = False
) -> list[int]:
    """``k ~ U{0..2K}`` positions drawn from ``U{1..T}``, sorted."""
    if k_mean < 0:
        raise ValueError(f"SST K must be >= 0, got {k_mean}")
    total = max(chosen_length, rejected_length)
    k = int(rng.integers(0, 2 * k_mean + 1))
    if total < 1 or k == 0:
        return []
    positions = rng.integers(1, total + 1, size=k)
    if unique:
        positions = np.unique(positions)
    return sorted(int(t) for t in positions)


def apply_past_end(positions: list[int], chosen_length: int, rejected_length: int, past_end: str) -> list[int]:
    if past_end == "clip":
        return positions
    if past_end == "drop":
        shortest = min(chosen_length, rejected_length)
        return [t for t in positions if t <= shortest]
    raise ValueError(f"past_end must be 'clip' or 'drop', got {past_end!r}")
