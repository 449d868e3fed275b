"""Means with seeded percentile-bootstrap confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; the same seed gives the same interval.

    Resampling is done in chunks so memory stays bounded for large runs.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    values: Sequence[float | None], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``{mean, ci_low, ci_high, n, n_undefined}``; ``None``/NaN values are left out and counted."""
    defined = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    out: dict[str, Any] = {"n": len(defined), "n_undefined": len(values) - len(defined)}
    if not defined:
        return {**out, "mean": None, "ci_low": None, "ci_high": None}
    low, high = bootstrap_ci(defined, resamples, confidence, seed)
    return {**out, "mean": float(np.mean(defined)), "ci_low": low, "ci_high": high}
