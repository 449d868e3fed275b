"""Process value V(prefix) by rollouts, against a naive recomputation; its agreement metrics; evaluate-rm wiring."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from decoding.policy import Policy, SamplingParams
from decoding.process_value import Judge, PrefixItem, rollout_seed, rollout_values, value_function
from sp_prm.evaluate import EvaluateConfig, ProcessValueConfig, evaluate
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.value_agreement import kendall_tau_b, pair_agreement, spearman, value_metrics

FMT = PrefixFormat(template="plain", max_prompt_tokens=64, max_response_tokens=48)
MSGS = [{"role": "user", "content": "How do I bake bread at home?"}]
MSGS2 = [{"role": "user", "content": "Tell me a fact about owls."}]


def naive_value(lm, rm, tok, item: PrefixItem, rollouts: int, budget: int, seed: int) -> list[float]:
    """Each rollout alone: full forward per token (no cache), inverse-CDF on the rollout's own uniforms,
    then one plain forward of the gold RM on the finished response."""
    stop = {tok.eos_token_id, *([lm.generation_config.eos_token_id] if lm.generation_config.eos_token_id is not None
                                else [])}
    prompt = encode_prompt_plain(tok, item.as_messages())
    prefix = list(tok(item.text, add_special_tokens=False)["input_ids"]) if item.text else []
    out = []
    for m in range(rollouts):
        u = torch.rand(budget - len(prefix), generator=torch.Generator().manual_seed(rollout_seed(seed, item.key(), m)),
                       dtype=torch.float64)
        ids, cont, eos = prompt + prefix, [], False
        for t in range(budget - len(prefix)):
            with torch.no_grad():
                logits = lm(input_ids=torch.tensor([ids])).logits[0, -1].float()
            p = logits.log_softmax(-1).softmax(-1).double().numpy()
            cdf = np.cumsum(p)
            x = int(min(np.searchsorted(cdf, u[t].item() * cdf[-1], side="right"), len(p) - 1))
            if x in stop:
                eos = True
                break
            cont.append(x)
            ids = ids + [x]
        text = tok.decode(prefix + cont, skip_special_tokens=True)
        seq = encode(tok, item.as_messages(), text, FMT).sequence(end_marker=eos)
        out.append(last_token_reward(rm, seq))
    return out


def last_token_reward(rm, seq) -> float:
    """The score head on the last position's hidden state, by hand (HF's own pooling searches for the pad id,
    which is EOS here and would pool one token early on a complete response)."""
    with torch.no_grad():
        h = rm.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        return float(rm.score(h))


def encode_prompt_plain(tok, messages):
    from decoding.policy import encode_prompt

    return encode_prompt(tok, PrefixFormat(template="plain", max_prompt_tokens=None, max_response_tokens=None),
                         messages)


@pytest.fixture()
def setup(smollm_tokenizer, tiny_llama_lm, tiny_llama_rm):
    policy = Policy(tiny_llama_lm, smollm_tokenizer,
                    prompt_format=PrefixFormat(template="plain", max_prompt_tokens=None, max_response_tokens=None))
    return policy, Judge(tiny_llama_rm, smollm_tokenizer, FMT)


def test_rollout_values_match_a_naive_recomputation(setup, smollm_tokenizer, tiny_llama_lm, tiny_llama_rm):
    policy, judge = setup
    items = [PrefixItem.of(MSGS, "First, mix", False), PrefixItem.of(MSGS2, "Owls", False),
             PrefixItem.of(MSGS, "First, mix", False), PrefixItem.of(MSGS2, "", False)]
    vals = rollout_values(policy, judge, items, rollouts=3, params=SamplingParams(), max_response_tokens=8, seed=5)
    assert vals.shape == (4, 3)
    assert torch.equal(vals[0], vals[2])  # identical prefixes: identical rollouts (content-keyed seeds)
    for i in (0, 1, 3):
        naive = naive_value(tiny_llama_lm, tiny_llama_rm, smollm_tokenizer, items[i], 3, 8, 5)
        assert vals[i].tolist() == pytest.approx(naive, abs=1e-4)
    # the rollouts differ from each other (real sampling), and batching does not change them
    assert len(set(vals[1].tolist())) > 1
    alone = rollout_values(policy, judge, items[1:2], 3, SamplingParams(), 8, seed=5, batch_rows=1)
    assert alone[0].tolist() == pytest.approx(vals[1].tolist(), abs=1e-5)


def test_complete_prefix_value_is_the_gold_reward(setup, smollm_tokenizer, tiny_llama_rm):
    policy, judge = setup
    item = PrefixItem.of(MSGS, "Mix flour and water.", True)
    vals = rollout_values(policy, judge, [item], rollouts=4, params=SamplingParams(), max_response_tokens=8)
    seq = encode(smollm_tokenizer, MSGS, "Mix flour and water.", FMT).sequence(end_marker=True)
    gold = last_token_reward(tiny_llama_rm, seq)
    assert vals[0].tolist() == pytest.approx([gold] * 4, abs=1e-5)


def naive_ranks(x):
    return np.array([sum(1.0 for y in x if y < v) + (sum(1.0 for y in x if y == v) - 1) / 2 for v in x])


def test_agreement_and_rank_correlations_by_hand():
    r_w, r_l = np.array([2.0, 1.0, 0.5, 3.0, 1.0]), np.array([1.0, 2.0, 0.5, 1.0, 0.0])
    v_w, v_l = np.array([1.0, 0.0, 0.2, 0.5, 0.3]), np.array([0.0, 1.0, 0.1, 0.5, 0.4])
    a = pair_agreement(r_w, r_l, v_w, v_l)
    # pair 0 and 1 agree; pair 2: RM tie -> wrong; pair 3: V tie -> left out; pair 4: disagrees
    assert a[:3].tolist() == [1.0, 1.0, 0.0] and np.isnan(a[3]) and a[4] == 0.0
    x, y = np.concatenate([r_w, r_l]), np.concatenate([v_w, v_l])
    rx, ry = naive_ranks(x), naive_ranks(y)
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    conc = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(10), 2))
    nx = sum(x[i] != x[j] for i, j in itertools.combinations(range(10), 2))
    ny = sum(y[i] != y[j] for i, j in itertools.combinations(range(10), 2))
    assert kendall_tau_b(x, y) == pytest.approx(conc / np.sqrt(nx * ny))
    m = value_metrics({"a": (r_w, r_l), "v": (v_w, v_l)}, v_w, v_l, baseline="a", samples=300)
    assert m["models"]["a"]["agreement"] == pytest.approx(2 / 4)
    assert m["models"]["v"]["agreement"] == 1.0 and m["models"]["v"]["spearman"] == pytest.approx(1.0)
    assert m["models"]["v"]["agreement_vs_baseline"]["diff"] == pytest.approx(0.5)
    lo, hi = m["models"]["a"]["agreement_ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1


def test_evaluate_rm_with_process_value(tmp_path, tiny_llama_rm_dir, tiny_llama_lm_dir, tiny_bert_rm_dir):
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
            for i, (q, c, r) in enumerate([
                ("How do I bake bread?", "Mix flour, water and yeast.", "I will not help."),
                ("Name a bird.", "An owl is a bird.", "A cat."),
                ("What is two plus two?", "It is four.", "Four, I think, maybe five."),
                ("Say hello.", "Hello there friend.", "No.")])]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pv = ProcessValueConfig(policy=str(tiny_llama_lm_dir), gold_rm=str(tiny_llama_rm_dir), rollouts=2,
                            max_response_tokens=10, temperature=1.0, top_p=1.0, device="cpu", progress=False,
                            cache=str(tmp_path / "v.pt"))
    cfg = EvaluateConfig(models=[str(tiny_bert_rm_dir), str(tiny_llama_rm_dir)], names=["bert", "gold"],
                         tokenizer=str(tiny_llama_rm_dir),  # cut in the gold's (cased) token space: exact ids
                         source=str(src), subset="all", token_counts=[1, 3], fractions=[1.0], prefix=FMT,
                         process_value=pv, output_dir=str(tmp_path / "eval"), device="cpu", bootstrap_samples=50)
    with pytest.raises(ValueError, match="sp-prm evaluate-rm"):
        evaluate(cfg)  # without the decoding layer's value function
    out = evaluate(cfg, value_fn=value_function(pv, FMT))
    cuts = out["process_value"]["cuts"]
    assert set(cuts) == {"full", "t=1", "t=3"}
    # on complete responses V is the gold reward itself: the gold RM, evaluated as a model, agrees exactly
    assert cuts["full"]["models"]["gold"]["agreement"] == 1.0
    assert cuts["full"]["models"]["gold"]["spearman"] == pytest.approx(1.0)
    assert "agreement_vs_baseline" in cuts["t=1"]["models"]["gold"]
    saved = torch.load(tmp_path / "eval" / "process_value.pt", weights_only=False)
    assert saved["rollouts"]["t=3"].shape == (8, 2) and saved["ids"] == ["p0", "p1", "p2", "p3"]
    assert "Agreement with the process value V" in (tmp_path / "eval" / "results.md").read_text()
    # the cache serves a second evaluation without new rollouts (identical values)
    again = evaluate(cfg, value_fn=value_function(pv, FMT))
    assert again["process_value"]["cuts"]["t=3"]["v_mean"] == cuts["t=3"]["v_mean"]


def test_rollouts_continue_the_original_text_not_the_decoded_ids(minilm_tokenizer, smollm_tokenizer):
    from sp_prm.prefix_scoring import original_prefix

    response = "Hello, World! I'm Fine."
    side = encode(minilm_tokenizer, MSGS, response, FMT)
    assert minilm_tokenizer.decode(side.content_ids[:3]) == "hello, world"  # uncased: decoding loses the case
    assert original_prefix(minilm_tokenizer, response, side, 3) == "Hello, World"
    assert original_prefix(minilm_tokenizer, response, side, side.length) == response
    s2 = encode(smollm_tokenizer, MSGS, response, FMT)
    for t in range(1, s2.length):
        assert original_prefix(smollm_tokenizer, response, s2, t) == smollm_tokenizer.decode(s2.content_ids[:t]).lstrip()


def test_prefix_scorer_reads_the_original_text_across_tokenizers(minilm_tokenizer, smollm_tokenizer, tiny_llama_rm):
    from sp_prm.prefix_scoring import PrefixScorer
    from sp_prm.scoring import RewardScorer

    response = "Hello, World! I'm Fine."
    side = encode(minilm_tokenizer, MSGS, response, FMT)  # cut in the uncased MiniLM space
    scorer = PrefixScorer(RewardScorer(tiny_llama_rm, smollm_tokenizer.pad_token_id), smollm_tokenizer,
                          minilm_tokenizer, FMT)
    got = scorer.score([side], [[3]], [MSGS], [response])[0]
    want = last_token_reward(tiny_llama_rm, encode(smollm_tokenizer, MSGS, "Hello, World", FMT).sequence(
        None, end_marker=False))
    assert float(got[0]) == pytest.approx(want, abs=1e-4)
    lowered = scorer.score([side], [[3]], [MSGS])[0]  # without the texts: the decoded (lowercased) ids
    assert float(lowered[0]) != pytest.approx(want, abs=1e-4)


def test_cross_tokenizer_prefixes_are_read_from_the_longer_prefix_they_begin(minilm_tokenizer, smollm_tokenizer,
                                                                          tiny_llama_rm):
    """A decoder reference with another tokenizer: every prefix's reward equals its own forward pass, while the
    prefixes whose re-encoded ids begin a longer one are read from that one's pass (fewer tokens scored)."""
    from sp_prm.prefix_scoring import PrefixScorer
    from sp_prm.scoring import RewardScorer

    responses = ["Mix flour, water and yeast; knead it well, then bake it for forty minutes.",
                 "I'm not sure. Owls hunt at night, don't they?"]
    msgs = [MSGS, MSGS2]
    sides = [encode(minilm_tokenizer, m, r, FMT) for m, r in zip(msgs, responses)]
    positions = [list(range(1, s.length + 1)) for s in sides]  # every cut, mid-word pieces included
    rs = RewardScorer(tiny_llama_rm, smollm_tokenizer.pad_token_id)
    scorer = PrefixScorer(rs, smollm_tokenizer, minilm_tokenizer, FMT)
    got = scorer.score(sides, positions, msgs, responses)
    from sp_prm.prefix_scoring import original_prefix

    own_tokens = 0
    for k, side in enumerate(sides):
        seen = set()
        for j, t in enumerate(positions[k]):
            text = original_prefix(minilm_tokenizer, responses[k], side, t)
            seq = encode(smollm_tokenizer, msgs[k], text, FMT).sequence_for(FMT, complete=side.is_complete(t))
            assert float(got[k][j]) == pytest.approx(last_token_reward(tiny_llama_rm, seq), abs=1e-4), (k, t)
            if tuple(seq) not in seen:
                seen.add(tuple(seq))
                own_tokens += len(seq)
    assert rs.tokens_scored < own_tokens / 3  # most cuts nest: a handful of passes instead of one per prefix


def test_score_nested_hosts_by_hand(tiny_llama_rm, smollm_tokenizer):
    from sp_prm.prefix_scoring import score_nested
    from sp_prm.scoring import RewardScorer

    seqs = [(5, 6, 7), (5, 6, 7, 8, 9), (5, 6), (5, 9), (5, 6, 7, 8, 9, 10), (11,)]
    # group 0 nests 0, 2 in 1; group 1 holds 1 and 4 (1 begins 4: its hosted prefixes follow it to 4);
    # 3 does not nest; 5 is in no group
    groups = [[0, 1, 2, 3], [1, 4]]
    rs = RewardScorer(tiny_llama_rm, smollm_tokenizer.pad_token_id)
    got = score_nested(rs, seqs, groups)
    want = [last_token_reward(tiny_llama_rm, list(x)) for x in seqs]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert rs.tokens_scored == len(seqs[4]) + len(seqs[3]) + len(seqs[5])  # the hosts only


def test_a_killed_value_run_keeps_its_rollouts_and_resumes(tmp_path, monkeypatch, tiny_llama_rm_dir,
                                                           tiny_llama_lm_dir):
    """The cache is written as batches finish: a run killed mid-way keeps them, the rerun values only the
    rest, and every value equals an uninterrupted run's (rollout seeds hash the prefix, not the batch)."""
    import decoding.process_value as pv_mod

    items = [PrefixItem.of(m, text, False) for m in (MSGS, MSGS2) for text in ("", "Mix", "Mix flour", "An owl")]
    pv = ProcessValueConfig(policy=str(tiny_llama_lm_dir), gold_rm=str(tiny_llama_rm_dir), rollouts=2,
                            max_response_tokens=6, temperature=1.0, top_p=1.0, device="cpu", progress=False,
                            batch_rows=4, cache=str(tmp_path / "v.pt"))  # 2 prefixes per batch: 4 batches
    whole = value_function(dataclasses.replace(pv, cache=None), FMT)(items)

    calls = {"n": 0}
    real = pv_mod.Judge.__call__

    def dies_on_third_batch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the kill
        return real(self, *a, **k)

    monkeypatch.setattr(pv_mod, "SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(pv_mod.Judge, "__call__", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        value_function(pv, FMT)(items)
    kept = torch.load(tmp_path / "v.pt", weights_only=False)["values"]
    assert len(kept) == 4  # the two finished batches survived the kill
    calls["n"] = -100  # no more kills; count the judged batches of the rerun
    again = value_function(pv, FMT)(items)
    assert calls["n"] == -100 + 2  # only the two missing batches were rolled out
    assert torch.equal(again, whole)
