"""The KV-cache calls use the cache API of the installed transformers: no deprecation warning from our calls,
and the older keyword is still chosen for a decoder that only knows it."""

from __future__ import annotations

import warnings

import torch
from transformers.utils import generic

from decoding.kv import KVState, cache_kwarg
from decoding.policy import Policy, SamplingParams
from decoding.prefix_cache import PrefixCache


def test_cache_keyword_follows_the_model_signature(tiny_llama_rm):
    import inspect

    params = inspect.signature(type(tiny_llama_rm.model).forward).parameters
    assert cache_kwarg(tiny_llama_rm.model) == ("cache" if "cache" in params else "past_key_values")

    class Old(torch.nn.Module):  # a decoder of a release before the rename
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None):
            raise AssertionError("not called")

    assert cache_kwarg(Old()) == "past_key_values"


def test_no_deprecated_cache_use_in_decoding_paths(tiny_llama_rm, tiny_llama_lm, smollm_tokenizer, monkeypatch):
    # Reading ``output.past_key_values`` logs (once per process, so a log check could miss it): make it fail.
    def refuse(self):
        raise AssertionError("output.past_key_values read: deprecated in favour of output.cache")

    if isinstance(getattr(generic.ModelOutput, "past_key_values", None), property):
        monkeypatch.setattr(generic.ModelOutput, "past_key_values", property(refuse))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # deprecate_kwarg warns with FutureWarning
        state = KVState.empty([0, 1])
        with torch.no_grad():
            state.forward(tiny_llama_rm.model, [[5, 17, 99], [11]])
            state.forward_tree(tiny_llama_rm.model, [[[4], [6, 7]], [[8]]])
        cache = PrefixCache(tiny_llama_rm.model, lambda h: tiny_llama_rm.score(h).squeeze(-1))
        cache.values([[3, 8, 20], [3, 8, 21]], [0, 0])
        cache.values([[3, 8, 20, 5], [3, 8, 20, 6]], [0, 0])  # siblings: the token-tree path
        policy = Policy(tiny_llama_lm, smollm_tokenizer)
        st = policy.prefill([[5, 6, 7], [8, 9]]).select([0, 0, 1])
        policy.sample(st, [1, 2, 3], SamplingParams(temperature=1.0), max_tokens=4)
        policy.logprob_cache().values([[5, 6, 7, 8], [5, 6, 7, 9]], [0, 0])
