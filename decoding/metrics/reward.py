"""Average reward: each decoded response scored by a reward model, batched.

The RM reads exactly the ids it was trained on: (prompt messages, response) go
through :func:`sp_prm.formatting.encode` with the same :class:`PrefixFormat`, and
:class:`sp_prm.scoring.RewardScorer` reads the reward at the last real token.
The completion marker goes where the format's ``end_marker`` puts it: by default a
response that decoding cut (``complete: false``) gets none, like a partial response
in training, and a complete one does; under ``always`` every response gets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sp_prm.formatting import Message, PrefixFormat, PromptTooLong, as_messages, encode
from sp_prm.scoring import RewardScorer


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
) -> list[float | None]:
    """Reward of every response (``None`` for a dropped prompt), in one batched pass over the set."""
    inputs = reward_inputs(tokenizer, prompts, responses, fmt, complete)
    keep = [i for i, ids in enumerate(inputs) if ids is not None]
    out: list[float | None] = [None] * len(inputs)
    if not keep:
        return out
    scorer = RewardScorer(
        model, pad_token_id=tokenizer.pad_token_id, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size
    )
    scores = scorer.score([inputs[i] for i in keep]).tolist()
    for i, value in zip(keep, scores):
        out[i] = float(value)
    return out
