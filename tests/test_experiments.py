"""Experiment recipes (issue 8): PrefEval parsing on real rows, option scoring, summaries on hand-made records,
tiny end-to-end runs with resume, and the recipes parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import prefeval_choice as pc
from experiments import rear_verifiable as rv
from experiments.common import read_records
from sp_prm.config import load_config
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "experiments"


# -- PrefEval ------------------------------------------------------------------------------------------


def test_prefeval_parser_on_real_rows():
    root = shared_data("prefeval")
    items = pc.load_items(root, seed=0)
    topics = sorted(p.stem for p in (root / "implicit_preference" / "choice-based").glob("*.json"))
    n_rows = sum(len(json.loads((root / "mcq_options" / f"{t}.json").read_text())) for t in topics)
    assert len(items) == n_rows and len({it["id"] for it in items}) == n_rows
    by_id = {it["id"]: it for it in items}
    for topic in topics[:3]:
        mcq = json.loads((root / "mcq_options" / f"{topic}.json").read_text())
        choice = json.loads((root / "implicit_preference" / "choice-based" / f"{topic}.json").read_text())
        for i in (0, len(mcq) - 1):
            it = by_id[f"{topic}:{i}"]
            assert it["options"][it["gold"]] == mcq[i]["classification_task_options"][0].strip()
            assert sorted(it["options"]) == sorted(o.strip() for o in mcq[i]["classification_task_options"])
            assert it["question"] == choice[i]["question"].strip()
            assert [m["role"] for m in it["conversation"]] == ["user", "assistant", "user", "assistant"]
            assert it["conversation"][2]["content"] == choice[i]["conversation"]["user_selection"].strip()
    # The shuffle hides the position: the gold index is spread over A-D; the order is seeded.
    golds = [it["gold"] for it in items]
    assert all(golds.count(k) > len(items) / 8 for k in range(4))
    assert [it["id"] for it in pc.load_items(root, seed=0, limit=5)] == [it["id"] for it in items[:5]]
    assert [it["id"] for it in pc.load_items(root, seed=1, limit=5)] != [it["id"] for it in items[:5]]
    with pytest.raises(ValueError, match="not in"):
        pc.load_items(root, topics=["no_such_topic"])


def test_prefeval_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        pc.load_items(tmp_path / "nowhere")


def _fake_prefeval(root: Path, rows: int = 3) -> Path:
    for sub in ("implicit_preference/choice-based", "mcq_options"):
        (root / sub).mkdir(parents=True)
    choice, mcq = [], []
    for i in range(rows):
        q = f"Which snack should I buy for trip {i}?"
        choice.append({"preference": "p", "question": q, "conversation": {
            "query": "What should I eat?", "assistant_options": "Nuts, fruit, cake or chips.",
            "user_selection": "Fruit, please; I avoid nuts.", "assistant_acknowledgment": "Fruit it is."}})
        mcq.append({"preference": "p", "question": q,
                    "classification_task_options": ["Fresh fruit.", "Salted nuts.", "Nut cake.", "Peanut chips."]})
    (root / "implicit_preference/choice-based/food.json").write_text(json.dumps(choice))
    (root / "mcq_options/food.json").write_text(json.dumps(mcq))
    return root


def test_prefeval_option_scores_are_the_two_log_likelihoods(policy, tmp_path):
    items = pc.load_items(_fake_prefeval(tmp_path / "pe", 2))
    cfg = pc.PrefEvalChoiceConfig()
    recs = pc.score_items(policy, items, cfg)
    for it, rec in zip(items, recs):
        assert rec["gold"] == it["gold"] and len(rec["A"]) == 4
        q = [{"role": "user", "content": it["question"]}]
        for k, option in enumerate(it["options"]):
            ids = policy.tokenizer(option, add_special_tokens=False)["input_ids"] + [policy.stop_ids[0]]
            assert rec["n_terms"][k] == len(ids)
            a = policy.sequence_logprobs(policy.encode(q), ids).sum().item()
            b = policy.sequence_logprobs(policy.encode(it["conversation"] + q), ids).sum().item()
            assert rec["A"][k] == pytest.approx(a, abs=1e-3)
            assert rec["B"][k] == pytest.approx(b, abs=1e-3)


def test_prefeval_summary_by_hand():
    recs = [
        # gold 0: B favours it strongly, A favours option 1; option 0 is the longest.
        {"id": "a", "topic": "t", "gold": 0, "n_terms": [8, 2, 3, 4], "A": [-20.0, -4.0, -9.0, -9.0],
         "B": [-10.0, -6.0, -12.0, -12.0], "compute": {"seconds": 1.0, "scorer_tokens": 10}},
        # gold 2: everything agrees on option 2, the shortest.
        {"id": "b", "topic": "t", "gold": 2, "n_terms": [5, 5, 2, 5], "A": [-9.0, -9.0, -1.0, -9.0],
         "B": [-9.0, -9.0, -1.0, -9.0], "compute": {"seconds": 3.0, "scorer_tokens": 30}},
    ]
    s = pc.summarize_records(recs, [0.0, 1.0, 20.0], resamples=200)
    acc = {k: v["mean"] for k, v in s["rules"].items()}
    assert acc["REAR λ=0"] == 0.5  # A picks option 1 on item a
    assert acc["REAR λ=1"] == 0.5  # B's sum still prefers the short option 1 (-6 > -10)
    assert acc["REAR λ=20"] == 1.0  # -19 * A + 20 * B: 180 vs 4 for option 0
    assert acc["REAR λ=1 /len"] == 1.0  # per token B prefers option 0 (-1.25 > -3)
    assert acc["shortest option"] == 0.5 and acc["longest option"] == 0.5
    assert s["gold_is_shortest"] == 0.5 and s["compute"]["seconds_per_item"] == 2.0
    assert s["rules"]["REAR λ=20"]["ci_low"] == 1.0
    cfg = pc.PrefEvalChoiceConfig(lams=[0.0, 1.0, 20.0])
    md = pc.to_markdown(s, cfg, "cmd")
    assert "| REAR λ=20 | 100.0 [100.0, 100.0] |" in md


def test_prefeval_end_to_end_and_resume(policy, tmp_path):
    data = _fake_prefeval(tmp_path / "pe", 3)
    out = tmp_path / "out"
    argv = ["--config", str(RECIPES / "prefeval_choice_smollm2.yaml"), "--data_dir", str(data),
            "--output_dir", str(out), "--batch_size", "2", "--progress", "false", "--bootstrap_resamples", "50"]
    cfg = load_config(pc.PrefEvalChoiceConfig, argv)
    pc.run(cfg, policy=policy)
    first = read_records(out / "records.jsonl")
    assert len(first) == 3
    pc.run(cfg, policy=policy)  # resume: nothing left to do
    assert read_records(out / "records.jsonl") == first
    s = pc.write_summary(cfg, "cmd")
    assert s["items"] == 3 and (out / "accuracy_vs_lambda.png").stat().st_size > 0
    assert "REAR λ=inf /len" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match="different"):
        pc.run(load_config(pc.PrefEvalChoiceConfig, argv + ["--seed", "3"]), policy=policy)


# -- verifiable preferences ----------------------------------------------------------------------------


def _cand(text, sat, coh, tokens=5, complete=True):
    return {"text": text, "tokens": tokens, "complete": complete, "satisfied": sat, "coherence": coh}


def test_verifiable_summary_by_hand():
    recs = [
        {"id": "a", "split": "test", "preference_name": "bullets", "question": "q",
         "greedy": _cand("g", False, 0.5),
         "bon": {"A": [-1.0, -5.0, -9.0, -3.0], "B": [-2.0, -3.0, -6.0, -4.0], "n_terms": [2, 4, 10, 3],
                 "genrm": [0.1, 0.3, -1.0, 0.2],
                 "candidates": [_cand("c0", False, 0.9), _cand("c1", True, 0.4), _cand("c2", True, 0.2),
                                _cand("c3", False, 0.7)]},
         "dvts": {"lam": 20.0, "length_normalize": False, "best": 1,
                  "candidates": [_cand("d0", False, 0.1), _cand("d1", True, 0.3)]},
         "compute": {"bon": {"policy_tokens_generated": 40, "seconds": 2.0}}},
        {"id": "b", "split": "test", "preference_name": "no_you", "question": "q2",
         "greedy": _cand("g", True, 0.6),
         "bon": {"A": [-2.0, -1.0, -2.0, -2.0], "B": [-2.0, -1.0, -2.0, -2.0], "n_terms": [3, 3, 3, 3],
                 "genrm": [0.0, 0.0, 0.0, 0.0],
                 "candidates": [_cand("c0", False, 0.5), _cand("c1", False, 0.5), _cand("c2", False, 0.5),
                                _cand("c3", False, 0.5)]},
         "compute": {"bon": {"policy_tokens_generated": 20, "seconds": 4.0}}},
        {"id": "c", "split": "dev", "preference_name": "bullets", "question": "q3", "greedy": _cand("g", True, 0.1),
         "compute": {}},
    ]
    lams = [0.0, 1.0, 3.0]
    picks = rv.method_picks(recs[0], lams)
    # lambda 0: argmax A = c0; lambda 1: argmax B = c0; lambda 3: -2A + 3B = [-4, -(-1)... ] -> c1.
    assert picks["BoN REAR λ=0"]["satisfied"] == 0.0 and picks["BoN REAR λ=0"]["coherence"] == 0.9
    assert picks["BoN REAR λ=1"]["coherence"] == 0.9
    assert picks["BoN REAR λ=3"]["coherence"] == 0.4  # scores [-4, 1, 0, -6]
    # per token at lambda 3: [-2, 0.25, 0, -2] -> c1 as well; at lambda 1: [-1, -0.75, -0.6, -1.33] -> c2.
    assert picks["BoN REAR λ=1 /len"]["coherence"] == 0.2
    assert picks["random pick (expected)"]["satisfied"] == 0.5
    assert picks["random pick (expected)"]["coherence"] == pytest.approx(0.55)
    assert picks["oracle (any of N)"]["satisfied"] == 1.0
    assert picks["BoN GenRM"]["coherence"] == 0.4
    assert picks["DVTS REAR λ=20"]["satisfied"] == 1.0
    s = rv.summarize_records(recs, lams, resamples=200)
    t = s["test"]
    assert t["prompts"] == 2 and s["dev"]["prompts"] == 1
    assert t["methods"]["oracle (any of N)"]["satisfied"]["mean"] == 0.5
    assert t["methods"]["greedy"]["satisfied"]["mean"] == 0.5
    assert t["methods"]["random pick (expected)"]["satisfied"]["mean"] == 0.25
    assert t["methods"]["BoN REAR λ=3"]["satisfied_minus_random"]["mean"] == pytest.approx(0.25)
    assert t["methods"]["BoN REAR λ=3"]["by_preference"] == {"bullets": {"n": 1, "rate": 1.0},
                                                            "no_you": {"n": 1, "rate": 0.0}}
    assert t["methods"]["DVTS REAR λ=20"]["satisfied"]["n"] == 1  # only prompts that ran DVTS
    assert t["compute"]["bon"]["seconds_per_prompt"] == 3.0
    assert t["compute"]["bon"]["policy_tokens_generated_per_prompt"] == 30
    cfg = rv.RearVerifiableConfig(lams=lams)
    md = rv.to_markdown(s, cfg, "cmd")
    assert "## test split (2 prompts)" in md and "held out" in md


def test_verifiable_end_to_end_and_resume(policy, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"How do I bake bread number {i}?"}) + "\n"
                            for i in range(6)))
    out = tmp_path / "out"
    argv = ["--config", str(RECIPES / "rear_verifiable_smollm2.yaml"), "--data_path", str(data),
            "--output_dir", str(out), "--questions", "2", "--dev_questions", "1", "--n", "4", "--max_new_tokens",
            "6", "--dvts.max_step_tokens", "3", "--coherence_model", "null", "--progress", "false",
            "--bootstrap_resamples", "50", "--lams", "[0, 1, 20, .inf]"]
    cfg = load_config(rv.RearVerifiableConfig, argv)
    rv.run(cfg, policy=policy)
    recs = read_records(out / "records.jsonl")
    assert [r["split"] for r in recs] == ["dev", "test", "test"]
    for r in recs:
        assert len(r["bon"]["candidates"]) == 4 and len(r["bon"]["A"]) == 4 and len(r["bon"]["genrm"]) == 4
        assert len(r["dvts"]["candidates"]) == 4 and "text" in r["greedy"]
        assert all(isinstance(c["satisfied"], bool) for c in r["bon"]["candidates"])
        assert set(r["compute"]) == {"greedy", "bon", "genrm", "dvts"}
        assert r["compute"]["bon"]["policy_tokens_generated"] == sum(c["tokens"] for c in r["bon"]["candidates"])
    rv.run(cfg, policy=policy)  # resume: nothing left to do
    assert read_records(out / "records.jsonl") == recs
    s = rv.write_summary(cfg, "cmd")
    assert s["test"]["prompts"] == 2 and (out / "satisfaction_vs_lambda.png").stat().st_size > 0
    with pytest.raises(ValueError, match="different"):
        rv.run(load_config(rv.RearVerifiableConfig, argv + ["--seed", "5"]), policy=policy)


def test_verifiable_prompt_selection_on_real_data():
    path = shared_data("hh-rlhf-helpful-dove", "test.jsonl")
    cfg = rv.RearVerifiableConfig(data_path=str(path), questions=30, dev_questions=10)
    recs = rv.select_prompts(cfg)
    assert [r["split"] for r in recs] == ["dev"] * 10 + ["test"] * 30
    assert len({r["id"] for r in recs}) == 40
    assert len({r["id"].split("-")[0] for r in recs}) == 40  # each question used once
    assert rv.select_prompts(cfg) == recs
    bigger = rv.select_prompts(rv.RearVerifiableConfig(data_path=str(path), questions=60, dev_questions=10))
    assert bigger[:40] == recs  # more questions extend the test split; dev stays the same
    names = [r["preference_name"] for r in recs if r["split"] == "test"]
    assert {names.count(p) for p in cfg.preferences} == {6}


@pytest.mark.parametrize("path", sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith(("prm_guided", "gold"))),
                         ids=lambda p: p.name)  # prm_guided: tests/test_prm_guided.py; gold: tests/test_gold.py
def test_experiment_recipes_parse(path):
    cls = rv.RearVerifiableConfig if path.name.startswith("rear_verifiable") else pc.PrefEvalChoiceConfig
    cfg = load_config(cls, ["--config", str(path)])
    assert cfg.policy.model == "builtin:smollm2-135m-instruct"
    assert 20.0 in cfg.lams and 0.0 in cfg.lams


def test_changed_keys_ignores_fields_added_later():
    from experiments.common import changed_keys

    old = {"policy": {"model": "m", "dtype": "float32"}, "n": 16, "seed": 0}
    # a field added to PolicyConfig later (with its default) is not a change of the run
    new = {"policy": {"model": "m", "dtype": "float32", "backend": "hf"}, "n": 16, "seed": 0, "threads": 1}
    assert changed_keys(old, new) == []
    assert changed_keys(old, {**new, "policy": {"model": "m", "dtype": "bfloat16"}}) == ["policy.dtype"]
    assert changed_keys(old, {**new, "n": 8, "seed": 1}, ["n"]) == ["n"]
