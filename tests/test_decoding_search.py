"""Searches and the ``sp-prm decode`` entry: BoN argmax, DVTS structure, batch independence, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from decoding.decode import DecodeConfig, run
from decoding.policy import Policy, SamplingParams
from decoding.prompts import DataConfig, load_prompts
from decoding.scorers import ClassifierScorer, RearScorer
from decoding.search import SEARCHES
from decoding.search.best_of_n import best_of_n
from decoding.search.dvts import dvts
from decoding.types import Prompt
from sp_prm.config import build, load_config

REPO = Path(__file__).resolve().parents[1]


def prompts(k=2):
    qs = ["What is rain?", "Why do we sleep?", "Name a fruit."]
    prefs = ["Keep it short.", "Use rhymes.", "Be formal."]
    return [Prompt(f"p{i}", [{"role": "system", "content": prefs[i]}, {"role": "user", "content": qs[i]}],
                   [{"role": "user", "content": qs[i]}], qs[i], prefs[i], i) for i in range(k)]


def test_best_of_n_picks_argmax_and_is_batch_independent(policy, tiny_llama_rm, smollm_tokenizer):
    ps = prompts(3)
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    res = best_of_n(policy, scorer, ps, 4, SamplingParams(), 10, seed=7)
    for r in res:
        assert len(r.candidates) == 4
        scores = [c.score for c in r.candidates]
        assert r.best == scores.index(max(scores))
        assert len({tuple(c.token_ids) for c in r.candidates}) > 1  # distinct seeds, distinct samples
        # Every score is the RM's score of that candidate alone.
        alone = scorer.score([r.prompt], [r.candidates[0].partial(policy)])
        assert alone.item() == pytest.approx(scores[0], abs=1e-4)
    single = best_of_n(policy, scorer, ps[1:2], 4, SamplingParams(), 10, seed=7)[0]
    assert [c.token_ids for c in single.candidates] == [c.token_ids for c in res[1].candidates]
    assert single.best == res[1].best
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n(policy, scorer, ps, 0, SamplingParams(), 10)


def check_dvts_structure(policy, tokenizer):
    """DVTS (n 6, width 3, <= 3 steps of <= 6 tokens) on a policy whose step delimiter is "e"; asserts the
    tree's structure (shared by the HF and vllm backend tests) and returns the prompts used."""
    ps = prompts(2)
    res = dvts(policy, RearScorer(policy, 5.0), ps, n=6, width=3, params=SamplingParams(), max_new_tokens=24,
               max_steps=3, max_step_tokens=6, seed=1, finish_last_step=False)
    for r in res:
        assert len(r.candidates) == 6
        subtrees = [c.subtree for c in r.candidates]
        assert subtrees == [0, 0, 0, 1, 1, 1]
        for c in r.candidates:
            assert len(c.step_ends) <= 3 and len(c.token_ids) <= 24
            start = 0
            for k, end in enumerate(c.step_ends):
                step = c.token_ids[start:end]
                assert 1 <= len(step) <= 6
                texts = [tokenizer.decode([t]) for t in step]
                assert not any("e" in t for t in texts[:-1])  # the delimiter only ends a step
                if len(step) < 6 and not (c.eos and k == len(c.step_ends) - 1):
                    assert "e" in texts[-1]
                start = end
            assert len(c.step_scores) == len(c.step_ends)
            assert c.score == pytest.approx(sum(c.step_scores))  # REAR aggregates by sum
            assert c.complete == c.eos
        # Siblings share everything but the last step; the winner has the best score in its subtree.
        for t in range(2):
            group = r.candidates[3 * t: 3 * t + 3]
            prefix = group[0].step_ends[-2] if len(group[0].step_ends) > 1 else 0
            assert all(c.token_ids[:prefix] == group[0].token_ids[:prefix] for c in group)
        assert r.best_candidate.score == max(c.score for c in r.candidates)
    assert any(len(c.step_ends) > 1 for r in res for c in r.candidates)
    return ps


def test_dvts_structure(tiny_llama_lm, smollm_tokenizer):
    # A frequent delimiter (a letter) makes steps short enough to see several of them.
    policy = Policy(tiny_llama_lm, smollm_tokenizer, delimiter="e")
    ps = check_dvts_structure(policy, smollm_tokenizer)
    with pytest.raises(ValueError, match="multiple of width"):
        dvts(policy, RearScorer(policy), ps, 6, 4, SamplingParams(), 8)


def test_dvts_final_score_equals_rescoring(tiny_llama_lm, smollm_tokenizer):
    """Sum of REAR step increments == REAR of the whole response scored from scratch."""
    policy = Policy(tiny_llama_lm, smollm_tokenizer, delimiter="e")
    res = dvts(policy, RearScorer(policy, 4.0), prompts(1), 4, 2, SamplingParams(), 20, max_steps=3,
               max_step_tokens=5, seed=3)
    fresh = RearScorer(policy, 4.0, reuse_generation_logprobs=False, cache=False)
    r = res[0]
    got = fresh.score([r.prompt] * 4, [c.partial(policy) for c in r.candidates])
    for c, v in zip(r.candidates, got.tolist()):
        assert c.score == pytest.approx(v, abs=5e-3)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_decode_run_resume_and_records(tmp_path, policy):
    data = tmp_path / "in.jsonl"
    write_jsonl(data, [{"id": f"r{i}", "question": f"Question {i}?", "preference": "Be brief."} for i in range(3)])
    out = tmp_path / "out.jsonl"
    cfg = build(DecodeConfig, {"data": {"path": str(data)}, "output": str(out), "batch_size": 2, "progress": False,
                               "search": {"best_of_n": {"n": 3}, "max_new_tokens": 6}, "scorer": {"lam": 4.0}})
    run(cfg, policy=policy, scorer=RearScorer(policy, 4.0))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["r0", "r1", "r2"]
    for x in lines:
        assert x["prompt"].startswith("Question") and x["preference"] == "Be brief."
        assert len(x["candidates"]) == x["n"] == 3
        assert x["score"] == max(c["score"] for c in x["candidates"])
        assert x["response"] == x["candidates"][x["best_index"]]["response"]
        assert x["complete"] is False or x["complete"] is True
        comp = x["compute"]
        assert comp["policy_tokens_generated"] == 18  # 3 candidates x 6 tokens (no EOS from a random model)
        assert comp["policy_tokens_prefilled"] > 10 and comp["scorer_tokens"] > 0 and comp["scorer_calls"] == 1
    # Kill simulation: drop the last record, leave a torn line; the rerun redoes only what is missing.
    text = out.read_text().splitlines()
    out.write_text(text[0] + "\n" + text[1] + "\n" + text[2][:20])
    before = policy.meter.total("policy_tokens_generated")
    run(cfg, policy=policy, scorer=RearScorer(policy, 4.0))
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in again] == ["r0", "r1", "r2"]
    assert again[2]["response"] == lines[2]["response"]  # same seeds -> same result after resume
    assert policy.meter.total("policy_tokens_generated") - before == 18
    cfg.resume = False
    with pytest.raises(FileExistsError):
        run(cfg, policy=policy)


def test_bad_inputs_name_record_or_option(tmp_path):
    data = tmp_path / "in.jsonl"
    write_jsonl(data, [{"id": "ok", "question": "Hi?", "preference": "x"}, {"id": "bad", "text": "no prompt"}])
    with pytest.raises(ValueError, match="'bad'.*no prompt"):
        load_prompts(DataConfig(path=str(data)))
    write_jsonl(data, [{"id": "nopref", "question": "Hi?"}])
    with pytest.raises(ValueError, match="'nopref'.*preference"):
        load_prompts(DataConfig(path=str(data)), require_preference=True)
    write_jsonl(data, [{"id": "m", "messages": [{"role": "user", "content": "I hate jazz.", "preference": True},
                                               {"role": "assistant", "content": "Noted."},
                                               {"role": "user", "content": "Suggest music."}]}])
    (p,) = load_prompts(DataConfig(path=str(data)), require_preference=True)
    assert len(p.messages) == 3 and [m["content"] for m in p.question_messages] == ["Noted.", "Suggest music."]
    for argv, match in [(["--scorer.lam", "-1"], "lam"), (["--search.best_of_n.n", "0"], "search.best_of_n.n"),
                        (["--search.method", "beam"], "search.method"), (["--scorer.name", "orm"], "scorer.name"),
                        (["--search.method", "dvts", "--search.dvts.n", "6", "--search.dvts.width", "4"], "multiple"),
                        (["--scorer.aggregation", "max"], "aggregation")]:
        with pytest.raises(ValueError, match=match):
            load_config(DecodeConfig, argv)


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "decode").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_parse(recipe):
    cfg = load_config(DecodeConfig, ["--config", str(recipe)])
    assert cfg.policy.model and cfg.search.method in SEARCHES
    assert cfg.search.params == getattr(cfg.search, cfg.search.method)
    assert yaml.safe_load(recipe.read_text())


def test_default_config_is_the_embedded_recipe():
    default = DecodeConfig()
    recipe = load_config(DecodeConfig, ["--config", str(REPO / "recipes/decode/bon_rear_smollm2.yaml")])
    assert default == recipe
    assert len(load_prompts(default.data, require_preference=True)) == 6


@pytest.mark.slow
def test_smollm2_rear_bon_end_to_end(tmp_path):
    out = tmp_path / "o.jsonl"
    cfg = load_config(DecodeConfig, ["--output", str(out), "--search.best_of_n.n", "4", "--search.max_new_tokens", "48",
                                     "--data.limit", "2", "--progress", "false"])
    run(cfg)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 2 and all(len(r["candidates"]) == 4 and r["response"].strip() for r in recs)


@pytest.mark.parametrize("method", ["best_of_n", "cbs", "args"])
def test_search_leaves_no_tensor_in_a_reference_cycle(method, policy, tiny_llama_rm, smollm_tokenizer):
    """A search's caches are freed when its results are dropped, not when the cyclic collector runs.

    A self-reference in the KV layers once kept ~300 MiB per prompt of SmolLM2 caches alive between
    batches: the known-gold search stage grew to 24 GiB and was killed after 56 prompts.
    """
    import gc

    import torch

    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        res = SEARCHES[method].run(policy, scorer, prompts(2), SEARCHES[method].params(), SamplingParams(), 12, 0)
        assert res
        del res
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert not cyclic, f"{len(cyclic)} tensors were only reachable through reference cycles"
