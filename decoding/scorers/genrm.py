"""``GenRMScorer``: the policy as its own yes/no judge (the REAR paper's appendix C).

The conversation (system: preference, user: question, assistant: response) is followed by a user
turn asking "Is this a preferred response? ..." and an assistant turn opened with ``Preferred:``;
the score is ``log p(Yes) - log p(No)`` of the next token (each side: log-sum-exp over its
spellings, " Yes" and "Yes"). It reads the next-token distribution after the judge prompt, so it
needs the HF policy backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decoding.policy import Policy
from decoding.prefix_cache import PrefixCache
from decoding.scorers.base import check_lengths
from decoding.types import Meter, Partial, Prompt
from sp_prm.formatting import split_prefill

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
        check_lengths(prompts, partials)
        if not partials:
            return torch.empty(0)
        groups = [p.index for p in prompts]
        self.meter.add("scorer_calls", sorted(set(groups)))
        values = self.cache.values([self.sequence(p, r) for p, r in zip(prompts, partials)], groups)
        return torch.stack([v[-1] for v in values])
