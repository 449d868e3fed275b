"""Preference data into one schema: ``id``, ``prompt`` (chat messages), ``chosen``, ``rejected``.

Supported sources (``load_preferences(source, format=...)``):

* ``hh-rlhf``: Anthropic HH-RLHF transcripts (``chosen``/``rejected`` each a full
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` dialogue). The shared prompt is split
  off at the last ``"\\n\\nAssistant:"`` of the common prefix; earlier turns are
  kept as chat messages.
* ``chat-pairs``: ``chosen``/``rejected`` as two chat conversations that share
  every turn but the final assistant one (RLHFlow / UltraFeedback style).
* ``tldr``: OpenAI summarize-from-feedback comparisons (``info`` with
  ``subreddit``/``title``/``post``, ``summaries`` [2], ``choice``).
* ``pairs``: any table with prompt/chosen/rejected columns, renamed through
  ``columns`` (e.g. ``{"prompt": "i_chosen", "chosen": "r_chosen", "rejected": "r_reject"}``).
  Prompts may be strings or message lists; chosen/rejected may be strings or
  conversations (the final assistant turn is taken).

A source is a local file (jsonl / json / csv / parquet, optionally gzipped), a
folder written by ``Dataset.save_to_disk``, ``builtin:hh-rlhf-sample`` (the
sample shipped with the package), or a hub dataset id (``name`` or
``name:config``) loaded with ``datasets.load_dataset``.

Rows that cannot be used (empty, non-string, identical chosen/rejected,
unparseable transcripts) are skipped and counted by reason, never silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset, load_from_disk

SAMPLES = Path(__file__).parent / "samples"
BUILTIN_SOURCES = {"builtin:hh-rlhf-sample": SAMPLES / "hh_rlhf_harmless_sample.jsonl.gz"}
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = "\n\nAssistant:"


class ColumnError(KeyError):
    """A column the loader needs is missing."""

    def __str__(self) -> str:  # KeyError repr-quotes its message otherwise
        return str(self.args[0])


@dataclass
class LoadReport:
    """What the loader kept and why it skipped the rest."""

    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept, "skipped": dict(self.skipped)}


def stable_id(prompt: Any, chosen: str, rejected: str) -> str:
    blob = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> ``[{"role": "user", ...}, {"role": "assistant", ...}]``."""
    pieces = _TURN.split(text)
    if pieces[0].strip():
        raise ValueError("transcript does not start with a Human/Assistant turn")
    messages = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """Split two HH transcripts into (shared prompt messages, chosen response, rejected response)."""
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    # The cut is the last assistant cue that both share; responses follow it.
    cut = chosen.rfind(_ASSISTANT, 0, common)
    if cut < 0:
        raise ValueError("chosen and rejected share no '\\n\\nAssistant:' turn")
    prompt = parse_hh_transcript(chosen[:cut])
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("the shared prompt does not end with a Human turn")
    return prompt, chosen[cut + len(_ASSISTANT):].strip(), rejected[cut + len(_ASSISTANT):].strip()


def _final_assistant(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1].get("content")
    return value


def _prompt_messages(value: Any) -> list[dict[str, str]] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    return None


def read_table(source: str, split: str = "train", data_dir: str | None = None) -> Dataset:
    """Load a source into a ``datasets.Dataset`` (see the module docstring)."""
    if source in BUILTIN_SOURCES:
        source = str(BUILTIN_SOURCES[source])
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return load_from_disk(str(path))
        raise FileNotFoundError(f"{source} is a folder but not a saved datasets.Dataset")
    if path.exists():
        name = path.name.lower().removesuffix(".gz")
        if name.endswith((".jsonl", ".json")):
            builder = "json"
        elif name.endswith(".csv"):
            builder = "csv"
        elif name.endswith(".parquet"):
            builder = "parquet"
        else:
            raise ValueError(f"{source}: unknown file type (expected .jsonl, .json, .csv or .parquet)")
        return load_dataset(builder, data_files=str(path), split="train")
    if path.suffix.lower() in {".jsonl", ".json", ".csv", ".parquet", ".gz"} or source.startswith((".", "/")):
        raise FileNotFoundError(f"no such file: {source}")
    name, _, config = source.partition(":")
    return load_dataset(name, config or None, data_dir=data_dir, split=split)


def require_columns(table: Dataset, needed: dict[str, str], source: str) -> None:
    present = list(table.column_names)
    for role, column in needed.items():
        if column not in present:
            raise ColumnError(
                f"{source}: column {column!r} (for {role}) not found; columns present: {present}. "
                f"Map it with --columns.{role} <name>"
            )


def in_eval_subset(pair_id: str, eval_fraction: float) -> bool:
    """Deterministic held-out membership from the pair id alone (order and file independent)."""
    bucket = int.from_bytes(hashlib.sha1(("holdout:" + pair_id).encode()).digest()[:8], "little") / 2**64
    return bucket < eval_fraction


def select_subset(pairs: Dataset, subset: str, eval_fraction: float) -> Dataset:
    """``all``, or the ``train`` / ``eval`` side of a split by hashed pair id."""
    if subset == "all":
        return pairs
    if subset not in ("train", "eval"):
        raise ValueError(f"subset must be all, train or eval, got {subset!r}")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    want_eval = subset == "eval"
    keep = [i for i, pid in enumerate(pairs["id"]) if in_eval_subset(pid, eval_fraction) == want_eval]
    return pairs.select(keep)


def load_preferences(
    source: str,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    split: str = "train",
    limit: int | None = None,
    subset: str = "all",
    eval_fraction: float = 0.2,
    data_dir: str | None = None,
) -> tuple[Dataset, LoadReport]:
    """Load and normalise preference pairs; returns the dataset and a report of what was skipped.

    ``subset`` = ``train`` / ``eval`` keeps one side of a deterministic split by
    hashed pair id (``eval_fraction`` held out), so training and evaluation
    never share a pair whatever tool loads them.
    """
    table = read_table(source, split, data_dir)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    if format == "auto":
        cols = set(table.column_names)
        if {"summaries", "choice", "info"} <= cols:
            format = "tldr"
        elif {"chosen", "rejected"} <= cols and "prompt" not in cols and not columns:
            format = "chat-pairs" if len(table) and isinstance(table[0]["chosen"], list) else "hh-rlhf"
        else:
            format = "pairs"
    report = LoadReport()
    rows: dict[str, list] = {"id": [], "prompt": [], "chosen": [], "rejected": []}

    def add(index: int, prompt: Any, chosen: Any, rejected: Any, given_id: Any = None) -> None:
        messages = _prompt_messages(prompt)
        chosen, rejected = _final_assistant(chosen), _final_assistant(rejected)
        if messages is None:
            report.skipped["bad_prompt"] += 1
        elif not isinstance(chosen, str) or not isinstance(rejected, str):
            report.skipped["non_string_response"] += 1
        elif not chosen.strip() or not rejected.strip():
            report.skipped["empty_response"] += 1
        elif chosen.strip() == rejected.strip():
            report.skipped["identical_responses"] += 1
        else:
            rows["id"].append(str(given_id) if given_id is not None else stable_id(messages, chosen, rejected))
            rows["prompt"].append(messages)
            rows["chosen"].append(chosen.strip())
            rows["rejected"].append(rejected.strip())

    if format == "hh-rlhf":
        mapping = {"chosen": "chosen", "rejected": "rejected", **(columns or {})}
        require_columns(table, {k: mapping[k] for k in ("chosen", "rejected")}, source)
        for i, row in enumerate(table):
            report.rows_read += 1
            chosen, rejected = row[mapping["chosen"]], row[mapping["rejected"]]
            if not isinstance(chosen, str) or not isinstance(rejected, str):
                report.skipped["non_string_response"] += 1
                continue
            try:
                prompt, c, r = split_hh_pair(chosen, rejected)
            except ValueError:
                report.skipped["unparseable_transcript"] += 1
                continue
            add(i, prompt, c, r)
    elif format == "chat-pairs":
        mapping = {"chosen": "chosen", "rejected": "rejected", **(columns or {})}
        require_columns(table, mapping, source)
        for i, row in enumerate(table):
            report.rows_read += 1
            chosen, rejected = row[mapping["chosen"]], row[mapping["rejected"]]
            if not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
                report.skipped["non_conversation_row"] += 1
                continue
            if chosen[:-1] != rejected[:-1] or chosen[-1].get("role") != "assistant":
                report.skipped["conversations_do_not_share_a_prompt"] += 1
                continue
            add(i, chosen[:-1], chosen, rejected, row.get("id"))
    elif format == "tldr":
        require_columns(table, {"info": "info", "summaries": "summaries", "choice": "choice"}, source)
        for i, row in enumerate(table):
            report.rows_read += 1
            info, summaries, choice = row["info"], row["summaries"], row["choice"]
            try:
                prompt = TLDR_PROMPT.format(
                    subreddit=info.get("subreddit") or "", title=info.get("title") or "",
                    post=info.get("post") or info.get("article") or "",
                )
                texts = [s["text"] for s in summaries]
                chosen, rejected = texts[int(choice)], texts[1 - int(choice)]
            except (AttributeError, KeyError, IndexError, TypeError, ValueError):
                report.skipped["unparseable_comparison"] += 1
                continue
            add(i, prompt, chosen, rejected, row.get("id"))
    elif format == "pairs":
        mapping = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", **(columns or {})}
        require_columns(table, {k: mapping[k] for k in ("prompt", "chosen", "rejected")}, source)
        id_column = mapping.get("id", "id")
        for i, row in enumerate(table):
            report.rows_read += 1
            add(i, row[mapping["prompt"]], row[mapping["chosen"]], row[mapping["rejected"]], row.get(id_column))
    else:
        raise ValueError(f"unknown data format {format!r}; expected auto, hh-rlhf, chat-pairs, tldr or pairs")
    pairs = select_subset(Dataset.from_dict(rows), subset, eval_fraction)
    if subset != "all":
        report.skipped[f"not_in_{subset}_subset"] += len(rows["id"]) - len(pairs)
    report.rows_kept = len(pairs)
    return pairs, report
