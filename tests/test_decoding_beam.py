"""CBS / TBS: Best-of-N equivalence, a re-prefilling reference, never re-prefilling, bad input."""

from __future__ import annotations

import pytest

from decoding.policy import SamplingParams
from decoding.scorers import ClassifierScorer, RearScorer
from decoding.search.best_of_n import best_of_n
from decoding.search.cbs import chunk_beam_search, rank_top
from decoding.types import Partial, Prompt, candidate_seed

PROMPTS = [
    Prompt("a", [{"role": "system", "content": "I love short answers."}, {"role": "user", "content": "What is rain?"}],
           [{"role": "user", "content": "What is rain?"}], "What is rain?", "I love short answers.", 0),
    Prompt("b", [{"role": "user", "content": "Why do we sleep at night?"}], None, "Why do we sleep at night?", None, 1),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bon_is_cbs_with_one_beam_and_whole_responses(policy, tiny_llama_rm, smollm_tokenizer):
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    params = SamplingParams(temperature=1.0)
    bon = best_of_n(policy, scorer, PROMPTS, 5, params, 12, seed=4)
    cbs = chunk_beam_search(policy, scorer, PROMPTS, 1, 5, None, params, 12, seed=4)
    for b, c in zip(bon, cbs):
        assert len(c.candidates) == 1
        assert c.best_candidate.token_ids == b.best_candidate.token_ids
        assert c.best_candidate.eos == b.best_candidate.eos
        assert c.best_candidate.score == pytest.approx(b.best_candidate.score, abs=1e-5)
        # All N of BoN's candidates were CBS's one-round pool: the same sample set, the same winner.
        assert c.best_candidate.score == pytest.approx(max(x.score for x in b.candidates), abs=1e-5)


def naive_cbs(policy, scorer, prompt, W, K, L, params, T, seed):
    """Algorithm 3 with nothing kept between rounds: every successor re-prefills prompt + beam from scratch
    and the scorer recomputes every candidate's whole text (cache off)."""
    ctx = policy.encode(prompt.messages)
    live = [(b, [], [], ) for b in range(W)]  # (slot, tokens, logprobs)
    finished: list[dict] = []
    r = 0
    while live:
        kids = []
        for slot, toks, lps in live:
            for j in range(K):
                state = policy.prefill([ctx + toks])
                budget = T - len(toks) if L is None else min(L, T - len(toks))
                s = policy.sample(state, [candidate_seed(seed, prompt.id, slot, r, j)], params, budget)[0]
                kids.append({"tokens": toks + s.token_ids, "logprobs": lps + s.logprobs, "eos": s.eos,
                             "end_ids": s.end_ids, "end_lp": s.end_logprobs})
        parts = [Partial(policy.decode(k["tokens"]), k["tokens"], k["eos"], k["end_ids"], k["logprobs"] + k["end_lp"])
                 for k in kids]
        for k, v in zip(kids, scorer.score([prompt] * len(kids), parts).tolist()):
            k["score"] = v
        pool = finished + kids
        order = sorted(range(len(pool)), key=lambda i: (-pool[i]["score"], i))[:W]
        finished, live = [], []
        for slot, i in enumerate(order):
            x = pool[i]
            if i < len(pool) - len(kids) or x["eos"] or len(x["tokens"]) >= T:
                finished.append(x)
            else:
                live.append((slot, x["tokens"], x["logprobs"]))
        r += 1
    return finished  # best first


@pytest.mark.parametrize(("W", "K", "L"), [(2, 3, 4), (3, 2, 1)])
def test_cbs_equals_reprefilling_reference(policy, tiny_llama_rm, smollm_tokenizer, W, K, L):
    """Forked/reordered caches and the RM prefix cache give the beams of the recompute-everything reference."""
    params = SamplingParams(temperature=1.0)
    T = 10
    res = chunk_beam_search(policy, ClassifierScorer(tiny_llama_rm, smollm_tokenizer), PROMPTS, W, K, L, params, T,
                            seed=2)
    fresh = ClassifierScorer(tiny_llama_rm, smollm_tokenizer, cache=False)
    for r in res:
        ref = naive_cbs(policy, fresh, r.prompt, W, K, L, params, T, seed=2)
        assert [c.token_ids for c in r.candidates] == [x["tokens"] for x in ref]
        assert [c.score for c in r.candidates] == pytest.approx([x["score"] for x in ref], abs=1e-4)
        assert r.best == 0 and len(r.candidates) == W
        for c in r.candidates:
            assert len(c.token_ids) <= T
            # Each kept round extends the beam by one chunk of at most L tokens.
            ends = [0] + c.step_ends
            assert all(0 <= b - a <= L for a, b in zip(ends, ends[1:]))


def test_cbs_never_reprefills_and_counts_compute(policy, tiny_llama_rm, smollm_tokenizer):
    W, K, L, T = 2, 2, 3, 9
    res = chunk_beam_search(policy, ClassifierScorer(tiny_llama_rm, smollm_tokenizer, meter=policy.meter),
                            PROMPTS, W, K, L, SamplingParams(), T, seed=0)
    for r in res:
        comp = policy.meter.for_group(r.prompt.index)
        assert comp["policy_tokens_prefilled"] == len(policy.encode(r.prompt.messages))  # the prompt, once
        # No EOS from a random tiny model: 3 rounds of W * K successors of L tokens each.
        assert all(not c.eos for c in r.candidates)
        assert comp["policy_tokens_generated"] == (T // L) * W * K * L
        assert comp["scorer_calls"] == T // L


def test_tbs_with_rear_scores_every_token(policy):
    """TBS (L = 1) with an additive scorer: one step score per token, summing to the whole response's REAR."""
    res = chunk_beam_search(policy, RearScorer(policy, 3.0), PROMPTS[:1], 2, 3, 1, SamplingParams(), 5, seed=1)
    fresh = RearScorer(policy, 3.0, reuse_generation_logprobs=False, cache=False)
    for c in res[0].candidates:
        assert len(c.step_scores) == len(c.token_ids) == 5
        assert fresh.score([PROMPTS[0]], [c.partial(policy)]).item() == pytest.approx(c.score, abs=2e-3)


def test_rank_top():
    assert rank_top([0.1, 0.5, 0.5, -1.0], 3) == [1, 2, 0]
    assert rank_top([1.0], 4) == [0]


def test_beam_bad_input(policy, tiny_llama_rm, smollm_tokenizer):
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    for W, K, L, T, match in [(0, 4, 2, 8, "W \\* K >= 1"), (4, 0, 2, 8, "W \\* K >= 1"), (2, 2, 0, 8, "chunk length"),
                              (2, 2, 2, 0, "max_new_tokens")]:
        with pytest.raises(ValueError, match=match):
            chunk_beam_search(policy, scorer, PROMPTS, W, K, L, SamplingParams(), T)


def test_decode_dispatches_args_and_cbs(tmp_path, policy, tiny_llama_rm, smollm_tokenizer):
    """``sp-prm decode`` runs both methods end to end with per-prompt compute; config errors are clear."""
    import json

    from decoding.decode import DecodeConfig, run
    from decoding.types import Meter
    from sp_prm.config import build, load_config

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "question": f"Question {i}?"}) + "\n" for i in range(3)))
    for search, n in [({"method": "args", "args": {"k": 3}, "max_new_tokens": 4}, 1),
                      ({"method": "cbs", "cbs": {"beam_width": 2, "successors": 2, "chunk_length": 2},
                        "max_new_tokens": 4}, 2)]:
        out = tmp_path / f"{search['method']}.jsonl"
        cfg = build(DecodeConfig, {"data": {"path": str(data)}, "output": str(out), "batch_size": 2,
                                   "progress": False, "search": search, "scorer": {"name": "rm:unused"}})
        run(cfg, policy=policy, scorer=ClassifierScorer(tiny_llama_rm, smollm_tokenizer), meter=Meter())
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        assert [r["id"] for r in recs] == ["r0", "r1", "r2"]
        for r in recs:
            assert r["search"] == search["method"] and r["n"] == n == len(r["candidates"])
            assert r["score"] == max(c["score"] for c in r["candidates"])
            comp = r["compute"]
            assert comp["policy_tokens_generated"] == (4 if n == 1 else 2 * 2 * 4)  # no EOS from a random model
            assert comp["scorer_calls"] == (4 if n == 1 else 2) and comp["scorer_tokens"] > 0
    for argv, match in [(["--search.method", "cbs", "--search.cbs.successors", "0"], "W \\* K >= 1"),
                        (["--search.method", "cbs", "--search.cbs.chunk_length", "0"], "chunk length"),
                        (["--search.method", "args", "--search.args.k", "0"], "search.args.k"),
                        (["--search.method", "args", "--search.args.mode", "nucleus"], "search.args.mode")]:
        with pytest.raises(ValueError, match=match):
            load_config(DecodeConfig, argv)
