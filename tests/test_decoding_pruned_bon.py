"""PRM-pruned Best-of-N: alpha = 1 is Best-of-N token for token; pruning keeps what a from-scratch rescoring keeps."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.policy import SamplingParams
from decoding.scorers import ClassifierScorer, GenRMScorer, RearScorer
from decoding.search import SEARCHES
from decoding.search.best_of_n import best_of_n
from decoding.search.pruned_bon import PrunedBonParams
from decoding.types import Meter, Partial
from tests.test_decoding_search import prompts

pruned_bon = SEARCHES["pruned_bon"].run


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("guide", ["rm", "rear"])
def test_alpha_one_is_best_of_n(policy, tiny_llama_rm, smollm_tokenizer, guide):
    ps, T, n = prompts(2), 12, 5
    make = {"rm": lambda m: ClassifierScorer(tiny_llama_rm, smollm_tokenizer, meter=m),
            "rear": lambda m: RearScorer(policy, 4.0, meter=m)}[guide]
    policy.meter = ref_meter = Meter()
    ref = best_of_n(policy, make(ref_meter), ps, n, SamplingParams(), T, seed=3)
    policy.meter = meter = Meter()
    got = pruned_bon(policy, make(meter), ps, PrunedBonParams(n=n, alpha=1.0, every=4), SamplingParams(), T, seed=3)
    for a, b in zip(got, ref):
        assert [c.token_ids + c.end_ids for c in a.candidates] == [c.token_ids + c.end_ids for c in b.candidates]
        assert [c.score for c in a.candidates] == pytest.approx([c.score for c in b.candidates], abs=1e-4)
        assert a.best == b.best and len(a.candidates[0].prefix_scores) >= 1
    assert meter.total("policy_tokens_generated") == ref_meter.total("policy_tokens_generated")


@torch.no_grad()
def naive_survivors(policy, rm, tokenizer, ps, params, T, seed):
    """The same run recomputed plainly: Best-of-N's full samples (pruning never changes a survivor's tokens),
    truncated at each checkpoint and scored from scratch (a full RM forward each), ranked, cut to the top."""
    scorer = ClassifierScorer(rm, tokenizer, cache=False)  # only its text -> ids formatting is used
    full = best_of_n(policy, scorer, ps, params.n, SamplingParams(), T, seed=seed)
    out = []
    for r in full:
        growing = list(range(params.n))
        finished = []
        for t in params.checkpoints(T):
            ended = [j for j in growing if r.candidates[j].eos and len(r.candidates[j].token_ids) < t]
            finished += ended
            growing = [j for j in growing if j not in ended]
            scores = []
            for j in growing:
                ids = r.candidates[j].token_ids[:t]
                seq = scorer.sequence(r.prompt, Partial(policy.decode(ids), ids))
                scores.append(float(rm(input_ids=torch.tensor([seq])).logits[0, 0]))
            keep = min(len(growing), max(params.min_keep, math.ceil(params.alpha * len(growing))))
            order = sorted(range(len(growing)), key=lambda i: (-scores[i], i))[:keep]
            growing = sorted(growing[i] for i in order)
        out.append(sorted(finished + growing))
    return out, full


def test_pruning_equals_a_from_scratch_reference(policy, tiny_llama_rm, smollm_tokenizer):
    ps, T = prompts(2), 12
    params = PrunedBonParams(n=8, alpha=0.5, every=3)
    policy.meter = meter = Meter()
    got = pruned_bon(policy, ClassifierScorer(tiny_llama_rm, smollm_tokenizer, meter=meter), ps, params,
                     SamplingParams(), T, seed=1)
    generated, group0 = meter.total("policy_tokens_generated"), meter.for_group(0)
    want, full = naive_survivors(policy, tiny_llama_rm, smollm_tokenizer, ps, params, T, 1)
    for r, w, f in zip(got, want, full):
        assert [c.subtree for c in r.candidates] == w and len(w) < params.n
        for c in r.candidates:  # a survivor's tokens are its Best-of-N tokens
            assert c.token_ids == f.candidates[c.subtree].token_ids
        assert r.best_candidate.score == max(c.score for c in r.candidates)
    # Compute: far fewer sampled tokens than Best-of-8 (8 x 12 per prompt, no EOS from a random model) ...
    bon_tokens = sum(len(c.token_ids) + len(c.end_ids) for f in full for c in f.candidates)
    assert generated < 0.6 * bon_tokens
    # ... and exactly the tokens the schedule implies: 8 to 3 tokens, 4 to 6, 2 to 9, 1 to 12.
    assert group0["policy_tokens_generated"] == 3 * (8 + 4 + 2 + 1)
    assert group0["scorer_calls"] == 4


def test_schedule_every_scorer_and_bad_params(policy, tiny_llama_rm, tiny_bert_rm, smollm_tokenizer,
                                              minilm_tokenizer):
    p = PrunedBonParams(n=6, alpha=0.3, min_keep=2, schedule=[2, 5])
    assert p.checkpoints(8) == [2, 5] and p.keep(6) == 2 and p.keep(10) == 3 and p.keep(1) == 1
    assert PrunedBonParams(every=4).checkpoints(12) == [4, 8]
    ps = prompts(2)
    for scorer in (GenRMScorer(policy), RearScorer(policy, 3.0), ClassifierScorer(tiny_bert_rm, minilm_tokenizer)):
        res = pruned_bon(policy, scorer, ps, p, SamplingParams(), 8, seed=0)
        for r in res:
            assert 2 <= len(r.candidates) <= 6 and r.best_candidate.score == max(c.score for c in r.candidates)
    for bad, match in [({"alpha": 0.0}, "alpha"), ({"schedule": [4, 2]}, "schedule"), ({"every": 0}, "every"),
                       ({"min_keep": 0}, "min_keep")]:
        with pytest.raises(ValueError, match=match):
            PrunedBonParams(**bad)


def test_decode_runs_pruned_bon_on_both_backends(tmp_path, policy, tiny_llama_rm, smollm_tokenizer):
    import json

    from decoding.decode import DecodeConfig, run
    from decoding.vllm_policy import VllmPolicy
    from sp_prm.config import build
    from tests.test_decoding_backend import FakeEngine

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "question": f"Question {i}?"}) + "\n" for i in range(2)))
    for backend, pol in [("hf", policy), ("vllm", VllmPolicy(FakeEngine(policy), smollm_tokenizer))]:
        out = tmp_path / f"{backend}.jsonl"
        cfg = build(DecodeConfig, {"data": {"path": str(data)}, "output": str(out), "progress": False,
                                   "policy": {"backend": backend}, "scorer": {"name": "rm:unused"},
                                   "search": {"method": "pruned_bon", "max_new_tokens": 6,
                                              "pruned_bon": {"n": 4, "alpha": 0.5, "every": 2}}})
        run(cfg, policy=pol, scorer=ClassifierScorer(tiny_llama_rm, smollm_tokenizer), meter=Meter())
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        for r in recs:
            assert r["search"] == "pruned_bon" and 1 <= r["n"] <= 4
            assert r["compute"]["policy_tokens_generated"] <= 2 * (4 + 2 + 1)  # 4 to 2 tokens, 2 to 4, 1 to 6
