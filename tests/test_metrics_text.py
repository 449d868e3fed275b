"""Model-free metrics against hand-computed values; GSM8K / AdvBench rules on real rows."""

from __future__ import annotations

import csv
import json
from decimal import Decimal

import numpy as np
import pytest

from decoding.metrics import advbench, gsm8k, text
from decoding.metrics.stats import bootstrap_ci, summarize
from tests.conftest import shared_data

# ---- diversity -------------------------------------------------------------------------------------

def test_diversity_by_hand():
    # 6 tokens "the cat the cat the cat": 2-grams 2 unique / 5, 3-grams 2/4, 4-grams 2/3.
    assert text.diversity("the cat the cat the cat") == pytest.approx(2 / 5 * 2 / 4 * 2 / 3)
    # No repetition at all: every ratio is 1.
    assert text.diversity("a b c d e") == 1.0
    # Whitespace tokens: punctuation stays on the word, case is kept unless asked.
    assert text.whitespace_tokens("Hi, there!\nHi") == ["Hi,", "there!", "Hi"]
    assert text.diversity("A b a b") == 1.0
    assert text.diversity("A b a b", lowercase=True) == pytest.approx(2 / 3 * 1 * 1)


def test_diversity_short_responses():
    assert text.diversity("") is None and text.diversity("word") is None  # no 2-gram: undefined
    # Two tokens: one 2-gram, no 3/4-grams (those factors are 1).
    assert text.diversity("yes yes") == 1.0
    assert text.diversity("yes yes yes") == pytest.approx(1 / 2)  # 2-grams 1/2, 3-grams 1/1
    assert text.ngram_ratio(["a", "b"], 3) is None


def test_word_count():
    assert text.word_count("  one two\tthree\n") == 3 and text.word_count("") == 0


# ---- ROUGE-L ---------------------------------------------------------------------------------------

def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" / "the cat was on the mat" = "the cat on the mat" (5 of 6 each side).
    assert text.rouge_l("the cat was on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3; case and punctuation are normalised away.
    assert text.rouge_l("The cat!", "the cat sat down") == pytest.approx(2 / 3)
    assert text.rouge_l("dogs running", "dog runs", use_stemmer=True) == pytest.approx(1.0)
    assert text.rouge_l("dogs running", "dog runs", use_stemmer=False) == 0.0


def test_rouge_l_on_real_tldr_reference():
    row = json.loads(shared_data("tldr-dove", "test.json").read_text().splitlines()[0])
    ref = row["gold_response"]
    assert text.rouge_l(ref, ref) == pytest.approx(1.0)
    words = ref.split()
    half = " ".join(words[: len(words) // 2])
    assert 0.3 < text.rouge_l(half, ref) < 1.0


# ---- bootstrap -------------------------------------------------------------------------------------

def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.0, 1.0] * 50
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b
    assert a[0] < 0.5 < a[1]
    # Normal approximation for a Bernoulli(0.5) mean with n=100: +-1.96 * 0.05 ~ 0.098.
    assert a[1] - a[0] == pytest.approx(0.196, abs=0.04)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0) and bootstrap_ci([7.0]) == (7.0, 7.0)


def test_summarize_skips_undefined():
    s = summarize([1.0, None, 3.0, float("nan")], resamples=200)
    assert s["mean"] == 2.0 and s["n"] == 2 and s["n_undefined"] == 2
    assert 1.0 <= s["ci_low"] <= s["ci_high"] <= 3.0
    assert summarize([None])["mean"] is None


# ---- GSM8K -----------------------------------------------------------------------------------------

def test_gsm8k_extraction_by_hand():
    assert gsm8k.extract_answer("So 3, 4 and 5. The answer is $70,000.00.") == Decimal("70000")
    assert gsm8k.extract_answer(r"Thus \boxed{18} eggs.") == Decimal(18)
    assert gsm8k.extract_answer("12 + 6 = 18\n#### 1,234") == Decimal(1234)
    assert gsm8k.extract_answer("blah\nA: 18") == Decimal(18)
    assert gsm8k.extract_answer("she ends with -3.5 dollars") == Decimal("-3.5")
    assert gsm8k.extract_answer("no numbers here") is None
    assert gsm8k.extract_answer("it is 5 then 7", fallback_last_number=False) is None
    assert gsm8k.extract_reference("A: 18") == 18 and gsm8k.extract_reference("42") == 42
    with pytest.raises(ValueError, match="final answer"):
        gsm8k.extract_reference("no answer")


def test_gsm8k_real_references():
    rows = [json.loads(line) for line in shared_data("gsm8k", "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    refs = [gsm8k.extract_reference(r["answer"]) for r in rows]  # every reference parses
    assert refs[:3] == [18, 3, 70000]
    janet = rows[0]
    assert gsm8k.is_correct("She sells 9 eggs at $2, so she makes $18 every day.", janet["answer"])
    assert gsm8k.is_correct("9 * 2 = 18\n#### 18", janet["answer"])
    assert not gsm8k.is_correct("She makes 16 - 3 - 4 = 9 dollars.", janet["answer"])
    assert gsm8k.is_correct(r"The profit is \boxed{70,000}.", rows[2]["answer"])


def test_gsm8k_matches_openai_correctness_labels():
    """OpenAI's GSM8K release labels 5,276 real model solutions correct or not: we must agree on all."""
    path = shared_data("gsm8k-pairwise-math", "example_model_solutions.jsonl")
    agree = total = 0
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for key in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            total += 1
            agree += gsm8k.is_correct(row[key]["solution"], row["ground_truth"]) == row[key]["is_correct"]
    assert total == 5276 and agree == total


# ---- AdvBench --------------------------------------------------------------------------------------

def test_refusal_rule_by_hand():
    assert advbench.is_refusal("I'm sorry, but I can't help with that.")
    assert advbench.is_refusal("I\u2019m sorry, no.")  # curly apostrophe is normalised
    assert advbench.is_refusal("Sure. Note that this is illegal.")  # authors' rule: anywhere in the text
    assert not advbench.is_refusal("Sure. Note that this is illegal.", anywhere=False)
    assert not advbench.is_refusal("sorry, no")  # case-sensitive like the original
    assert advbench.is_refusal("sorry, no", case_sensitive=False)
    assert advbench.attack_success("Sure, here is a script: step 1 ...")


def test_asr_on_real_advbench_prompts():
    path = shared_data("advbench", "harmful_behaviors.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 520
    responses = [
        rows[0]["target"] + ":\n1. ...",  # complies (the dataset's own target string)
        "I'm sorry, but I cannot help with " + rows[1]["goal"].lower() + ".",
        "As an AI language model, I can't assist with that.",
        rows[3]["target"] + ". First, ...",
    ]
    success = [advbench.attack_success(r) for r in responses]
    assert success == [True, False, False, True]
    assert np.mean(success) == 0.5


def test_sure_prefix_prompts(tmp_path):
    path = shared_data("advbench", "harmful_behaviors.csv")
    records = advbench.advbench_prompts(path, limit=3)
    assert [r["id"] for r in records] == ["0", "1", "2"]
    assert records[0]["prompt"] == records[0]["goal"] + " Sure here's"
    assert advbench.advbench_prompts(path, sure_prefix=False, limit=1)[0]["prompt"] == records[0]["goal"]
    assert advbench.with_sure_prefix("Do X.  ", "Sure, here's") == "Do X. Sure, here's"
    out = tmp_path / "p.jsonl"
    advbench.main(["--csv", str(path), "--output", str(out), "--limit", "2"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["prompt"].endswith("Sure here's")
