"""Token trees (siblings fed side by side on one cached row) against independent full forwards: the
KVState primitive, and PrefixCache over several calls (ARGS-like and CBS-like patterns, holes, compaction)."""

from __future__ import annotations

import random

import pytest
import torch

from decoding.kv import KVState
from decoding.prefix_cache import PrefixCache


def full_hidden(model, ids):
    with torch.no_grad():
        return model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def test_forward_tree_equals_feeding_each_continuation_alone(tiny_llama_rm):
    backbone = tiny_llama_rm.model
    prompts = [[5, 17, 99, 230, 7], [11, 12]]
    state = KVState.empty([0, 1])
    with torch.no_grad():
        state.forward(backbone, prompts)
        state.rollback([5, 2])  # the second row now has holes at the right: positions must skip them
        suffixes = [[[40], [41, 42, 43], [44, 45]], [[300, 301], [302]]]
        hidden, cols = state.forward_tree(backbone, suffixes)
    old_width = state.width - hidden.shape[1]
    for i, row in enumerate(suffixes):
        for j, s in enumerate(row):
            ref = full_hidden(tiny_llama_rm, prompts[i] + s)[-len(s):]
            got = hidden[i, torch.tensor(cols[i][j]) - old_width]
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert cols[0] == [[5], [6, 7, 8], [9, 10]] and cols[1] == [[5, 6], [7]]
    assert state.ids == [prompts[0], prompts[1]]  # ids are not extended: the caller picks a continuation


def rewards_alone(rm, seqs):
    with torch.no_grad():
        return [rm.score(full_hidden(rm, s)).float().reshape(-1) for s in seqs]


@pytest.mark.parametrize(("tree_max_suffix", "budget"), [(32, 16384), (0, 16384), (32, 40)])
def test_prefix_cache_trees_equal_uncached_over_many_calls(tiny_llama_rm, tree_max_suffix, budget):
    inner = tiny_llama_rm
    cache = PrefixCache(inner.model, lambda h: inner.score(h).squeeze(-1), kind="reward",
                        tree_max_suffix=tree_max_suffix, max_batch_tokens=budget)
    rng = random.Random(0)
    chosen = [[3, 8, 20, 41, 77, 90], [3, 8, 21, 5]]  # two prompts (groups)
    passes = []
    for _ in range(12):
        seqs, groups = [], []
        for g, base in enumerate(chosen):
            for _ in range(4):  # k = 4 siblings of 1-3 tokens; sometimes the last base token is re-tokenized
                cut = len(base) - (1 if rng.random() < 0.3 else 0)
                seqs.append(base[:cut] + [rng.randrange(1, 400) for _ in range(rng.randint(1, 3))])
                groups.append(g)
        before = cache.forward_passes
        got = cache.values(seqs, groups)
        passes.append(cache.forward_passes - before)
        for v, ref in zip(got, rewards_alone(inner, seqs)):
            torch.testing.assert_close(v, ref, atol=1e-4, rtol=0)
        # continue from a sibling that is not the last one: its siblings become holes in the middle
        chosen = [seqs[4 * g + rng.randrange(4)] for g in range(2)]
    if tree_max_suffix and budget > 1000:
        assert passes[1:] == [1] * 11  # one tree forward per call for both prompts and all siblings
    if budget < 1000:
        assert max(passes[1:]) >= 2  # a small budget splits the trees into several forwards
    # a CBS-like call: 2 beams x 3 successors of 6 tokens, then a brand-new sequence (no source)
    seqs = [c + [rng.randrange(1, 400) for _ in range(6)] for c in chosen for _ in range(3)] + [[9, 9, 9]]
    got = cache.values(seqs, [0, 0, 0, 1, 1, 1, 2])
    for v, ref in zip(got, rewards_alone(inner, seqs)):
        torch.testing.assert_close(v, ref, atol=1e-4, rtol=0)
