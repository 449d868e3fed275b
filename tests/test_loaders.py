"""Loaders: real rows from ../shared/data and the shipped sample into one schema; bad input."""

from __future__ import annotations

import gzip
import json

import pytest
from datasets import Dataset

from data_prep.loaders import ColumnError, load_preferences, parse_hh_transcript, split_hh_pair
from tests.conftest import shared_data


def test_hh_split_by_hand():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross?"
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
    prompt, c, r = split_hh_pair(chosen, rejected)
    assert prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert (c, r) == ("Why did the chicken cross?", "No.")
    # responses sharing their first words are still split at the last shared assistant cue
    prompt, c, r = split_hh_pair("\n\nHuman: q\n\nAssistant: I think yes", "\n\nHuman: q\n\nAssistant: I think no")
    assert (prompt, c, r) == ([{"role": "user", "content": "q"}], "I think yes", "I think no")
    with pytest.raises(ValueError):
        parse_hh_transcript("no markers here")


def test_hh_real_rows():
    path = shared_data("hh-rlhf", "harmless-base", "test.jsonl.gz")
    pairs, report = load_preferences(str(path), limit=200)
    raw = [json.loads(line) for line in gzip.open(path, "rt")][:200]
    assert report.rows_read == 200 and report.rows_kept == len(pairs) >= 195
    assert sum(report.skipped.values()) == 200 - len(pairs)
    multi_turn = 0
    by_id = {}
    for row in pairs:
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"] and row["rejected"] and row["chosen"] != row["rejected"]
        multi_turn += len(row["prompt"]) > 1
        by_id[row["id"]] = row
    assert multi_turn > 50
    # the first raw row, re-split by hand: prompt = text before the final assistant cue
    first = pairs[0]
    cut = raw[0]["chosen"].rfind("\n\nAssistant:")
    assert raw[0]["chosen"][cut + len("\n\nAssistant:"):].strip() == first["chosen"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    # ids are stable across loads
    again, _ = load_preferences(str(path), limit=200)
    assert again["id"] == pairs["id"] and len(set(pairs["id"])) == len(pairs)


def test_shipped_sample():
    pairs, report = load_preferences("builtin:hh-rlhf-sample")
    assert report.rows_read == 400 and len(pairs) == 399 and report.skipped == {"empty_response": 1}


def test_pairs_with_column_mapping_real_rows():
    path = shared_data("hh-rlhf-helpful-dove", "val_conditional_pref.jsonl")
    pairs, report = load_preferences(
        str(path), columns={"prompt": "i_chosen", "chosen": "r_chosen", "rejected": "r_reject"}
    )
    first = json.loads(path.read_text().splitlines()[0])
    assert report.rows_read == 363 and len(pairs) >= 350
    assert pairs[0]["prompt"] == [{"role": "user", "content": first["i_chosen"]}]
    assert pairs[0]["chosen"] == first["r_chosen"].strip()


def test_gsm8k_pairs_keep_given_ids():
    path = shared_data("gsm8k-pairwise-math", "pairs.jsonl.gz")
    pairs, report = load_preferences(str(path), limit=50)
    assert report.rows_kept == 50 and pairs[0]["id"] == "gsm8k-test-0"
    assert "Janet" in pairs[0]["prompt"][0]["content"]


def test_tldr_comparisons_from_real_posts(tmp_path):
    posts = [json.loads(line) for line in shared_data("tldr-dove", "test.json").read_text().splitlines()[:3]]
    rows = [
        {"info": {"id": p["instruction_id"], "subreddit": p["subreddit"], "title": p["title"], "post": p["instruction"]},
         "summaries": [{"text": " " + p["gold_response"]}, {"text": " I don't know."}], "choice": i % 2}
        for i, p in enumerate(posts)
    ]
    path = tmp_path / "comparisons.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pairs, _ = load_preferences(str(path))
    assert len(pairs) == 3
    prompt = pairs[0]["prompt"][0]["content"]
    assert prompt.startswith(f"SUBREDDIT: r/{posts[0]['subreddit']}\n\nTITLE: {posts[0]['title']}")
    assert prompt.endswith("\n\nTL;DR:")
    assert pairs[0]["chosen"] == posts[0]["gold_response"].strip()  # choice 0
    assert pairs[1]["chosen"] == "I don't know."  # choice 1 picks the second summary


def test_file_types_and_saved_dataset(tmp_path):
    data = Dataset.from_dict({"prompt": ["a?", "b?"], "chosen": ["yes", "sure"], "rejected": ["no", "nah"]})
    data.to_csv(tmp_path / "p.csv")
    data.to_parquet(tmp_path / "p.parquet")
    data.save_to_disk(tmp_path / "saved")
    for source in ("p.csv", "p.parquet", "saved"):
        pairs, _ = load_preferences(str(tmp_path / source))
        assert pairs["chosen"] == ["yes", "sure"], source
    with pytest.raises(FileNotFoundError):
        load_preferences(str(tmp_path / "missing.jsonl"))


def test_missing_column_names_it_and_lists_present(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ColumnError) as err:
        load_preferences(str(path), format="pairs")
    message = str(err.value)
    assert "'prompt'" in message and "question" in message and "chosen" in message


def test_bad_rows_skipped_and_counted(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "q2", "chosen": "", "rejected": "bad"},
        {"prompt": "q3", "chosen": "same", "rejected": "same "},
        {"prompt": "q4", "chosen": 3, "rejected": "bad"},
        {"prompt": "", "chosen": "x", "rejected": "y"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pairs, report = load_preferences(str(path))
    assert len(pairs) == 1 and pairs[0]["chosen"] == "good"
    assert dict(report.skipped) == {
        "empty_response": 1, "identical_responses": 1, "non_string_response": 1, "bad_prompt": 1,
    }


def test_train_eval_subsets_are_disjoint_and_cover():
    full, _ = load_preferences("builtin:hh-rlhf-sample")
    train, report = load_preferences("builtin:hh-rlhf-sample", subset="train", eval_fraction=0.25)
    held, _ = load_preferences("builtin:hh-rlhf-sample", subset="eval", eval_fraction=0.25)
    assert set(train["id"]).isdisjoint(held["id"]) and len(train) + len(held) == len(full)
    assert 0.15 < len(held) / len(full) < 0.35
    assert report.skipped["not_in_train_subset"] == len(held)
    # membership depends on the id only: a limited load agrees with the full one
    small, _ = load_preferences("builtin:hh-rlhf-sample", limit=50, subset="eval", eval_fraction=0.25)
    assert set(small["id"]) <= set(held["id"])
    with pytest.raises(ValueError, match="subset"):
        load_preferences("builtin:hh-rlhf-sample", subset="test")


def test_chat_pairs_conversations(tmp_path):
    prompt = [{"role": "user", "content": "2 + 2?"}]
    rows = [
        {"chosen": [*prompt, {"role": "assistant", "content": "4"}],
         "rejected": [*prompt, {"role": "assistant", "content": "5"}]},
        {"chosen": [*prompt, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "5"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pairs, report = load_preferences(str(path))
    assert len(pairs) == 1 and pairs[0]["prompt"] == prompt and (pairs[0]["chosen"], pairs[0]["rejected"]) == ("4", "5")
    assert report.skipped == {"conversations_do_not_share_a_prompt": 1}
