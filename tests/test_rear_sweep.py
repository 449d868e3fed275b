"""The post-hoc REAR lambda sweep equals Best-of-N run separately per lambda; length normalisation by hand."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.policy import Policy, SamplingParams
from decoding.scorers import RearScorer
from decoding.scorers.rear import best_of_n_terms, rear_scores, select
from decoding.search.best_of_n import best_of_n
from decoding.search.dvts import dvts
from decoding.types import Partial
from tests.test_decoding_search import prompts


@pytest.mark.parametrize("length_normalize", [False, True])
def test_sweep_equals_best_of_n_per_lambda(policy, length_normalize):
    ps = prompts(3)
    params, n, T, seed = SamplingParams(), 6, 12, 3
    swept = best_of_n_terms(policy, ps, n, params, T, seed)
    picks = set()
    for lam in (0.0, 1.0, 3.0, 20.0):
        ref = best_of_n(policy, RearScorer(policy, lam, length_normalize=length_normalize), ps, n, params, T, seed)
        for r, s in zip(ref, swept):
            assert [c.token_ids for c in r.candidates] == [c.token_ids for c in s.candidates]
            ours = rear_scores(s.A, s.B, s.n_terms, lam, length_normalize).tolist()
            assert ours == pytest.approx([c.score for c in r.candidates], abs=1e-5)
            assert select(s, lam, length_normalize) == r.best
            picks.add((r.prompt.id, r.best))
    assert len(picks) > len(ps)  # lambda changes at least one choice, so the test can tell selections apart


def test_terms_are_the_two_log_likelihoods(policy):
    ps = prompts(1)
    s = best_of_n_terms(policy, ps, 3, SamplingParams(), 8, seed=1)[0]
    for j, c in enumerate(s.candidates):
        response = c.token_ids + c.end_ids
        assert s.n_terms[j] == len(response)
        a = policy.sequence_logprobs(policy.encode(ps[0].question_messages), response).sum().item()
        b = policy.sequence_logprobs(policy.encode(ps[0].messages), response).sum().item()
        assert s.A[j].item() == pytest.approx(a, abs=1e-3)
        assert s.B[j].item() == pytest.approx(b, abs=1e-3)


def test_length_normalisation_by_hand(policy):
    A, B, k = [-10.0, -4.0, -30.0], [-8.0, -5.0, -12.0], [10, 2, 30]
    for lam in (0.0, 1.0, 3.0, 20.0):
        want = [((1 - lam) * a + lam * b) / n for a, b, n in zip(A, B, k)]
        assert rear_scores(A, B, k, lam, True).tolist() == pytest.approx(want, rel=1e-6)
        assert rear_scores(A, B, k, lam, False).tolist() == pytest.approx(
            [(1 - lam) * a + lam * b for a, b in zip(A, B)], rel=1e-6)
    # At lambda = 1 the sum favours the short answer (index 1); per token the long one wins.
    assert int(torch.argmax(rear_scores(A, B, k, 1.0))) == 1
    assert int(torch.argmax(rear_scores(A, B, k, 1.0, True))) == 2
    assert rear_scores(A, B, k, math.inf).tolist() == pytest.approx([2.0, -1.0, 18.0])
    with pytest.raises(ValueError):
        rear_scores(A, B, k, -1.0)
    # The scorer option: S / (response tokens + stop token).
    p = prompts(1)[0]
    ids = policy.tokenizer("Rain is water.", add_special_tokens=False)["input_ids"]
    complete = Partial("Rain is water.", ids, True, [policy.stop_ids[0]])
    partial = Partial("Rain is water.", ids, False)
    plain, norm = RearScorer(policy, 3.0), RearScorer(policy, 3.0, length_normalize=True)
    s_plain = plain.score([p, p], [complete, partial])
    s_norm = norm.score([p, p], [complete, partial])
    assert s_norm.tolist() == pytest.approx([s_plain[0].item() / (len(ids) + 1), s_plain[1].item() / len(ids)])
    assert plain.additive and not norm.additive and norm.default_aggregation == "last"


def test_dvts_with_length_normalised_rear(tiny_llama_lm, smollm_tokenizer):
    policy = Policy(tiny_llama_lm, smollm_tokenizer, delimiter="e")
    scorer = RearScorer(policy, 5.0, length_normalize=True)
    res = dvts(policy, scorer, prompts(2), n=4, width=2, params=SamplingParams(), max_new_tokens=16,
               max_steps=3, max_step_tokens=5, seed=2)
    for r in res:
        for c in r.candidates:
            # The aggregated score is the normalised REAR score of the whole response.
            want = scorer.score([r.prompt], [c.partial(policy)]).item()
            assert c.score == pytest.approx(want, abs=1e-4)
