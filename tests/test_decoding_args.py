"""ARGS-greedy / ARGS-sampling against a naive reference that rescores every candidate from scratch."""

from __future__ import annotations

import pytest
import torch

from decoding.scorers import ClassifierScorer, RearScorer
from decoding.search.args import args_decode
from decoding.types import Partial, Prompt, candidate_seed

PROMPTS = [
    Prompt("a", [{"role": "system", "content": "I love short answers."}, {"role": "user", "content": "What is rain?"}],
           [{"role": "user", "content": "What is rain?"}], "What is rain?", "I love short answers.", 0),
    Prompt("b", [{"role": "user", "content": "Why do we sleep at night?"}], None, "Why do we sleep at night?", None, 1),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def naive_args(lm, rm, tokenizer, scorer, prompt, k, w, T, mode="greedy", temperature=1.0, seed=0, stop=(),
               spread=False):
    """Algorithm 2 written plainly: full LM forward per token, a full RM forward per candidate.

    Only ``scorer.sequence`` (the RM's text -> ids formatting, no model call) is shared with the
    implementation under test; every model output is an uncached HF forward on one sequence.
    """
    ctx = tokenizer(tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False)["input_ids"]
    resp: list[int] = []
    for t in range(T):
        lp = lm(input_ids=torch.tensor([ctx + resp])).logits[0, -1].float().log_softmax(-1)
        vals, ids = lp.topk(k)
        rs = []
        for tok in ids.tolist():
            done = tok in stop
            ids_c = resp if done else resp + [tok]
            part = Partial(tokenizer.decode(ids_c, skip_special_tokens=True), ids_c, done, [tok] if done else [])
            seq = scorer.sequence(prompt, part)
            rs.append(float(rm(input_ids=torch.tensor([seq])).logits[0, 0]))
        if spread:  # w in units of this step's reward spread: r / (population std of the k rewards)
            mean = sum(rs) / k
            std = (sum((r - mean) ** 2 for r in rs) / k) ** 0.5
            rs = [r / std if std > 0 else 0.0 for r in rs]
        scores = [v + w * r for v, r in zip(vals.tolist(), rs)]
        if mode == "greedy":
            j = max(range(k), key=lambda i: (scores[i], -i))
        else:
            g = torch.Generator().manual_seed(candidate_seed(seed, prompt.id, 0, t, 0))
            u = float(torch.rand(1, generator=g, dtype=torch.float64))
            z = [s / temperature for s in scores]
            m = max(z)
            p = [pow(2.718281828459045, x - m) for x in z]
            total, acc, j = sum(p), 0.0, k - 1
            for i, x in enumerate(p):
                acc += x
                if acc > u * total:
                    j = i
                    break
        tok = ids[j].item()
        if tok in stop:
            break
        resp.append(tok)
    return resp


@pytest.mark.parametrize(("k", "w"), [(10, 1.5), (4, 40.0)])
def test_args_greedy_equals_naive_reference(policy, tiny_llama_lm, tiny_llama_rm, smollm_tokenizer, k, w):
    """Cached ARGS (policy cache + RM prefix cache, two prompts batched) == the naive recompute, token for token."""
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    T = 16
    res = args_decode(policy, scorer, PROMPTS, k=k, w=w, max_new_tokens=T)
    for r in res:
        ref = naive_args(tiny_llama_lm, tiny_llama_rm, smollm_tokenizer, scorer, r.prompt, k, w, T,
                         stop=policy.stop_ids)
        assert r.best_candidate.token_ids == ref
    if w == 40.0:
        # A large w must make the reward matter: the choice differs from plain greedy decoding somewhere.
        plain = args_decode(policy, scorer, PROMPTS, k=k, w=0.0, max_new_tokens=T)
        assert any(a.best_candidate.token_ids != b.best_candidate.token_ids for a, b in zip(res, plain))
    # The cache did its job: the scorer saw far fewer tokens than k * (full sequence) per step.
    c = res[0].best_candidate
    full = sum(len(scorer.sequence(PROMPTS[0], Partial(policy.decode(c.token_ids[:t]), c.token_ids[:t])))
               for t in range(1, T + 1)) * k
    assert scorer.meter.for_group(0)["scorer_tokens"] < full / 3


def test_args_spread_units_equal_naive_reference(policy, tiny_llama_lm, tiny_llama_rm, smollm_tokenizer):
    """w_units=spread: log pi + w * r / std_k(r) per step, against the plain recompute; and it is a real change."""
    from decoding.search.args import reward_term

    r = torch.tensor([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]])
    std = (8.0 / 3) ** 0.5  # population std of 1, 3, 5
    torch.testing.assert_close(reward_term(r, 2.0, "spread"), torch.tensor([[2 / std, 6 / std, 10 / std], [0.0] * 3]))
    torch.testing.assert_close(reward_term(r, 2.0, "raw"), 2.0 * r)
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    res = args_decode(policy, scorer, PROMPTS, k=6, w=0.05, max_new_tokens=10, w_units="spread")
    for one in res:
        ref = naive_args(tiny_llama_lm, tiny_llama_rm, smollm_tokenizer, scorer, one.prompt, 6, 0.05, 10,
                         stop=policy.stop_ids, spread=True)
        assert one.best_candidate.token_ids == ref
    raw = args_decode(policy, scorer, PROMPTS, k=6, w=0.05, max_new_tokens=10)  # raw units: r barely matters
    assert any(a.best_candidate.token_ids != b.best_candidate.token_ids for a, b in zip(res, raw))


def test_args_zero_weight_is_greedy_decoding(policy, tiny_llama_lm, tiny_llama_rm, smollm_tokenizer):
    """w = 0: ARGS is the policy's greedy decode (argmax of the full-forward next-token distribution)."""
    res = args_decode(policy, ClassifierScorer(tiny_llama_rm, smollm_tokenizer), PROMPTS[:1], k=3, w=0.0,
                      max_new_tokens=6)
    ids = policy.encode(PROMPTS[0].messages)
    greedy = []
    with torch.no_grad():
        for _ in range(6):
            greedy.append(int(tiny_llama_lm(input_ids=torch.tensor([ids + greedy])).logits[0, -1].argmax()))
    c = res[0].best_candidate
    assert c.token_ids == greedy
    # Recorded log-probs are the policy's own, and the score is the RM's reward of the final prefix.
    torch.testing.assert_close(torch.tensor(c.logprobs), policy.sequence_logprobs(ids, greedy), atol=1e-4, rtol=0)
    assert len(c.prefix_scores) == 6 and c.score == c.prefix_scores[-1]
    comp = policy.meter.for_group(0)
    assert comp["policy_tokens_generated"] == 6 and comp["policy_tokens_prefilled"] == len(ids)


def test_args_sampling_equals_naive_reference_and_seeds(policy, tiny_llama_lm, tiny_llama_rm, smollm_tokenizer):
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    res = args_decode(policy, scorer, PROMPTS, k=5, w=1.5, max_new_tokens=6, mode="sample", temperature=2.0, seed=3)
    for r in res:
        ref = naive_args(tiny_llama_lm, tiny_llama_rm, smollm_tokenizer, scorer, r.prompt, 5, 1.5, 6, mode="sample",
                         temperature=2.0, seed=3, stop=policy.stop_ids)
        assert r.best_candidate.token_ids == ref
    # Batch independence: prompt b alone draws the same tokens.
    alone = args_decode(policy, scorer, PROMPTS[1:], k=5, w=1.5, max_new_tokens=6, mode="sample", temperature=2.0,
                        seed=3)
    assert alone[0].best_candidate.token_ids == res[1].best_candidate.token_ids


def test_args_with_rear_scorer_runs_and_sums(policy):
    """An additive scorer: the step scores are increments whose sum is the final prefix's REAR score."""
    scorer = RearScorer(policy, 5.0)
    (r,) = args_decode(policy, scorer, PROMPTS[:1], k=4, w=1.0, max_new_tokens=5)
    c = r.best_candidate
    assert len(c.token_ids) == 5 and c.score == pytest.approx(sum(c.step_scores))
    fresh = RearScorer(policy, 5.0, reuse_generation_logprobs=False, cache=False)
    assert fresh.score([r.prompt], [c.partial(policy)]).item() == pytest.approx(c.score, abs=2e-3)


def test_args_bad_input(policy, tiny_llama_rm, tiny_bert_rm, smollm_tokenizer, minilm_tokenizer):
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    with pytest.raises(ValueError, match="larger than the policy's vocabulary"):
        args_decode(policy, scorer, PROMPTS, k=policy.vocab_size + 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        args_decode(policy, scorer, PROMPTS, k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        args_decode(policy, scorer, PROMPTS, k=2, max_new_tokens=0)
    with pytest.raises(ValueError, match="mode"):
        args_decode(policy, scorer, PROMPTS, k=2, mode="beam")
    with pytest.raises(ValueError, match="temperature"):
        args_decode(policy, scorer, PROMPTS, k=2, mode="sample", temperature=0.0)
    # An encoder RM works but has no prefix cache: the warning says which cache is missing.
    enc = ClassifierScorer(tiny_bert_rm, minilm_tokenizer)
    with pytest.warns(UserWarning, match="encoder reward model: no prefix KV cache"):
        (r,) = args_decode(policy, enc, PROMPTS[:1], k=2, max_new_tokens=2)
    assert len(r.best_candidate.token_ids) == 2


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["args_rear_smollm2.yaml", "cbs_tbs_rear_smollm2.yaml"])
def test_real_smollm2_recipes_end_to_end(tmp_path, recipe):
    """The shipped recipes on the real SmolLM2-135M-Instruct, shortened: REAR-guided ARGS and TBS."""
    import json
    from pathlib import Path

    from decoding.decode import DecodeConfig, run
    from sp_prm.config import load_config

    out = tmp_path / "o.jsonl"
    path = Path(__file__).resolve().parents[1] / "recipes" / "decode" / recipe
    cfg = load_config(DecodeConfig, ["--config", str(path), "--output", str(out), "--search.max_new_tokens", "12",
                                     "--search.args.k", "5", "--search.cbs.beam_width", "2", "--search.cbs.successors", "2",
                                     "--data.limit", "1", "--progress", "false"])
    run(cfg)
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["response"].strip() and rec["compute"]["scorer_calls"] >= 1
