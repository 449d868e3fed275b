"""CARDS: entropy segmentation, accept/reject with in-place rollback vs a recompute-everything reference."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from decoding.policy import Policy, SamplingParams, choose_tokens
from decoding.scorers import ClassifierScorer
from decoding.search.cards import CardsParams, calibrate_thresholds, cards, entropy
from decoding.types import Meter, Partial, Prompt, candidate_seed

PROMPTS = [
    Prompt("a", [{"role": "system", "content": "I love short answers."}, {"role": "user", "content": "What is rain?"}],
           [{"role": "user", "content": "What is rain?"}], "What is rain?", "I love short answers.", 0),
    Prompt("b", [{"role": "user", "content": "Why do we sleep at night?"}], None, "Why do we sleep at night?", None, 1),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def policy(tiny_llama_lm, smollm_tokenizer):
    # A random tiny LM is near-uniform (entropies all ~ln V, within 1e-4 of each other), so float noise
    # could flip an entropy test. Scaling the tied embedding scales the logits (the input side is
    # RMS-normalised): entropies spread over several nats and the segmentation becomes robust.
    with torch.no_grad():
        tiny_llama_lm.get_input_embeddings().weight.mul_(6.0)
    return Policy(tiny_llama_lm, smollm_tokenizer)


def test_entropy_formula():
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]])
    got = entropy(p.log())
    assert got[0].item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert got[1].item() == pytest.approx(math.log(4))
    cp = CardsParams(r_start=-1.0, r_end=3.0)
    assert cp.threshold(0, 100) == -1.0 and cp.threshold(50, 100) == 1.0 and cp.threshold(400, 100) == 3.0


@torch.no_grad()
def naive_cards(lm, policy, scorer, prompt, cp, params, T, seed):
    """Algorithm 4 with no cache: every token's distribution from a full forward on prompt + response so far;
    every candidate rescored whole (scorer with cache off); a rejected segment is simply dropped."""
    ctx = policy.encode(prompt.messages)
    resp: list[int] = []
    seg, done = 0, False
    while not done:
        best = None
        for att in range(cp.max_rejections + 1):
            budget = min(cp.max_segment_tokens, T - len(resp))
            u = torch.rand(budget, generator=torch.Generator().manual_seed(candidate_seed(seed, prompt.id, 0, seg, att)),
                           dtype=torch.float64)
            toks, eos = [], False
            for t in range(budget):
                lp = lm(input_ids=torch.tensor([ctx + resp + toks])).logits[0, -1:].float().log_softmax(-1)
                p = lp.exp()
                if t and float(-(p * lp).sum()) >= cp.tau_u:
                    break
                x = int(choose_tokens(lp, u[t: t + 1], params)[0])
                toks.append(x)
                if x in policy.stop_ids:
                    eos = True
                    break
            body = resp + (toks[:-1] if eos else toks)
            r = float(scorer.score([prompt], [Partial(policy.decode(body), body, eos, toks[-1:] if eos else [])])[0])
            thr = cp.r_start + (cp.r_end - cp.r_start) * min(1.0, len(body) / T)
            if cp.acceptance == "hard":
                ok = r >= thr
            else:
                g = torch.Generator().manual_seed(candidate_seed(seed, prompt.id, 1, seg, att))
                ok = float(torch.rand(1, generator=g, dtype=torch.float64)) < min(1.0, math.exp((r - thr) / cp.beta))
            if best is None or r > best[0]:
                best = (r, toks, eos)
            if ok:
                best = (r, toks, eos)
                break
        _, toks, eos = best
        resp += toks[:-1] if eos else toks
        seg += 1
        done = eos or len(resp) >= T
    return resp


def typical_entropy(policy, prompt):
    """A tau_u inside the random tiny model's entropy range, so that segments have varied lengths."""
    state = policy.prefill([policy.encode(prompt.messages)])
    ents = []
    for _ in range(12):
        ents.append(float(entropy(state.next_logprobs)[0]))
        policy.extend(state, [[int(state.next_logprobs[0].argmax())]])
    return float(torch.tensor(ents).median())


@pytest.mark.parametrize("acceptance", ["hard", "soft"])
def test_cards_equals_recompute_reference(policy, tiny_llama_lm, tiny_llama_rm, smollm_tokenizer, acceptance):
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    fresh = ClassifierScorer(tiny_llama_rm, smollm_tokenizer, cache=False)
    tau = typical_entropy(policy, PROMPTS[0])
    # Rewards of this RM on these prompts sit around a few units; a rising threshold in that range
    # gives a mix of accepts and rejects.
    start, end = calibrate_thresholds(policy, fresh, PROMPTS, n=3, max_new_tokens=12, quantile=0.6)
    cp = CardsParams(tau_u=tau, r_start=start, r_end=end, acceptance=acceptance, beta=0.5, max_rejections=2,
                     max_segment_tokens=5)
    params = SamplingParams(temperature=1.0)
    T = 12
    policy.meter = Meter()
    res = cards(policy, scorer, PROMPTS, cp, params, T, seed=5)
    for r in res:
        ref = naive_cards(tiny_llama_lm, policy, fresh, r.prompt, cp, params, T, seed=5)
        c = r.best_candidate
        assert c.token_ids == ref
        ends = [0] + c.step_ends
        assert all(1 <= b - a <= 5 for a, b in zip(ends, ends[1:])) or c.eos
        assert len(c.token_ids) <= T
    generated = policy.meter.total("policy_tokens_generated")
    assert generated > sum(len(r.best_candidate.token_ids) for r in res)  # some segments were rejected


def test_cards_bounded_rejections(policy, tiny_llama_rm, smollm_tokenizer):
    """An unreachable threshold: every segment is tried max_rejections + 1 times, then the best is kept."""
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    cp = CardsParams(tau_u=100.0, r_start=1e9, r_end=1e9, max_rejections=2, max_segment_tokens=3)
    policy.meter = Meter()
    (r,) = cards(policy, scorer, PROMPTS[:1], cp, SamplingParams(), 6, seed=0)
    c = r.best_candidate
    assert len(c.token_ids) == 6 and c.step_ends == [3, 6]  # tau_u never reached: fixed 3-token segments
    assert policy.meter.total("policy_tokens_generated") == 2 * 3 * 3  # 2 segments x 3 attempts x 3 tokens
    assert policy.meter.for_group(0)["scorer_calls"] == 0  # the scorer has its own meter here
    # The kept segment is the best-scored of its attempts: rescoring the prefix gives the recorded score.
    fresh = ClassifierScorer(tiny_llama_rm, smollm_tokenizer, cache=False)
    got = fresh.score([PROMPTS[0]], [Partial(policy.decode(c.token_ids[:3]), c.token_ids[:3])])
    assert got.item() == pytest.approx(c.prefix_scores[0], abs=1e-4)


def test_cards_bad_input():
    with pytest.raises(ValueError, match="tau_u"):
        CardsParams(tau_u=0.0)
    with pytest.raises(ValueError, match="acceptance"):
        CardsParams(acceptance="maybe")
    with pytest.raises(ValueError, match="max_rejections"):
        CardsParams(max_rejections=-1)


def test_decode_runs_cards_with_calibration(tmp_path, policy, tiny_llama_rm, smollm_tokenizer, capsys):
    import json

    from decoding.decode import DecodeConfig, run
    from sp_prm.config import build, load_config

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "question": f"Question {i}?"}) + "\n" for i in range(2)))
    out = tmp_path / "o.jsonl"
    cfg = build(DecodeConfig, {"data": {"path": str(data)}, "output": str(out), "progress": False,
                               "scorer": {"name": "rm:unused"},
                               "search": {"method": "cards", "max_new_tokens": 6,
                                          "cards": {"tau_u": 10.0, "max_segment_tokens": 3,
                                                    "calibration_prompts": 2}}})
    meter = Meter()
    run(cfg, policy=policy, scorer=ClassifierScorer(tiny_llama_rm, smollm_tokenizer), meter=meter)
    assert "calibrated thresholds" in capsys.readouterr().err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["r0", "r1"] and all(r["n"] == 1 and r["search"] == "cards" for r in recs)
    # The calibration's sampling is charged to negative groups, never to a record.
    assert meter.for_group(-1)["policy_tokens_generated"] == 4 * 6
    for r in recs:
        assert r["compute"]["policy_tokens_generated"] >= 6 and r["compute"]["scorer_calls"] >= 2
    with pytest.raises(ValueError, match="acceptance"):
        load_config(DecodeConfig, ["--search.method", "cards", "--search.cards.acceptance", "maybe"])


@torch.no_grad()
def test_tau_u_quantile_calibrates_on_the_policys_entropies(policy, tiny_llama_lm, tiny_llama_rm, smollm_tokenizer):
    """tau_u_quantile: the quantile of the entropies every sampled token was drawn from (checked against full
    forwards of the Best-of-N samples), and with it CARDS really cuts responses into several segments."""
    from decoding.search.best_of_n import best_of_n
    from decoding.search.cards import calibrate_tau_u, prepare, sampled_entropies

    params, T = SamplingParams(), 10
    got = sampled_entropies(policy, PROMPTS, 3, params, T, seed=2)
    scorer = ClassifierScorer(tiny_llama_rm, smollm_tokenizer)
    ref = []
    for r in best_of_n(policy, scorer, PROMPTS, 3, params, T, seed=2):
        ctx = policy.encode(r.prompt.messages)
        for c in r.candidates:
            seq = ctx + c.token_ids + c.end_ids
            lp = tiny_llama_lm(input_ids=torch.tensor([seq])).logits[0].float().log_softmax(-1)
            ref += entropy(lp[len(ctx) - 1: len(seq) - 1]).tolist()
    assert got == pytest.approx(ref, abs=1e-3)
    tau = calibrate_tau_u(policy, PROMPTS, 0.5, n=3, params=params, max_new_tokens=T, seed=2)
    assert tau == pytest.approx(float(torch.quantile(torch.tensor(ref, dtype=torch.float64), 0.5)), abs=1e-3)

    cp = prepare(policy, scorer, PROMPTS, CardsParams(tau_u=1e3, r_start=-1e9, r_end=-1e9, max_segment_tokens=T,
                                                      tau_u_quantile=0.5), params, T, seed=2)
    assert cp.tau_u_quantile is None and cp.tau_u == pytest.approx(calibrate_tau_u(policy, PROMPTS[:4], 0.5, 4,
                                                                                   params, T, seed=2))
    cut = cards(policy, scorer, PROMPTS, cp, params, T, seed=2)
    whole = cards(policy, scorer, PROMPTS, dataclasses.replace(cp, tau_u=1e3), params, T, seed=2)
    assert all(len(r.best_candidate.step_ends) == 1 for r in whole)  # never high enough: one segment
    assert all(len(r.best_candidate.step_ends) >= 2 for r in cut)  # the median: about every other token cuts


def test_cards_old_flat_keys_name_the_new_ones():
    from decoding.decode import DecodeConfig
    from sp_prm.config import load_config

    for old, new in [("cards_tau_u", "search.cards.tau_u"), ("args_k", "search.args.k"),
                     ("n", "search.best_of_n.n or search.dvts.n"), ("beam_width", "search.cbs.beam_width")]:
        with pytest.raises(KeyError, match=f"'search.{old}' has moved: use {new}"):
            load_config(DecodeConfig, [f"--search.{old}", "3"])
