"""One held-out split across the toolkit: training holds out exactly what evaluation evaluates on."""

from __future__ import annotations

from data_prep.loaders import load_preferences
from sp_prm.train import split_eval


def test_train_holdout_equals_eval_subset():
    pairs, _ = load_preferences("builtin:hh-rlhf-sample")
    train, held = split_eval(pairs, 0.2)
    eval_subset, _ = load_preferences("builtin:hh-rlhf-sample", subset="eval", eval_fraction=0.2)
    assert sorted(held["id"]) == sorted(eval_subset["id"])
    assert set(train["id"]).isdisjoint(eval_subset["id"])
