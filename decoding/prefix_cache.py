"""Per-position values of token sequences through a decoder, reusing the KV cache of the last call.

``PrefixCache.values(seqs)`` returns, for every sequence, one value per token
position, computed by a head on the decoder's hidden states:

* ``kind="reward"``: ``value[p] = head(h[p])`` -- a decoder RM's reward of the
  prefix ending at ``p`` (or GenRM's yes/no margin at ``p``);
* ``kind="logprob"``: ``value[p] = log pi(seq[p] | seq[:p])`` (``value[0] = 0``)
  -- REAR's teacher-forced log-likelihood.

Reuse: the rows of the last call are kept. Each new sequence starts from the kept
row with the longest common token prefix (crop, then extend), so scoring a search
step costs the step's new tokens. Sequences of one group (one prompt) whose
shared prefix is not cached yet get that prefix computed once and forked, so
N candidates of a fresh prompt cost one prompt pass plus N responses. Every
forward is batched over all sequences (chunked by a token budget, sorted by
length). Values of reused positions are read back from the kept rows, so the
result equals an uncached computation (``enabled=False``) up to float noise.

Siblings (reward kind): sequences that extend the same kept sequence by a few tokens
(ARGS' k candidates, CBS/CARDS successors) are fed as one *token tree* on a single row
(``KVState.forward_tree``) instead of k forked copies of the row: the prefix's cache is
neither copied k times nor attended k times, and the tree is kept as it is, so whichever
sibling the search continues is the next call's source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from decoding.kv import KVState
from decoding.types import Meter


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.nonzero(x != y)[0]
    return int(diff[0]) if len(diff) else n


class _Kept:
    """One forward's state from the last call plus the per-position values of its sequences.

    Usually sequence ``v`` is physical row ``v`` of ``state``. After a tree forward
    (:meth:`KVState.forward_tree`) several sequences share one physical row: ``phys[v]`` is
    that row and ``masks[v]`` the columns sequence ``v`` consists of (its siblings' columns are
    holes for it).
    """

    def __init__(self, state: KVState, values: list[torch.Tensor], phys: list[int] | None = None,
                 masks: list[torch.Tensor] | None = None, ids: list[list[int]] | None = None) -> None:
        self.state = state
        self.values = values
        self.phys = list(range(len(state.ids))) if phys is None else phys
        self.masks = masks
        self.ids = state.ids if ids is None else ids
        width = max((len(r) for r in self.ids), default=0)
        self.matrix = np.full((len(self.ids), width), -1, dtype=np.int64)
        for i, r in enumerate(self.ids):
            self.matrix[i, : len(r)] = r

    def best(self, seq: Sequence[int]) -> tuple[int, int]:
        """(sequence, common prefix length) of the kept sequence sharing the longest prefix with ``seq``."""
        if self.matrix.size == 0:
            return -1, 0
        n = min(len(seq), self.matrix.shape[1])
        eq = self.matrix[:, :n] == np.asarray(seq[:n])[None, :]
        lcp = np.cumprod(eq, axis=1).sum(1)
        row = int(lcp.argmax())
        return row, int(lcp[row])

    def source(self, seqs: Sequence[int]) -> KVState:
        """A new state whose row ``r`` holds kept sequence ``seqs[r]`` (this one is left untouched)."""
        state = self.state.select([self.phys[v] for v in seqs])
        if self.masks is not None:
            state.mask = torch.stack([self.masks[v] for v in seqs])
            state.ids = [list(self.ids[v]) for v in seqs]
        return state


class PrefixCache:
    """See the module docstring.

    Args:
        backbone: the decoder (``model.model``-like: takes ``input_ids``, ``attention_mask``,
            ``position_ids``, ``past_key_values``; returns ``last_hidden_state``).
        head: hidden ``[n, H]`` -> ``[n]`` values (reward kind) or ``[n, V]`` logits (logprob kind).
        kind: ``"reward"`` or ``"logprob"``.
        pad_id: id fed in padded columns (never attended to).
        max_batch_tokens: budget of cached + new columns times rows per forward.
        max_batch_size: rows per forward.
        enabled: ``False`` recomputes every sequence from scratch (the reference path).
        tree_max_suffix: reward kind: sequences adding at most this many tokens to a kept sequence
            are fed as a token tree on their source's row (0: always fork rows).
        meter / counter name: where fed tokens are counted, per group.
    """

    def __init__(
        self,
        backbone: Callable[..., Any],
        head: Callable[[torch.Tensor], torch.Tensor],
        kind: str = "reward",
        pad_id: int = 0,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        enabled: bool = True,
        meter: Meter | None = None,
        counter: str = "scorer_tokens",
        device: torch.device | str = "cpu",
        tree_max_suffix: int = 32,
    ) -> None:
        if kind not in ("reward", "logprob"):
            raise ValueError(f"kind must be reward or logprob, got {kind!r}")
        self.backbone, self.head, self.kind = backbone, head, kind
        self.pad_id = pad_id
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.enabled = enabled
        self.meter = meter or Meter()
        self.counter = counter
        self.device = device
        self.tree_max_suffix = tree_max_suffix if kind == "reward" else 0
        self.kept: list[_Kept] = []
        self.forward_passes = 0
        self.tokens_fed = 0

    def reset(self) -> None:
        self.kept = []

    @torch.no_grad()
    def values(
        self, seqs: Sequence[Sequence[int]], groups: Sequence[int] | None = None, starts: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Per-position values (fp32, CPU) of every sequence; see the module docstring.

        ``starts`` (the first position each caller needs) is part of the ``LogprobCache``
        interface the vLLM backend shares; every position is computed here regardless.
        """
        seqs = [list(s) for s in seqs]
        groups = list(range(len(seqs))) if groups is None else list(groups)
        if any(len(s) == 0 for s in seqs):
            raise ValueError("PrefixCache.values got an empty sequence")
        kept = self.kept if self.enabled else []
        if self.enabled:
            # Shared prefixes of each group that no kept row covers: compute them once first.
            by_group: dict[int, list[int]] = {}
            for j, g in enumerate(groups):
                by_group.setdefault(g, []).append(j)
            prefixes, prefix_groups = [], []
            for g, js in by_group.items():
                if len(js) < 2:
                    continue
                shared = seqs[js[0]]
                n = len(shared)
                for j in js[1:]:
                    n = min(n, _common_prefix(shared, seqs[j]))
                covered = max((k.best(shared[:n])[1] for k in kept), default=0)
                if n >= 2 and covered < n - 1:
                    prefixes.append(shared[:n])
                    prefix_groups.append(g)
            if prefixes:
                kept = kept + self._run(prefixes, prefix_groups, kept)[1]
        out, new_kept = self._run(seqs, groups, kept)
        self.kept = new_kept if self.enabled else []
        return out

    def _run(
        self, seqs: list[list[int]], groups: list[int], kept: list[_Kept]
    ) -> tuple[list[torch.Tensor], list[_Kept]]:
        # 1. Each sequence's source row: the kept row with the longest common prefix.
        plans: list[tuple[int, int, int]] = []  # (kept index or -1, row, tokens kept)
        for s in seqs:
            best = (-1, -1, 0)
            for ki, k in enumerate(kept):
                row, lcp = k.best(s)
                if lcp > best[2]:
                    best = (ki, row, lcp)
            ki, row, lcp = best
            # Recompute at least the last position (reward kind reads it); the logprob kind
            # re-feeds one cached token so that the first new token has its context's logits.
            keep = min(lcp, len(s) - 1) if self.kind == "reward" else min(lcp, len(s)) - 1
            if keep <= 0:
                ki, row, keep = -1, -1, 0
            plans.append((ki, row, keep))
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        new_kept: list[_Kept] = []
        treeable = [k.state.compactable() for k in kept] if self.tree_max_suffix else []
        tree = [j for j in range(len(seqs)) if plans[j][0] >= 0 and len(seqs[j]) - plans[j][2] <= self.tree_max_suffix
                and treeable[plans[j][0]]]
        if tree:
            self._run_tree(seqs, groups, kept, plans, tree, out, new_kept)
        rest = sorted(set(range(len(seqs))) - set(tree))
        # 2. Chunks: sequences from the same source, sorted by new length, under the token budget.
        order = sorted(rest, key=lambda j: (plans[j][0], -(len(seqs[j]) - plans[j][2])))
        chunks: list[list[int]] = []
        for j in order:
            if chunks:
                head = chunks[-1]
                same = plans[head[0]][0] == plans[j][0]
                base = kept[plans[j][0]].state.width if plans[j][0] >= 0 else 0
                width = base + max(len(seqs[i]) - plans[i][2] for i in head)
                if same and len(head) < self.max_batch_size and (len(head) + 1) * width <= self.max_batch_tokens:
                    head.append(j)
                    continue
            chunks.append([j])
        for chunk in chunks:
            ki = plans[chunk[0]][0]
            if ki >= 0:
                state = kept[ki].source([plans[j][1] for j in chunk])
                state.groups = [groups[j] for j in chunk]
                state.rollback([plans[j][2] for j in chunk])
                state.compact()
            else:
                state = KVState.empty([groups[j] for j in chunk], device=self.device)
            feeds = [seqs[j][plans[j][2]:] for j in chunk]
            hidden, new_mask = state.forward(self.backbone, feeds, self.pad_id)
            self.forward_passes += 1
            self.tokens_fed += sum(len(f) for f in feeds)
            self.meter.add(self.counter, state.groups, [len(f) for f in feeds])
            # One head call and one copy to the host for the whole chunk (not one per row): the values
            # are what the search reads, the only synchronisation of the step.
            if self.kind == "reward":
                where = [(r, 0, len(feeds[r])) for r in range(len(chunk))]
                new = self._gather_heads(hidden, where, None)
            else:  # row r's hidden states but the last predict its next fed tokens (past the first)
                where = [(r, 0, len(feeds[r]) - 1) for r in range(len(chunk))]
                targets = [seqs[j][plans[j][2] + 1:] for j in chunk]
                new = self._gather_heads(hidden, where, targets)
            chunk_values = []
            for r, j in enumerate(chunk):
                keep = plans[j][2]
                old = kept[ki].values[plans[j][1]][:keep] if ki >= 0 else torch.empty(0)
                if self.kind == "reward":
                    vals = torch.cat([old, new[r]])
                elif ki >= 0:
                    first = kept[ki].values[plans[j][1]][keep: keep + 1]
                    vals = torch.cat([old, first, new[r]])
                else:
                    vals = torch.cat([torch.zeros(1), new[r]])
                out[j] = vals
                chunk_values.append(vals)
            new_kept.append(_Kept(state, chunk_values))
        return out, new_kept

    def _run_tree(
        self, seqs: list[list[int]], groups: list[int], kept: list[_Kept], plans: list[tuple[int, int, int]],
        todo: list[int], out: list[torch.Tensor], new_kept: list[_Kept],
    ) -> None:
        """Sibling sequences as token trees: one row per source sequence, its extensions side by side."""
        dtype = next(iter(self.backbone.parameters())).dtype if hasattr(self.backbone, "parameters") else torch.float32
        by_source: dict[tuple[int, int], list[int]] = {}
        for j in todo:
            by_source.setdefault(plans[j][:2], []).append(j)
        # the source row keeps the tokens all its siblings share; its new columns are their suffixes past that
        base_of = {src: min(plans[j][2] for j in js) for src, js in by_source.items()}
        new_cols = {src: sum(len(seqs[j]) - base_of[src] for j in js) for src, js in by_source.items()}
        chunks: list[list[tuple[int, int]]] = []
        for src in sorted(by_source):  # same kept entry per chunk, rows x (cached + new) columns under the budget
            if chunks:
                head = chunks[-1]
                width = kept[src[0]].state.width + max(new_cols[s] for s in [*head, src])
                if head[0][0] == src[0] and len(head) < self.max_batch_size and \
                        (len(head) + 1) * width <= self.max_batch_tokens:
                    head.append(src)
                    continue
            chunks.append([src])
        for chunk in chunks:
            ki = chunk[0][0]
            state = kept[ki].source([v for _, v in chunk])
            members = [by_source[src] for src in chunk]
            base = [base_of[src] for src in chunk]
            state.groups = [groups[js[0]] for js in members]
            state.rollback(base)
            state.compact()
            width = state.width
            base_mask = state.host_mask.clone()
            suffixes = [[seqs[j][b:] for j in js] for js, b in zip(members, base)]
            hidden, columns = state.forward_tree(self.backbone, suffixes, self.pad_id, dtype)
            self.forward_passes += 1
            fed = [len(x) for row in suffixes for x in row]
            self.tokens_fed += sum(fed)
            self.meter.add(self.counter, [groups[j] for js in members for j in js], fed)
            # every sibling's columns of the new block, gathered in one index: one head call, one host copy
            flat = [r * hidden.shape[1] + c - width for r, js in enumerate(members) for i in range(len(js))
                    for c in columns[r][i]]
            index = torch.as_tensor(flat, dtype=torch.long).to(hidden.device, non_blocking=True)
            rows_h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            new_vals = self.head(rows_h).float().reshape(-1).cpu()
            values, phys, masks, ids, at = [], [], [], [], 0
            for r, (src, js, b) in enumerate(zip(chunk, members, base)):
                old = kept[ki].values[src[1]][:b]
                for i, j in enumerate(js):
                    n = len(columns[r][i])
                    vals = torch.cat([old, new_vals[at: at + n]])
                    at += n
                    out[j] = vals
                    m = torch.zeros(state.width, dtype=base_mask.dtype)
                    m[:width] = base_mask[r]
                    m[columns[r][i]] = 1
                    values.append(vals)
                    phys.append(r)
                    masks.append(m)
                    ids.append(list(seqs[j]))
            new_kept.append(_Kept(state, values, phys, masks, ids))

    def _gather_heads(self, hidden: torch.Tensor, where: list[tuple[int, int, int]],
                      targets: list[Sequence[int]] | None, slice_rows: int = 256) -> list[torch.Tensor]:
        """The head at ``hidden[r, a:b]`` for every ``(r, a, b)`` of ``where``, in one batched pass.

        Reward kind (``targets`` None): the head's value at each position. Logprob kind: log-softmax of the
        head gathered at ``targets[k]`` (the next tokens), sliced by ``slice_rows`` positions to bound the
        ``[positions, vocab]`` logits. One copy to the host at the end; returns one fp32 CPU tensor per entry.
        """
        T = hidden.shape[1]
        flat = [r * T + p for r, a, b in where for p in range(a, b)]
        sizes = [max(b - a, 0) for _, a, b in where]
        if not flat:
            return [torch.empty(0) for _ in where]
        index = torch.as_tensor(flat, dtype=torch.long).to(hidden.device, non_blocking=True)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        if targets is None:
            vals = self.head(h).float().reshape(-1)
        else:
            tgt = torch.as_tensor([t for row in targets for t in row], dtype=torch.long).to(h.device, non_blocking=True)
            parts = []
            for a in range(0, len(flat), slice_rows):
                logits = self.head(h[a: a + slice_rows]).float()
                parts.append(logits.log_softmax(-1).gather(1, tgt[a: a + slice_rows, None]).squeeze(1))
            vals = torch.cat(parts)
        return list(vals.cpu().split(sizes))
