"""A decoder judge reads each prompt once: shared-prefix token trees equal scoring every sequence alone."""

from __future__ import annotations

import pytest
import torch

from decoding.metrics import reward as reward_mod
from decoding.metrics.reward import reward_inputs, rewards, shared_prefix_rewards
from sp_prm.formatting import PrefixFormat
from sp_prm.scoring import RewardScorer

FMT = PrefixFormat(template="plain", max_prompt_tokens=128, max_response_tokens=48)
Q1 = [{"role": "user", "content": "How do I bake bread at home? Please give me the short version."}]
Q2 = [{"role": "user", "content": "Tell me a fact about owls, and keep it brief."}]
Q3 = [{"role": "user", "content": "Say hi."}]


def _cases():
    prompts, responses, complete = [], [], []
    for q, rs in ((Q1, ["Mix flour, water and yeast.", "Mix flour, water and yeast, then knead it for ten minutes.",
                        "No.", "Mix flour, water and yeast.", "I would rather not say anything about bread today."]),
                  (Q2, ["Owls can turn their heads very far.", "Owls hunt at night."]),
                  (Q3, ["Hi!"])):  # a prompt with one response: scored plainly
        for j, r in enumerate(rs):
            prompts.append(q)
            responses.append(r)
            complete.append(j % 2 == 0)  # finished responses get the end marker, cut ones do not
    return prompts, responses, complete


def test_trees_equal_plain_scoring(tiny_llama_rm, smollm_tokenizer, monkeypatch):
    prompts, responses, complete = _cases()
    plain = rewards(tiny_llama_rm, smollm_tokenizer, prompts, responses, FMT, complete=complete, share_prefix=False)
    tree = rewards(tiny_llama_rm, smollm_tokenizer, prompts, responses, FMT, complete=complete)
    assert tree == pytest.approx(plain, abs=1e-5)
    # several trees per prompt and several rows per batch: the same values
    monkeypatch.setattr(reward_mod, "MAX_TREE_TOKENS", 12)
    small = rewards(tiny_llama_rm, smollm_tokenizer, prompts, responses, FMT, complete=complete, max_batch_tokens=60)
    assert small == pytest.approx(plain, abs=1e-5)


def test_trees_read_each_prompt_once(tiny_llama_rm, smollm_tokenizer):
    story = ("I moved to a small flat last spring and the oven is old, the kitchen is cold in the morning and "
             "I have never baked anything before, but my grandmother always made bread on Sundays. ")
    prompts, responses, complete = _cases()
    prompts = [[{"role": "user", "content": story + p[0]["content"]}] for p in prompts]
    seqs = reward_inputs(smollm_tokenizer, prompts, responses, FMT, complete)
    fed = []
    backbone = tiny_llama_rm.model
    real = backbone.forward

    def counting(*a, **k):
        fed.append(int(k["input_ids"].numel()))
        return real(*a, **k)

    backbone.forward = counting
    try:
        got = shared_prefix_rewards(tiny_llama_rm, seqs, [str(p) for p in prompts], smollm_tokenizer.pad_token_id)
    finally:
        del backbone.forward
    naive = RewardScorer(tiny_llama_rm, smollm_tokenizer.pad_token_id).score(seqs)
    assert got.tolist() == pytest.approx(naive.tolist(), abs=1e-5)
    # padded tokens fed, against every sequence on its own: the prompts are not fed once per response
    assert sum(fed) < 0.6 * sum(len(s) for s in seqs)


def test_a_sequence_equal_to_the_shared_prefix_is_read_too(tiny_llama_rm, smollm_tokenizer):
    base = list(range(100, 130))
    seqs = [base, base + [7, 8, 9], base[:-1] + [5]]  # the first one is the others' common prefix + its last token
    got = shared_prefix_rewards(tiny_llama_rm, seqs, ["k"] * 3, smollm_tokenizer.pad_token_id)
    want = RewardScorer(tiny_llama_rm, smollm_tokenizer.pad_token_id).score(seqs)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    assert torch.isfinite(got).all()
