"""A batch of token sequences held in a transformers KV cache: the one state every search moves.

``KVState`` is shared by the policy (sampling), the decoder-RM scorer and REAR's
question-only pass. Rows are independent sequences (a prompt, a candidate, a
beam); each row's real tokens are marked by ``mask`` and the physical columns of
the cache may contain *holes* (masked columns): rows that fed no token in a
batched step, or tokens rolled back after a rejection. Holes are exact: a masked
key gets zero attention weight, and positions (RoPE) are taken from the number
of real tokens before a token, not from its column. ``compact()`` squeezes holes
out when they waste too much.

The operations the searches need:

* ``select(indices)`` -- fork / reorder / drop rows (repeat an index to fork a
  prefix into several candidates without recomputing it); returns a new state
  and leaves this one usable.
* ``forward(backbone, tokens)`` -- feed each row its own (possibly empty) list
  of new tokens in one batched call; returns their hidden states.
* ``rollback(keep)`` -- keep only the first ``keep[i]`` real tokens of row ``i``.
* ``forward_tree(backbone, suffixes)`` -- feed row ``i`` *several alternative* short
  continuations at once (a token tree of depth one): each continuation attends to the
  row's tokens and to itself, never to its siblings. k candidates that extend one cached
  prefix then cost one row of cache, not k copies of it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

_TORCH_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


@contextmanager
def _masked_gqa(device: torch.device) -> Iterator[None]:
    """Let transformers' SDPA read grouped K/V heads directly under a custom mask, on a CPU.

    With a mask and several query tokens, transformers copies every K/V head ``num_key_value_groups``
    times (``repeat_kv``) unless ``TRANSFORMERS_SDPA_FORCE_GQA`` is set; a token tree would then pay
    for that copy of the whole prefix in every layer. torch's CPU kernel takes the mask with
    ``enable_gqa`` (exact; 2.6x faster on a 400-token row here). On CUDA a mask with GQA falls back to
    the math kernel, so there the default stays. Older transformers ignore the variable.
    """
    if device.type != "cpu" or not _TORCH_GQA or "TRANSFORMERS_SDPA_FORCE_GQA" in os.environ:
        yield
        return
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)


@functools.lru_cache(maxsize=64)
def _cache_kwarg_of(forward_owner: type) -> str:
    try:
        params = inspect.signature(forward_owner.forward).parameters  # follows the decorators' __wrapped__
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(backbone: Any) -> str:
    """The keyword a decoder takes its ``Cache`` object by: ``cache`` or the older ``past_key_values``.

    transformers 5.2x renamed ``past_key_values=`` to ``cache=`` and warns (``FutureWarning``) that the old name
    goes in 5.40 (``@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`` on every decoder's
    ``forward``); releases before the rename (down to our lower bound, 4.56) only know ``past_key_values``.
    Read from the model class's own signature, so both kinds work without a version table.
    """
    return _cache_kwarg_of(type(backbone)) if hasattr(type(backbone), "forward") else "past_key_values"


class KVState:
    """Rows of token ids with their KV cache. See the module docstring.

    Args:
        cache: a ``DynamicCache`` whose batch dimension has one entry per row.
        mask: ``[rows, columns]`` 1 where a column holds a real token of the row.
        ids: the real token ids of each row, in order.
        groups: a tag per row (the prompt it belongs to), used for accounting.
    """

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, ids: list[list[int]], groups: list[int]) -> None:
        self.cache = cache
        self.mask = mask
        self.ids = ids
        self.groups = groups

    @classmethod
    def empty(cls, groups: Sequence[int], device: torch.device | str = "cpu", config: Any = None) -> KVState:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
        return cls(cache, torch.zeros((len(groups), 0), dtype=torch.long, device=device),
                   [[] for _ in groups], list(groups))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.ids]

    def hole_fraction(self) -> float:
        total = self.mask.numel()
        return 0.0 if total == 0 else 1.0 - float(self.mask.sum()) / total

    def select(self, indices: Sequence[int] | torch.Tensor) -> KVState:
        """A new state whose row ``j`` is a copy of row ``indices[j]`` (fork, reorder or drop)."""
        idx = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices, dtype=torch.long)
        cache = copy.copy(self.cache)
        # Shallow-copy the layers so that selecting leaves this state's tensors untouched.
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        identity = len(idx) == len(self) and bool((idx == torch.arange(len(self))).all())
        if len(idx) and not identity:  # the identity shares the tensors: later updates replace, never write in place
            cache.batch_select_indices(idx.to(self.mask.device))
        il = idx.tolist()
        return KVState(cache, self.mask[idx.to(self.mask.device)], [list(self.ids[i]) for i in il],
                       [self.groups[i] for i in il])

    def forward(
        self, backbone: Callable[..., Any], tokens: Sequence[Sequence[int]], pad_id: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed row ``i`` the tokens ``tokens[i]`` (may be empty) in one batched call.

        Returns ``(hidden [rows, T, H], new_mask [rows, T])`` for the new columns;
        new tokens are right-aligned after the existing columns (short rows get holes).
        """
        if len(tokens) != len(self):
            raise ValueError(f"forward got {len(tokens)} token lists for {len(self)} rows")
        T = max((len(t) for t in tokens), default=0)
        device = self.mask.device
        if T == 0:
            return torch.zeros((len(self), 0, 0), device=device), torch.zeros((len(self), 0), dtype=torch.long)
        new_ids = torch.full((len(self), T), pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(self), T), dtype=torch.long)
        for i, t in enumerate(tokens):
            if len(t):
                new_ids[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
                new_mask[i, : len(t)] = 1
        new_ids, new_mask = new_ids.to(device), new_mask.to(device)
        # RoPE position = number of real tokens before this one (holes do not count).
        position_ids = self.mask.sum(1, keepdim=True) + torch.arange(T, device=device)[None, :]
        full_mask = torch.cat([self.mask, new_mask], dim=1)
        # A Cache object is updated in place; the output's copy of it is not read (``out.past_key_values``
        # is itself deprecated in 5.2x and logs a warning).
        out = backbone(
            input_ids=new_ids, attention_mask=full_mask, position_ids=position_ids,
            use_cache=True, **{cache_kwarg(backbone): self.cache},
        )
        self.mask = full_mask
        for i, t in enumerate(tokens):
            self.ids[i].extend(int(x) for x in t)
        return out.last_hidden_state, new_mask

    def forward_tree(
        self, backbone: Callable[..., Any], suffixes: Sequence[Sequence[Sequence[int]]], pad_id: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, list[list[list[int]]]]:
        """Feed row ``i`` the alternative continuations ``suffixes[i]`` (each a token list) in one call.

        The continuations of a row are laid side by side in new columns; a 4D attention mask lets
        each see the row's real tokens and its own earlier tokens only, and RoPE positions count
        from the row's length, so each continuation's hidden states equal feeding it alone. Returns
        ``(hidden [rows, Q, H], columns)`` where ``columns[i][j]`` are the cache columns (= indices
        into ``hidden``'s second axis plus the old width) of ``suffixes[i][j]``. The row's mask
        marks every new column real and ``ids`` are *not* extended: a caller picks one
        continuation by building that row's mask itself (the siblings become holes).
        """
        if len(suffixes) != len(self):
            raise ValueError(f"forward_tree got {len(suffixes)} suffix lists for {len(self)} rows")
        device = self.mask.device
        lens = [sum(len(s) for s in row) for row in suffixes]
        Q = max(lens, default=0)
        if Q == 0:
            raise ValueError("forward_tree got no tokens")
        W = self.width
        new_ids = torch.full((len(self), Q), pad_id, dtype=torch.long)
        offset = torch.zeros((len(self), Q), dtype=torch.long)  # position within its own continuation
        branch = torch.full((len(self), Q), -1, dtype=torch.long)  # which continuation a column holds
        columns: list[list[list[int]]] = []
        for i, row in enumerate(suffixes):
            at, cols = 0, []
            for j, s in enumerate(row):
                n = len(s)
                if n:
                    new_ids[i, at: at + n] = torch.as_tensor(list(s), dtype=torch.long)
                    offset[i, at: at + n] = torch.arange(n)
                    branch[i, at: at + n] = j
                cols.append(list(range(W + at, W + at + n)))
                at += n
            columns.append(cols)
        new_ids, offset, branch = new_ids.to(device), offset.to(device), branch.to(device)
        real = branch >= 0
        position_ids = self.mask.sum(1, keepdim=True) + offset
        # query (i, a) may see key column (i, b) of the new block iff same continuation and b <= a
        same = (branch[:, :, None] == branch[:, None, :]) & real[:, :, None]
        causal = torch.ones((Q, Q), dtype=torch.bool, device=device).tril()
        new_block = same & causal[None]
        eye = torch.eye(Q, dtype=torch.bool, device=device)[None]
        new_block = new_block | (eye & ~real[:, :, None])  # padding queries see themselves (no empty softmax)
        old_block = (self.mask.bool()[:, None, :] & real[:, :, None]) if W else torch.zeros(
            (len(self), Q, 0), dtype=torch.bool, device=device)
        allowed = torch.cat([old_block, new_block], dim=2)
        mask4d = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        with _masked_gqa(torch.device(device)):
            out = backbone(
                input_ids=new_ids, attention_mask=mask4d[:, None], position_ids=position_ids,
                use_cache=True, **{cache_kwarg(backbone): self.cache},
            )
        self.mask = torch.cat([self.mask, real.long()], dim=1)
        return out.last_hidden_state, columns

    def rollback(self, keep: Sequence[int]) -> None:
        """Keep the first ``keep[i]`` real tokens of row ``i``: later ones become holes."""
        keep_t = torch.as_tensor(list(keep), dtype=torch.long, device=self.mask.device)
        if len(keep_t) and self.width:
            count = self.mask.cumsum(1)
            self.mask = self.mask * (count <= keep_t[:, None]).long()
        for i, k in enumerate(keep):
            del self.ids[i][k:]
        self._trim_tail()

    def _trim_tail(self) -> None:
        """Drop trailing columns that are holes in every row (frees memory, exact)."""
        if self.width == 0:
            return
        used = self.mask.any(0).nonzero()
        last = int(used.max()) + 1 if len(used) else 0
        extra = self.width - last
        if extra > 0:
            if last == 0:
                self.cache = DynamicCache()
            else:
                self.cache.crop(-extra)
            self.mask = self.mask[:, :last]

    def compactable(self) -> bool:
        return all(type(layer) in (DynamicLayer,) for layer in self.cache.layers) and not any(
            isinstance(layer, DynamicSlidingWindowLayer) for layer in self.cache.layers
        )

    def compact(self, threshold: float = 0.3) -> bool:
        """Squeeze holes out when more than ``threshold`` of the columns are holes.

        Keys were rotated with their real positions before caching, so moving
        them to other columns (keeping their order) changes nothing.
        """
        if self.width == 0 or self.hole_fraction() <= threshold or not self.compactable():
            return False
        counts = self.mask.sum(1)
        width = int(counts.max())
        rows = len(self)
        index = torch.zeros((rows, width), dtype=torch.long, device=self.mask.device)
        new_mask = torch.zeros((rows, width), dtype=torch.long, device=self.mask.device)
        for i in range(rows):
            real = self.mask[i].nonzero().squeeze(1)
            n = len(real)
            if n:
                index[i, width - n:] = real
                new_mask[i, width - n:] = 1
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            gather = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, gather.to(layer.keys.device))
            layer.values = layer.values.gather(2, gather.to(layer.values.device))
        self.mask = new_mask
        return True
