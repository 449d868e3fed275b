"""End-to-end `sp-prm prepare` on real HH-RLHF rows with tiny reference RMs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import load_from_disk

from data_prep import prepare as prep
from data_prep.loaders import load_preferences
from data_prep.prepare import PrepareConfig, prepare
from data_prep.truncation import pair_rng, sst_positions
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.models import load_tokenizer

FMT = {"max_prompt_tokens": 96, "max_response_tokens": 24}


def config(tmp_path, name="out", **kw) -> PrepareConfig:
    values = dict(source="builtin:hh-rlhf-sample", limit=6, output_dir=str(tmp_path / name),
                  prefix=PrefixFormat(**FMT), chunk_size=4)
    values.update(kw)
    return PrepareConfig(**values)


def test_unweighted_sst_positions_and_ids(tmp_path, tiny_llama_rm_dir):
    cfg = config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), sst_k=3, seed=7)
    data = load_from_disk(str(prepare(cfg)))
    pairs, _ = load_preferences("builtin:hh-rlhf-sample", limit=6)
    tok = load_tokenizer(str(tiny_llama_rm_dir))
    expected_rows = 0
    for pair in pairs:
        c = encode(tok, pair["prompt"], pair["chosen"], cfg.prefix)
        r = encode(tok, pair["prompt"], pair["rejected"], cfg.prefix)
        positions = sst_positions(c.length, r.length, 3, pair_rng(7, pair["id"]))
        rows = data.filter(lambda x, i=pair["id"]: x["id"] == i)
        assert rows["position"] == positions  # the same independent draw
        for row in rows:
            t = row["position"]
            assert row["chosen_ids"] == c.sequence(t) and row["rejected_ids"] == r.sequence(t)
            assert row["chosen_length"] == min(t, c.length) and row["chosen_complete"] == c.is_complete(t)
            assert row["chosen"] == tok.decode(c.content_ids[:t])
        expected_rows += len(positions)
    assert len(data) == expected_rows
    assert set(data["weight"]) == {1.0} and set(data["ref_gap"]) == {None}  # Eq. 2 data: nothing filtered
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["counts"]["partial_pairs_kept"] == expected_rows and card["config"]["sst_k"] == 3
    assert (tmp_path / "out" / "README.md").read_text().startswith("# SP-PRM partial-pair dataset")


def test_one_pass_and_per_prefix_reference_agree(tmp_path, tiny_llama_rm_dir):
    common = dict(model_name_or_path=str(tiny_llama_rm_dir), reference_model=str(tiny_llama_rm_dir),
                  truncation="tlt", weight_cap=None)
    fast = load_from_disk(str(prepare(config(tmp_path, "fast", **common))))
    slow = load_from_disk(str(prepare(config(tmp_path, "slow", reference_causal=False, **common))))
    cards = [json.loads((tmp_path / n / "card.json").read_text()) for n in ("fast", "slow")]
    assert cards[0]["stats"]["reference_scoring"] == "one pass per response"
    assert cards[1]["stats"]["reference_scoring"] == "one pass per prefix"
    assert fast["id"] == slow["id"] and fast["position"] == slow["position"]
    for col in ("ref_chosen_reward", "ref_rejected_reward", "weight"):
        assert torch.allclose(torch.tensor(fast[col]), torch.tensor(slow[col]), atol=1e-4), col
    # kept rows are exactly those the reference prefers; weights follow 1/H by the formula
    assert all(g > 0 for g in fast["ref_gap"])
    for row in fast:
        p = 1 / (1 + math.exp(-abs(row["ref_gap"])))
        h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        assert row["weight"] == pytest.approx(1 / h, rel=1e-4)
    dropped = cards[0]["counts"]["partial_pairs_dropped_by_reference"]
    assert dropped > 0 and dropped + len(fast) == cards[0]["counts"]["partial_pairs"]
    assert (tmp_path / "fast" / "gap_histogram.png").exists()


def test_encoder_reference_with_its_own_tokenizer(tmp_path, tiny_llama_rm_dir, tiny_bert_rm_dir):
    cfg = config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), reference_model=str(tiny_bert_rm_dir),
                 prefix=PrefixFormat(template="plain", **FMT))
    data = load_from_disk(str(prepare(cfg)))
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["stats"]["reference_scoring"] == "one pass per prefix" and len(data) > 0
    # the encoder scored the decoded prefix text in its own token space
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_rm_dir).eval()
    btok = load_tokenizer(str(tiny_bert_rm_dir))
    row = data[0]
    enc = encode(btok, row["prompt"], row["chosen"], cfg.prefix)
    ids = enc.sequence(None, end_marker=row["chosen_complete"])
    with torch.no_grad():
        direct = bert(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert direct == pytest.approx(row["ref_chosen_reward"], abs=1e-4)


def test_reuse_overwrite_and_conflict(tmp_path, tiny_llama_rm_dir):
    cfg = config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir))
    out = prepare(cfg)
    stamp = (out / "card.json").stat().st_mtime_ns
    assert prepare(cfg) == out and (out / "card.json").stat().st_mtime_ns == stamp  # reused
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare(config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), sst_k=2))
    prepare(config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), sst_k=2, overwrite=True))
    assert json.loads((out / "card.json").read_text())["config"]["sst_k"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or backup left behind


def test_killed_run_resumes_from_finished_chunks(tmp_path, tiny_llama_rm_dir, monkeypatch):
    cfg = config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), limit=10, chunk_size=3)
    reference = load_from_disk(str(prepare(config(tmp_path, "ref", model_name_or_path=str(tiny_llama_rm_dir),
                                                  limit=10, chunk_size=10))))
    calls = []
    original = prep.Preparer.process

    def crashing(self, pairs):
        calls.append(len(pairs))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(self, pairs)

    monkeypatch.setattr(prep.Preparer, "process", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert not (tmp_path / "out").exists()  # nothing half-written at the output path
    calls.clear()
    monkeypatch.setattr(prep.Preparer, "process", lambda self, pairs: (calls.append(len(pairs)), original(self, pairs))[1])
    data = load_from_disk(str(prepare(cfg)))
    assert calls == [3, 1]  # chunks 0 and 1 were reused; chunks 2 and 3 computed
    assert data.to_dict() == reference.to_dict()


def test_non_finite_reference_reward_is_a_clear_error(tmp_path, tiny_llama_rm_dir, monkeypatch):
    from sp_prm.scoring import RewardScorer

    def nan_positions(self, seqs, positions):
        return [torch.full((len(p),), float("nan")) for p in positions]

    monkeypatch.setattr(RewardScorer, "score_positions", nan_positions)
    cfg = config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), reference_model=str(tiny_llama_rm_dir))
    with pytest.raises(ValueError, match=r"non-finite reward .* chosen prefix of pair '[0-9a-f]+' at position"):
        prepare(cfg)
    assert not (tmp_path / "out").exists()


def test_long_prompts_dropped_and_counted(tmp_path, tiny_llama_rm_dir):
    fmt = PrefixFormat(max_prompt_tokens=60, prompt_overflow="drop", max_response_tokens=24)
    out = prepare(config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), prefix=fmt, limit=20))
    counts = json.loads((out / "card.json").read_text())["counts"]
    assert counts["skipped_prompt_too_long"] > 0
    assert counts["skipped_prompt_too_long"] + counts["pairs_used"] == 20


def test_bad_options():
    with pytest.raises(ValueError, match="truncation"):
        PrepareConfig(truncation="all")
    with pytest.raises(ValueError, match="past_end"):
        PrepareConfig(past_end="pad")


def test_cli_with_recipe_and_overrides(tmp_path, tiny_llama_rm_dir, capsys):
    from sp_prm.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: builtin:hh-rlhf-sample\nmodel_name_or_path: {tiny_llama_rm_dir}\nlimit: 3\n"
                      f"prefix:\n  max_response_tokens: 16\n")
    main(["prepare", "--config", str(recipe), "--output_dir", str(tmp_path / "cli"), "--truncation", "tlt",
          "--prefix.max_prompt_tokens", "64"])
    card = json.loads((tmp_path / "cli" / "card.json").read_text())
    assert card["config"]["truncation"] == "tlt" and card["config"]["prefix"]["max_prompt_tokens"] == 64
    assert card["config"]["prefix"]["max_response_tokens"] == 16
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a user error: a short message, exit code 2
        main(["prepare", "--config", str(recipe), "--sst_kk", "3"])
    assert exit_info.value.code == 2 and "unknown config key 'sst_kk'" in capsys.readouterr().err


def test_drop_past_end_and_full_pair(tmp_path, tiny_llama_rm_dir):
    cfg = config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), truncation="tlt", past_end="drop",
                 include_full_pair=True, limit=4, prefix=PrefixFormat(max_prompt_tokens=96, max_response_tokens=None))
    data = load_from_disk(str(prepare(cfg)))
    for pair_id in set(data["id"]):
        rows = data.filter(lambda x, i=pair_id: x["id"] == i)
        shortest = min(max(rows["chosen_length"]), max(rows["rejected_length"]))
        longest_t = max(rows["position"])
        # every position up to the shorter response, then the complete pair (both sides complete)
        partial = [t for t in rows["position"] if t != longest_t]
        assert partial == list(range(1, len(partial) + 1)) and len(partial) <= shortest
        full = rows.filter(lambda x, t=longest_t: x["position"] == t)[0]
        assert full["chosen_complete"] and full["rejected_complete"]  # nothing was cut: both end here
        assert longest_t == max(full["chosen_length"], full["rejected_length"])
