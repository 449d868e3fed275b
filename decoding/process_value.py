"""Ground-truth process value of response prefixes, by Monte Carlo rollouts of the policy.

    V(x, y[:t]) = E_{z ~ policy(. | x, y[:t])} [ R_gold(x, y[:t] + z) ]

estimated as the mean gold reward of ``M`` continuations sampled from the prefix (Math-Shepherd
labels steps this way). In a testbed where a fixed *gold* reward model defines quality, this is
the quantity a process reward model should rank prefixes by; ``sp-prm evaluate-rm`` compares each
RM's prefix scores with it (``process_value:`` option).

* **Batched**: the unique prefixes of a call are prefilled together (prompt + prefix in the
  policy's token space), forked ``M`` times, and all rows are sampled in one batched decode; the
  gold RM scores every finished response in one batched pass.
* **Independent of batching**: rollout ``m`` of a prefix draws its uniforms from a seed hashed from
  (``seed``, the prefix's content, ``m``), so a prefix's value does not depend on which other
  prefixes share the call (and identical prefixes get identical values, so ties in V are exact).
* **Complete prefixes** (the whole response, which ended with EOS) have no continuation: their V
  is the gold reward itself, exactly (all ``M`` entries equal).
* **Budget**: a response may have ``max_response_tokens`` policy tokens in all; a continuation
  gets what the prefix leaves. A prefix that already uses it is judged as it is (incomplete).

The prefix arrives as text (it was cut in another tokenizer's space by evaluate-rm) and is
re-encoded in the policy's; the finished response is decoded from prefix + continuation ids
together, so no space is lost at the seam.

**Layering**: this module is in ``decoding`` (it needs the policy); ``sp_prm`` never imports it.
``sp-prm evaluate-rm`` reaches it through :func:`main`, which the CLI dispatches to and which
passes :func:`value_function` into :func:`sp_prm.evaluate.evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from decoding.policy import Policy, SamplingParams
from sp_prm.formatting import Message, PrefixFormat
from sp_prm.models import load_reward_model, load_tokenizer, trained_prefix_format


@dataclass(frozen=True)
class PrefixItem:
    """One prefix to value: its prompt, its text, and whether it is a whole, finished response."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, hashable
    text: str
    complete: bool

    @staticmethod
    def of(messages: Sequence[Message], text: str, complete: bool) -> PrefixItem:
        return PrefixItem(tuple((m["role"], m["content"]) for m in messages), text, bool(complete))

    def as_messages(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.messages, self.text, self.complete]).encode()).hexdigest()


def rollout_seed(seed: int, key: str, m: int) -> int:
    """Seed of rollout ``m`` of the prefix with content hash ``key`` (stable across runs and batchings)."""
    return int(hashlib.sha256(f"{seed}/{key}/{m}".encode()).hexdigest()[:15], 16)


@dataclass
class Judge:
    """A gold reward model and the representation it reads."""

    model: Any
    tokenizer: Any
    format: PrefixFormat

    def __call__(self, prompts: Sequence[Sequence[Message]], texts: Sequence[str], complete: Sequence[bool],
                 max_batch_tokens: int = 16384) -> list[float]:
        from decoding.metrics.reward import rewards

        vals = rewards(self.model, self.tokenizer, list(prompts), list(texts), self.format, complete=list(complete),
                       max_batch_tokens=max_batch_tokens)
        if any(v is None for v in vals):
            raise ValueError("the gold RM dropped a prompt (prompt_overflow: drop); use truncation for the gold RM")
        return [float(v) for v in vals]


def rollout_values(
    policy: Policy,
    judge: Callable[..., list[float]],
    items: Sequence[PrefixItem],
    rollouts: int,
    params: SamplingParams,
    max_response_tokens: int,
    seed: int = 0,
    batch_rows: int = 64,
    progress: bool = False,
    budget_ends_response: bool = False,
    on_values: Callable[[Sequence[PrefixItem], torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """``[len(items), rollouts]``: the gold reward of each rollout of each prefix (V is the row mean).

    ``budget_ends_response``: a rollout cut by the budget is judged as finished (with the end
    marker), for testbeds whose responses are whatever the policy wrote within the budget.
    ``on_values(prefixes, values)`` is called after every batch with the unique prefixes it valued,
    so a caller can save them as they come (a killed hour-long evaluation keeps what it did).
    """
    if rollouts < 1:
        raise ValueError(f"rollouts must be >= 1, got {rollouts}")
    out = torch.empty(len(items), rollouts, dtype=torch.float64)
    unique: dict[PrefixItem, list[int]] = {}
    for i, it in enumerate(items):
        unique.setdefault(it, []).append(i)
    todo = list(unique)
    finished = [it for it in todo if it.complete]
    if finished:  # exact: no continuation exists
        vals = judge([it.as_messages() for it in finished], [it.text for it in finished], [True] * len(finished))
        for it, v in zip(finished, vals):
            out[unique[it]] = v
        if on_values is not None:
            on_values(finished, torch.tensor(vals, dtype=torch.float64)[:, None].expand(-1, rollouts))
    pending = [it for it in todo if not it.complete]
    tok = policy.tokenizer
    per_call = max(1, batch_rows // rollouts)
    chunks = range(0, len(pending), per_call)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="process value", unit="chunk")
    for start in chunks:
        chunk = pending[start: start + per_call]
        prefix_ids = [list(tok(it.text, add_special_tokens=False)["input_ids"]) if it.text else [] for it in chunk]
        budgets = [max(0, max_response_tokens - len(p)) for p in prefix_ids]
        state = policy.prefill([policy.encode(it.as_messages()) + p for it, p in zip(chunk, prefix_ids)])
        state = state.select([i for i in range(len(chunk)) for _ in range(rollouts)])
        seeds = [rollout_seed(seed, it.key(), m) for it in chunk for m in range(rollouts)]
        samples = policy.sample(state, seeds, params, [b for b in budgets for _ in range(rollouts)],
                                feed_final=False)
        prompts, texts, done = [], [], []
        for i, it in enumerate(chunk):
            for m in range(rollouts):
                s = samples[i * rollouts + m]
                prompts.append(it.as_messages())
                texts.append(policy.decode(prefix_ids[i] + s.token_ids))
                done.append(s.eos or (budget_ends_response and s.budget))
        vals = torch.tensor(judge(prompts, texts, done), dtype=torch.float64).view(len(chunk), rollouts)
        for i, it in enumerate(chunk):
            out[unique[it]] = vals[i]
        if on_values is not None:
            on_values(chunk, vals)
    return out


# -- the evaluate-rm hook -------------------------------------------------------------------------------


SAVE_EVERY_S = 60.0  # how often value_function rewrites its cache file while rollouts run


def _fingerprint(cfg: Any) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("cache", "batch_rows", "device", "progress")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def value_function(cfg: Any, default_format: PrefixFormat | None = None) -> Callable[[Sequence[Any]], torch.Tensor]:
    """The function ``sp_prm.evaluate.evaluate`` calls with its prefixes (``cfg``: a ``ProcessValueConfig``).

    The gold RM reads responses in the format it was trained with (its ``config.sp_prm`` record),
    else in ``default_format`` (evaluate-rm passes its own ``prefix``).

    With ``cfg.cache`` set, values are read from / added to that file (keyed by prefix content and a
    fingerprint of every setting that changes them), so the contenders of one experiment share one
    set of rollouts. The file is rewritten (atomically) as rollouts finish, at most every
    ``SAVE_EVERY_S`` seconds and at the end, so a killed evaluation resumes where it stopped.
    """

    def compute(items: Sequence[PrefixItem | tuple[Sequence[Message], str, bool]]) -> torch.Tensor:
        items = [it if isinstance(it, PrefixItem) else PrefixItem.of(*it) for it in items]
        fp = _fingerprint(cfg)
        cache: dict[str, list[float]] = {}
        path = Path(cfg.cache) if cfg.cache else None
        if path is not None and path.exists():
            saved = torch.load(path, weights_only=False)
            if saved.get("fingerprint") == fp:
                cache = saved["values"]
        missing = list(dict.fromkeys(it for it in items if it.key() not in cache))
        if missing:
            from decoding.decode import DecodeConfig, PolicyConfig, build_policy
            from decoding.types import Meter

            device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            policy = build_policy(DecodeConfig(policy=PolicyConfig(model=cfg.policy, dtype=cfg.dtype, device=device)),
                                  Meter())
            tok = load_tokenizer(cfg.gold_rm)
            model = load_reward_model(cfg.gold_rm, cfg.dtype, device, pad_token_id=tok.pad_token_id)
            fmt = trained_prefix_format(model) or default_format or PrefixFormat()
            judge = Judge(model, tok, fmt)
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p)
            last_save = [time.monotonic()]

            def save() -> None:
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.tmp")
                    torch.save({"fingerprint": fp, "config": asdict(cfg), "values": cache}, tmp)
                    tmp.replace(path)
                last_save[0] = time.monotonic()

            def keep(done: Sequence[PrefixItem], vals: torch.Tensor) -> None:
                for it, v in zip(done, vals):
                    cache[it.key()] = v.tolist()
                if time.monotonic() - last_save[0] >= SAVE_EVERY_S:
                    save()

            rollout_values(policy, judge, missing, cfg.rollouts, params, cfg.max_response_tokens, cfg.seed,
                           cfg.batch_rows, progress=cfg.progress, budget_ends_response=cfg.budget_ends_response,
                           on_values=keep)
            save()
        return torch.tensor([cache[it.key()] for it in items], dtype=torch.float64)

    return compute


def main(argv: list[str] | None = None) -> None:
    """``sp-prm evaluate-rm``: :func:`sp_prm.evaluate.evaluate`, plus the process value when configured."""
    from sp_prm.config import load_config
    from sp_prm.evaluate import EvaluateConfig, evaluate
    from sp_prm.runtime import limit_heap_retention

    limit_heap_retention()

    config = load_config(EvaluateConfig, argv)
    evaluate(config, value_fn=value_function(config.process_value, config.prefix) if config.process_value else None)


if __name__ == "__main__":
    main()
