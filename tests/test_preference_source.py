"""The one preference-source block: seeded samples drawn from the whole file, folders as one table."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from data_prep.loaders import PreferenceSource, Sample, load_preferences
from data_prep.prepare import PrepareConfig
from sp_prm.config import describe, load_config
from sp_prm.evaluate import EvaluateConfig
from sp_prm.train_config import SPPRMConfig, help_text
from tests.conftest import shared_data

HH = shared_data("hh-rlhf", "harmless-base", "test.jsonl.gz")


def _positions(pairs, full) -> list[float]:
    where = {pid: i for i, pid in enumerate(full["id"])}
    return [where[pid] / len(full) for pid in pairs["id"]]


def test_fraction_samples_across_the_whole_file():
    full, _ = load_preferences(PreferenceSource(source=str(HH)))
    block = PreferenceSource(source=str(HH), sample=Sample(fraction=0.2))
    pairs, report = load_preferences(block)
    assert len(pairs) == round(0.2 * len(full)) and report.skipped["not_in_sample"] == len(full) - len(pairs)
    # composition: each fifth of the file holds about a fifth of the sample (binomial sd ~ 2%)
    pos = _positions(pairs, full)
    for q in range(5):
        share = sum(q / 5 <= p < (q + 1) / 5 for p in pos) / len(pos)
        assert 0.14 < share < 0.26, (q, share)
    # the sample keeps the file order, and a plain "first 20%" would sit in the first fifth only
    assert pos == sorted(pos)
    first, _ = load_preferences(PreferenceSource(source=str(HH), sample=Sample(fraction=0.2, shuffle_seed="first")))
    assert max(_positions(first, full)) < 0.2 and first["id"] == full["id"][: len(first)]
    # seeded and reproducible; another seed, another sample
    again, _ = load_preferences(block)
    other, _ = load_preferences(PreferenceSource(source=str(HH), sample=Sample(fraction=0.2, shuffle_seed=1)))
    assert again["id"] == pairs["id"] and other["id"] != pairs["id"]


def test_sample_ignores_file_order_and_nests(tmp_path):
    rows = [json.loads(line) for line in gzip.open(HH, "rt")][:300]
    random.Random(0).shuffle(rows)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(json.dumps(r) for r in rows))
    original = tmp_path / "original.jsonl"
    original.write_text("\n".join(json.dumps(r) for r in sorted(rows, key=lambda r: r["chosen"])))
    a, _ = load_preferences(PreferenceSource(source=str(shuffled), sample=Sample(limit=40)))
    b, _ = load_preferences(PreferenceSource(source=str(original), sample=Sample(limit=40)))
    assert len(a) == 40 and set(a["id"]) == set(b["id"])
    small, _ = load_preferences(PreferenceSource(source=str(shuffled), sample=Sample(limit=15)))
    assert set(small["id"]) < set(a["id"])
    # limit and fraction together: the smaller of the two
    both, _ = load_preferences(PreferenceSource(source=str(shuffled), sample=Sample(limit=10, fraction=0.5)))
    assert len(both) == 10
    # the sample is drawn after the train/eval split: exactly N pairs of the eval side
    held, _ = load_preferences(PreferenceSource(source=str(shuffled), subset="eval", sample=Sample(limit=12)))
    all_held, _ = load_preferences(PreferenceSource(source=str(shuffled), subset="eval"))
    assert len(held) == 12 and set(held["id"]) <= set(all_held["id"])
    with pytest.raises(ValueError, match="fraction"):
        Sample(fraction=1.5)
    with pytest.raises(ValueError, match="shuffle_seed"):
        Sample(shuffle_seed="random")


def test_folder_of_files_is_one_table(tmp_path):
    # the real folder: its only file is named for the test split
    folder, _ = load_preferences(PreferenceSource(source=str(HH.parent), split="test"))
    file, _ = load_preferences(PreferenceSource(source=str(HH)))
    assert folder["id"] == file["id"]
    with pytest.raises(FileNotFoundError, match=r"split 'train'.*\['test'\]"):
        load_preferences(PreferenceSource(source=str(HH.parent), split="train"))
    # a folder of unnamed files of several types: all of them, in name order
    rows = [json.loads(line) for line in gzip.open(HH, "rt")][:30]
    pairs = [{"prompt": f"q{i}", "chosen": r["chosen"][-40:], "rejected": r["rejected"][-40:] + "!"}
             for i, r in enumerate(rows)]
    mixed = tmp_path / "mixed"
    (mixed / "part").mkdir(parents=True)
    (mixed / "a.jsonl").write_text("\n".join(json.dumps(p) for p in pairs[:10]))
    with gzip.open(mixed / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(p) for p in pairs[10:20]))
    from datasets import Dataset

    Dataset.from_list(pairs[20:]).to_parquet(mixed / "part" / "c.parquet")
    (mixed / "notes.txt").write_text("ignored")
    loaded, report = load_preferences(PreferenceSource(source=str(mixed)))
    assert report.rows_read == 30 and [p["content"] for m in loaded["prompt"] for p in m] == [f"q{i}" for i in range(30)]
    # named splits: only the asked one
    named = tmp_path / "named"
    named.mkdir()
    (named / "train.jsonl").write_text("\n".join(json.dumps(p) for p in pairs[:20]))
    (named / "test.jsonl").write_text("\n".join(json.dumps(p) for p in pairs[20:]))
    train, _ = load_preferences(PreferenceSource(source=str(named)))
    test, _ = load_preferences(PreferenceSource(source=str(named), split="test"))
    assert (len(train), len(test)) == (20, 10)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        load_preferences(PreferenceSource(source=str(empty)))


def test_one_block_one_help_in_every_command(tmp_path):
    assert issubclass(PrepareConfig, PreferenceSource) and issubclass(EvaluateConfig, PreferenceSource)
    texts = [describe(PrepareConfig), describe(EvaluateConfig), help_text()]
    for option in ("--sample.fraction", "--sample.shuffle_seed", "--format", "--data_dir", "--columns"):
        helps = {t.split(f"  {option} (default")[1].split("\n")[1].strip() for t in texts}
        assert len(helps) == 1, option
    # the paper's "20% of HH-RLHF" is one line of a recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: {HH}\nsample: {{fraction: 0.2}}\n")
    cfg = load_config(PrepareConfig, ["--config", str(recipe), "--sample.shuffle_seed", "3"])
    assert cfg.source_block().sample == Sample(fraction=0.2, shuffle_seed=3)
    assert EvaluateConfig(models=["m"]).split == "test" and EvaluateConfig(models=["m"]).subset == "eval"
    train_cfg = SPPRMConfig(dataset=str(HH), loss="orm", sample={"limit": 5}, use_cpu=True, output_dir=str(tmp_path))
    pairs, _ = load_preferences(train_cfg.source_block())
    assert len(pairs) == 5
    with pytest.raises(ValueError, match="sample"):
        SPPRMConfig(dataset=str(tmp_path), loss="weighted", sample={"fraction": 0.5}, use_cpu=True,
                    output_dir=str(tmp_path))
