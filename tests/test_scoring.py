"""Reward scoring: one-pass prefix rewards equal per-prefix passes; padding side never matters."""

from __future__ import annotations

import torch

from sp_prm.formatting import PrefixFormat, encode
from sp_prm.scoring import RewardScorer, is_causal_reward_model, last_token_index, pad, sequence_rewards

MESSAGES = [{"role": "user", "content": "How do I bake bread at home?"}]
RESPONSE = "Mix flour, water, salt and yeast. Knead for ten minutes, let it rise, then bake at 230C."


def test_detects_decoder_and_encoder(tiny_llama_rm, tiny_bert_rm):
    assert is_causal_reward_model(tiny_llama_rm)
    assert not is_causal_reward_model(tiny_bert_rm)


def test_one_pass_equals_per_prefix_decoder(tiny_llama_rm, smollm_tokenizer):
    enc = encode(smollm_tokenizer, MESSAGES, RESPONSE, PrefixFormat())
    assert enc.suffix_ids == [] and enc.end_ids, "chat template: end-of-turn marker, no suffix"
    scorer = RewardScorer(tiny_llama_rm, smollm_tokenizer.pad_token_id)
    positions = list(range(1, enc.length + 1))
    one_pass = scorer.score_positions([enc.sequence()], [[enc.reward_index(t) for t in positions]])[0]
    per_prefix = scorer.score([enc.sequence(t) for t in positions])
    assert torch.allclose(one_pass, per_prefix, atol=1e-4), (one_pass - per_prefix).abs().max()
    # and independently of the scorer: a plain HF forward of the last prefix alone
    with torch.no_grad():
        ids = torch.tensor([enc.sequence(3)])
        hidden = tiny_llama_rm.model(input_ids=ids).last_hidden_state
        direct = tiny_llama_rm.score(hidden)[0, -1, 0]
    assert abs(float(direct) - float(one_pass[2])) < 1e-4


def test_rewards_ignore_padding_side_and_pad_equal_eos(tiny_llama_rm, smollm_tokenizer):
    # SmolLM2's pad token is its EOS: a complete response ends in it, and must still be read there.
    enc = encode(smollm_tokenizer, MESSAGES, RESPONSE, PrefixFormat())
    seqs = [enc.sequence(), enc.sequence(5), enc.sequence(1)]
    assert smollm_tokenizer.pad_token_id in seqs[0][-2:]
    singles = torch.stack([sequence_rewards(tiny_llama_rm, *pad([s], 0)) for s in seqs]).flatten()
    for side in ("right", "left"):
        ids, mask = pad(seqs, smollm_tokenizer.pad_token_id, side)
        with torch.no_grad():
            batched = sequence_rewards(tiny_llama_rm, ids, mask)
        assert torch.allclose(batched, singles, atol=1e-4), side


def test_last_token_index_both_sides():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_encoder_batched_equals_single(tiny_bert_rm, minilm_tokenizer):
    fmt = PrefixFormat(template="plain")
    enc = encode(minilm_tokenizer, MESSAGES, RESPONSE, fmt)
    assert enc.suffix_ids == [minilm_tokenizer.sep_token_id] and enc.prompt_ids[0] == minilm_tokenizer.cls_token_id
    seqs = [enc.sequence(t) for t in range(1, enc.length + 1)]
    scorer = RewardScorer(tiny_bert_rm, minilm_tokenizer.pad_token_id, max_batch_tokens=200)
    batched = scorer.score(seqs)
    assert scorer.forward_passes > 1, "a small token budget must split the work"
    singles = torch.tensor([float(RewardScorer(tiny_bert_rm).score([s])[0]) for s in seqs])
    assert torch.allclose(batched, singles, atol=1e-4)
