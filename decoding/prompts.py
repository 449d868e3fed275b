"""Prompts for decoding: records from jsonl / json files or a ``datasets`` dataset -> :class:`Prompt`.

A record gives its prompt in one of three ways (field names are configurable):

* ``question`` (+ optional ``preference``): the REAR shape. With a preference the
  policy sees it as a system message (``preference_as: system``) or prepended to
  the question (``prefix``); REAR's question-only context drops it.
* ``prompt``: a string (one user turn) or a list of chat messages.
* ``messages``: chat messages; a message with ``"preference": true`` is the
  preference turn (kept for the policy, dropped from REAR's question-only context).

**Prefill** (AdvBench's ``sure_mode: prefill``): a conversation that ends with an
assistant message, a record's ``response_prefix`` field, or ``data.response_prefix``
for every record makes the response start with that text; the policy continues it
(both backends render it through ``sp_prm.formatting.render_generation_prompt``) and
the output record stores the whole assistant turn, prefill included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.types import Prompt

SAMPLES = Path(__file__).parent / "samples"


@dataclass
class DataConfig:
    """Where prompts come from and which fields hold them."""

    path: str = field(
        default=str(SAMPLES / "preference_prompts.jsonl"),
        metadata={"help": "A .jsonl/.json file, a dataset saved with save_to_disk, or a datasets hub name."},
    )
    split: str = field(default="train", metadata={"help": "Split of a datasets dataset."})
    id_field: str = field(default="id", metadata={"help": "Record id field (missing: the row number)."})
    prompt_field: str = field(default="prompt", metadata={"help": "Prompt field: a string or chat messages."})
    question_field: str = field(default="question", metadata={"help": "Question field (REAR shape)."})
    preference_field: str = field(default="preference", metadata={"help": "Preference field (REAR shape)."})
    messages_field: str = field(default="messages", metadata={"help": "Chat messages field."})
    preference_as: str = field(
        default="system", metadata={"help": "How the policy sees a preference: 'system' message or 'prefix' of the question."}
    )
    limit: int | None = field(default=None, metadata={"help": "Decode only the first N records."})
    response_prefix: str | None = field(
        default=None,
        metadata={"help": "Assistant prefill for every record: the response starts with this text and the policy "
                  "continues it (AdvBench sure_mode: prefill). A record's own response_prefix field wins."},
    )
    response_prefix_field: str = field(
        default="response_prefix", metadata={"help": "Per-record assistant prefill field (missing / null: none)."}
    )
    keep_fields: list[str] = field(
        default_factory=lambda: ["sure_mode", "target"],
        metadata={"help": "Input-record fields copied into each output record when present (AdvBench: the prompt "
                  "mode and the target string of target-match ASR)."},
    )

    def __post_init__(self) -> None:
        if self.preference_as not in ("system", "prefix"):
            raise ValueError(f"data.preference_as must be system or prefix, got {self.preference_as!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}")


def read_records(cfg: DataConfig) -> Iterable[dict[str, Any]]:
    path = Path(cfg.path)
    if path.suffix == ".jsonl" and path.is_file():
        with path.open() as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
        return
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        yield from data
        return
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[cfg.split]
    elif not path.suffix or path.is_dir():
        try:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
        except Exception as e:  # noqa: BLE001 - re-raised with the option named
            raise FileNotFoundError(f"data.path={cfg.path!r}: not a jsonl/json file or a loadable dataset ({e})") from e
    else:
        raise FileNotFoundError(f"data.path={cfg.path!r} does not exist")
    yield from ds


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    ):
        raise ValueError(f"{where}: expected a non-empty list of {{role, content}} messages")
    return value


def _with_prefill(prompt: Prompt, record: dict[str, Any], cfg: DataConfig, where: str) -> Prompt:
    """The prompt with the record's (or the config's) assistant prefill appended, and its kept fields."""
    prompt.meta = {k: record[k] for k in cfg.keep_fields if k in record}
    value = record.get(cfg.response_prefix_field)
    if value is None:
        value = cfg.response_prefix
    if value is None:
        return prompt
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: the response prefix (field {cfg.response_prefix_field!r} or "
                         f"data.response_prefix) must be a non-empty string, got {value!r}")
    if prompt.prefill:
        raise ValueError(f"{where}: the conversation already ends with an assistant message (a prefill); "
                         f"give the prefill once, not also as {cfg.response_prefix_field!r} / data.response_prefix")
    turn = {"role": "assistant", "content": value}
    prompt.messages = [*prompt.messages, turn]
    if prompt.question_messages is not None:
        prompt.question_messages = [*prompt.question_messages, turn]
    return prompt


def to_prompt(record: dict[str, Any], row: int, cfg: DataConfig) -> Prompt:
    """One record as a :class:`Prompt`; raises ``ValueError`` naming the record when a field is missing."""
    rid = str(record.get(cfg.id_field, row))
    where = f"record {rid!r} (row {row})"
    return _with_prefill(_to_prompt(record, row, rid, where, cfg), record, cfg, where)


def _to_prompt(record: dict[str, Any], row: int, rid: str, where: str, cfg: DataConfig) -> Prompt:
    pref = record.get(cfg.preference_field)
    if pref is not None and not isinstance(pref, str):
        raise ValueError(f"{where}: field {cfg.preference_field!r} must be a string")
    pref = pref.strip() if pref else None
    if cfg.question_field in record and record[cfg.question_field] is not None:
        question = record[cfg.question_field]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field {cfg.question_field!r} must be a non-empty string")
        q_msgs = [{"role": "user", "content": question}]
        if pref is None:
            return Prompt(rid, q_msgs, None, question, None, row)
        if cfg.preference_as == "system":
            full = [{"role": "system", "content": pref}, *q_msgs]
        else:
            full = [{"role": "user", "content": f"{pref}\n\n{question}"}]
        return Prompt(rid, full, q_msgs, question, pref, row)
    if cfg.prompt_field in record and record[cfg.prompt_field] is not None:
        value = record[cfg.prompt_field]
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(f"{where}: field {cfg.prompt_field!r} is empty")
            msgs = [{"role": "user", "content": value}]
            return Prompt(rid, msgs, None, value, None, row)
        return _from_messages(_messages(value, f"{where}: field {cfg.prompt_field!r}"), rid, row, where)
    if cfg.messages_field in record and record[cfg.messages_field] is not None:
        return _from_messages(_messages(record[cfg.messages_field], f"{where}: field {cfg.messages_field!r}"), rid,
                              row, where)
    raise ValueError(
        f"{where}: no prompt; expected a {cfg.question_field!r}, {cfg.prompt_field!r} or {cfg.messages_field!r} "
        f"field, found {sorted(record)}"
    )


def _from_messages(msgs: list[dict[str, Any]], rid: str, row: int, where: str) -> Prompt:
    full = [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    marked = [bool(m.get("preference")) for m in msgs]
    if full[-1]["role"] == "assistant" and (not full[-1]["content"].strip() or len(full) == 1 or marked[-1]):
        raise ValueError(f"{where}: a final assistant message is a prefill (the response's start) and needs "
                         "non-empty text, an earlier turn, and no preference mark")
    question = next((m["content"] for m in reversed(full) if m["role"] == "user"), full[-1]["content"])
    if not any(marked):
        return Prompt(rid, full, None, question, None, row)
    q_msgs = [m for m, pm in zip(full, marked) if not pm]
    if not q_msgs:
        raise ValueError(f"record {rid!r}: every message is marked as preference; nothing is left as the question")
    pref = "\n".join(m["content"] for m, pm in zip(full, marked) if pm)
    return Prompt(rid, full, q_msgs, question, pref, row)


def load_prompts(cfg: DataConfig, require_preference: bool = False) -> list[Prompt]:
    """All prompts (checked up front, so a bad record fails before any compute)."""
    prompts, seen = [], set()
    for row, record in enumerate(read_records(cfg)):
        if cfg.limit is not None and row >= cfg.limit:
            break
        if not isinstance(record, dict):
            raise ValueError(f"row {row}: expected a JSON object, got {type(record).__name__}")
        p = to_prompt(dict(record), row, cfg)
        if p.id in seen:
            raise ValueError(f"record {p.id!r} (row {row}): duplicate id; ids must be unique for resume")
        seen.add(p.id)
        if require_preference and p.question_messages is None:
            raise ValueError(
                f"record {p.id!r} (row {row}): the REAR scorer needs a preference, but field "
                f"{cfg.preference_field!r} is missing (or no message is marked \"preference\": true)"
            )
        prompts.append(p)
    if not prompts:
        raise ValueError(f"data.path={cfg.path!r}: no records")
    return prompts
