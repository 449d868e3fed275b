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

Built for a GPU (one step = a few launches, no waiting on the device):

* the bookkeeping (which columns are real, positions, rollback, compaction) is done on a
  host copy of ``mask``; the device copy is extended in place of being re-sent, and new
  ids / positions go up in one pinned, non-blocking copy. Nothing here reads a device
  value back, so a step's only synchronisation is the one the search itself needs
  (reading the chosen tokens or the scores).
* the cache layers are preallocated (:class:`GrowingLayer`): a row that keeps growing
  (sampling, one token per step) writes its new keys into spare columns instead of
  concatenating (= copying) its whole cache every step.
* ``torch.compile`` of the decoder is available behind a flag (:func:`set_compile`).
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
# The CPU fast path for token-tree masks below; tests turn it off to check the generic path (the one CUDA takes).
CPU_MASKED_GQA = True


@contextmanager
def _masked_gqa(device: torch.device) -> Iterator[None]:
    """Let transformers' SDPA read grouped K/V heads directly under a custom mask, on a CPU.

    With a mask and several query tokens, transformers copies every K/V head ``num_key_value_groups``
    times (``repeat_kv``) unless ``TRANSFORMERS_SDPA_FORCE_GQA`` is set; a token tree would then pay
    for that copy of the whole prefix in every layer. torch's CPU kernel takes the mask with
    ``enable_gqa`` (exact; 2.6x faster on a 400-token row here). On CUDA a mask with GQA falls back to
    the math kernel, so there the default stays. Older transformers ignore the variable.
    """
    if device.type != "cpu" or not _TORCH_GQA or not CPU_MASKED_GQA or "TRANSFORMERS_SDPA_FORCE_GQA" in os.environ:
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


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys / values are views into a preallocated buffer with spare columns.

    ``update`` writes the new columns into the spare ones when the layer's tensors are still the live view of
    its own buffer; otherwise (first call, after a crop / select / compaction replaced them, or when a shallow
    copy shares the buffer with another state) it allocates: exactly the needed width the first time, with
    head-room once the layer has grown in place before (a row that keeps growing). ``keys`` / ``values`` stay
    ordinary tensors of ``[rows, heads, width, dim]``, so every other ``DynamicLayer`` method works unchanged.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self, "keys", None) is None or self.keys.numel() == 0:  # nothing cached yet (or after reset)
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
            self.keys, self.values = key_states, value_states
            self._kbuf = self._vbuf = None
            return self.keys, self.values
        n, t = self.keys.shape[-2], key_states.shape[-2]
        buf = getattr(self, "_kbuf", None)
        # _owner holds id(self), not self: a self-reference would be a reference cycle, and a cycle keeps the
        # whole cache (hundreds of MiB per search call) alive until Python's cyclic collector happens to run.
        # A shallow copy carries the original's id, which can never be its own (both were alive at once).
        live = (buf is not None and getattr(self, "_owner", None) == id(self) and self.keys.shape[-2] == self._used
                and self.keys.data_ptr() == buf.data_ptr() and self.keys.shape[:2] == buf.shape[:2])
        if not (live and n + t <= buf.shape[-2]):
            grown = live  # a layer that grew in place before will grow again: give it head-room
            width = n + t + (max(64, (n + t) // 2) if grown else 0)
            shape = (*self.keys.shape[:2], width, self.keys.shape[-1])
            kbuf = self.keys.new_empty(shape)
            vbuf = self.values.new_empty((*shape[:3], self.values.shape[-1]))
            kbuf[:, :, :n] = self.keys
            vbuf[:, :, :n] = self.values
            self._kbuf, self._vbuf, self._owner = kbuf, vbuf, id(self)
        self._kbuf[:, :, n: n + t] = key_states
        self._vbuf[:, :, n: n + t] = value_states
        self._used = n + t
        self.keys, self.values = self._kbuf[:, :, : n + t], self._vbuf[:, :, : n + t]
        return self.keys, self.values


def new_cache(config: Any = None) -> DynamicCache:
    """A ``DynamicCache`` whose full-attention layers are :class:`GrowingLayer` (sliding ones are left as they are)."""
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = GrowingLayer
    layers = getattr(cache, "layers", None)
    if layers:
        cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in layers]
    return cache


_COMPILE: dict[str, Any] = {"on": False, "kwargs": {}}
_COMPILED: dict[int, Any] = {}


def set_compile(on: bool = True, **kwargs: Any) -> None:
    """Run decoders through ``torch.compile(backbone, dynamic=True, **kwargs)`` from now on (off by default).

    Meant for a GPU, where a decode step is bound by kernel launches; on a CPU the compile time is rarely
    earned back. The compiled module is kept per backbone. Shapes still vary (the cache grows; trees differ),
    so ``dynamic=True`` keeps one graph per kind of step instead of one per width.
    """
    _COMPILE["on"], _COMPILE["kwargs"] = bool(on), kwargs
    _COMPILED.clear()


def _runner(backbone: Any) -> Any:
    if not _COMPILE["on"]:
        return backbone
    key = id(backbone)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(backbone, **{"dynamic": True, **_COMPILE["kwargs"]})
    return _COMPILED[key]


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting: pinned and non-blocking on CUDA, as is elsewhere."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class KVState:
    """Rows of token ids with their KV cache. See the module docstring.

    Args:
        cache: a ``DynamicCache`` whose batch dimension has one entry per row.
        mask: ``[rows, columns]`` 1 where a column holds a real token of the row (host or device).
        ids: the real token ids of each row, in order.
        groups: a tag per row (the prompt it belongs to), used for accounting.
        device: where the model runs (default: ``mask``'s device).
    """

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, ids: list[list[int]], groups: list[int],
                 device: torch.device | str | None = None) -> None:
        self.cache = cache
        self.device = torch.device(device) if device is not None else mask.device
        self._host: torch.Tensor | None = None
        self._dev: torch.Tensor | None = None
        self.mask = mask
        self.ids = ids
        self.groups = groups

    # The mask lives on the host (all bookkeeping) with a device copy made on demand and extended in place.
    @property
    def mask(self) -> torch.Tensor:
        """``[rows, columns]`` long, on the state's device."""
        if self._dev is None:
            self._dev = _upload(self._host, self.device)
        if self._dev is not self._host:
            # tagged with its host copy: a state built from another's ``mask`` (PolicyState(base.cache,
            # base.mask, ...)) takes the host copy instead of reading the device back
            self._dev._kv_host = self._host
        return self._dev

    @mask.setter
    def mask(self, value: torch.Tensor) -> None:
        value = value.long()
        if value.device.type == "cpu":
            self._host, self._dev = value, (value if self.device.type == "cpu" else None)
        elif getattr(value, "_kv_host", None) is not None and value._kv_host.shape == value.shape:
            self._host, self._dev = value._kv_host, value
        else:  # an untagged device tensor: its host copy is read once (a synchronisation)
            self._host, self._dev = value.cpu(), value

    @property
    def host_mask(self) -> torch.Tensor:
        return self._host

    def _set_host_mask(self, value: torch.Tensor) -> None:
        self._host = value
        self._dev = value if self.device.type == "cpu" else None

    @classmethod
    def empty(cls, groups: Sequence[int], device: torch.device | str = "cpu", config: Any = None) -> KVState:
        return cls(new_cache(config), torch.zeros((len(groups), 0), dtype=torch.long),
                   [[] for _ in groups], list(groups), device=device)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def width(self) -> int:
        return self._host.shape[1]

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.ids]

    def hole_fraction(self) -> float:
        total = self._host.numel()
        return 0.0 if total == 0 else 1.0 - float(self._host.sum()) / total

    def _like(self, cache: DynamicCache, host: torch.Tensor, dev: torch.Tensor | None, ids: list[list[int]],
              groups: list[int]) -> KVState:
        state = KVState(cache, host, ids, groups, device=self.device)
        if dev is not None:
            state._dev = dev
        return state

    def select(self, indices: Sequence[int] | torch.Tensor) -> KVState:
        """A new state whose row ``j`` is a copy of row ``indices[j]`` (fork, reorder or drop)."""
        il = indices.tolist() if torch.is_tensor(indices) else [int(i) for i in indices]
        idx = torch.as_tensor(il, dtype=torch.long)
        cache = copy.copy(self.cache)
        # Shallow-copy the layers so that selecting leaves this state's tensors untouched.
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        for layer in cache.layers:
            if isinstance(layer, GrowingLayer):  # a copy never writes into the buffer it came from: let it go
                layer._kbuf = layer._vbuf = None
        identity = il == list(range(len(self)))
        dev = None
        if len(il) and not identity:  # the identity shares the tensors: later updates replace, never write in place
            idx_dev = _upload(idx, self.device)
            cache.batch_select_indices(idx_dev)
            if self._dev is not None:
                dev = self._dev.index_select(0, idx_dev)
        elif identity:
            dev = self._dev
        return self._like(cache, self._host[idx], dev, [list(self.ids[i]) for i in il], [self.groups[i] for i in il])

    def forward(
        self, backbone: Callable[..., Any], tokens: Sequence[Sequence[int]], pad_id: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed row ``i`` the tokens ``tokens[i]`` (may be empty) in one batched call.

        Returns ``(hidden [rows, T, H], new_mask [rows, T])`` for the new columns (both on the device);
        new tokens are right-aligned after the existing columns (short rows get holes).
        """
        if len(tokens) != len(self):
            raise ValueError(f"forward got {len(tokens)} token lists for {len(self)} rows")
        T = max((len(t) for t in tokens), default=0)
        device = self.device
        if T == 0:
            return torch.zeros((len(self), 0, 0), device=device), torch.zeros((len(self), 0), dtype=torch.long)
        rows = len(self)
        # ids, mask and positions built on the host and sent up in one copy
        packed = torch.zeros((3, rows, T), dtype=torch.long)
        for i, t in enumerate(tokens):
            if len(t):
                packed[0, i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
                packed[1, i, : len(t)] = 1
        packed[0][packed[1] == 0] = pad_id
        # RoPE position = number of real tokens before this one (holes do not count).
        packed[2] = self._host.sum(1, keepdim=True) + torch.arange(T)[None, :]
        new_mask = packed[1]
        up = _upload(packed, device)
        full_dev = torch.cat([self.mask, up[1]], dim=1)
        # A Cache object is updated in place; the output's copy of it is not read (``out.past_key_values``
        # is itself deprecated in 5.2x and logs a warning).
        out = _runner(backbone)(
            input_ids=up[0], attention_mask=full_dev, position_ids=up[2],
            use_cache=True, **{cache_kwarg(backbone): self.cache},
        )
        self._host = full_dev if device.type == "cpu" else torch.cat([self._host, new_mask], dim=1)
        self._dev = full_dev
        for i, t in enumerate(tokens):
            self.ids[i].extend(int(x) for x in t)
        return out.last_hidden_state, up[1]

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
        device = self.device
        lens = [sum(len(s) for s in row) for row in suffixes]
        Q = max(lens, default=0)
        if Q == 0:
            raise ValueError("forward_tree got no tokens")
        W = self.width
        rows = len(self)
        # ids, offset within its own continuation, which continuation a column holds (-1: padding), position
        packed = torch.zeros((4, rows, Q), dtype=torch.long)
        packed[0].fill_(pad_id)
        packed[2].fill_(-1)
        columns: list[list[list[int]]] = []
        for i, row in enumerate(suffixes):
            at, cols = 0, []
            for j, s in enumerate(row):
                n = len(s)
                if n:
                    packed[0, i, at: at + n] = torch.as_tensor(list(s), dtype=torch.long)
                    packed[1, i, at: at + n] = torch.arange(n)
                    packed[2, i, at: at + n] = j
                cols.append(list(range(W + at, W + at + n)))
                at += n
            columns.append(cols)
        packed[3] = self._host.sum(1, keepdim=True) + packed[1]
        real_host = (packed[2] >= 0).long()
        up = _upload(packed, device)
        new_ids, branch, position_ids = up[0], up[2], up[3]
        real = branch >= 0
        # query (i, a) may see key column (i, b) of the new block iff same continuation and b <= a
        same = (branch[:, :, None] == branch[:, None, :]) & real[:, :, None]
        causal = torch.ones((Q, Q), dtype=torch.bool, device=device).tril()
        new_block = same & causal[None]
        eye = torch.eye(Q, dtype=torch.bool, device=device)[None]
        new_block = new_block | (eye & ~real[:, :, None])  # padding queries see themselves (no empty softmax)
        old_block = (self.mask.bool()[:, None, :] & real[:, :, None]) if W else torch.zeros(
            (rows, Q, 0), dtype=torch.bool, device=device)
        allowed = torch.cat([old_block, new_block], dim=2)
        mask4d = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        with _masked_gqa(device):
            out = _runner(backbone)(
                input_ids=new_ids, attention_mask=mask4d[:, None], position_ids=position_ids,
                use_cache=True, **{cache_kwarg(backbone): self.cache},
            )
        new_dev = torch.cat([self.mask, real.long()], dim=1)
        self._host = new_dev if device.type == "cpu" else torch.cat([self._host, real_host], dim=1)
        self._dev = new_dev
        return out.last_hidden_state, columns

    def rollback(self, keep: Sequence[int]) -> None:
        """Keep the first ``keep[i]`` real tokens of row ``i``: later ones become holes."""
        keep_t = torch.as_tensor(list(keep), dtype=torch.long)
        if len(keep_t) and self.width:
            count = self._host.cumsum(1)
            new = self._host * (count <= keep_t[:, None]).long()
            if not torch.equal(new, self._host):
                self._set_host_mask(new)
        for i, k in enumerate(keep):
            del self.ids[i][k:]
        self._trim_tail()

    def _trim_tail(self) -> None:
        """Drop trailing columns that are holes in every row (frees memory, exact)."""
        if self.width == 0:
            return
        used = self._host.any(0).nonzero()
        last = int(used.max()) + 1 if len(used) else 0
        extra = self.width - last
        if extra > 0:
            if last == 0:
                self.cache = new_cache()
            else:
                self.cache.crop(-extra)
            self._host = self._host[:, :last]
            self._dev = self._dev[:, :last] if self._dev is not None else None

    def compactable(self) -> bool:
        return all(type(layer) in (DynamicLayer, GrowingLayer) for layer in self.cache.layers) and not any(
            isinstance(layer, DynamicSlidingWindowLayer) for layer in self.cache.layers
        )

    def compact(self, threshold: float = 0.3) -> bool:
        """Squeeze holes out when more than ``threshold`` of the columns are holes.

        Keys were rotated with their real positions before caching, so moving
        them to other columns (keeping their order) changes nothing.
        """
        if self.width == 0 or self.hole_fraction() <= threshold or not self.compactable():
            return False
        host = self._host
        counts = host.sum(1)
        width = int(counts.max())
        rows = len(self)
        # row i's real columns, right-aligned: a stable sort puts holes (0) first and keeps the real ones in order
        order = torch.sort(host, dim=1, stable=True).indices[:, -width:] if width else torch.zeros((rows, 0),
                                                                                               dtype=torch.long)
        new_mask = (torch.arange(width)[None, :] >= (width - counts)[:, None]).long()
        index = _upload(order, self.device)
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            gather = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, gather.to(layer.keys.device))
            layer.values = layer.values.gather(2, gather.to(layer.values.device))
        self._set_host_mask(new_mask)
        return True
