"""Scorers against independent computations: REAR's two sums, lambda = 1, RM cached == uncached, GenRM."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.policy import SamplingParams
from decoding.scorers import ClassifierScorer, GenRMScorer, RearScorer
from decoding.types import Partial, Prompt, aggregate
from sp_prm.formatting import PrefixFormat, encode

PROMPTS = [
    Prompt("a", [{"role": "system", "content": "I love short answers."}, {"role": "user", "content": "What is rain?"}],
           [{"role": "user", "content": "What is rain?"}], "What is rain?", "I love short answers.", 0),
    Prompt("b", [{"role": "system", "content": "Answer in rhymes."}, {"role": "user", "content": "Why sleep?"}],
           [{"role": "user", "content": "Why sleep?"}], "Why sleep?", "Answer in rhymes.", 1),
]


def sampled(policy, n=3, tokens=10, complete_first=True):
    state = policy.prefill([policy.encode(p.messages) for p in PROMPTS]).select([i for i in range(2) for _ in range(n)])
    samples = policy.sample(state, list(range(2 * n)), SamplingParams(), tokens)
    prompts = [PROMPTS[i] for i in range(2) for _ in range(n)]
    partials = [Partial(policy.decode(s.token_ids), s.token_ids, s.eos, s.end_ids, s.logprobs + s.end_logprobs)
                for s in samples]
    if complete_first:  # one complete response (ends with the policy's stop token) to cover the end-token term
        eos = policy.stop_ids[0]
        p = partials[0]
        lp = policy.sequence_logprobs(policy.encode(PROMPTS[0].messages), p.token_ids + [eos]).tolist()
        partials[0] = Partial(p.text, p.token_ids, True, [eos], lp)
    return prompts, partials


def independent_loglik(model, tokenizer, messages, response_ids):
    """Sum of log pi(a_t | context, a_<t) by the HF model's own forward on the chat-templated context."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ctx = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + list(response_ids)])
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return float(lp[len(ctx) - 1: -1].gather(1, ids[0, len(ctx):, None]).sum())


@pytest.mark.parametrize(("lam", "reuse"), [(0.0, True), (0.5, False), (20.0, True)])
def test_rear_matches_independent_sums(policy, tiny_llama_lm, smollm_tokenizer, lam, reuse):
    prompts, partials = sampled(policy)
    got = RearScorer(policy, lam, reuse_generation_logprobs=reuse).score(prompts, partials)
    for j, (p, r) in enumerate(zip(prompts, partials)):
        resp = r.token_ids + r.end_ids
        q = independent_loglik(tiny_llama_lm, smollm_tokenizer, p.question_messages, resp)
        f = independent_loglik(tiny_llama_lm, smollm_tokenizer, p.messages, resp)
        assert got[j].item() == pytest.approx((1 - lam) * q + lam * f, abs=2e-3 * max(1.0, lam))
    assert partials[0].complete and len(partials[0].end_ids) == 1


def test_rear_lambda_one_is_policy_loglik_and_terms_differ(policy, tiny_llama_lm, smollm_tokenizer):
    prompts, partials = sampled(policy, complete_first=False)
    one = RearScorer(policy, 1.0).score(prompts, partials)
    loglik = torch.tensor([sum(r.logprobs) for r in partials])
    torch.testing.assert_close(one, loglik)
    q, f = RearScorer(policy, 3.0, reuse_generation_logprobs=False).terms(prompts, partials)
    torch.testing.assert_close(f, loglik, atol=1e-3, rtol=0)
    assert (q - f).abs().max() > 1e-3  # the preference changes the context: the two sums differ


def test_rear_cache_reuses_steps(policy):
    """Scoring a step's extension costs the new tokens, and equals the uncached score."""
    prompts, partials = sampled(policy, complete_first=False)
    cached = RearScorer(policy, 5.0, reuse_generation_logprobs=False)
    fresh = RearScorer(policy, 5.0, reuse_generation_logprobs=False, cache=False)
    cached.score(prompts, partials)
    first = cached.cache.tokens_fed
    longer = [Partial(r.text + " more", r.token_ids + [1234, 567], False) for r in partials]
    torch.testing.assert_close(cached.score(prompts, longer), fresh.score(prompts, longer), atol=2e-3, rtol=0)
    # Two contexts x 6 candidates, 2 new tokens each, plus one re-fed token per row.
    assert cached.cache.tokens_fed - first == 2 * 6 * 3
    # The prompt of each context is computed once per prompt, not once per candidate.
    assert first < fresh.cache.tokens_fed


def test_rear_bad_input(policy):
    with pytest.raises(ValueError, match="lambda"):
        RearScorer(policy, -0.1)
    no_pref = Prompt("z", [{"role": "user", "content": "hi"}], None, "hi", None, 0)
    with pytest.raises(ValueError, match="'z'.*preference"):
        RearScorer(policy, 2.0).score([no_pref], [Partial("x", [87], False)])


def test_decoder_rm_cached_equals_uncached_across_calls(policy, tiny_llama_rm, smollm_tokenizer):
    prompts, partials = sampled(policy)
    cached = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    plain = ClassifierScorer(tiny_llama_rm, smollm_tokenizer, cache=False)
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    torch.testing.assert_close(cached.score(prompts, partials), plain.score(prompts, partials), atol=1e-4, rtol=0)
    # Next call: extended, cut back (rollback through the crop path) and new responses.
    nxt = [Partial(partials[0].text + " and more", complete=False), Partial(partials[1].text[:3], complete=False),
           Partial("A different answer.", complete=True), Partial(partials[3].text, complete=True)]
    pr = [prompts[0], prompts[1], prompts[2], prompts[3]]
    before = cached.prefix_cache.tokens_fed
    torch.testing.assert_close(cached.score(pr, nxt), plain.score(pr, nxt), atol=1e-4, rtol=0)
    total = sum(len(cached.sequence(p, r)) for p, r in zip(pr, nxt))
    assert cached.prefix_cache.tokens_fed - before < total / 2
    # Independent: the RM's own forward on the formatting ids, one sequence at a time.
    with torch.no_grad():
        for p, r, v in zip(pr, nxt, cached.score(pr, nxt)):
            enc = encode(smollm_tokenizer, p.messages, r.text, PrefixFormat())
            ids = enc.sequence(end_marker=r.complete)
            assert ids[-1] == (enc.end_ids[-1] if r.complete else enc.content_ids[-1])
            ref = tiny_llama_rm(input_ids=torch.tensor([ids])).logits[0, 0]
            assert v.item() == pytest.approx(ref.item(), abs=1e-4)


def test_encoder_rm_scores_and_rejects_unencodable(tiny_bert_rm, minilm_tokenizer):
    scorer = ClassifierScorer(tiny_bert_rm, minilm_tokenizer)
    parts = [Partial("It is water falling.", complete=True), Partial("It is", complete=False)]
    got = scorer.score(PROMPTS[:1] * 2, parts)
    with torch.no_grad():
        for r, v in zip(parts, got):
            ids = encode(minilm_tokenizer, PROMPTS[0].messages, r.text, PrefixFormat()).sequence(end_marker=r.complete)
            assert v.item() == pytest.approx(tiny_bert_rm(input_ids=torch.tensor([ids])).logits[0, 0].item(), abs=1e-5)
    emoji = Partial("\U0001F600\U0001F680 \U0001F9E0", complete=True)
    with pytest.raises(ValueError, match="'a'.*cannot encode"):  # every response unreadable: the wrong RM
        scorer.score(PROMPTS[:1], [emoji])
    # one degenerate sample among readable ones (a search must not die on it): scored as [UNK]s, warned once
    with pytest.warns(UserWarning, match="1 of 2 responses"):
        mixed = scorer.score(PROMPTS[:1] * 2, [parts[0], emoji])
    assert mixed[0].item() == pytest.approx(got[0].item(), abs=1e-5) and torch.isfinite(mixed[1])


def test_genrm_is_yes_minus_no(policy, tiny_llama_lm, smollm_tokenizer):
    prompts, partials = sampled(policy, n=1, complete_first=False)
    got = GenRMScorer(policy).score(prompts, partials)
    for p, r, v in zip(prompts, partials, got):
        messages = [{"role": "system", "content": p.preference}, {"role": "user", "content": p.question},
                    {"role": "assistant", "content": r.text},
                    {"role": "user", "content": "Please act as an impartial judge and evaluate the quality of the "
                     "assistant's response. A preferred response is helpful, harmless, and accurately follows "
                     "instructions. Is this a preferred response? Answer 'Yes' or 'No' in the format 'Preferred: X'."}]
        text = smollm_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = smollm_tokenizer(text + "Preferred:", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = tiny_llama_lm(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        ids_of = lambda w: smollm_tokenizer(w, add_special_tokens=False)["input_ids"][0]  # noqa: E731
        yes = torch.logsumexp(lp[[ids_of(" Yes"), ids_of("Yes")]], 0)
        no = torch.logsumexp(lp[[ids_of(" No"), ids_of("No")]], 0)
        assert v.item() == pytest.approx((yes - no).item(), abs=1e-4)


def test_aggregations():
    s = [0.5, 0.2, 0.9]
    assert aggregate(s, "last") == 0.9
    assert aggregate(s, "min") == 0.2
    assert aggregate(s, "prod") == pytest.approx(0.5 * 0.2 * 0.9)
    assert aggregate(s, "mean") == pytest.approx(1.6 / 3)
    assert aggregate(s, "sum") == pytest.approx(1.6)
    assert aggregate([], "sum") == -math.inf
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(s, "max")
