"""The shared prefix representation: tokenize once, slice in token space, end marker only when complete."""

from __future__ import annotations

import pytest

from sp_prm.formatting import PrefixFormat, PromptTooLong, as_messages, encode, render_plain_prompt

MESSAGES = [
    {"role": "user", "content": "What's a good name for a cat?"},
    {"role": "assistant", "content": "Maybe Whiskers?"},
    {"role": "user", "content": "Something more unusual, please."},
]
RESPONSE = "How about Quetzalcoatl, or Pickles the Magnificent?"


def test_chat_template_layout(smollm_tokenizer):
    tok = smollm_tokenizer
    enc = encode(tok, MESSAGES, RESPONSE, PrefixFormat())
    full_text = tok.apply_chat_template([*MESSAGES, {"role": "assistant", "content": RESPONSE}], tokenize=False)
    prompt_text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    # The complete sequence is exactly the tokenized conversation...
    assert enc.sequence() == tok(full_text, add_special_tokens=False)["input_ids"]
    # ...split into the rendered prompt, the response's own tokens and the end-of-turn marker.
    assert enc.prompt_ids == tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc.content_ids) == RESPONSE
    assert tok.decode(enc.end_ids) == "<|im_end|>\n"
    assert enc.suffix_ids == []


def test_prefixes_are_token_slices_without_end_marker(smollm_tokenizer):
    enc = encode(smollm_tokenizer, MESSAGES, RESPONSE, PrefixFormat())
    full = enc.sequence()
    for t in range(1, enc.length):
        seq = enc.sequence(t)
        assert seq == full[: len(enc.prompt_ids) + t]
        assert not enc.is_complete(t)
        assert enc.reward_index(t) == len(seq) - 1
    assert enc.is_complete(enc.length) and enc.sequence(enc.length) == full
    assert enc.sequence(enc.length + 10) == full  # past the end: the complete response
    no_marker = encode(smollm_tokenizer, MESSAGES, RESPONSE, PrefixFormat(end_marker=False))
    assert no_marker.sequence() == full[: len(full) - len(enc.end_ids)]


def test_plain_encoder_layout(minilm_tokenizer):
    tok = minilm_tokenizer
    enc = encode(tok, MESSAGES, RESPONSE, PrefixFormat(template="plain"))
    assert enc.prompt_ids[0] == tok.cls_token_id and enc.suffix_ids == [tok.sep_token_id]
    assert enc.end_ids == []  # BERT has no EOS: complete and clipped look alike
    text = render_plain_prompt(MESSAGES) + " " + RESPONSE
    assert enc.sequence() == tok(text)["input_ids"]
    assert tok.decode(enc.content_ids) == RESPONSE.lower()
    assert enc.sequence(2) == enc.prompt_ids + enc.content_ids[:2] + [tok.sep_token_id]


def test_plain_decoder_uses_eos_marker(smollm_tokenizer):
    enc = encode(smollm_tokenizer, MESSAGES, RESPONSE, PrefixFormat(template="plain"))
    assert enc.end_ids == [smollm_tokenizer.eos_token_id]
    assert render_plain_prompt(MESSAGES).startswith("\n\nHuman: What's")
    assert smollm_tokenizer.decode(enc.prompt_ids).endswith("\n\nAssistant:")


def test_prompt_truncation_and_drop(minilm_tokenizer):
    long = [{"role": "user", "content": "word " * 300}]
    enc = encode(minilm_tokenizer, long, RESPONSE, PrefixFormat(template="plain", max_prompt_tokens=32))
    assert len(enc.prompt_ids) == 32 and enc.prompt_truncated
    assert enc.prompt_ids[0] == minilm_tokenizer.cls_token_id  # leading special kept
    assert minilm_tokenizer.decode(enc.prompt_ids[-2:]) == "assistant :"  # the tail is kept
    with pytest.raises(PromptTooLong, match="max_prompt_tokens=32"):
        encode(minilm_tokenizer, long, RESPONSE, PrefixFormat(template="plain", max_prompt_tokens=32,
                                                              prompt_overflow="drop"))


def test_response_truncation_is_incomplete(smollm_tokenizer):
    enc = encode(smollm_tokenizer, MESSAGES, RESPONSE, PrefixFormat(max_response_tokens=4))
    assert enc.length == 4 and enc.response_truncated
    assert not enc.is_complete(4)
    assert enc.sequence() == enc.prompt_ids + enc.content_ids  # no end-of-turn on a cut response


def test_bad_format_values():
    with pytest.raises(ValueError, match="template"):
        PrefixFormat(template="jinja")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PrefixFormat(max_prompt_tokens=0)
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
