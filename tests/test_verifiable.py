"""Verifiable preferences: each checker on hand-written answers; prompt building; satisfaction rates."""

from __future__ import annotations

import json

import pytest

from decoding.verifiable import PREFERENCES, build_prompts, satisfaction, sentence_count
from tests.conftest import shared_data

CASES = {
    "bullets": (["- eggs\n- flour\n- milk", "Here you go:\n1. mix\n2. bake", "* a\n* b"],
                ["Eggs, flour and milk.", "- only one bullet", "Intro\nmore\nmore\n- a\n- b\ntext\ntext"]),
    "two_sentences": (["Yes. It works!", "One sentence only", "Paris is the capital of France."],
                      ["One. Two. Three.", "", "A! B? C."]),
    "summary_first": (["Short answer: yes.\n\nBecause the sky is blue.", "Use soap.\n\n- wash\n- rinse"],
                      ["No blank line here.\nDetails.", "Just one paragraph."]),
    "no_you": (["One should rest.", "Your call."],  # "your" is a different word
               ["You should rest.", "Thank you!"]),
    "end_question": (["Try it. Does that help?", "What next?  "], ["Try it.", "Is it? Yes."]),
    "lowercase": (["all lower case here.", "ok 123"], ["Not lower.", "123", "mostly lower but I"]),
    "no_commas": (["No commas at all.", "Fine"], ["Yes, indeed.", ""]),
}


@pytest.mark.parametrize("name", sorted(PREFERENCES))
def test_each_verifier_by_hand(name):
    good, bad = CASES[name]
    check = PREFERENCES[name].check
    assert all(check(text) for text in good), [t for t in good if not check(t)]
    assert not any(check(text) for text in bad), [t for t in bad if check(t)]


def test_sentence_count():
    assert [sentence_count(t) for t in ("", "a", "a.", "a. b", "Who? yes!", "Dr. Who.", "3.5 is a number.")] == [0, 1, 1, 2, 2, 2, 1]


def test_build_prompts_from_real_questions_and_score():
    rows = [json.loads(line) for line in shared_data("hh-rlhf-helpful-dove", "test.jsonl").read_text().splitlines()[:14]]
    prompts = build_prompts([(f"q{i}", r["instruction"]) for i, r in enumerate(rows)])
    assert len(prompts) == 14 and prompts[0]["preference_name"] == "bullets" and prompts[7]["preference_name"] == "bullets"
    assert prompts[1]["question"] == rows[1]["instruction"] and len({p["id"] for p in prompts}) == 14
    records = [{**p, "response": "- a\n- b" if p["preference_name"] == "bullets" else "Nope, You."} for p in prompts]
    result = satisfaction(records)
    assert result["bullets"] == {"n": 2, "rate": 1.0, "ci95": 0.0}
    # "Nope, You." is one sentence (passes two_sentences) and fails the other five preferences
    assert result["two_sentences"]["rate"] == 1.0 and result["no_you"]["rate"] == 0.0
    assert result["all"]["rate"] == pytest.approx(4 / 14)
    with pytest.raises(KeyError, match="unknown preference_name"):
        satisfaction([{"id": "x", "preference_name": "rhymes", "response": "a"}])
