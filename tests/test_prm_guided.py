"""PRM-guided search experiment (issue 8, part 3): folds and prompt selection on real pairs, the win-rate /
z-score / paired summary against hand values, and a tiny end-to-end run whose judgements are recomputed
independently (each prompt judged by the gold RM of the *other* fold; Best-of-N picks the guide's argmax)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from decoding.metrics.reward import rewards
from experiments import prm_guided as pg
from experiments.common import read_records
from sp_prm.config import load_config
from sp_prm.formatting import PrefixFormat
from sp_prm.models import load_reward_model, load_tokenizer
from tests.conftest import shared_data

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "experiments" / "prm_guided_hh.yaml"


def _pairs_file(tmp_path: Path, per_fold: int) -> Path:
    """Pairs with ``per_fold`` ids in each of the two folds."""
    path = tmp_path / "pairs.jsonl"
    ids = [f"p{i}" for i in range(100)]
    ids = [i for i in ids if pg.fold_of(i) == 0][:per_fold] + [i for i in ids if pg.fold_of(i) == 1][:per_fold]
    rows = [{"id": i, "prompt": [{"role": "user", "content": f"How do I fix bike {i}?"}],
             "chosen": "Check the chain first.", "rejected": "No idea."} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fold_of_is_stable_and_balanced():
    assert pg.fold_of("757089823d5907f5") == pg.fold_of("757089823d5907f5")
    folds = [pg.fold_of(f"id{i}") for i in range(2000)]
    assert set(folds) == {0, 1} and 900 < folds.count(0) < 1100
    assert {pg.fold_of(f"id{i}", 3) for i in range(100)} == {0, 1, 2}


def test_prompt_selection_on_real_pairs(tmp_path):
    from data_prep.loaders import load_preferences

    src = shared_data("hh-rlhf", "harmless-base", "test.jsonl.gz")
    pairs, _ = load_preferences(str(src), subset="eval", eval_fraction=0.2)
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    cfg = pg.PrmGuidedConfig(pairs_path=str(path), prompts_per_fold=10, calibration_prompts=4)
    reported, calib = pg.select_prompts(cfg)
    assert [r["fold"] for r in reported] == [0] * 10 + [1] * 10
    assert all(r["fold"] == pg.fold_of(r["id"]) for r in reported + calib)
    assert not {r["id"] for r in reported} & {r["id"] for r in calib}
    assert pg.select_prompts(cfg) == (reported, calib)
    more, calib2 = pg.select_prompts(pg.PrmGuidedConfig(pairs_path=str(path), prompts_per_fold=20,
                                                        calibration_prompts=4))
    assert more[:10] == reported[:10] and more[20:30] == reported[10:]  # extends each fold; same calibration
    assert calib2 == calib
    with pytest.raises(ValueError, match="cannot give prompts_per_fold"):
        pg.select_prompts(pg.PrmGuidedConfig(pairs_path=str(path), prompts_per_fold=len(pairs)))


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "hi", "chosen": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0: missing field\(s\) \['rejected'\]"):
        pg.select_prompts(pg.PrmGuidedConfig(pairs_path=str(bad)))
    with pytest.raises(ValueError, match="one RM per fold"):
        pg.PrmGuidedConfig(gold_models=["a", "b", "c"])
    assert pg.PrmGuidedConfig(gold_models=["external"]).gold_models == ["external"]  # one RM trained elsewhere
    with pytest.raises(ValueError, match="unknown"):
        pg.PrmGuidedConfig(methods=["bon", "mcts"])


def _o(gold, tokens=4, **kw):
    # one text per reward: outputs with equal rewards are the same response here, as a Best-of-N pick is its sample
    return {"text": f"a b c {gold}", "tokens": tokens, "complete": True, "gold": gold, "diversity": 1.0,
            "coherence": 0.5, **kw}


def test_a_pick_ties_with_its_own_sample_despite_float_noise():
    rec = {"id": "a", "fold": 0, "samples": [_o(0), _o(2)], "outputs": {"x/bon": {**_o(2), "gold": 2.000001}}}
    assert pg.per_prompt(rec, 1.0)["x/bon"]["win_rate"] == pytest.approx(0.75)  # beats 0, ties itself


def test_summary_by_hand():
    # fold 0: samples 0, 1, 2, 3 (gold); fold 1: samples 1, 1, 1, 5
    recs = [
        {"id": "a", "fold": 0, "samples": [_o(0), _o(1), _o(2), _o(3)], "compute": {},
         "outputs": {"orm/bon": _o(3), "sp-prm/bon": _o(3), "orm/args": _o(1.5), "sp-prm/args": _o(2.5)}},
        {"id": "b", "fold": 1, "samples": [_o(1), _o(1), _o(1), _o(5)], "compute": {},
         "outputs": {"orm/bon": _o(5), "sp-prm/bon": _o(1), "orm/args": _o(1), "sp-prm/args": _o(6)}},
    ]
    s = pg.summarize_records(recs, ["orm", "sp-prm"], resamples=200)
    m = s["methods"]
    # win rate: share of the 4 samples beaten, ties half
    assert pg.win_rate(1.5, [0, 1, 2, 3]) == 0.5 and pg.win_rate(1, [1, 1, 1, 5]) == 1.5 / 4
    # the same response ties whatever its stored rewards (a pick judged apart from its sample: float noise)
    assert pg.win_rate(2.000001, [0, 2, 3], same=[False, True, False]) == 1.5 / 3
    assert m["orm/args"]["win_rate"]["mean"] == pytest.approx((0.5 + 1.5 / 4) / 2)
    assert m["sp-prm/args"]["win_rate"]["mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["sample (expected)"]["win_rate"]["mean"] == pytest.approx(0.5)
    assert m["gold-best of N (oracle)"]["win_rate"]["mean"] == pytest.approx((3.5 / 4 + 3.5 / 4) / 2)
    # gold z against the prompt's sample mean, over the fold's pooled sample std
    std0 = math.sqrt(sum((x - 1.5) ** 2 for x in (0, 1, 2, 3)) / 4)
    std1 = math.sqrt(sum((x - 2.0) ** 2 for x in (1, 1, 1, 5)) / 4)
    assert m["sp-prm/args"]["gold_z"]["mean"] == pytest.approx(((2.5 - 1.5) / std0 + (6 - 2) / std1) / 2)
    # paired: per prompt sp-prm minus orm
    d = s["paired"]["sp-prm - orm, bon"]["win_rate"]["mean"]
    assert d == pytest.approx((0.0 + (1.5 / 4 - 3.5 / 4)) / 2)
    assert s["prompts"] == 2 and s["folds"] == {"0": 1, "1": 1}


@pytest.mark.parametrize("external", [False, True])
def test_end_to_end_judges_recomputed_and_resume(policy, tmp_path, tiny_llama_rm_dir, tiny_bert_rm_dir, external):
    pairs = _pairs_file(tmp_path, 3)
    out = tmp_path / "out"
    # a decoder guide and an encoder guide; cross-fitted: the gold of fold 0 is the encoder, of fold 1 the
    # decoder; external: the decoder judges everything
    gold = f"[{tiny_llama_rm_dir}]" if external else f"[{tiny_bert_rm_dir}, {tiny_llama_rm_dir}]"
    argv = ["--config", str(RECIPE), "--pairs_path", str(pairs), "--output_dir", str(out),
            "--guides", f"{{orm: {tiny_bert_rm_dir}, sp-prm: {tiny_llama_rm_dir}}}", "--gold_models", gold,
            "--prompts_per_fold", "1", "--calibration_prompts", "1", "--n", "4", "--max_new_tokens", "6",
            "--args.k", "3", "--cbs.beam_width", "2", "--cbs.successors", "2", "--cbs.chunk_length", "3",
            "--cards.max_segment_tokens", "3", "--coherence_model", "null", "--progress", "false",
            "--bootstrap_resamples", "50", "--batch_size", "2"]
    cfg = load_config(pg.PrmGuidedConfig, argv)
    pg.run(cfg, policy=policy)
    recs = read_records(out / "records.jsonl")
    assert sorted(r["fold"] for r in recs) == [0, 1]
    golds = {str(tiny_bert_rm_dir): None, str(tiny_llama_rm_dir): None}
    for path in golds:
        tok = load_tokenizer(path)
        golds[path] = (load_reward_model(path, pad_token_id=tok.pad_token_id), tok)
    for r in recs:
        assert set(r["outputs"]) == {"greedy"} | {f"{g}/{m}" for g in ("orm", "sp-prm") for m in pg.METHODS}
        assert len(r["samples"]) == 4
        assert set(r["compute"]) == {"samples", "greedy"} | {f"{g}/{m}" for g in ("orm", "sp-prm")
                                                             for m in pg.METHODS}
        assert r["compute"]["samples"]["policy_tokens_generated"] == sum(s["tokens"] for s in r["samples"])
        # the gold of the *other* fold (or the external one) judged this prompt: recompute it independently
        model, tok = golds[cfg.gold_models[0 if external else 1 - r["fold"]]]
        outs = [*r["samples"], *r["outputs"].values()]
        want = rewards(model, tok, [r["prompt"]] * len(outs), [o["text"] for o in outs], PrefixFormat(),
                       complete=[o["complete"] for o in outs])
        assert [o["gold"] for o in outs] == pytest.approx(want, abs=1e-5)
        # Best-of-N returns the sample its guide scores highest
        for g in ("orm", "sp-prm"):
            pick = r["outputs"][f"{g}/bon"]["pick"]
            scores = [s[f"guide:{g}"] for s in r["samples"]]
            assert scores[pick] == pytest.approx(max(scores), abs=1e-5)
            assert r["outputs"][f"{g}/bon"]["text"] == r["samples"][pick]["text"]
            # the pick is judged once with its sample, so the two copies tie exactly (no float noise)
            assert r["outputs"][f"{g}/bon"]["gold"] == r["samples"][pick]["gold"]
            assert r["outputs"][f"{g}/args"]["tokens"] <= 6 and r["outputs"][f"{g}/cbs"]["tokens"] <= 6
    cards = json.loads((out / "cards_params.json").read_text())  # calibrated per guide, recorded
    assert set(cards) == {"orm", "sp-prm"} and all(isinstance(c["r_start"], float) for c in cards.values())
    acc = json.loads((out / "gold_accuracy.json").read_text())
    want_acc = [(None, 6)] if external else [(0, 3), (1, 3)]  # cross-fitted: judged on the other fold only
    assert [(a["trained_on_fold"], a["pairs"]) for a in acc] == want_acc
    pg.run(cfg, policy=policy)  # resume: nothing left to do
    assert read_records(out / "records.jsonl") == recs
    s = pg.write_summary(cfg, "cmd")
    assert s["prompts"] == 2 and (out / "win_rate.png").stat().st_size > 0
    assert "sp-prm - orm, cbs" in s["paired"] and "Gold RMs" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match="different"):
        pg.run(load_config(pg.PrmGuidedConfig, argv + ["--seed", "5"]), policy=policy)


def test_recipe_parses():
    cfg = load_config(pg.PrmGuidedConfig, ["--config", str(RECIPE)])
    assert cfg.policy.model == "builtin:smollm2-135m-instruct"
    assert cfg.cbs.beam_width * cfg.cbs.successors == cfg.n  # CBS samples what Best-of-N samples
    with pytest.raises(KeyError, match="'args_k' has moved: use args.k"):
        load_config(pg.PrmGuidedConfig, ["--config", str(RECIPE), "--args_k", "30"])
    assert list(cfg.guides) == ["orm", "sp-prm"] and len(cfg.gold_models) == cfg.folds == 2
