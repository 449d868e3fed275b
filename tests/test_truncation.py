"""TLT / SST positions (paper 4.1.1): ranges, distribution, determinism, past-end handling."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.truncation import apply_past_end, pair_rng, sst_positions, tlt_positions


def test_tlt_every_position():
    assert tlt_positions(3, 5) == [1, 2, 3, 4, 5]
    assert tlt_positions(4, 1) == [1, 2, 3, 4]


def test_sst_counts_and_range():
    counts, all_positions = [], []
    for i in range(4000):
        pos = sst_positions(7, 12, k_mean=5, rng=pair_rng(0, f"pair-{i}"))
        counts.append(len(pos))
        all_positions += pos
        assert pos == sorted(pos)
    counts = np.array(counts)
    # k ~ U{0..2K}: every value 0..10 occurs, nothing else, mean K = 5
    assert set(counts.tolist()) == set(range(11))
    assert abs(counts.mean() - 5) < 0.2
    # t ~ U{1..T}, T = max(7, 12) = 12
    assert min(all_positions) == 1 and max(all_positions) == 12
    hist = np.bincount(all_positions)[1:]
    assert hist.min() > 0.8 * hist.mean()


def test_sst_deterministic_per_pair_and_seed():
    a = sst_positions(50, 40, 5, pair_rng(3, "abc"))
    assert a == sst_positions(50, 40, 5, pair_rng(3, "abc"))
    draws = {tuple(sst_positions(50, 40, 5, pair_rng(s, "abc"))) for s in range(20)}
    assert len(draws) > 10


def test_sst_unique_and_bad_k():
    pos = sst_positions(2, 2, 50, pair_rng(0, "x"), unique=True)
    assert len(pos) == len(set(pos)) and set(pos) <= {1, 2}
    with pytest.raises(ValueError):
        sst_positions(2, 2, -1, pair_rng(0, "x"))


def test_past_end():
    assert apply_past_end([1, 3, 5, 7], 4, 7, "clip") == [1, 3, 5, 7]
    assert apply_past_end([1, 3, 5, 7], 4, 7, "drop") == [1, 3]
    with pytest.raises(ValueError):
        apply_past_end([1], 1, 1, "pad")
