"""Average reward: each decoded response scored by a reward model, batched.

The RM reads exactly the ids it was trained on: (prompt messages, response) go
through :func:`sp_prm.formatting.encode` with the same :class:`PrefixFormat`, and
:class:`sp_prm.scoring.RewardScorer` reads the reward at the last real token.
The completion marker goes where the format's ``end_marker`` puts it: by default a
response that decoding cut (``complete: false``) gets none, like a partial response
in training, and a complete one does; under ``always`` every response gets it.

A decoder RM scores the responses of one prompt as a token tree (:func:`shared_prefix_rewards`):
their longest common prefix (the prompt, and for rollouts the prefix they continue) is computed
once and every response's own tokens are fed beside each other on it
(:meth:`decoding.kv.KVState.forward_tree`), instead of one full sequence each. Equal to scoring
every sequence alone (tested); a judge of N samples per prompt reads the prompt once, not N times.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from sp_prm.formatting import Message, PrefixFormat, PromptTooLong, as_messages, encode
from sp_prm.scoring import RewardScorer, is_causal_reward_model, unwrap

# A group's responses are split into trees of at most this many new tokens (the tree's attention is
# quadratic in its width), and a group shares its prefix only when it is at least MIN_SHARED tokens long.
MAX_TREE_TOKENS = 512
MIN_SHARED = 8


def reward_inputs(
    tokenizer: Any,
    prompts: Sequence[str | Sequence[Message]],
    responses: Sequence[str],
    fmt: PrefixFormat,
    complete: Sequence[bool] | None = None,
) -> list[list[int] | None]:
    """RM input ids per (prompt, response); ``None`` where ``prompt_overflow='drop'`` dropped the prompt."""
    out: list[list[int] | None] = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        try:
            side = encode(tokenizer, as_messages(prompt), response, fmt)
        except PromptTooLong:
            out.append(None)
            continue
        finished = True if complete is None else bool(complete[i])
        out.append(side.sequence_for(fmt, complete=finished))
    return out


def rewards(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[Message]],
    responses: Sequence[str],
    fmt: PrefixFormat,
    complete: Sequence[bool] | None = None,
    max_batch_tokens: int = 16384,
    max_batch_size: int = 64,
    share_prefix: bool = True,
) -> list[float | None]:
    """Reward of every response (``None`` for a dropped prompt), in one batched pass over the set.

    ``share_prefix``: a decoder RM reads each prompt once for all its responses (token trees); ``False``
    scores every sequence on its own (the reference the trees are tested against).
    """
    inputs = reward_inputs(tokenizer, prompts, responses, fmt, complete)
    keep = [i for i, ids in enumerate(inputs) if ids is not None]
    out: list[float | None] = [None] * len(inputs)
    if not keep:
        return out
    seqs = [inputs[i] for i in keep]
    if share_prefix and is_causal_reward_model(model):
        keys = [json.dumps(as_messages(prompts[i]), sort_keys=True) for i in keep]
        scores = shared_prefix_rewards(model, seqs, keys, tokenizer.pad_token_id, max_batch_tokens,
                                       max_batch_size).tolist()
    else:
        scorer = RewardScorer(model, pad_token_id=tokenizer.pad_token_id, max_batch_tokens=max_batch_tokens,
                              max_batch_size=max_batch_size)
        scores = scorer.score(seqs).tolist()
    for i, value in zip(keep, scores):
        out[i] = float(value)
    return out


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


@torch.no_grad()
def shared_prefix_rewards(
    model: Any,
    seqs: Sequence[Sequence[int]],
    keys: Sequence[Hashable],
    pad_id: int | None,
    max_batch_tokens: int = 16384,
    max_batch_size: int = 64,
    max_tree_tokens: int = MAX_TREE_TOKENS,
) -> torch.Tensor:
    """Reward of every sequence (``[n]`` fp32) from a decoder RM, the sequences of one ``key`` as token trees.

    The sequences of a key (a prompt's responses) share their longest common prefix; it is fed once
    per group and the rest of each sequence as one branch of a tree on it (at least its last token,
    so a sequence that equals the prefix is read too). A group of one, or one whose common prefix is
    under ``MIN_SHARED`` tokens, is scored plainly.
    """
    from decoding.kv import KVState

    inner = unwrap(model)
    pad = pad_id if pad_id is not None else (inner.config.pad_token_id or 0)
    out = torch.empty(len(seqs), dtype=torch.float32)
    by_key: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    rows: list[tuple[list[int], list[int]]] = []  # (shared ids, indices of its branches)
    plain: list[int] = []
    for idx in by_key.values():
        shared = min(_common_prefix([seqs[i] for i in idx]), min(len(seqs[i]) for i in idx) - 1)
        if len(idx) < 2 or shared < MIN_SHARED:
            plain += idx
            continue
        chunk: list[int] = []
        width = 0
        for i in sorted(idx, key=lambda i: len(seqs[i])):
            n = len(seqs[i]) - shared
            if chunk and width + n > max_tree_tokens:
                rows.append((list(seqs[i][:shared]), chunk))
                chunk, width = [], 0
            chunk.append(i)
            width += n
        rows.append((list(seqs[chunk[0]][:shared]), chunk))
    if plain:
        scorer = RewardScorer(model, pad_token_id=pad, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)
        out[torch.as_tensor(plain)] = scorer.score([seqs[i] for i in plain])
    if not rows:
        return out
    backbone = getattr(inner, inner.base_model_prefix)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    # Rows batched by their padded size (prefix + tree width), largest first.
    cost = [len(shared) + sum(len(seqs[i]) - len(shared) for i in branch) for shared, branch in rows]
    batch: list[int] = []
    for r in [*sorted(range(len(rows)), key=lambda r: -cost[r]), None]:
        if r is not None and (not batch or ((len(batch) + 1) * cost[batch[0]] <= max_batch_tokens
                                            and len(batch) < max_batch_size)):
            batch.append(r)
            continue
        state = KVState.empty(list(range(len(batch))), device=device, config=inner.config)
        state.forward(backbone, [rows[b][0] for b in batch], pad)
        width = state.width
        suffixes = [[list(seqs[i][len(rows[b][0]):]) for i in rows[b][1]] for b in batch]
        hidden, columns = state.forward_tree(backbone, suffixes, pad, dtype)
        at = [(j, cols[-1] - width) for j, row in enumerate(columns) for cols in row]
        h = hidden[torch.as_tensor([a for a, _ in at], device=device), torch.as_tensor([c for _, c in at], device=device)]
        vals = inner.score(h).squeeze(-1).float().cpu()
        out[torch.as_tensor([i for b in batch for i in rows[b][1]])] = vals
        batch = [r] if r is not None else []
    return out
