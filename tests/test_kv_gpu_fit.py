"""The GPU-minded parts of the KV state: the generic (CUDA) token-tree mask path is exact, preallocated layers
grow in place and stay exact under forks and rollbacks, and no state operation reads a device value back."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
import torch

import decoding.kv as kv
from decoding.kv import GrowingLayer, KVState
from decoding.prefix_cache import PrefixCache


def full_hidden(model, ids):
    with torch.no_grad():
        return model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def test_token_tree_exact_on_the_generic_mask_path(tiny_llama_rm, monkeypatch):
    """CUDA's SDPA gets the 4D mask with K/V repeated per group (no CPU enable_gqa fast path): exact too."""
    monkeypatch.setattr(kv, "CPU_MASKED_GQA", False)
    backbone = tiny_llama_rm.model
    assert backbone.config.num_key_value_heads < backbone.config.num_attention_heads  # GQA, so the paths differ
    seen = []
    original = type(backbone).forward

    def spy(self, *a, **k):
        seen.append(os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA"))
        return original(self, *a, **k)

    monkeypatch.setattr(type(backbone), "forward", spy)
    prompts = [[5, 17, 99, 230, 7], [11, 12]]
    state = KVState.empty([0, 1])
    with torch.no_grad():
        state.forward(backbone, prompts)
        state.rollback([5, 2])
        suffixes = [[[40], [41, 42, 43], [44, 45]], [[300, 301], [302]]]
        hidden, cols = state.forward_tree(backbone, suffixes)
    assert seen and all(v is None for v in seen)  # the generic path really ran
    old_width = state.width - hidden.shape[1]
    for i, row in enumerate(suffixes):
        for j, s in enumerate(row):
            ref = full_hidden(tiny_llama_rm, prompts[i] + s)[-len(s):]
            torch.testing.assert_close(hidden[i, torch.tensor(cols[i][j]) - old_width], ref, atol=1e-5, rtol=0)
    # and through PrefixCache over calls (siblings, holes, compaction)
    cache = PrefixCache(backbone, lambda h: tiny_llama_rm.score(h).squeeze(-1), kind="reward")
    rng = random.Random(1)
    base = [3, 8, 20, 41]
    for _ in range(4):
        seqs = [base + [rng.randrange(1, 400) for _ in range(rng.randint(1, 3))] for _ in range(4)]
        got = cache.values(seqs, [0] * 4)
        for v, s in zip(got, seqs):
            ref = tiny_llama_rm.score(full_hidden(tiny_llama_rm, s)).float().reshape(-1)
            torch.testing.assert_close(v, ref, atol=1e-4, rtol=0)
        base = seqs[rng.randrange(4)]


def test_growing_layers_write_in_place_and_stay_exact(tiny_llama_rm):
    backbone = tiny_llama_rm.model
    state = KVState.empty([0, 0])
    assert isinstance(state.cache, kv.DynamicCache)
    rows = [[5, 17, 99], [11, 12, 13]]
    ptrs = []
    with torch.no_grad():
        state.forward(backbone, rows)
        assert all(isinstance(layer, GrowingLayer) for layer in state.cache.layers)
        fork = state.select([0, 1])  # a reorder-free copy sharing the tensors: it must never see the original's writes
        for step in range(12):
            toks = [[100 + step], [200 + step]]
            state.forward(backbone, toks)
            for r, t in zip(rows, toks):
                r.extend(t)
            ptrs.append(state.cache.layers[0].keys.data_ptr())
        h_fork, _ = fork.forward(backbone, [[7], [8]])
        h_last, _ = state.forward(backbone, [[9], []])
    assert len(set(ptrs[1:])) == 1  # one buffer from the second step on: no copy of the cache per token
    for i, r in enumerate([[5, 17, 99, 7], [11, 12, 13, 8]]):
        torch.testing.assert_close(h_fork[i, 0], full_hidden(tiny_llama_rm, r)[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(h_last[0, 0], full_hidden(tiny_llama_rm, rows[0] + [9])[-1], atol=1e-5, rtol=0)
    # roll back into the grown buffer, continue, compact: still exact
    with torch.no_grad():
        state.rollback([4, 6])
        h, _ = state.forward(backbone, [[50, 51], [52]])
        ref0 = full_hidden(tiny_llama_rm, rows[0][:4] + [50, 51])[-2:]
        torch.testing.assert_close(h[0, :2], ref0, atol=1e-5, rtol=0)
        assert state.compact(threshold=0.0)
        h, _ = state.forward(backbone, [[60], [61]])
    torch.testing.assert_close(h[1, 0], full_hidden(tiny_llama_rm, rows[1][:6] + [52, 61])[-1], atol=1e-5, rtol=0)


class MetaBackbone:
    """A stand-in decoder on the meta device: shapes only, so any read of a device value raises."""

    def __init__(self, layers: int = 2, heads: int = 2, dim: int = 4, hidden: int = 8) -> None:
        self.layers, self.heads, self.dim, self.hidden = layers, heads, dim, hidden

    def __call__(self, input_ids, attention_mask, position_ids, use_cache, cache=None, past_key_values=None):
        cache = cache if cache is not None else past_key_values
        rows, T = input_ids.shape
        assert attention_mask.device.type == position_ids.device.type == "meta"
        for i in range(self.layers):
            k = torch.empty((rows, self.heads, T, self.dim), device="meta")
            cache.update(k, k.clone(), i)
        return SimpleNamespace(last_hidden_state=torch.empty((rows, T, self.hidden), device="meta"))


def test_state_operations_never_read_the_device():
    fake = MetaBackbone()
    state = KVState.empty([0, 1], device="meta")
    state.forward(fake, [[1, 2, 3], [4]])
    for step in range(3):
        state.forward(fake, [[5 + step], [] if step == 1 else [6]])
    forked = state.select([0, 0, 1, 1])
    forked.rollback([2, 4, 1, 3])
    forked.compact(threshold=0.0)
    forked.forward_tree(fake, [[[1], [2, 3]], [[4]], [[5], [6]], [[7, 8]]])
    again = forked.select(torch.tensor([1, 3]))
    again.forward(fake, [[9], [10]])
    assert again.ids == [[1, 2, 3, 5, 9], [4, 6, 6, 10]]
    assert again.host_mask.sum(1).tolist() == [4 + 1 + 1, 3 + 2 + 1]  # the tree's columns count as real (no pick)
    assert again.mask.device.type == "meta" and again.host_mask.device.type == "cpu"


@pytest.mark.slow
def test_compiled_decoder_equals_eager(tiny_llama_lm, smollm_tokenizer):
    from decoding.policy import Policy, SamplingParams

    policy = Policy(tiny_llama_lm, smollm_tokenizer)
    params = SamplingParams(temperature=1.0)

    def run():
        st = policy.prefill([[5, 6, 7], [8, 9]]).select([0, 0, 1])
        return policy.sample(st, [1, 2, 3], params, max_tokens=6)

    eager = run()
    kv.set_compile(True)
    try:
        compiled = run()
    finally:
        kv.set_compile(False)
    assert [s.token_ids for s in compiled] == [s.token_ids for s in eager]
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
