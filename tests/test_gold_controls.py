"""experiments.gold.controls against hand values and a naive recomputation on hand-built records."""

from __future__ import annotations

import json
import statistics

import pytest

from experiments.gold import controls


def test_spearman_by_hand():
    assert controls.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert controls.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks [0, 1.5, 1.5, 3], y ranks [0, 1, 2, 3] -> rho = 4.5 / sqrt(4.5 * 5)
    assert controls.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert controls.spearman([1, 1, 1], [1, 2, 3]) != controls.spearman([1, 1, 1], [1, 2, 3])  # NaN


def _o(gold, **kw):
    return {"gold": gold, "tokens": 4, "complete": True, **kw}


def _records():
    recs = []
    for i, (golds, orm, spp) in enumerate([([0.0, 1.0, 2.0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]),
                                           ([1.0, -1.0, 0.5], [1.0, 0.0, 2.0], [2.0, 0.0, 1.0]),
                                           ([2.0, 0.0, -2.0], [0.0, 1.0, 2.0], [2.0, 1.0, 0.0])]):
        samples = [_o(g, **{"guide:orm": a, "guide:sp": b}) for g, a, b in zip(golds, orm, spp)]
        pick = {"orm": max(range(3), key=lambda j: orm[j]), "sp": max(range(3), key=lambda j: spp[j])}
        recs.append({"id": f"p{i}", "fold": 0, "samples": samples,
                     "outputs": {"orm/bon": _o(golds[pick["orm"]], pick=pick["orm"]),
                                 "sp/bon": _o(golds[pick["sp"]], pick=pick["sp"])}})
    return recs


def test_controls_equal_a_naive_recomputation(tmp_path):
    recs = _records()
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = controls.search_controls(tmp_path, ["orm", "sp"], resamples=200)
    sd = statistics.pstdev([s["gold"] for r in recs for s in r["samples"]])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for run in ("orm/bon", "sp/bon"):
        naive = mean([(r["outputs"][run]["gold"] - mean([s["gold"] for s in r["samples"]])) / sd for r in recs])
        assert c["minus_sample_sd"][run]["mean"] == pytest.approx(naive)
    oracle = mean([(max(s["gold"] for s in r["samples"]) - mean([s["gold"] for s in r["samples"]])) / sd
                   for r in recs])
    assert c["minus_sample_sd"]["gold-best of N (oracle)"]["mean"] == pytest.approx(oracle)
    # hand: orm ranks prompt 0 perfectly (+1), prompt 1 as (0.5 | 1.0, -1.0) -> 0.5, prompt 2 reversed (-1)
    assert c["spearman_with_teacher"]["orm"]["mean"] == pytest.approx((1.0 + 0.5 - 1.0) / 3)
    assert c["spearman_with_teacher"]["sp"]["mean"] == pytest.approx((-1.0 + 1.0 + 1.0) / 3)
    assert c["spearman_with_teacher"]["sp - orm"]["mean"] == pytest.approx((-2.0 + 0.5 + 2.0) / 3)
    assert c["same_bon_pick"]["sp"] == pytest.approx(0.0)  # picks (2, 0), (2, 0), (2, 0)
    assert "| orm/bon |" in controls.to_markdown(c)


def test_controls_contrast_every_guide_with_the_baseline(tmp_path):
    """A third guide (here a copy of orm's scores) gets its own contrast and same-pick share against orm."""
    recs = _records()
    for r in recs:
        for s in r["samples"]:
            s["guide:copy"] = s["guide:orm"]
        r["outputs"]["copy/bon"] = dict(r["outputs"]["orm/bon"])
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = controls.search_controls(tmp_path, ["orm", "sp", "copy"], resamples=200)
    assert c["spearman_with_teacher"]["copy - orm"]["mean"] == pytest.approx(0.0)
    assert c["spearman_with_teacher"]["sp - orm"]["mean"] == pytest.approx((-2.0 + 0.5 + 2.0) / 3)
    assert c["same_bon_pick"] == pytest.approx({"sp": 0.0, "copy": 1.0})
    assert "| copy | 100.0% of prompts |" in controls.to_markdown(c)


def test_missing_records_is_a_short_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        controls.main([str(tmp_path)])
    assert e.value.code == 2
    assert "no search records" in capsys.readouterr().err


def test_seed_control_equals_a_naive_recomputation(tmp_path, capsys):
    recs_a = _records()
    recs_b = json.loads(json.dumps(recs_a))
    # seed b's ORM ranks every prompt's samples the other way round; its SP-PRM is unchanged
    for r in recs_b:
        scores = [-s["guide:orm"] for s in r["samples"]]
        pick = max(range(3), key=lambda j: scores[j])
        r["outputs"]["orm/bon"] = _o(r["samples"][pick]["gold"], pick=pick)
    recs_b.append({**recs_b[0], "id": "only-in-b"})  # a prompt of one seed only is left out
    da, db = tmp_path / "a", tmp_path / "b"
    for d, recs in ((da, recs_a), (db, recs_b)):
        d.mkdir()
        (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = controls.seed_controls(da, db, ["orm", "sp"], resamples=200)
    sd = statistics.pstdev([s["gold"] for r in recs_a for s in r["samples"]])
    naive = [(b["outputs"]["orm/bon"]["gold"] - a["outputs"]["orm/bon"]["gold"]) / sd for a, b in zip(recs_a, recs_b)]
    assert c["prompts"] == 3
    assert c["other_minus_this_sd"]["orm/bon"]["mean"] == pytest.approx(sum(naive) / 3)
    assert c["other_minus_this_sd"]["orm/bon"]["per_prompt_sd"] == pytest.approx(statistics.pstdev(naive))
    assert c["other_minus_this_sd"]["sp/bon"]["mean"] == pytest.approx(0.0)
    # orm picks (2, 2, 2) in seed a and (0, 1, 0) in seed b: never the same; sp always the same
    assert c["same_samples"]
    assert c["same_bon_pick_across_seeds"] == {"orm": pytest.approx(0.0), "sp": pytest.approx(1.0)}
    # other samples in seed b (another search seed): the pick indices are not compared
    recs_b[1]["samples"][0]["gold"] += 1.0
    (db / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs_b))
    c2 = controls.seed_controls(da, db, ["orm", "sp"], resamples=200)
    assert not c2["same_samples"] and c2["same_bon_pick_across_seeds"] == {}
    assert c2["other_minus_this_sd"]["orm/bon"]["mean"] == pytest.approx(c["other_minus_this_sd"]["orm/bon"]["mean"])
    controls.main([str(da), "--other_seed", str(db), "--guides", "orm,sp", "--resamples", "200"])
    assert "| orm/bon |" in capsys.readouterr().out
    # named after the other seed's folder, so a control against a third seed does not overwrite this one
    assert (da / f"seed_control-{tmp_path.name}-b.md").exists()
    assert json.loads((da / f"seed_control-{tmp_path.name}-b.json").read_text())["prompts"] == 3
    assert controls.seed_control_stem(tmp_path / "seed2" / "search") == "seed_control-seed2"


def test_signed_cells_format_by_hand():
    from experiments.common import fmt

    s = {"mean": 0.04, "ci_low": -0.0431, "ci_high": 0.12}
    assert fmt(s, signed=True) == "+0.040 [-0.043, +0.120]"
    assert fmt(s) == "0.040 [-0.043, 0.120]"  # unsigned, as every other table prints it
    assert fmt(s, percent=True, signed=True) == "+4.0 [-4.3, +12.0]"
