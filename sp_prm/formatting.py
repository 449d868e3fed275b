"""How a (prompt, partial response) pair becomes the token ids a reward model reads.

This is the one place that decides the representation of a prefix, shared by
``data_prep`` (reference scoring), ``sp_prm`` (training) and ``decoding`` (the
RM scorer). A conversation is tokenized **once**; the response is then sliced in
token space, never decoded and re-encoded, so the ids a prefix is scored on in
``data_prep`` are exactly the ids it is trained on.

A tokenized side is four runs of ids::

    prompt_ids | content_ids | end_ids | suffix_ids

* ``prompt_ids``  -- the rendered prompt (chat template with the generation
  prompt, or the plain HH-style transcript), including leading special tokens.
* ``content_ids`` -- the response's own tokens; a prefix of length ``t`` keeps
  ``content_ids[:t]``.
* ``end_ids``     -- the completion marker (the chat template's end-of-turn, or
  EOS in the plain format). Where it goes is ``PrefixFormat.end_marker``:
  ``complete`` (the default; ``true`` in older configs) -- only a *complete*
  response carries it, a partial one never does, so the model can tell "stopped
  here" from "still going"; ``never`` (``false``) -- no response carries it;
  ``always`` -- every prefix is rendered as a complete chat turn, marker appended
  (what the SP-PRM authors' released code does in data construction, RM training
  and decoding). Under ``always`` a shorter prefix's ids are no longer a token
  prefix of a longer one's (each ends in the marker), so the one-pass scoring of
  all prefixes of a response does not apply: every user of this module falls back
  to one sequence per prefix (:attr:`PrefixFormat.prefixes_nest`).
* ``suffix_ids``  -- structural trailing special tokens every sequence carries
  (BERT's final ``[SEP]``). Empty for decoder-only models, which is what makes
  one-pass prefix scoring possible (see ``sp_prm.scoring``).

**Prefill.** A conversation whose last message is the assistant's is *continued*:
that message is the forced start of the response (AdvBench's "Sure here's" as an
assistant prefill). :func:`render_generation_prompt` leaves it open for the policy
to continue, and :func:`encode` scores it as the first part of the response
(``prefill + response`` is the assistant turn), so a policy and a reward model agree
on what the assistant said.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, str]

_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass
class PrefixFormat:
    """How prompts and (partial) responses are rendered into token ids.

    The same values must be used to prepare data, train a PRM and decode with
    it; ``sp-prm prepare`` records them in the dataset card and ``sp-prm train``
    copies them into the model's config.
    """

    template: Literal["auto", "chat", "plain"] = field(
        default="auto",
        metadata={
            "help": "'chat': the tokenizer's chat template; 'plain': an HH-RLHF style transcript "
            "('\\n\\nHuman: ...\\n\\nAssistant: ...'); 'auto': chat when the tokenizer has a template."
        },
    )
    end_marker: Literal["complete", "never", "always"] | bool = field(
        default="complete",
        metadata={
            "help": "Where the completion marker (chat end-of-turn, or EOS in the plain format) goes: "
            "'complete': complete responses only, partial ones never (true = complete); 'never' (false); "
            "'always': every prefix, rendered as a complete turn (the SP-PRM authors' code)."
        },
    )
    max_prompt_tokens: int | None = field(
        default=512,
        metadata={"help": "Prompts longer than this (in tokens) are truncated from the left or dropped."},
    )
    prompt_overflow: Literal["truncate", "drop"] = field(
        default="truncate",
        metadata={"help": "What to do with an over-long prompt: keep its last tokens, or drop the row."},
    )
    max_response_tokens: int | None = field(
        default=512,
        metadata={
            "help": "Responses are cut to this many tokens; a cut response counts as incomplete "
            "(no completion marker)."
        },
    )

    def __post_init__(self) -> None:
        self.end_marker = end_marker_mode(self.end_marker)
        if self.template not in ("auto", "chat", "plain"):
            raise ValueError(f"PrefixFormat.template must be auto, chat or plain, got {self.template!r}")
        if self.prompt_overflow not in ("truncate", "drop"):
            raise ValueError(f"PrefixFormat.prompt_overflow must be truncate or drop, got {self.prompt_overflow!r}")
        for name in ("max_prompt_tokens", "max_response_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"PrefixFormat.{name} must be >= 1 or null, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def legacy_dict(self) -> dict[str, Any]:
        """``to_dict()`` with ``complete`` / ``never`` written as the older ``true`` / ``false``: what fingerprints
        hash, so data and runs made before the named modes keep their fingerprints."""
        d = self.to_dict()
        d["end_marker"] = {"complete": True, "never": False}.get(d["end_marker"], d["end_marker"])
        return d

    def marks(self, complete: bool) -> bool:
        """Whether a response that is (or is not) complete carries the completion marker."""
        return self.end_marker == "always" or (self.end_marker == "complete" and bool(complete))

    @property
    def prefixes_nest(self) -> bool:
        """Whether a partial prefix's ids are a token prefix of the whole response's ids (so one forward pass
        over the response scores every prefix); false under ``end_marker: always``."""
        return self.end_marker != "always"


END_MARKER_MODES = ("complete", "never", "always")


def end_marker_mode(value: Any) -> str:
    """``PrefixFormat.end_marker`` as a mode name; the older booleans map to ``complete`` / ``never``."""
    if value is True or value is False:
        return "complete" if value else "never"
    if isinstance(value, str) and value in END_MARKER_MODES:
        return value
    raise ValueError(
        f"PrefixFormat.end_marker must be one of {list(END_MARKER_MODES)} (or true = complete, false = never), "
        f"got {value!r}"
    )


class PromptTooLong(ValueError):
    """Raised for an over-long prompt when ``prompt_overflow='drop'``."""


@dataclass
class EncodedResponse:
    """One tokenized (prompt, response) side; see the module docstring."""

    prompt_ids: list[int]
    content_ids: list[int]
    end_ids: list[int]
    suffix_ids: list[int]
    prompt_truncated: bool = False
    response_truncated: bool = False

    @property
    def length(self) -> int:
        """Number of response tokens, T."""
        return len(self.content_ids)

    def is_complete(self, t: int) -> bool:
        """Whether the prefix of ``t`` tokens is the whole (uncut) response."""
        return t >= len(self.content_ids) and not self.response_truncated

    def sequence(self, t: int | None = None, end_marker: bool | str = True) -> list[int]:
        """Token ids of the prefix with ``t`` response tokens (``None``: the whole response).

        ``end_marker`` is a ``PrefixFormat.end_marker`` mode (``True`` = ``complete``: the marker only when
        the prefix is the whole uncut response; ``False`` = ``never``; ``always``). The marker ids themselves
        are empty when the format that encoded this side has ``end_marker: never``.
        """
        t = len(self.content_ids) if t is None else min(t, len(self.content_ids))
        mode = end_marker_mode(end_marker)
        mark = mode == "always" or (mode == "complete" and self.is_complete(t))
        return self.prompt_ids + self.content_ids[:t] + (self.end_ids if mark else []) + self.suffix_ids

    def sequence_for(self, fmt: PrefixFormat, t: int | None = None, complete: bool = True) -> list[int]:
        """Ids of prefix ``t`` with the marker where ``fmt`` puts it. The prefix counts as complete when it is
        the whole uncut response *and* ``complete`` (the caller's verdict, e.g. the decoder stopped on EOS)."""
        done = complete and self.is_complete(len(self.content_ids) if t is None else t)
        return self.sequence(t, "always" if fmt.marks(done) else "never")

    def reward_index(self, t: int | None = None, end_marker: bool | str = True) -> int:
        """Index, in ``sequence()`` of the *full* response, whose hidden state scores prefix ``t``.

        Valid for decoder-only models with no suffix: causal attention makes the
        hidden state at that index equal the last hidden state of the prefix. Not
        under ``always``: there each prefix ends in its own marker (score it alone).
        """
        if end_marker_mode(end_marker) == "always":
            raise ValueError("reward_index: under end_marker 'always' every prefix ends in the completion marker, "
                             "so it is not inside the whole response's sequence; score each prefix's sequence()")
        return len(self.sequence(t, end_marker)) - 1 - len(self.suffix_ids)


def require_same_format(trained: PrefixFormat | None, used: PrefixFormat, model: str) -> None:
    """Refuse to score a model on prefixes rendered otherwise than it was trained on (``None``: not recorded)."""
    if trained is not None and trained != used:
        diff = {k: (v, getattr(used, k)) for k, v in trained.to_dict().items() if getattr(used, k) != v}
        raise ValueError(
            f"{model} was trained on prefixes rendered as {trained.to_dict()}, but they would be rendered as "
            f"{used.to_dict()} (differs in {sorted(diff)}); drop the prefix setting to use the model's own"
        )


def uses_chat_template(tokenizer: Any, fmt: PrefixFormat) -> bool:
    if fmt.template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("PrefixFormat.template='chat' but the tokenizer has no chat template")
        return True
    if fmt.template == "plain":
        return False
    return bool(getattr(tokenizer, "chat_template", None))


def split_prefill(messages: Sequence[Message]) -> tuple[list[Message], str]:
    """``(context, prefill)``: a final assistant message is the forced start of the response (see the module
    docstring); ``prefill`` is ``""`` when the conversation ends with another role."""
    msgs = list(messages)
    if msgs and msgs[-1].get("role") == "assistant":
        return msgs[:-1], str(msgs[-1]["content"])
    return msgs, ""


def render_generation_prompt(tokenizer: Any, messages: Sequence[Message], fmt: PrefixFormat) -> str:
    """The text a policy continues: the prompt with the assistant cue, or -- after a prefill -- the prompt with
    the assistant turn opened and its forced start written, left open (chat: ``continue_final_message``)."""
    context, prefill = split_prefill(messages)
    if uses_chat_template(tokenizer, fmt):
        if prefill:
            return tokenizer.apply_chat_template(list(messages), tokenize=False, continue_final_message=True)
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return render_plain_prompt(context) + (f" {prefill}" if prefill else "")


def render_plain_prompt(messages: Sequence[Message]) -> str:
    """HH-RLHF style transcript ending with the assistant cue."""
    parts = [f"\n\n{_PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    return "".join(parts) + "\n\nAssistant:"


def render(tokenizer: Any, messages: Sequence[Message], response: str, fmt: PrefixFormat) -> tuple[str, int, int, int]:
    """Render a conversation to text.

    Returns ``(full_text, prompt_end, content_start, content_end)`` as character
    offsets into ``full_text``. A prefill (final assistant message) is the start of the response.
    """
    messages, prefill = split_prefill(messages)
    response = prefill + response
    if uses_chat_template(tokenizer, fmt):
        prompt_text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(prompt_text):
            raise ValueError(
                "the chat template renders the prompt differently with and without the assistant turn; "
                "use PrefixFormat.template='plain' for this tokenizer"
            )
        start = full.find(response, len(prompt_text))
        if start < 0:
            raise ValueError("the chat template altered the response text; cannot locate it in the rendering")
        return full, len(prompt_text), start, start + len(response)
    prompt_text = render_plain_prompt(messages)
    body = " " + response
    return prompt_text + body, len(prompt_text), len(prompt_text), len(prompt_text) + len(body)


def encode(tokenizer: Any, messages: Sequence[Message], response: str, fmt: PrefixFormat) -> EncodedResponse:
    """Tokenize one conversation once and split its ids into the four runs."""
    chat = uses_chat_template(tokenizer, fmt)
    full, prompt_end, content_start, content_end = render(tokenizer, messages, response, fmt)
    enc = tokenizer(full, add_special_tokens=not chat, return_offsets_mapping=True, verbose=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    prompt, content, end, suffix = [], [], [], []
    seen_text = False
    for tok, (s, e) in zip(ids, offsets):
        if s == e and not (seen_text and s > 0):  # an added special token (empty span)
            (suffix if seen_text else prompt).append(tok)
            continue
        seen_text = True
        if suffix:
            raise ValueError("text token after a trailing special token; unsupported tokenizer layout")
        if e <= max(prompt_end, content_start) and s < content_start:
            prompt.append(tok)
        elif s < content_end:
            # A token straddling the prompt/response boundary belongs to the response.
            content.append(tok)
        else:
            end.append(tok)
    if not chat:
        eos = getattr(tokenizer, "eos_token_id", None)
        end = [eos] if eos is not None else []
    if fmt.end_marker == "never":
        end = []

    prompt_truncated = response_truncated = False
    if fmt.max_prompt_tokens is not None and len(prompt) > fmt.max_prompt_tokens:
        if fmt.prompt_overflow == "drop":
            raise PromptTooLong(f"prompt has {len(prompt)} tokens > max_prompt_tokens={fmt.max_prompt_tokens}")
        lead = 0
        while lead < len(prompt) and offsets[lead][0] == offsets[lead][1]:
            lead += 1
        lead = min(lead, fmt.max_prompt_tokens - 1)
        prompt = prompt[:lead] + prompt[len(prompt) - (fmt.max_prompt_tokens - lead):]
        prompt_truncated = True
    if fmt.max_response_tokens is not None and len(content) > fmt.max_response_tokens:
        content = content[: fmt.max_response_tokens]
        response_truncated = True
    return EncodedResponse(prompt, content, end, suffix, prompt_truncated, response_truncated)


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt as chat messages: a plain string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
