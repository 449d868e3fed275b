"""Policy and KV state: forks, holes, rollback and compaction are exact; batched == unbatched; sampling rules."""

from __future__ import annotations

import pytest
import torch

from decoding.kv import KVState
from decoding.policy import Policy, SamplingParams, choose_tokens

MSGS = [
    [{"role": "user", "content": "Tell me something about the sea and the ships on it."}],
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour."}],
]


def reference_logprobs(model, prompt, response):
    """Independent: the HF model's own full forward (logits from model(...)), no cache."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return lp[len(prompt) - 1: -1].gather(1, ids[0, len(prompt):, None]).squeeze(1)


def test_encode_matches_chat_template(policy, smollm_tokenizer):
    text = smollm_tokenizer.apply_chat_template(MSGS[0], tokenize=False, add_generation_prompt=True)
    assert policy.encode(MSGS[0]) == smollm_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert text.endswith("<|im_start|>assistant\n")


def test_sampled_logprobs_equal_teacher_forced(policy, tiny_llama_lm):
    prompts = [policy.encode(m) for m in MSGS]
    state = policy.prefill(prompts).select([0, 0, 1, 2, 2])
    samples = policy.sample(state, [11, 12, 13, 14, 15], SamplingParams(temperature=1.0), 12)
    for row, p in enumerate([0, 0, 1, 2, 2]):
        s = samples[row]
        ref = reference_logprobs(tiny_llama_lm, prompts[p], s.token_ids)
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=1e-4, rtol=0)


def test_batched_equals_unbatched(policy):
    """Same seeds -> same tokens and log-probs whatever else is in the batch (left padding, holes)."""
    prompts = [policy.encode(m) for m in MSGS]
    params = SamplingParams(temperature=0.9, top_k=50)
    batched = policy.sample(policy.prefill(prompts), [1, 2, 3], params, [10, 6, 14], stop_at_delimiter=False)
    for i, p in enumerate(prompts):
        alone = policy.sample(policy.prefill([p]), [i + 1], params, [10, 6, 14][i])[0]
        assert alone.token_ids == batched[i].token_ids
        torch.testing.assert_close(torch.tensor(alone.logprobs), torch.tensor(batched[i].logprobs), atol=1e-4, rtol=0)
    assert [len(s.token_ids) for s in batched] == [10, 6, 14]
    assert all(s.budget and not s.eos for s in batched)


def test_seed_controls_sampling(policy):
    state = policy.prefill([policy.encode(MSGS[0])]).select([0, 0, 0])
    s = policy.sample(state, [5, 5, 6], SamplingParams(), 16)
    assert s[0].token_ids == s[1].token_ids
    assert s[0].token_ids != s[2].token_ids


def test_greedy_matches_hf_generate(policy, tiny_llama_lm):
    prompt = policy.encode(MSGS[2])
    s = policy.sample(policy.prefill([prompt]), [0], SamplingParams(temperature=0), 8)[0]
    out = tiny_llama_lm.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert s.token_ids == out[0, len(prompt):].tolist()


def test_stop_token_and_delimiter(tiny_llama_lm, smollm_tokenizer):
    base = Policy(tiny_llama_lm, smollm_tokenizer)
    prompt = base.encode(MSGS[0])
    greedy = base.sample(base.prefill([prompt]), [0], SamplingParams(temperature=0), 6)[0].token_ids
    stopper = Policy(tiny_llama_lm, smollm_tokenizer, stop_token_ids=[greedy[3]])
    s = stopper.sample(stopper.prefill([prompt]), [0], SamplingParams(temperature=0), 6)[0]
    first = greedy.index(greedy[3])
    assert s.eos and s.end_ids == [greedy[3]] and s.token_ids == greedy[:first] and len(s.end_logprobs) == 1
    # A delimiter present in the text of a sampled token ends the step right after that token.
    free = base.sample(base.prefill([prompt]), [3], SamplingParams(), 12)[0].token_ids
    texts = [smollm_tokenizer.decode([t]) for t in free]
    delim = next(ch for t in texts[2:] for ch in t if ch.strip())
    cut = next(i for i, t in enumerate(texts) if delim in t)
    d = Policy(tiny_llama_lm, smollm_tokenizer, delimiter=delim)
    step = d.sample(d.prefill([prompt]), [3], SamplingParams(), 12, stop_at_delimiter=True)[0]
    assert step.delimiter and step.token_ids == free[: cut + 1]


def test_continue_after_step_equals_one_pass(policy):
    """Stopping at a budget, forking and continuing gives the same log-probs as the tokens teacher-forced."""
    prompt = policy.encode(MSGS[1])
    state = policy.prefill([prompt]).select([0, 0])
    first = policy.sample(state, [1, 2], SamplingParams(), [3, 7], feed_final=True)
    state = state.select([1, 0, 1])  # reorder + fork rows that have holes
    state.compact(threshold=0.0)
    second = policy.sample(state, [7, 8, 9], SamplingParams(), 5)
    for row, src in enumerate([1, 0, 1]):
        toks = first[src].token_ids + second[row].token_ids
        ref = reference_logprobs(policy.model, prompt, toks)
        got = torch.tensor(first[src].logprobs + second[row].logprobs)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_kvstate_rollback_and_compact_exact(policy, tiny_llama_lm):
    prompts = [policy.encode(m) for m in MSGS]
    state = KVState.empty([0, 1, 2])
    policy.backbone.eval()
    state.forward(policy.backbone, prompts, policy.pad_id)
    state.forward(policy.backbone, [[5, 6, 7], [], [8]], policy.pad_id)
    state.rollback([len(prompts[0]) + 1, len(prompts[1]), len(prompts[2])])
    assert state.hole_fraction() > 0
    assert state.compact(threshold=0.0)
    assert state.hole_fraction() < 0.5
    hidden, _ = state.forward(policy.backbone, [[9], [9], [9]], policy.pad_id)
    for i, extra in enumerate([[5, 9], [9], [9]]):
        ids = torch.tensor([prompts[i] + extra])
        with torch.no_grad():
            ref = policy.backbone(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(hidden[i, 0], ref, atol=1e-5, rtol=1e-4)


def test_choose_tokens_top_k_top_p():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    u = torch.linspace(0, 0.999, 200)
    picks = lambda p: {int(choose_tokens(lp, u[i:i + 1], p)) for i in range(len(u))}  # noqa: E731
    assert picks(SamplingParams(top_k=2)) == {0, 1}
    assert picks(SamplingParams(top_p=0.8)) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    assert picks(SamplingParams(top_p=0.81)) == {0, 1, 2}
    assert picks(SamplingParams()) == {0, 1, 2, 3}
    assert picks(SamplingParams(temperature=0)) == {0}
    # Inverse CDF: u below 0.5 -> token 0, in [0.5, 0.8) -> token 1 (probabilities, temperature 1).
    assert int(choose_tokens(lp, torch.tensor([0.49]), SamplingParams())) == 0
    assert int(choose_tokens(lp, torch.tensor([0.51]), SamplingParams())) == 1
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


def _reference_choose(logprobs, uniforms, params):
    """The full-sort sampler, written out: nucleus by sorting the vocabulary, inverse CDF in id order."""
    logits = logprobs / params.temperature
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, (probs.cumsum(-1) - probs) >= params.top_p)
    probs = logits.masked_fill(drop, float("-inf")).softmax(-1)
    out = []
    for row, u in zip(probs.double(), uniforms.double()):
        cdf = row.cumsum(0)
        out.append(int(min(int((cdf <= u * cdf[-1]).sum()), len(row) - 1)))
    return out


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_top_p_from_the_top_candidates_draws_the_full_sort_token(top_p):
    """The nucleus read from the 256 most likely tokens gives the full sort's draw, token for token: peaked
    rows (nucleus of a few tokens), LM-like rows, and flat rows whose nucleus is wider than 256 (fallback)."""
    import decoding.policy as pol

    g = torch.Generator().manual_seed(0)
    V = 5000
    rows = [torch.randn(V, generator=g) * s for s in (8.0, 4.0, 2.0, 1.0)] * 8  # sharp ... flat
    rows += [torch.randn(V, generator=g) * 0.05]  # nearly uniform: the nucleus spans thousands of tokens
    lp = torch.stack(rows).log_softmax(-1)
    params = SamplingParams(temperature=0.7, top_p=top_p)
    flat = 0
    for _ in range(40):
        u = torch.rand(len(rows), generator=g, dtype=torch.float64)
        got = choose_tokens(lp, u, params).tolist()
        assert got == _reference_choose(lp, u, params)
        _, ok = pol._nucleus_from_top(lp / 0.7, u, top_p, pol.NUCLEUS_CANDIDATES)
        flat += int((~ok).sum())
    assert flat >= 40  # the fallback rows were exercised
