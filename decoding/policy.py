"""The policy: any Hugging Face causal LM + its chat template, on token ids end to end.

    policy = Policy(model, tokenizer)
    state = policy.prefill([policy.encode(p.messages) for p in prompts], groups=[p.index ...])
    state = state.select([0, 0, 0, 0, 1, 1, 1, 1])            # fork: 4 candidates per prompt
    samples = policy.sample(state, seeds, SamplingParams(temperature=1.0), max_tokens=64)

A prompt is prefilled once; forking copies its cache rows (no recomputation).
``sample`` decodes all rows together, one batched forward per token, each row
stopping on its own at EOS, at its token budget, or after a token that contains
the step delimiter. Each row draws its randomness from its own seed (inverse-CDF
sampling with per-row uniforms drawn up front), so a candidate's tokens do not
depend on the other rows in the batch, up to float noise in the logits.

The per-token step lives here once: ``step`` feeds one token per row and refreshes its
next-token distribution, ``row_uniforms`` is the seeded per-row randomness, and ``sample``
takes a ``stop_before`` condition on the next-token distribution (CARDS' entropy segments) and
``offsets`` (continue a candidate's stream). Token-level searches call these, never the model.

Log-probabilities returned are those of the *model* (temperature 1, no top-k/p
filtering) in the sampling context: what REAR and likelihood scoring need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from decoding.kv import KVState
from decoding.prefix_cache import PrefixCache
from decoding.types import Message, Meter
from sp_prm.formatting import PrefixFormat, render_generation_prompt, uses_chat_template
from sp_prm.scoring import unwrap


@dataclass
class SamplingParams:
    """How the next token is drawn."""

    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature; 0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1 = off)."})
    top_k: int = field(default=0, metadata={"help": "Keep the k most likely tokens (0 = off)."})

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Sample:
    """What one row produced in one ``sample`` call."""

    token_ids: list[int]
    logprobs: list[float]
    eos: bool = False  # ended with a stop token (the last token, not in token_ids, is in end_ids)
    end_ids: list[int] = field(default_factory=list)
    end_logprobs: list[float] = field(default_factory=list)
    delimiter: bool = False  # ended after a token containing the step delimiter
    budget: bool = False  # ended because the token budget ran out
    boundary: bool = False  # ended by the ``stop_before`` condition (the next token opens a new segment)


class PolicyState(KVState):
    """A ``KVState`` plus each row's log-distribution of its next token."""

    next_logprobs: torch.Tensor

    def select(self, indices: Sequence[int] | torch.Tensor) -> PolicyState:
        base = KVState.select(self, indices)
        state = PolicyState(base.cache, base.mask, base.ids, base.groups)
        idx = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices, dtype=torch.long)
        state.next_logprobs = self.next_logprobs[idx.to(self.next_logprobs.device)]
        return state


def encode_prompt(tokenizer: Any, prompt_format: PrefixFormat, messages: Sequence[Message]) -> list[int]:
    """Token ids of a prompt rendered for generation (chat template with the assistant cue; after a final
    assistant message, that turn left open for the policy to continue: a prefill); both backends."""
    text = render_generation_prompt(tokenizer, messages, prompt_format)
    return list(tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer, prompt_format))["input_ids"])


def stop_and_pad_ids(tokenizer: Any, stop_token_ids: Sequence[int] = (),
                     generation_eos: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Ids that end a response (the given ones, the tokenizer's EOS, the generation config's EOS) and
    the id fed in padded positions (the pad token, else the first stop id). Shared by every backend."""
    stops = {int(i) for i in stop_token_ids}
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    if generation_eos is not None:
        stops.update(int(i) for i in ([generation_eos] if isinstance(generation_eos, int) else generation_eos))
    if not stops:
        raise ValueError("the policy has no stop token: give the tokenizer an eos_token or pass stop_token_ids")
    stop_ids = sorted(stops)
    return stop_ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def delimiter_token_mask(tokenizer: Any, delimiter: str, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` bool: non-special tokens whose text contains ``delimiter`` (the tokens that end a step)."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    if delimiter:
        for i, t in enumerate(texts):
            if delimiter in t and i not in special:
                mask[i] = True
    return mask


def choose_tokens(logprobs: torch.Tensor, uniforms: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Draw one token per row from ``logprobs [rows, V]`` with the given uniforms ``[rows]`` in [0, 1).

    Inverse-CDF sampling: the token is the first whose cumulative probability
    exceeds ``u``. Zero-probability tokens (filtered by top-k/top-p) are never chosen.
    """
    if params.temperature == 0:
        return logprobs.argmax(-1)
    logits = logprobs / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0 and not params.top_k and logits.shape[-1] > NUCLEUS_CANDIDATES:
        tokens, ok = _nucleus_from_top(logits, uniforms, params.top_p, NUCLEUS_CANDIDATES)
        if bool(ok.all()):
            return tokens
        rest = (~ok).nonzero().squeeze(1)  # a flat row whose nucleus is wider than the candidates
        tokens[rest] = _inverse_cdf(logits[rest], uniforms[rest], params.top_p)
        return tokens
    return _inverse_cdf(logits, uniforms, params.top_p)


# top-p reads the nucleus from this many most likely tokens when it fits in them (almost always: a nucleus of
# 0.9 rarely spans hundreds of tokens), instead of sorting the whole vocabulary every step.
NUCLEUS_CANDIDATES = 256


def _inverse_cdf(logits: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    """The reference sampler: nucleus by a full sort, then the inverse CDF over the vocabulary in id order."""
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=logits.shape[-1] - 1)


def _nucleus_from_top(logits: torch.Tensor, uniforms: torch.Tensor, top_p: float, k: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_inverse_cdf` from the ``k`` most likely tokens: ``(tokens, ok)``, ``ok`` where the nucleus fits.

    The same draw (the same nucleus, the kept tokens in id order, the same uniform), computed on ``k``
    candidates instead of the vocabulary; only rounding differs (tested token for token against it).
    """
    vals, idx = logits.topk(k, dim=-1)  # sorted, most likely first
    p = (vals - logits.logsumexp(-1, keepdim=True)).exp()
    csum = p.cumsum(-1)
    keep = (csum - p) < top_p
    ok = csum[:, -1] >= top_p  # the (k+1)-th token would be dropped: the nucleus lies in the k
    # the kept tokens in vocabulary order (dropped ones last, with no mass): the reference's CDF order
    key = idx.masked_fill(~keep, logits.shape[-1])
    key, perm = key.sort(dim=-1)
    q = (p * keep).gather(-1, perm)
    cdf = q.cumsum(-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    j = torch.searchsorted(cdf, target, right=True).clamp(max=k - 1)
    return key.gather(-1, j).squeeze(1).clamp(max=logits.shape[-1] - 1), ok


class Policy:
    """A causal LM and its tokenizer for search (the ``hf`` backend). See the module docstring.

    Implements ``decoding.backend.PolicyBackend``; its state is a KV cache and it exposes
    every row's next-token distribution (``token_level``), which ARGS and CARDS need.

    Args:
        model: any ``AutoModelForCausalLM`` (eval mode is set). Sliding-window caches
            are not supported (holes in the cache would shift the window).
        tokenizer: its tokenizer; the chat template is used when present.
        delimiter: text that ends a step (DVTS); any token whose text contains it ends the step.
        stop_token_ids: extra ids that end a response (EOS and the generation config's are included).
        prompt_format: template choice for rendering prompts (``auto``: chat when available).
    """

    backend = "hf"
    token_level = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        delimiter: str = "\n",
        stop_token_ids: Sequence[int] = (),
        prompt_format: PrefixFormat | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.format = prompt_format or PrefixFormat(max_prompt_tokens=None, max_response_tokens=None)
        inner = unwrap(model)
        self.backbone = getattr(inner, inner.base_model_prefix)
        self.head = inner.get_output_embeddings()
        self.softcap = getattr(inner.config, "final_logit_softcapping", None)
        gen_eos = getattr(getattr(inner, "generation_config", None), "eos_token_id", None)
        self.stop_ids, self.pad_id = stop_and_pad_ids(tokenizer, stop_token_ids, gen_eos)
        self.delimiter = delimiter
        self._delimiter_masks: dict[str, torch.Tensor] = {}
        self.meter = meter or Meter()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return self.head.weight.shape[0]

    # -- prompts -------------------------------------------------------------------------------------
    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a prompt rendered for generation (chat template with the assistant cue)."""
        return encode_prompt(self.tokenizer, self.format, messages)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def delimiter_mask(self) -> torch.Tensor:
        """``[V]`` bool: tokens whose text contains the step delimiter (computed once per delimiter)."""
        if self.delimiter not in self._delimiter_masks:
            self._delimiter_masks[self.delimiter] = delimiter_token_mask(self.tokenizer, self.delimiter,
                                                                         self.vocab_size)
        return self._delimiter_masks[self.delimiter]

    # -- model calls ---------------------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head (fp32) on selected hidden states; applies final logit soft-capping if configured."""
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]], groups: Sequence[int] | None = None) -> PolicyState:
        """Run prompts through the model once (one padded batch); returns their state."""
        groups = list(range(len(prompts))) if groups is None else list(groups)
        base = KVState.empty(groups, device=self.device)
        state = PolicyState(base.cache, base.mask, base.ids, base.groups)
        hidden, new_mask = state.forward(self.backbone, prompts, self.pad_id)
        last = new_mask.sum(1) - 1
        h = hidden[torch.arange(len(prompts), device=hidden.device), last]
        state.next_logprobs = self.logits(h).log_softmax(-1)
        self.meter.add("policy_tokens_prefilled", groups, [len(p) for p in prompts])
        return state

    @torch.no_grad()
    def extend(self, state: PolicyState, tokens: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-force ``tokens[i]`` into row ``i``; returns their log-probs (and updates the state)."""
        fed = [i for i, t in enumerate(tokens) if len(t)]
        if not fed:
            return [[] for _ in tokens]
        first = state.next_logprobs
        hidden, new_mask = state.forward(self.backbone, tokens, self.pad_id)
        out: list[list[float]] = []
        last_h = []
        for i, t in enumerate(tokens):
            if not len(t):
                out.append([])
                continue
            t_ids = torch.as_tensor(list(t), device=hidden.device)
            lp = self.logits(hidden[i, : len(t)]).log_softmax(-1)
            prev = torch.cat([first[i : i + 1], lp[:-1]], dim=0)
            out.append(prev.gather(1, t_ids[:, None]).squeeze(1).tolist())
            last_h.append((i, lp[-1]))
        nl = state.next_logprobs.clone()
        for i, row in last_h:
            nl[i] = row
        state.next_logprobs = nl
        self.meter.add("policy_tokens_prefilled", [state.groups[i] for i in fed], [len(tokens[i]) for i in fed])
        return out

    @torch.no_grad()
    def step(self, state: PolicyState, tokens: Sequence[int | None]) -> None:
        """Feed one generated token per row (``None``: feed nothing) and refresh its ``next_logprobs``.

        The per-token step of every search: ``sample`` loops over it, and token-level searches
        (ARGS) call it with the tokens they chose. Accounting of generated tokens is the caller's
        (it knows which rows drew a token, including rows that drew a stop token and feed nothing).
        """
        fed = [i for i, t in enumerate(tokens) if t is not None]
        if not fed:
            return
        feed = [[int(t)] if t is not None else [] for t in tokens]
        hidden, _ = state.forward(self.backbone, feed, self.pad_id)
        if len(fed) == len(tokens):  # every row fed (the common step): no copy of the [rows, V] distribution
            state.next_logprobs = self.logits(hidden[:, 0]).log_softmax(-1)
            return
        # Some rows fed: write into a copy, since a forked state may share next_logprobs (updates replace tensors).
        fed_t = torch.as_tensor(fed, device=hidden.device)
        nl = state.next_logprobs.clone()
        nl[fed_t] = self.logits(hidden[fed_t, 0]).log_softmax(-1)
        state.next_logprobs = nl

    @staticmethod
    def row_uniforms(seeds: Sequence[int], count: int, offsets: Sequence[int] | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
        """``[rows, count]`` float64 uniforms in [0, 1): row ``i``'s stream depends on ``seeds[i]`` alone.

        The one seeded per-row randomness of the HF backend. ``offsets[i]`` skips the first draws of
        row ``i``'s stream, so a candidate sampled in several calls (pruned Best-of-N's checkpoints)
        draws exactly the uniforms one uninterrupted call would have.
        """
        offsets = [0] * len(seeds) if offsets is None else [int(o) for o in offsets]
        if not len(seeds):
            return torch.zeros(0, count, dtype=torch.float64, device=device)
        return torch.stack([
            torch.rand(o + count, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)[o:]
            for s, o in zip(seeds, offsets)
        ]).to(device)

    @torch.no_grad()
    def sample(
        self,
        state: PolicyState,
        seeds: Sequence[int],
        params: SamplingParams,
        max_tokens: int | Sequence[int],
        stop_at_delimiter: bool = False,
        feed_final: bool = True,
        stop_before: Callable[[torch.Tensor], torch.Tensor] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> list[Sample]:
        """Sample a continuation for every row of ``state`` (updated in place).

        Args:
            seeds: one seed per row; the row's uniforms depend on it alone.
            max_tokens: token budget per row (or one for all).
            stop_at_delimiter: end a row after a token containing ``delimiter``.
            feed_final: also run the last sampled token of rows that stopped on a
                delimiter or budget, so the state can be continued (DVTS); a search
                that never continues (Best-of-N) saves that step with ``False``.
            stop_before: a stop condition on the next-token distribution: given ``next_logprobs``
                ``[rows, V]`` it returns ``[rows]`` bool; a row that already drew a token in this
                call stops *before* drawing another where it is true (``Sample.boundary``; CARDS'
                entropy segments). Its last token is fed, so the row continues from there.
            offsets: where each row's uniform stream starts (``row_uniforms``); default 0.
        """
        rows = len(state)
        if len(seeds) != rows:
            raise ValueError(f"sample got {len(seeds)} seeds for {rows} rows")
        budgets = [max_tokens] * rows if isinstance(max_tokens, int) else [int(b) for b in max_tokens]
        horizon = max(budgets, default=0)
        samples = [Sample([], []) for _ in range(rows)]
        if horizon <= 0 or rows == 0:
            for s in samples:
                s.budget = True
            return samples
        uniforms = self.row_uniforms(seeds, horizon, offsets, state.next_logprobs.device)
        stop = torch.zeros(self.vocab_size, dtype=torch.bool)
        stop[self.stop_ids] = True
        delim = self.delimiter_mask() if stop_at_delimiter else torch.zeros_like(stop)
        active = [b > 0 for b in budgets]
        for i, b in enumerate(budgets):
            if b <= 0:
                samples[i].budget = True
        for t in range(horizon):
            if t and stop_before is not None:
                halt = stop_before(state.next_logprobs).tolist()
                for i in range(rows):
                    if active[i] and halt[i]:
                        samples[i].boundary, active[i] = True, False
            act_idx = [i for i in range(rows) if active[i]]
            if not act_idx:
                break
            tok = choose_tokens(state.next_logprobs, uniforms[:, t], params)
            chosen_lp = state.next_logprobs.gather(1, tok[:, None]).squeeze(1)
            tok_l, lp_l = tok.tolist(), chosen_lp.tolist()
            feed: list[int | None] = [None] * rows
            for i in act_idx:
                s, x = samples[i], tok_l[i]
                if stop[x]:
                    s.eos, s.end_ids, s.end_logprobs = True, [x], [lp_l[i]]
                    active[i] = False
                    continue
                s.token_ids.append(x)
                s.logprobs.append(lp_l[i])
                if stop_at_delimiter and delim[x]:
                    s.delimiter, active[i] = True, False
                elif len(s.token_ids) >= budgets[i]:
                    s.budget, active[i] = True, False
                if active[i] or feed_final:
                    feed[i] = x
            self.step(state, feed)
            self.meter.add("policy_tokens_generated", [state.groups[i] for i in act_idx])
        return samples

    def logprob_cache(
        self, max_batch_tokens: int = 16384, max_batch_size: int = 64, enabled: bool = True,
        meter: Meter | None = None,
    ) -> PrefixCache:
        """Teacher-forced log-probs through a second KV cache kept across calls (REAR's sums)."""
        return PrefixCache(
            self.backbone, self.logits, kind="logprob", pad_id=self.pad_id, max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size, enabled=enabled, meter=meter or self.meter, device=self.device,
        )

    @torch.no_grad()
    def sequence_logprobs(self, prompt: Sequence[int], response: Sequence[int]) -> torch.Tensor:
        """Reference log-probs of ``response`` after ``prompt`` by one plain full forward (for tests/checks)."""
        ids = torch.as_tensor([list(prompt) + list(response)], device=self.device)
        logits = self.logits(self.backbone(input_ids=ids).last_hidden_state[0])
        lp = logits.log_softmax(-1)[len(prompt) - 1 : -1]
        return lp.gather(1, ids[0, len(prompt):, None]).squeeze(1)
