"""The main job's summary: bootstrap by hand, the flat-weight failure, the report renders from real shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "main_job.py"


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("main_job", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bootstrap_matches_a_naive_loop(job):
    diff = np.array([0.5, -0.2, 0.1, 0.9, -0.4, 0.3])
    mean, low, high = job.bootstrap(diff, samples=500, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(diff), size=(500, len(diff)))
    naive = sorted(sum(diff[j] for j in row) / len(row) for row in idx)
    assert mean == pytest.approx(diff.mean())
    assert low == pytest.approx(np.quantile(naive, 0.025)) and high == pytest.approx(np.quantile(naive, 0.975))
    assert job.verdict(low, high).startswith("within the noise")
    assert job.verdict(0.1, 0.3) == "better" and job.verdict(-0.3, -0.1) == "worse"


def _inputs(job, flat: bool):
    rng = np.random.default_rng(0)
    w = np.full(50, 1.45) if flat else rng.uniform(1.4, 30, 50)
    qs = ["0.0", "0.1", "0.25", "0.5", "0.75", "0.9", "1.0"]
    weights = {"pairs": 50, "source_pairs": 10, "sst_k": 3, "weight_cap": 100.0, "weight_normalize": "none",
               "weight_quantiles": dict(zip(qs, np.quantile(w, [float(q) for q in qs]).tolist())),
               "gap_quantiles": dict(zip(qs, [0.0] * 7)), "weights": w.tolist(),
               "spread_ratio": float(np.quantile(w, 0.9) / np.quantile(w, 0.1))}
    weights["flat"] = weights["spread_ratio"] < job.FLAT_RATIO
    labels = ["full"] + [f"t={t}" for t in job.TOKEN_CUTS] + ["f=0.5"]
    cell = {"accuracy": 0.6, "ci95": 0.1, "vs_baseline": {"diff": 0.02, "ci_low": -0.05, "ci_high": 0.09}}
    evals = {"n_pairs": 80, "results": {"orm": {k: dict(cell) for k in labels}, "sp-prm": {k: dict(cell) for k in labels}}}
    names = ["plain sampling", "BoN, ORM-guided", "BoN, SP-PRM-guided"]
    dec = {"prompts": 8, "n": 4, "max_new_tokens": 32, "judge_mean": dict.fromkeys(names, 0.1),
           "judge_sd": dict.fromkeys(names, 0.5), "same_pick_rate": 0.5, "prm_scores_consistent": True,
           "paired": {"BoN, SP-PRM-guided - BoN, ORM-guided": (0.1, -0.2, 0.4)},
           "compute": {k: {"policy_tokens_generated": 100, "scorer_tokens": 10} for k in names}}
    judge = {"train_pairs": 160, "heldout_pairs": 80, "heldout_accuracy": 0.55}
    return weights, evals, judge, dec


@pytest.mark.parametrize("flat", [True, False])
def test_summary_reports_the_weights_and_the_noise(job, tmp_path, flat):
    weights, evals, judge, dec = _inputs(job, flat)
    job.TIMES.update({"1. x": 1.0, "total": 2.0})
    job.CPU.update({"1. x": 1.5, "total": 3.0})
    text = job.summary(weights, evals, judge, dec)
    assert ("FAILURE: the weights are flat" in text) == flat
    assert "within the noise" in text and "| t=5 |" in text and "BoN, SP-PRM-guided" in text
    job.plot(weights, evals, dec, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
