"""The policy interface every search is written against, and the token-id state of engine backends.

Two backends implement it:

* ``decoding.policy.Policy`` (``policy.backend: hf``) -- a transformers causal LM in this
  process; its state is a KV cache (``PolicyState``) and it also exposes the next-token
  distribution of every row (``token_level = True``), which ARGS and CARDS need.
* ``decoding.vllm_policy.VllmPolicy`` (``policy.backend: vllm``) -- an inference engine
  (``vllm.LLM`` in-process or an OpenAI-compatible ``vllm serve`` URL); its state is only
  the token ids of each row (:class:`TokenState`): the engine keeps the KV cache and finds
  shared prefixes itself (prefix caching), so forking a row is copying a list.

What Best-of-N, DVTS, CBS and pruned Best-of-N use -- ``encode``, ``decode``, ``prefill``,
``sample``, ``state.select``, ``state.compact``, ``logprob_cache`` (REAR's teacher-forced sums) and
the ``meter`` -- is the :class:`PolicyBackend` protocol below; they run unchanged on either.
What a token-level search (ARGS, CARDS) needs on top -- the next-token distribution of every row,
the per-token ``step``, the seeded per-row ``row_uniforms``, ``sample``'s ``stop_before`` condition,
``extend`` and ``state.rollback`` -- is :class:`TokenLevelBackend`; only the HF backend has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # only for hints: keeps this module free of heavy imports
    import torch

    from decoding.policy import Sample, SamplingParams
    from decoding.types import Message, Meter


class SearchState(Protocol):
    """Rows (prompts, candidates, beams) a search moves; ``select`` forks, reorders or drops them."""

    ids: list[list[int]]
    groups: list[int]

    def __len__(self) -> int: ...

    def select(self, indices: Sequence[int]) -> SearchState: ...

    def compact(self, threshold: float = 0.3) -> bool: ...


class LogprobCache(Protocol):
    """Teacher-forced log-probs: ``values(seqs)[j][p] = log pi(seqs[j][p] | seqs[j][:p])`` (``[0] = 0``)."""

    meter: Meter

    def values(self, seqs: Sequence[Sequence[int]], groups: Sequence[int] | None = None) -> list[torch.Tensor]: ...


class PolicyBackend(Protocol):
    """What a search and the policy-based scorers need from a policy (see the module docstring)."""

    backend: str  # "hf" | "vllm": named in errors
    token_level: bool  # exposes ``state.next_logprobs`` at every token (ARGS, CARDS)
    tokenizer: Any
    delimiter: str
    stop_ids: list[int]
    meter: Meter

    def encode(self, messages: Sequence[Message]) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def prefill(self, prompts: Sequence[Sequence[int]], groups: Sequence[int] | None = None) -> Any: ...

    def sample(
        self,
        state: Any,
        seeds: Sequence[int],
        params: SamplingParams,
        max_tokens: int | Sequence[int],
        stop_at_delimiter: bool = False,
        feed_final: bool = True,
    ) -> list[Sample]: ...

    def logprob_cache(
        self, max_batch_tokens: int = 16384, max_batch_size: int = 64, enabled: bool = True,
        meter: Meter | None = None,
    ) -> LogprobCache: ...


class TokenLevelState(SearchState, Protocol):
    """A state that holds every row's next-token log-distribution ``[rows, V]`` and can roll rows back."""

    next_logprobs: torch.Tensor

    @property
    def lengths(self) -> list[int]: ...

    def rollback(self, lengths: Sequence[int]) -> None: ...


class TokenLevelBackend(PolicyBackend, Protocol):
    """What a token-level search (ARGS, CARDS) needs beyond :class:`PolicyBackend` (``token_level = True``)."""

    vocab_size: int

    def step(self, state: Any, tokens: Sequence[int | None]) -> None:
        """Feed one generated token per row (``None``: none) and refresh ``state.next_logprobs``."""

    def row_uniforms(self, seeds: Sequence[int], count: int, offsets: Sequence[int] | None = None,
                     device: Any = "cpu") -> torch.Tensor:
        """``[rows, count]`` uniforms in [0, 1), row ``i``'s depending on ``seeds[i]`` alone."""

    def extend(self, state: Any, tokens: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-force ``tokens[i]`` into row ``i`` (counted as prefill); returns their log-probs."""


def token_level_error(backend: str, method: str, why: str) -> NotImplementedError:
    """The error for a token-level search asked of a backend without next-token access."""
    return NotImplementedError(
        f"search.method={method} does not run on the {backend} policy backend: {why}, which an inference "
        f"engine does not expose. Use policy.backend: hf for {method}; the sequence-level searches run on both."
    )


def require_token_level(policy: Any, method: str,
                        why: str = "it needs the next-token distribution at every token") -> None:
    """Raise a clear error when a token-level search is asked of a backend without next-token access."""
    if getattr(policy, "token_level", True):
        return
    raise token_level_error(getattr(policy, "backend", type(policy).__name__), method, why)


class TokenState:
    """An engine backend's search state: the token ids of each row, nothing else.

    The engine holds the KV cache (and reuses shared prefixes through prefix caching),
    so forking a row copies its id list and there are never holes to compact.
    ``prompt_lengths[i]`` is the length of row ``i``'s prompt (the rest is its response).
    """

    def __init__(self, ids: list[list[int]], groups: list[int], prompt_lengths: list[int] | None = None) -> None:
        self.ids = ids
        self.groups = groups
        self.prompt_lengths = prompt_lengths if prompt_lengths is not None else [len(r) for r in ids]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.ids]

    def select(self, indices: Sequence[int]) -> TokenState:
        """A new state whose row ``j`` is a copy of row ``indices[j]``."""
        idx = [int(i) for i in indices]
        return TokenState([list(self.ids[i]) for i in idx], [self.groups[i] for i in idx],
                          [self.prompt_lengths[i] for i in idx])

    def compact(self, threshold: float = 0.3) -> bool:
        return False  # nothing to squeeze: no cache lives here
