"""Scorers: one small interface, ``score(prompts, partials) -> rewards`` (``[n]`` fp32 tensor).

* :class:`RewardModelScorer` -- any one-output sequence classifier (ORM or a trained
  SP-PRM), encoder or decoder, with its own tokenizer. Ids are built with
  ``sp_prm.formatting.encode`` exactly as in training: the end marker goes where
  ``PrefixFormat.end_marker`` says (complete responses only by default; ``always``:
  every prefix, the SP-PRM authors' mode). Decoder RMs
  keep the KV cache of the last call (``PrefixCache``: crop, then extend); encoders
  go through ``sp_prm.scoring.RewardScorer`` (token-budget batches sorted by length).
* :class:`RearScorer` -- REAR(lambda), the REAR paper's Eq. 9-10 with gamma = 1::

      S = sum_t (1 - lambda) * log pi(a_t | q, a_<t) + lambda * log pi(a_t | q + p, a_<t)

  over the response tokens (plus the stop token when the response is complete: it
  is the episode's last action). The full-context term reuses the sampling
  log-probs carried by the ``Partial``; the question-only term comes from the policy
  backend's ``logprob_cache``: on HF an incremental forward over a second,
  ``PrefixCache``-managed cache; on vLLM the engine's prompt log-probs over
  [context + response], the shared prompt read from its prefix cache. ``lambda = 1`` is the
  policy's own log-likelihood. ``length_normalize=True`` (an option, not the
  paper's default) divides S by the number of summed tokens (response + stop
  token); the score is then no longer a sum of step increments, so the scorer
  reports ``additive = False`` and aggregates by ``last``.
* :class:`GenRMScorer` -- the REAR paper's appendix C judge: the conversation
  (system: preference, user: question, assistant: response) is followed by a
  user turn asking "Is this a preferred response? ..." and an assistant turn
  opened with ``Preferred:``; the score is ``log p(Yes) - log p(No)`` of the next
  token (each side: log-sum-exp over its spellings, " Yes" and "Yes").

Every scorer says whether its score is ``additive`` over steps (REAR: the score of
a prefix is the sum of its steps' increments) and its default aggregation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from decoding.backend import PolicyBackend
from decoding.policy import Policy
from decoding.prefix_cache import PrefixCache
from decoding.types import Meter, Partial, Prompt
from sp_prm.formatting import PrefixFormat, encode, split_prefill
from sp_prm.scoring import RewardScorer, is_causal_reward_model, unwrap


class Scorer(Protocol):
    """What a search needs from a scorer."""

    additive: bool
    default_aggregation: str
    meter: Meter

    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor: ...


def _check_lengths(prompts: Sequence[Prompt], partials: Sequence[Partial]) -> None:
    if len(prompts) != len(partials):
        raise ValueError(f"score got {len(prompts)} prompts for {len(partials)} responses")


class RewardModelScorer:
    """A sequence-classification reward model as a scorer. See the module docstring.

    Args:
        model: one-output ``AutoModelForSequenceClassification``.
        tokenizer: the RM's own tokenizer.
        prefix_format: how (prompt, partial response) becomes ids; use the PRM's training format.
        cache: keep a decoder RM's KV cache across calls (no effect for encoders).
    """

    additive = False
    default_aggregation = "last"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prefix_format: PrefixFormat | None = None,
        cache: bool = True,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        meter: Meter | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.format = prefix_format or PrefixFormat()
        self.meter = meter or Meter()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rm = RewardScorer(model, pad_token_id=pad, max_batch_tokens=max_batch_tokens,
                               max_batch_size=max_batch_size)
        self.causal = self.rm.causal
        self._warned_unknown = False
        self.prefix_cache: PrefixCache | None = None
        if self.causal and cache:
            inner = unwrap(model)
            self.prefix_cache = PrefixCache(
                getattr(inner, inner.base_model_prefix), lambda h: inner.score(h).squeeze(-1), kind="reward",
                pad_id=pad, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                meter=self.meter, device=self.rm.device,
            )

    def sequence(self, prompt: Prompt, partial: Partial) -> list[int]:
        """The RM's ids for one (prompt, partial response), as in training."""
        return self._sequence(prompt, partial)[0]

    def _sequence(self, prompt: Prompt, partial: Partial) -> tuple[list[int], bool]:
        """(ids, whether the response has text but not one token the RM's tokenizer knows)."""
        enc = encode(self.tokenizer, prompt.messages, partial.text, self.format)
        unknown = False
        if partial.text.strip():
            unk = getattr(self.tokenizer, "unk_token_id", None)
            unknown = not enc.content_ids or (unk is not None and all(t == unk for t in enc.content_ids))
        # The end marker where the format puts it: complete responses only (default), never, or always.
        return enc.sequence_for(self.format, complete=partial.complete), unknown

    def _check_encodable(self, prompts: Sequence[Prompt], partials: Sequence[Partial], unknown: list[bool]) -> None:
        """Every response unencodable: the RM cannot read this language (error). Some: degenerate samples such
        as one 200-letter 'word' that WordPiece maps to [UNK], scored as encoded (a warning, once)."""
        bad = [i for i, u in enumerate(unknown) if u]
        if not bad:
            return
        i = bad[0]
        what = (f"record {prompts[i].id!r}: the reward model's tokenizer cannot encode the response "
                f"(no known tokens in {partials[i].text[:60]!r})")
        if len(bad) == len(unknown):
            raise ValueError(what)
        if not self._warned_unknown:
            self._warned_unknown = True
            warnings.warn(f"{what}; {len(bad)} of {len(unknown)} responses in this call are scored as unknown "
                          "tokens (warned once per scorer)", stacklevel=3)

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        _check_lengths(prompts, partials)
        if not partials:
            return torch.empty(0)
        seqs, unknown = zip(*(self._sequence(p, r) for p, r in zip(prompts, partials)))
        seqs = list(seqs)
        self._check_encodable(prompts, partials, list(unknown))
        groups = [p.index for p in prompts]
        self.meter.add("scorer_calls", sorted(set(groups)))
        if self.prefix_cache is not None:
            values = self.prefix_cache.values(seqs, groups)
            return torch.stack([v[-1] for v in values])
        self.meter.add("scorer_tokens", groups, [len(s) for s in seqs])
        return self.rm.score(seqs)


def rear_combine(q: torch.Tensor, f: torch.Tensor, lam: float, n_terms: Sequence[int] | None = None) -> torch.Tensor:
    """REAR(lambda) from its two sums: ``(1 - lam) * q + lam * f``, divided by each response's number of
    summed tokens when ``n_terms`` is given (length normalisation). The one place this arithmetic lives,
    so a post-hoc lambda sweep (``decoding.rear_sweep``) selects exactly what the scorer would."""
    s = (1.0 - lam) * q + lam * f
    if n_terms is not None:
        s = s / torch.tensor([max(1, int(k)) for k in n_terms], dtype=s.dtype)
    return s


class RearScorer:
    """REAR(lambda) on the policy itself. See the module docstring.

    Args:
        policy: the sampling policy (its model gives both log-likelihoods).
        lam: lambda >= 0; 1 = the policy's own log-likelihood; the paper's best is about 20.
        reuse_generation_logprobs: take the full-context term from ``Partial.logprobs`` when
            present (they come from the same model and context while sampling).
        cache: keep the teacher-forced cache across calls (``False``: recompute; for checks).
        length_normalize: score S / (number of summed tokens) instead of S (default: the paper's sum).
    """

    additive = True
    default_aggregation = "sum"

    def __init__(
        self,
        policy: PolicyBackend,
        lam: float = 20.0,
        reuse_generation_logprobs: bool = True,
        cache: bool = True,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        meter: Meter | None = None,
        length_normalize: bool = False,
    ) -> None:
        if lam < 0:
            raise ValueError(f"REAR lambda must be >= 0, got {lam}")
        self.policy = policy
        self.lam = float(lam)
        self.length_normalize = bool(length_normalize)
        if self.length_normalize:  # S / len is not a sum of per-step increments
            self.additive = False
            self.default_aggregation = "last"
        self.reuse = reuse_generation_logprobs
        self.meter = meter or policy.meter
        # The backend computes the teacher-forced sums: HF through a second KV cache kept across
        # calls, vLLM through the engine's prompt log-probs with its prefix cache.
        self.cache = policy.logprob_cache(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                                          enabled=cache, meter=self.meter)
        self._encoded: dict[tuple[str, str], list[int]] = {}

    def _prompt_ids(self, prompt: Prompt, which: str) -> list[int]:
        key = (prompt.id, which)
        if key not in self._encoded:
            if which == "question":
                if prompt.question_messages is None:
                    raise ValueError(
                        f"record {prompt.id!r}: REAR needs a preference (a question-only context); "
                        "give the record a preference field or mark the preference turn"
                    )
                self._encoded[key] = self.policy.encode(prompt.question_messages)
            else:
                self._encoded[key] = self.policy.encode(prompt.messages)
        return self._encoded[key]

    def terms(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(question-only sum, full-context sum)`` of log-probs of each response (0 where lambda skips it)."""
        _check_lengths(prompts, partials)
        n = len(partials)
        q_sum, f_sum = torch.zeros(n), torch.zeros(n)
        seqs, starts, slots = [], [], []
        groups = [p.index for p in prompts]
        for j, (p, r) in enumerate(zip(prompts, partials)):
            response = list(r.token_ids) + list(r.end_ids)
            if self.lam != 1.0:
                ids = self._prompt_ids(p, "question")
                seqs.append(ids + response)
                starts.append(len(ids))
                slots.append(("q", j))
            if self.lam != 0.0:
                if self.reuse and r.logprobs is not None and len(r.logprobs) == len(response):
                    f_sum[j] = float(sum(r.logprobs))
                else:
                    ids = self._prompt_ids(p, "full")
                    seqs.append(ids + response)
                    starts.append(len(ids))
                    slots.append(("f", j))
        if seqs:
            values = self.cache.values(seqs, [groups[j] for _, j in slots], starts)
            for (which, j), v, s in zip(slots, values, starts):
                (q_sum if which == "q" else f_sum)[j] = v[s:].sum()
        return q_sum, f_sum

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        if not partials:
            return torch.empty(0)
        self.meter.add("scorer_calls", sorted({p.index for p in prompts}))
        q, f = self.terms(prompts, partials)
        n_terms = [len(r.token_ids) + len(r.end_ids) for r in partials] if self.length_normalize else None
        return rear_combine(q, f, self.lam, n_terms)


GENRM_JUDGE = (
    "Please act as an impartial judge and evaluate the quality of the assistant's response. "
    "A preferred response is helpful, harmless, and accurately follows instructions. "
    "Is this a preferred response? Answer 'Yes' or 'No' in the format 'Preferred: X'."
)


class GenRMScorer:
    """The policy as its own yes/no judge (REAR appendix C). See the module docstring."""

    additive = False
    default_aggregation = "last"

    def __init__(
        self,
        policy: Policy,
        judge_prompt: str = GENRM_JUDGE,
        answer_prefix: str = "Preferred:",
        max_batch_tokens: int = 16384,
        max_batch_size: int = 64,
        meter: Meter | None = None,
    ) -> None:
        if not getattr(policy, "token_level", True):
            raise NotImplementedError(
                f"the genrm scorer reads the policy's next-token distribution after its judge prompt, which the "
                f"{policy.backend} policy backend does not expose; use policy.backend: hf, or scorer rear / rm:"
            )
        self.policy = policy
        self.judge_prompt = judge_prompt
        self.answer_prefix = answer_prefix
        self.meter = meter or policy.meter
        tok = policy.tokenizer

        def first_ids(words: Sequence[str]) -> list[int]:
            ids = {tok(w, add_special_tokens=False)["input_ids"][0] for w in words}
            return sorted(ids)

        self.yes_ids = first_ids([" Yes", "Yes"])
        self.no_ids = first_ids([" No", "No"])
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError("the tokenizer cannot tell 'Yes' from 'No' by their first token")
        self.cache = PrefixCache(
            policy.backbone, self._margin, kind="reward", pad_id=policy.pad_id,
            max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, meter=self.meter,
            device=policy.device,
        )

    def _margin(self, hidden: torch.Tensor) -> torch.Tensor:
        lp = self.policy.logits(hidden).log_softmax(-1)
        return lp[..., self.yes_ids].logsumexp(-1) - lp[..., self.no_ids].logsumexp(-1)

    def sequence(self, prompt: Prompt, partial: Partial) -> list[int]:
        """Judge-template ids ending right after ``Preferred:``."""
        messages = []
        if prompt.preference:
            messages.append({"role": "system", "content": prompt.preference})
        question_turns = prompt.question_messages if prompt.question_messages is not None else prompt.messages
        question_turns, prefill = split_prefill(question_turns)  # the judge reads the whole assistant turn
        messages += [m for m in question_turns if m["role"] != "system" or not prompt.preference]
        messages += [{"role": "assistant", "content": prefill + partial.text},
                     {"role": "user", "content": self.judge_prompt}]
        return self.policy.encode(messages) + list(
            self.policy.tokenizer(self.answer_prefix, add_special_tokens=False)["input_ids"]
        )

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        _check_lengths(prompts, partials)
        if not partials:
            return torch.empty(0)
        groups = [p.index for p in prompts]
        self.meter.add("scorer_calls", sorted(set(groups)))
        values = self.cache.values([self.sequence(p, r) for p, r in zip(prompts, partials)], groups)
        return torch.stack([v[-1] for v in values])


def is_decoder_rm(model: Any) -> bool:
    return is_causal_reward_model(model)
