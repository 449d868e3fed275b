"""How well a reward model's prefix scores follow the true process value V of the prefixes.

Used by ``sp-prm evaluate-rm`` with ``process_value:`` (V comes from policy rollouts judged by a
gold RM, :mod:`decoding.process_value`; this module only compares numbers, so ``sp_prm`` stays the
bottom layer). At one prefix length, for ``n`` pairs with prefixes ``(w_i, l_i)``:

* **pairwise agreement**: over the pairs whose two prefixes have different V (identical prefixes,
  e.g. a shared first token, have equal V and are left out), the share where the RM orders them
  as V does: ``1[r(w) > r(l)] == 1[V(w) > V(l)]``, an RM tie counted wrong (the toolkit's strict
  convention everywhere);
* **rank correlation** of r with V over all ``2n`` prefixes: Spearman's rho (average ranks for
  ties) and Kendall's tau-b;
* **V's own reliability** (the ceiling any RM can reach against a Monte Carlo V): the agreement
  of V estimated from the even-numbered rollouts with V from the odd-numbered ones, on the same
  pairs.

Intervals are percentile bootstrap 95% over pairs (both prefixes of a pair move together), and
the difference of two RMs' agreement is bootstrapped *paired* (the same resampled pairs).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share the mean of their positions)."""
    order = np.argsort(x, axis=-1, kind="stable")
    sx = np.take_along_axis(x, order, -1)
    ranks = np.empty_like(x, dtype=np.float64)
    for row in np.ndindex(x.shape[:-1]):
        s, o = sx[row], order[row]
        r = np.empty(len(s))
        i = 0
        while i < len(s):
            j = i
            while j + 1 < len(s) and s[j + 1] == s[i]:
                j += 1
            r[o[i:j + 1]] = (i + j) / 2.0
            i = j + 1
        ranks[row] = r
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of average ranks (nan when either side is constant)."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b over all pairs of points, O(n^2) memory (fine for a few thousand prefixes)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    sx, sy = sx[iu], sy[iu]
    den = math.sqrt(float((sx != 0).sum()) * float((sy != 0).sum()))
    return float((sx * sy).sum() / den) if den > 0 else float("nan")


def pair_agreement(r_w: np.ndarray, r_l: np.ndarray, v_w: np.ndarray, v_l: np.ndarray) -> np.ndarray:
    """Per pair: 1.0 if the RM orders it as V does, 0.0 if not, nan where V ties (left out)."""
    v_order = v_w > v_l
    agree = ((r_w > r_l) == v_order) & (r_w != r_l)
    out = agree.astype(np.float64)
    out[v_w == v_l] = np.nan
    return out


def _ci(boot: np.ndarray) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return float("nan"), float("nan")
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(lo), float(hi)


def value_metrics(
    rewards: dict[str, tuple[np.ndarray, np.ndarray]],
    v_w: np.ndarray,
    v_l: np.ndarray,
    halves: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    baseline: str | None = None,
    samples: int = 2000,
    kendall_samples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement and rank correlations of every RM with V at one prefix length (see the module docstring).

    ``rewards[name] = (r_w, r_l)``, each ``[n]``; ``v_w``, ``v_l``: ``[n]`` values; ``halves``: V from
    the even and odd rollouts, ``((v_w_even, v_l_even), (v_w_odd, v_l_odd))``. Kendall's tau-b is
    O(n^2) per resample, so it gets ``kendall_samples`` resamples.
    """
    with warnings.catch_warnings():  # an all-tied resample gives nan (dropped from the interval), not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return _value_metrics(rewards, v_w, v_l, halves, baseline, samples, kendall_samples, seed)


def _value_metrics(rewards: dict[str, tuple[np.ndarray, np.ndarray]], v_w: np.ndarray, v_l: np.ndarray,
                   halves: Any, baseline: str | None, samples: int, kendall_samples: int, seed: int
                   ) -> dict[str, Any]:
    n = len(v_w)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    v_all = np.concatenate([v_w, v_l])
    out: dict[str, Any] = {"pairs": n, "pairs_with_distinct_v": int((v_w != v_l).sum()), "models": {}}
    agree: dict[str, np.ndarray] = {}
    for name, (r_w, r_l) in rewards.items():
        a = pair_agreement(r_w, r_l, v_w, v_l)
        agree[name] = a
        boot_a = np.nanmean(a[idx], axis=1) if n else np.array([])
        r_all = np.concatenate([r_w, r_l])
        sp_boot = np.array([spearman(np.concatenate([r_w[i], r_l[i]]), np.concatenate([v_w[i], v_l[i]]))
                            for i in idx])
        kd_boot = np.array([kendall_tau_b(np.concatenate([r_w[i], r_l[i]]), np.concatenate([v_w[i], v_l[i]]))
                            for i in idx[:kendall_samples]])
        out["models"][name] = {
            "agreement": float(np.nanmean(a)) if np.isfinite(a).any() else float("nan"),
            "agreement_ci": _ci(boot_a),
            "spearman": spearman(r_all, v_all), "spearman_ci": _ci(sp_boot),
            "kendall": kendall_tau_b(r_all, v_all), "kendall_ci": _ci(kd_boot),
        }
    if baseline is not None and baseline in agree:
        b = agree[baseline]
        for name, a in agree.items():
            if name == baseline:
                continue
            d = a - b  # nan where V ties, for both alike
            boot = np.nanmean(d[idx], axis=1)
            out["models"][name]["agreement_vs_baseline"] = {"diff": float(np.nanmean(d)), "ci": _ci(boot)}
    if halves is not None:
        (ew, el), (ow, ol) = halves
        keep = (ew != el) & (ow != ol)
        same = ((ew > el) == (ow > ol)).astype(np.float64)
        same[~keep] = np.nan
        out["v_split_half_agreement"] = float(np.nanmean(same)) if keep.any() else float("nan")
        out["v_split_half_agreement_ci"] = _ci(np.nanmean(same[idx], axis=1)) if keep.any() else (math.nan, math.nan)
    return out
