"""The known-gold testbed (experiments/gold): labelling, on-policy data, the probe teacher, stage plans, tables."""

from __future__ import annotations

import dataclasses
import json
import random
import statistics

import numpy as np
import pytest
import torch
from transformers import LlamaForSequenceClassification

from decoding.policy import Policy
from decoding.process_value import Judge
from experiments.gold import compare, onpolicy, stages, teacher
from experiments.gold.config import GoldConfig
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.models import load_reward_model, load_tokenizer
from tests.conftest import tiny_llama_config

FMT = PrefixFormat(template="plain", max_prompt_tokens=64, max_response_tokens=32)


def test_the_recipe_parses_and_plans_the_pre_registered_design():
    from sp_prm.config import load_config
    from tests.conftest import REPO

    cfg = load_config(GoldConfig, ["--config", str(REPO / "recipes/experiments/gold_hh.yaml"), "--seed", "1"])
    assert cfg.contenders == ["orm", "orm-control", "sp-prm-student-ref", "sp-prm-teacher-ref", "eq2", "eq2-filtered"]
    assert cfg.token_counts == [1, 5, 10, 20] and cfg.search_methods == ["bon", "cbs"] and cfg.seeds == [0, 1, 2]
    assert cfg.teacher.kind == "probe" and cfg.seed == 1 and cfg.data.label_noise == 0.0


def test_label_pairs_by_hand():
    resp = ["a", "b", "c", "d"]
    got = onpolicy.label_pairs("p", resp, [1.0, 0.9, 0.0, 2.0], min_gap=0.2, noise=0.0, rng=random.Random(0))
    # (0,1) is a near-tie (gap 0.1) and skipped; the rest: the higher reward is chosen
    assert [(g["chosen"], g["rejected"]) for g in got] == [("a", "c"), ("d", "a"), ("b", "c"), ("d", "b"), ("d", "c")]
    assert [g["teacher_gap"] for g in got] == pytest.approx([1.0, 1.0, 0.9, 1.1, 2.0])
    flipped = onpolicy.label_pairs("p", resp, [1.0, 0.9, 0.0, 2.0], 0.2, noise=1.0, rng=random.Random(0))
    assert all(f["flipped"] for f in flipped)
    assert [(g["rejected"], g["chosen"]) for g in flipped] == [(g["chosen"], g["rejected"]) for g in got]
    # the noise rate is the flip rate
    many = onpolicy.label_pairs("p", [str(i) for i in range(60)], [float(i) for i in range(60)], 0.5, 0.3,
                                random.Random(1))
    assert abs(statistics.fmean(g["flipped"] for g in many) - 0.3) < 0.05


def test_split_prompts_is_disjoint_and_stable():
    prompts = [{"id": f"{i:04d}", "prompt": [{"role": "user", "content": str(i)}]} for i in range(50)]
    train, held = onpolicy.split_prompts(prompts, 10, 30)
    assert len(held) == 10 and len(train) == 30 and not {p["id"] for p in train} & {p["id"] for p in held}
    again_train, again_held = onpolicy.split_prompts(list(reversed(prompts)), 10, None)
    assert [p["id"] for p in again_held] == [p["id"] for p in held]  # independent of file order
    assert len(again_train) == 40
    with pytest.raises(ValueError, match="eval_prompts"):
        onpolicy.split_prompts(prompts, 50, None)


def _cfg(tmp_path, **data) -> GoldConfig:
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in [
        "Name a bird.", "How do I bake bread?", "What is two plus two?", "Say hello.", "Tell me about owls.",
        "Give me a color.", "What is rain?", "Count to three."]))
    d = {"prompt_sources": [str(src)], "eval_prompts": 3, "train_prompts": None, "samples_per_prompt": 3,
         "max_new_tokens": 6, "min_gap_std": 0.0, "batch_prompts": 3, **data}
    return GoldConfig(work_dir=str(tmp_path / "gold"), data=d, sampling={"temperature": 1.0, "top_p": 1.0})


def test_on_policy_data_labels_by_the_teacher_and_resumes(tmp_path, smollm_tokenizer, tiny_llama_lm, tiny_llama_rm):
    cfg = _cfg(tmp_path)
    policy = Policy(tiny_llama_lm, smollm_tokenizer)
    judge = Judge(tiny_llama_rm, smollm_tokenizer, FMT)
    report = onpolicy.build_data(cfg, policy, judge, progress=False)
    assert report["prompts"] == {"train": 5, "eval": 3} and report["samples"] == 24
    samples = [json.loads(x) for x in (cfg.data_dir / "samples.jsonl").read_text().splitlines()]
    # the recorded teacher rewards are the judge's on the recorded texts (partial where the budget cut them)
    s = samples[0]
    again = judge([s["prompt"]] * 3, s["responses"], s["eos"])
    assert s["teacher"] == pytest.approx(again, abs=1e-5)
    assert all(t <= 6 for r in samples for t in r["tokens"])
    train = [json.loads(x) for x in (cfg.data_dir / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (cfg.data_dir / "eval.jsonl").read_text().splitlines()]
    value = [json.loads(x) for x in (cfg.data_dir / "value.jsonl").read_text().splitlines()]
    assert not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in held}
    assert len({p["prompt_id"] for p in value}) == len(value) <= 3
    by_id = {r["id"]: r for r in samples}
    for p in train + held:  # labelled by the teacher: chosen has the higher reward (no noise)
        r = by_id[p["prompt_id"]]
        assert r["teacher"][r["responses"].index(p["chosen"])] > r["teacher"][r["responses"].index(p["rejected"])]
    assert report["pairs"]["train"] == len(train) and report["flipped_train_pairs"] == 0
    # resumable: every prompt is sampled, so a rerun needs no policy and rewrites identical pairs
    before = (cfg.data_dir / "train.jsonl").read_text()
    onpolicy.build_data(cfg, policy=None, judge=None, progress=False)
    assert (cfg.data_dir / "train.jsonl").read_text() == before
    # label noise flips training pairs only
    noisy = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label_noise=1.0))
    rep = onpolicy.write_pairs(noisy)
    assert rep["flipped_train_pairs"] == rep["pairs"]["train"]
    held_noisy = [json.loads(x) for x in (cfg.data_dir / "eval.jsonl").read_text().splitlines()]
    assert not any(p["flipped"] for p in held_noisy)


def test_fit_probe_recovers_a_separating_direction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    true = torch.tensor([2.0, -1.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    diffs = x * torch.sign(x @ true)[:, None]  # every pair ordered by the true direction
    w = teacher.fit_probe(diffs, 1e-3)
    assert teacher.pair_accuracy(diffs, w) > 0.97
    assert torch.nn.functional.cosine_similarity(w, true, dim=0) > 0.9
    l2, scores = teacher.choose_l2(diffs, [1e-3, 10.0], seed=0)
    assert set(scores) == {"0.001", "10.0"} and l2 in (1e-3, 10.0)


def test_probe_teacher_saves_a_plain_reward_model(tmp_path, smollm_tokenizer):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Yes, answer {i}.", "rejected": f"no {i}"} for i in range(24)]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(smollm_tokenizer)).eval()
    cfg = GoldConfig(work_dir=str(tmp_path / "gold"), teacher={"sources": [str(src)], "prefix": FMT.to_dict(),
                                                                "l2_grid": [1e-2, 1.0]}, bootstrap_resamples=50)
    report = teacher.train_teacher(cfg, model, smollm_tokenizer)
    assert report["pairs_train"] + report["pairs_held_out"] == 24 and 0 <= report["held_out_accuracy"] <= 1
    assert teacher.teacher_ready(cfg)
    # the saved teacher is an ordinary sequence classifier whose reward is the probe: (w / sd) . h(last token)
    tok = load_tokenizer(str(cfg.teacher_dir))
    saved = load_reward_model(str(cfg.teacher_dir), device="cpu", pad_token_id=tok.pad_token_id)
    assert saved.config.sp_prm["prefix"] == FMT.to_dict()
    seq = encode(tok, [{"role": "user", "content": "Question 3?"}], "Yes, answer 3.", FMT).sequence()
    with torch.no_grad():
        h = saved.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        by_hand = float(saved.score(h))
    feats = teacher.last_token_features(saved, tok, FMT, [[{"role": "user", "content": "Question 3?"}]],
                                        ["Yes, answer 3."])
    assert float(feats[0].float() @ saved.score.weight[0].detach().float()) == pytest.approx(by_hand, abs=1e-4)
    judged = Judge(saved, tok, FMT)([[{"role": "user", "content": "Question 3?"}]], ["Yes, answer 3."], [True])
    assert judged[0] == pytest.approx(by_hand, abs=1e-4)


def test_contender_plan_same_budget_and_the_released_code_variant(tmp_path):
    cfg = GoldConfig(work_dir=str(tmp_path / "g"), extra_steps=123)
    plan = {name: argv for name, _, argv in stages.contender_commands(cfg, 2)}
    assert list(plan)[0] == "orm" and set(plan) >= {"sst-student", "sst-teacher", "sst-all", "eq2-filtered"}

    def arg(argv, key):
        return argv[argv.index(key) + 1]

    extra = ["orm-control", "sp-prm-student-ref", "sp-prm-teacher-ref", "eq2", "eq2-filtered"]
    for name in extra:  # the same budget, the same seed, all from the student ORM
        assert arg(plan[name], "--max_steps") == "123" and arg(plan[name], "--seed") == "2"
        assert arg(plan[name], "--model_name_or_path").endswith("seed2/orm")
    # the authors' released code: Eq. 2 (unweighted) on the teacher-filtered pairs = the Eq. 3 teacher data
    assert arg(plan["eq2-filtered"], "--loss") == "unweighted"
    assert arg(plan["eq2-filtered"], "--dataset") == arg(plan["sp-prm-teacher-ref"], "--dataset")
    assert arg(plan["sp-prm-teacher-ref"], "--loss") == "weighted"
    assert arg(plan["sst-teacher"], "--reference_model") == str(cfg.teacher_dir)
    assert arg(plan["sst-student"], "--reference_model").endswith("seed2/orm")
    assert arg(plan["sst-all"], "--reference_model") == "null"
    # teacher-referenced and unweighted SST data are shared by the seeds (data seed); the student's is per seed
    assert arg(plan["sst-teacher"], "--output_dir") == str(cfg.root / "sst-teacher")
    assert arg(plan["sst-student"], "--output_dir").endswith("seed2/sst-student")
    assert arg(plan["sst-teacher"], "--seed") == str(cfg.data.seed) and arg(plan["sst-teacher"], "--limit") == "1000"
    assert arg(plan["orm-control"], "--dataset").endswith("train.jsonl")
    v = stages.value_command(cfg, 2)
    assert arg(v, "--process_value.gold_rm") == str(cfg.teacher_dir) and arg(v, "--baseline") == "orm"
    from sp_prm.config import load_config
    from sp_prm.evaluate import EvaluateConfig

    parsed = load_config(EvaluateConfig, v[1:])  # the command evaluate-rm will parse
    assert parsed.process_value.batch_rows == cfg.value_batch_rows and parsed.process_value.rollouts == cfg.rollouts


def test_search_stage_sets_the_scale_matched_args_and_cards_options(tmp_path):
    """ARGS gets w in spread units and CARDS a tau_u quantile unless the overrides set them (RESULTS.md section 4)."""
    cfg = GoldConfig(work_dir=str(tmp_path), search_overrides={"n": 8, "args": {"k": 3, "w": 0.5}},
                     search_methods=["bon", "cbs", "args", "cards"])
    got = stages.search_config(cfg, 0)
    assert list(got.guides)[0] == "orm" and got.gold_models == [str(cfg.teacher_dir)] and got.n == 8
    assert (got.args.k, got.args.w, got.args.w_units) == (3, 0.5, "spread")
    assert got.cards.tau_u_quantile == 0.9 and got.cards.max_segment_tokens == 16  # prm_guided's CARDS defaults kept
    cfg.search_overrides = {"args": {"k": 3, "w_units": "raw"}}
    assert stages.search_config(cfg, 0).args.w_units == "raw"
    assert stages.search_config(cfg, 0).check_gold is False  # the teacher labelled the pairs: accuracy 1
    cfg.search_methods = ["bon", "cbs"]
    got = stages.search_config(cfg, 0)
    assert got.args.w_units == "raw" and got.cards.tau_u_quantile is None
    cfg.search_overrides = {"cbs_beam_width": 4}
    with pytest.raises(ValueError, match="search_overrides"):
        stages.search_config(cfg, 0)


def _write_value(d, ids, rewards, rollouts):
    d.mkdir(parents=True)
    torch.save({"labels": ["full", "t=1", "t=5"], "rewards": rewards}, d / "rewards.pt")
    torch.save({"labels": ["t=1", "t=5"], "ids": ids, "rollouts": rollouts}, d / "process_value.pt")


def test_value_endpoint_pools_seeds_against_a_naive_count(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    roll = {c: torch.tensor(rng.normal(size=(2 * n, 4))) for c in ("t=1", "t=5")}
    roll["t=1"][0] = roll["t=1"][1]  # pair 0 ties in V at t=1: left out
    seeds = []
    for s in range(2):
        rw = {m: {"chosen": torch.tensor(rng.normal(size=(n, 3))), "rejected": torch.tensor(rng.normal(size=(n, 3)))}
              for m in ("orm", "sp")}
        _write_value(tmp_path / f"seed{s}" / "value", [str(i) for i in range(n)], rw, roll)
        seeds.append(rw)
    out = compare.value_endpoint([tmp_path / f"seed{s}" / "value" for s in range(2)], samples=200)
    # naive: per seed, per pair, count agreement; average over seeds per pair, then over pairs
    for m in ("orm", "sp"):
        for cut, j in (("t=1", 1), ("t=5", 2)):
            v = roll[cut].mean(1)
            per_pair = []
            for i in range(n):
                if v[2 * i] == v[2 * i + 1]:
                    continue
                a = [float((seeds[s][m]["chosen"][i, j] > seeds[s][m]["rejected"][i, j]) == (v[2 * i] > v[2 * i + 1]))
                     for s in range(2)]
                per_pair.append(sum(a) / 2)
            assert out["models"][m][cut]["agreement"] == pytest.approx(statistics.fmean(per_pair))
            assert out["models"][m][cut]["pairs"] == len(per_pair)
    d = out["models"]["sp"]["t<=20"]["vs_baseline"]
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]
    assert set(out["models"]["orm"]) == {"t=1", "t=5", "t<=20"}


def test_head_to_head_counts_the_same_response_as_a_tie():
    a = {"text": "yes", "complete": True, "gold": 0.5}
    assert compare.head_to_head({**a, "gold": 0.5 + 1e-6}, a) == 0.5  # one response, two noisy judgements
    assert compare.head_to_head({**a, "complete": False, "gold": 0.6}, a) == 1.0  # the cut one is another response
    assert compare.head_to_head({"text": "no", "complete": True, "gold": 0.4}, a) == 0.0
    assert compare.head_to_head({"gold": 0.5}, {"gold": 0.5}) == 0.5  # texts unknown: equal rewards tie


def test_search_endpoint_by_hand_and_the_report(tmp_path):
    def rec(pid, orm, sp, samples):
        return {"id": pid, "samples": [{"gold": g} for g in samples],
                "outputs": {"orm/bon": {"gold": orm}, "sp/bon": {"gold": sp}},
                "compute": {"orm/bon": {"scorer_tokens": 10, "seconds": 1.0}}}

    for s, rows in enumerate([[rec("a", 1.0, 2.0, [0.0, 2.0]), rec("b", 1.0, 1.0, [0.0, 2.0])],
                              [rec("a", 1.0, 0.0, [0.0, 2.0]), rec("b", 0.0, 1.0, [0.0, 2.0])]]):
        d = tmp_path / f"seed{s}" / "search"
        d.mkdir(parents=True)
        (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = compare.search_endpoint([tmp_path / f"seed{s}" / "search" for s in range(2)], ["orm", "sp"], ["bon"], 200)
    # sample SD of the unguided golds {0, 2, 0, 2, ...} is 1; per prompt (mean over seeds):
    # a: sp 1.0 - orm 1.0 = 0; b: sp 1.0 - orm 0.5 = 0.5 -> mean 0.25 SD
    assert out["teacher_sample_std"] == pytest.approx(1.0)
    assert out["vs_orm"]["sp/bon"]["delta_sd"] == pytest.approx(0.25)
    # head to head: a: win, loss -> 0.5; b: tie, win -> 0.75 -> mean 0.625
    assert out["vs_orm"]["sp/bon"]["win_rate"] == pytest.approx(0.625)
    assert out["rewards"]["orm/bon"]["mean"] == pytest.approx(0.75)
    assert out["compute_per_prompt"]["orm/bon"]["scorer_tokens"] == 10
    summary = compare.write_report(tmp_path, [0, 1, 2], ["orm", "sp"], ["bon"], 100)
    assert summary["seeds_search"] == ["seed0", "seed1"] and "value" not in summary
    assert "win rate vs ORM-guided" in (tmp_path / "summary.md").read_text()
    assert "(2 training seeds pooled)" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "teacher_reward.png").exists()
    compare.write_report(tmp_path, [0, 1], ["orm", "sp"], ["bon"], 100, name="summary-bon")
    assert (tmp_path / "summary-bon.md").exists() and (tmp_path / "summary-bon-teacher_reward.png").exists()
    compare.write_report(tmp_path, [1], ["orm", "sp"], ["bon"], 100, name="summary-one")
    assert "(1 training seed)" in (tmp_path / "summary-one.md").read_text()


def test_sizing_from_a_pilot_by_hand(tmp_path):
    """The size stage: per-unit SD of each paired difference, the detectable difference now and the units the
    targets need, recomputed naively from the pilot's per-pair agreements and per-prompt teacher rewards."""
    import math

    from experiments.gold import sizing

    rng = np.random.default_rng(1)
    n = 30
    roll = {c: torch.tensor(rng.normal(size=(2 * n, 4))) for c in ("t=1", "t=5")}
    rw = {m: {"chosen": torch.tensor(rng.normal(size=(n, 3))), "rejected": torch.tensor(rng.normal(size=(n, 3)))}
          for m in ("orm", "sp")}
    cfg = GoldConfig(work_dir=str(tmp_path), contenders=["orm", "sp-prm-teacher-ref"], value_name="pilot-value",
                     search_name="pilot-search", search_methods=["bon"], search_guides=["orm", "sp"],
                     bootstrap_resamples=100, sizing_targets={"value": 0.05, "search": 0.2})
    _write_value(cfg.seed_dir(0) / "pilot-value", [str(i) for i in range(n)], rw, roll)
    golds = rng.normal(size=(8, 3))  # per prompt: orm-guided, sp-guided, one unguided sample
    d = cfg.seed_dir(0) / "pilot-search"
    d.mkdir(parents=True)
    (d / "records.jsonl").write_text("".join(json.dumps(
        {"id": f"p{i}", "samples": [{"gold": g[2]}], "outputs": {"orm/bon": {"gold": g[0]}, "sp/bon": {"gold": g[1]}}})
        + "\n" for i, g in enumerate(golds.tolist())))
    out = sizing.size_design(cfg)
    # (a) naive: per pair, agreement at each cut (V ties none here), averaged over the cuts, sp minus orm
    diffs = []
    for i in range(n):
        per_cut = []
        for cut, j in (("t=1", 1), ("t=5", 2)):
            v = roll[cut].mean(1)
            agree = {m: float((rw[m]["chosen"][i, j] > rw[m]["rejected"][i, j]) == (v[2 * i] > v[2 * i + 1]))
                     for m in ("orm", "sp")}
            per_cut.append(agree["sp"] - agree["orm"])
        diffs.append(sum(per_cut) / 2)
    sd = statistics.stdev(diffs)
    a = out["value"]["contrasts"]["sp"]
    assert a["sd"] == pytest.approx(sd) and a["pairs"] == n and a["mde"] == pytest.approx(2.8 * sd / math.sqrt(n))
    assert a["pairs_needed"] == math.ceil((2.8 * sd / 0.05) ** 2)
    # (b) naive: per prompt (sp - orm) / SD of the unguided samples
    std = statistics.pstdev(golds[:, 2].tolist())
    db = [(g[1] - g[0]) / std for g in golds.tolist()]
    b = out["search"]["contrasts"]["sp/bon"]
    assert b["sd"] == pytest.approx(statistics.stdev(db)) and b["prompts"] == 8
    assert b["prompts_needed"] == math.ceil((2.8 * statistics.stdev(db) / 0.2) ** 2)
    assert "prompts needed" in (tmp_path / "sizing.md").read_text()
    cfg.value_name, cfg.search_name = "nothing", "nothing"
    with pytest.raises(FileNotFoundError, match="no finished value"):
        sizing.size_design(cfg)


@pytest.mark.slow
def test_every_stage_end_to_end_on_tiny_models(tmp_path, smollm_tokenizer, tiny_llama_lm_dir, tiny_bert_rm_dir):
    """The real stage commands (sp-prm subprocesses, evaluate-rm with process_value, prm_guided, compare)."""
    cfg = _cfg(tmp_path, eval_prompts=4, samples_per_prompt=3)
    cfg.policy, cfg.student, cfg.orm_epochs, cfg.extra_steps, cfg.extra_batch = (
        str(tiny_llama_lm_dir), str(tiny_bert_rm_dir), 1, 2, 2)
    cfg.sst_pairs, cfg.value_pairs, cfg.token_counts, cfg.rollouts = 6, 4, [1, 2], 2
    cfg.search_prompts_per_fold, cfg.seeds, cfg.device = 1, [0], "cpu"
    cfg.data = dataclasses.replace(cfg.data, max_new_tokens=4)
    cfg.search_overrides = {"n": 2, "cbs": {"beam_width": 1, "successors": 2, "chunk_length": 2},
                            "calibration_prompts": 1, "coherence_model": None, "progress": False}
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(tiny_llama_config(smollm_tokenizer)).eval()
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    rm.config.sp_prm = {"prefix": cfg.teacher.prefix.to_dict()}
    cfg.teacher_dir.mkdir(parents=True)
    rm.save_pretrained(cfg.teacher_dir)
    smollm_tokenizer.save_pretrained(cfg.teacher_dir)
    (cfg.teacher_dir / "teacher.json").write_text("{}")
    from experiments.gold.run import run_stage

    for stage in ("data", "contenders", "value", "search", "compare", "size"):
        run_stage(cfg, stage)
    for name in cfg.contenders:
        assert (cfg.seed_dir(0) / name / "config.json").exists(), name
    value = json.loads((cfg.seed_dir(0) / "value" / "results.json").read_text())
    assert set(value["process_value"]["cuts"]) == {"full", "t=1", "t=2"}
    summary = json.loads((cfg.root / "summary.json").read_text())
    assert set(summary["value"]["models"]) == set(cfg.contenders)
    assert "sp-prm-teacher-ref/bon" in summary["search"]["vs_orm"]
    times = json.loads((cfg.seed_dir(0) / "times.json").read_text())
    assert any(k.startswith("train ") for k in times) and "search" in times
    assert json.loads((cfg.root / "sizing.json").read_text())["value"]["contrasts"]


@pytest.mark.slow
def test_finetune_teacher_option(tmp_path, tiny_bert_rm_dir):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Yes, answer {i}.", "rejected": f"no {i}"} for i in range(20)]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = GoldConfig(work_dir=str(tmp_path / "gold"), device="cpu", bootstrap_resamples=50, teacher={
        "kind": "finetune", "backbone": str(tiny_bert_rm_dir), "sources": [str(src)], "prefix": FMT.to_dict()})
    report = teacher.finetune_teacher(cfg)
    assert report["pairs_train"] + report["pairs_held_out"] == 20 and 0 <= report["held_out_accuracy"] <= 1
    assert teacher.teacher_ready(cfg)
    assert load_reward_model(str(cfg.teacher_dir), device="cpu").config.sp_prm["loss"] == "orm"
