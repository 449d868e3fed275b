"""`sp-prm evaluate-rm`: metrics against hand values; end to end on tiny models vs direct forwards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep.loaders import load_preferences
from sp_prm.evaluate import EvaluateConfig, cut_positions, evaluate, pair_metrics, paired_difference
from sp_prm.formatting import EncodedResponse, PrefixFormat, encode
from sp_prm.models import load_reward_model, load_tokenizer


def test_pair_metrics_by_hand():
    chosen, rejected = torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, 2.0, 1.0, 1.0])
    ref = (torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    m = pair_metrics(chosen, rejected, ref)
    assert m["accuracy"] == 0.5  # the tie (2 vs 2) counts as wrong
    assert m["mean_gap"] == pytest.approx(0.5) and m["mean_abs_gap"] == pytest.approx(1.0)
    assert m["agreement_with_reference"] == 0.75  # orders T,F,T,F vs reference T,F,T,T
    assert m["ci95"] == pytest.approx(1.96 * (0.25 / 4) ** 0.5)


def test_paired_difference_by_hand_and_against_a_naive_bootstrap():
    wins = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    base = np.array([1, 0, 0, 1, 1, 0, 1, 0], dtype=bool)
    d = paired_difference(wins, base, samples=500, seed=3)
    # by hand: model right alone on pairs 1 and 5, baseline alone on pair 4 -> (2 - 1) / 8
    assert d["diff"] == pytest.approx(1 / 8)
    assert (d["only_model_right"], d["only_baseline_right"]) == (2, 1)
    # naive reference: one resample at a time, the same draws, percentile interval
    rng = np.random.default_rng(3)
    draws = rng.integers(0, 8, size=(500, 8))
    boot = sorted(float(np.mean([float(wins[i]) - float(base[i]) for i in row])) for row in draws)
    assert d["ci_low"] == pytest.approx(np.quantile(boot, 0.025))
    assert d["ci_high"] == pytest.approx(np.quantile(boot, 0.975))
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    # a model compared with itself differs by exactly zero in every resample
    same = paired_difference(wins, wins)
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="two"):
        paired_difference(wins, base[:3])


def test_cut_positions_by_hand():
    side = EncodedResponse([0], list(range(7)), [9], [])
    cfg = EvaluateConfig(models=["m"], token_counts=[1, 5, 10], fractions=[0.1, 0.5, 1.0])
    assert cut_positions(side, cfg) == [7, 1, 5, 7, 1, 4, 7]


def test_end_to_end_two_models_and_reference(tmp_path, tiny_llama_rm_dir, tiny_bert_rm_dir):
    fmt = dict(template="plain", max_prompt_tokens=96, max_response_tokens=48)
    cfg = EvaluateConfig(
        models=[str(tiny_llama_rm_dir), str(tiny_bert_rm_dir)], names=["llama", "bert"],
        reference_model=str(tiny_llama_rm_dir), limit=60, token_counts=[1, 5], fractions=[0.5, 1.0],
        prefix=PrefixFormat(**fmt), output_dir=str(tmp_path / "eval"),
    )
    out = evaluate(cfg)
    res = out["results"]
    assert set(res) == {"llama", "bert", "reference"}
    assert res["llama"]["f=1"]["accuracy"] == res["llama"]["full"]["accuracy"]
    # the reference is the llama model itself: perfect agreement
    assert all(res["llama"][c]["agreement_with_reference"] == 1.0 for c in res["llama"])
    # independent check of llama at t=5: direct HF forwards, one per prefix
    tok = load_tokenizer(str(tiny_llama_rm_dir))
    model = load_reward_model(str(tiny_llama_rm_dir), device="cpu")
    pairs, _ = load_preferences("builtin:hh-rlhf-sample", limit=60, subset="eval")
    wins = []
    for pair in pairs:
        seqs = [encode(tok, pair["prompt"], pair[k], cfg.prefix).sequence(5) for k in ("chosen", "rejected")]
        with torch.no_grad():
            r = [model.score(model.model(input_ids=torch.tensor([s])).last_hidden_state)[0, -1, 0] for s in seqs]
        wins.append(float(r[0] > r[1]))
    assert out["n_pairs"] == len(pairs)
    assert res["llama"]["t=5"]["accuracy"] == pytest.approx(sum(wins) / len(wins))
    files = {p.name for p in (tmp_path / "eval").iterdir()}
    assert files == {"results.json", "results.md", "curves.png", "rewards.pt"}
    # paired comparison with the baseline (the first model): bert's wins minus llama's, pair by pair
    saved = torch.load(tmp_path / "eval" / "rewards.pt")
    j = saved["labels"].index("t=5")
    r = saved["rewards"]
    bert_wins = (r["bert"]["chosen"][:, j] > r["bert"]["rejected"][:, j]).float()
    assert res["bert"]["t=5"]["vs_baseline"]["diff"] == pytest.approx(float(bert_wins.mean()) - sum(wins) / len(wins), abs=1e-6)
    assert "vs_baseline" not in res["llama"]["t=5"]
    assert res["reference"]["t=5"]["vs_baseline"]["diff"] == 0.0  # the reference is llama itself
    assert "Accuracy minus llama's" in (tmp_path / "eval" / "results.md").read_text()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["n_pairs"] == out["n_pairs"]
    assert "| t=5 |" in (tmp_path / "eval" / "results.md").read_text()


def test_bad_config():
    with pytest.raises(ValueError, match="at least one model"):
        EvaluateConfig()
    with pytest.raises(ValueError, match="names"):
        EvaluateConfig(models=["a", "b"], names=["x"])
    with pytest.raises(ValueError, match="fractions"):
        EvaluateConfig(models=["a"], fractions=[0.0])
    with pytest.raises(ValueError, match="bootstrap_samples"):
        EvaluateConfig(models=["a"], bootstrap_samples=0)


def test_trained_prefix_format_is_enforced(tmp_path, tiny_llama_rm, smollm_tokenizer):
    from sp_prm.models import trained_prefix_format

    assert trained_prefix_format(tiny_llama_rm) is None
    fmt = PrefixFormat(template="plain", max_prompt_tokens=64, max_response_tokens=16)
    tiny_llama_rm.config.sp_prm = {"prefix": fmt.to_dict()}
    assert trained_prefix_format(tiny_llama_rm) == fmt
    tiny_llama_rm.save_pretrained(tmp_path / "m")
    smollm_tokenizer.save_pretrained(tmp_path / "m")
    cfg = EvaluateConfig(models=[str(tmp_path / "m")], limit=10, output_dir=str(tmp_path / "e"))
    with pytest.raises(ValueError, match="was trained on prefixes rendered as"):
        evaluate(cfg)
    cfg.prefix = fmt
    assert evaluate(cfg)["n_pairs"] > 0


def test_unknown_baseline_fails_before_scoring(tmp_path, tiny_llama_rm_dir):
    cfg = EvaluateConfig(models=[str(tiny_llama_rm_dir)], names=["llama"], baseline="orm", limit=4,
                         prefix=PrefixFormat(template="plain", max_prompt_tokens=96, max_response_tokens=48),
                         output_dir=str(tmp_path / "eval"))
    with pytest.raises(ValueError, match="baseline 'orm' is not one of the evaluated models"):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()
