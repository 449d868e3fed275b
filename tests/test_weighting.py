"""Preference-consistency weights (paper 4.2) against hand values and a naive reference."""

from __future__ import annotations

import math

import pytest
import torch

from data_prep.weighting import binary_entropy_of_gap, preference_weights


def naive_weight(r_w: float, r_l: float) -> float:
    """The paper's formula, written out with plain floats."""
    if not r_w > r_l:
        return 0.0
    p = 1 / (1 + math.exp(-abs(r_w - r_l)))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    return 1 / h


def test_hand_values():
    # gap 0 -> p = 1/2 -> H = ln 2 (but a zero gap is not kept: r_w > r_l is strict)
    assert float(binary_entropy_of_gap(torch.tensor(0.0))) == pytest.approx(math.log(2), abs=1e-7)
    # gap 1 -> p = 0.7310586, H = 0.5822030 (computed by hand), w = 1.717614
    assert float(binary_entropy_of_gap(torch.tensor(1.0))) == pytest.approx(0.5822030, abs=1e-6)
    keep, w = preference_weights(torch.tensor([1.0, 0.0, 0.2]), torch.tensor([0.0, 1.0, 0.2]), cap=None)
    assert keep.tolist() == [True, False, False]
    assert w[0].item() == pytest.approx(1.717614, abs=1e-5)
    assert w[1:].tolist() == [0.0, 0.0]


def test_matches_naive_reference_and_symmetry():
    g = torch.Generator().manual_seed(0)
    r_w, r_l = torch.randn(200, generator=g) * 3, torch.randn(200, generator=g) * 3
    _, w = preference_weights(r_w, r_l, cap=None)
    expected = torch.tensor([naive_weight(a, b) for a, b in zip(r_w.tolist(), r_l.tolist())])
    assert torch.allclose(w, expected, rtol=1e-5)
    # entropy depends on |gap| only
    gaps = torch.linspace(-5, 5, 11)
    assert torch.allclose(binary_entropy_of_gap(gaps), binary_entropy_of_gap(-gaps))


def test_large_gaps_are_stable_and_capped():
    h = binary_entropy_of_gap(torch.tensor([20.0, 80.0, 200.0]))
    assert torch.isfinite(h).all() and (h >= 0).all()
    assert float(h[0]) == pytest.approx(21 * math.exp(-20), rel=1e-3)  # H ~ (1 + a) e^-a for large a
    keep, w = preference_weights(torch.tensor([200.0, 6.0]), torch.tensor([0.0, 0.0]), cap=100.0)
    assert keep.all() and w[0].item() == 100.0
    assert w[1].item() == pytest.approx(naive_weight(6.0, 0.0), rel=1e-5) and w[1].item() < 100
    with pytest.raises(ValueError, match="cap"):
        preference_weights(torch.tensor([200.0]), torch.tensor([0.0]), cap=None)


def test_mean_normalisation():
    keep, w = preference_weights(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 3.0]), normalize="mean")
    assert w[keep].mean().item() == pytest.approx(1.0)
    ratio = naive_weight(1.0, 0.0) / naive_weight(2.0, 0.0)
    assert (w[0] / w[1]).item() == pytest.approx(ratio, rel=1e-5)
    assert w[2].item() == 0.0


def test_non_finite_rewards_raise():
    with pytest.raises(ValueError, match="NaN or inf"):
        preference_weights(torch.tensor([float("nan")]), torch.tensor([0.0]))
