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
folder of such files (read as one table; when the file names name splits --
``train.jsonl.gz``, ``test-00001.parquet`` -- only the files of ``split``), a
folder written by ``Dataset.save_to_disk``, ``builtin:hh-rlhf-sample`` (the
sample shipped with the package), or a hub dataset id (``name`` or
``name:config``) loaded with ``datasets.load_dataset``.

Every command that reads preference pairs (``sp-prm prepare``, ``sp-prm train
--loss orm``, ``sp-prm evaluate-rm``) takes the same block, :class:`PreferenceSource`,
and passes it as one object to :func:`load_preferences`. Its ``sample`` draws
``limit`` pairs or a ``fraction`` of them **from the whole file**, seeded
(``shuffle_seed``) and independent of the file's order: a pair is kept when its
hashed (seed, id) rank is among the smallest, so the paper's "20% of HH-RLHF"
is ``sample: {fraction: 0.2}`` and a larger sample contains a smaller one.
``shuffle_seed: first`` keeps today's first-N order instead.

Rows that cannot be used (a missing key or null, empty, non-string, identical
chosen/rejected, unparseable transcripts) are skipped and counted by reason, never
silently. A jsonl line that is not one UTF-8 JSON object is an error naming
``file:line`` and the reason, or with ``on_bad_rows='skip'`` a skip counted as
``bad_json_line``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset, load_from_disk

from sp_prm.errors import ConfigError, InputError, MissingPathError

SAMPLES = Path(__file__).parent / "samples"
BUILTIN_SOURCES = {"builtin:hh-rlhf-sample": SAMPLES / "hh_rlhf_harmless_sample.jsonl.gz"}
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"

ON_BAD_ROWS = ("error", "skip")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# A split named in a file name: train.jsonl.gz, test-00000-of-00001.parquet, data_validation.csv.
_SPLIT_IN_NAME = re.compile(r"(?:^|[-_.])(train|test|validation|valid|dev|eval)(?=[-_.]|$)")
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = "\n\nAssistant:"


class ColumnError(InputError, KeyError):
    """A column the loader needs is missing (InputError's __str__ keeps KeyError from repr-quoting it)."""


@dataclass
class LoadReport:
    """What the loader kept and why it skipped the rest."""

    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept, "skipped": dict(self.skipped)}

    def summary(self) -> str:
        """One line: rows read and kept, and every skip reason with its count."""
        return f"read {self.rows_read} rows, kept {self.rows_kept}; skipped: {format_skips(self.skipped)}"


def format_skips(skipped: dict[str, int]) -> str:
    """``{"missing_key": 2, "empty_response": 1}`` -> ``"empty_response 1, missing_key 2"`` (``none`` if empty)."""
    items = [f"{reason} {int(n)}" for reason, n in sorted(skipped.items()) if n]
    return ", ".join(items) if items else "none"


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


def bad_json_lines(path: Path) -> list[tuple[int, str]]:
    """``(1-based line, reason)`` of every line of a jsonl file that is not one UTF-8 JSON object."""
    bad = []
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.append((number, f"not UTF-8: byte {raw[err.start]:#04x} at column {err.start + 1}"))
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue  # blank lines are allowed (the datasets json reader skips them too)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                truncated = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated")
                early = " (the line ends early: truncated?)" if truncated else ""
                bad.append((number, f"invalid JSON: {err.msg.removesuffix(' at')} at column {err.colno}{early}"))
                continue
            if not isinstance(value, dict):
                bad.append((number, f"expected a JSON object, got {type(value).__name__}"))
    return bad


def read_json_file(path: Path, on_bad_rows: str = "error", skipped: Counter | None = None) -> Dataset:
    """One json / jsonl file into a Dataset; a bad jsonl line is reported as ``file:line: reason``.

    ``on_bad_rows='skip'`` drops bad lines instead and counts them in ``skipped['bad_json_line']``.
    The file is checked line by line before ``datasets`` reads it: its json reader (datasets 5.2,
    pyarrow's reader underneath) reports a bad line as a chained pyarrow error with a 0-based row and
    often the wrong reason, and a non-UTF-8 byte as a bare UnicodeDecodeError naming neither file nor
    line.
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise ConfigError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    if path.name.lower().removesuffix(".gz").endswith(".json"):
        # One JSON document (an array, or a single object); anything else is read as JSON Lines below.
        try:
            with opener(path, "rb") as f:
                text = f.read().decode("utf-8")
            json.loads(text)
            return load_dataset("json", data_files=str(path), split="train")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not UTF-8: byte {err.object[err.start]:#04x} at offset {err.start}") from None
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("["):
                raise InputError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    bad = bad_json_lines(path)
    if bad and on_bad_rows == "error":
        line, reason = bad[0]
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise InputError(f"{path}:{line}: {reason}{more}",
                         hint="fix the line, or pass --on_bad_rows skip to skip and count bad lines")
    if not bad:
        return load_dataset("json", data_files=str(path), split="train")
    if skipped is not None:
        skipped["bad_json_line"] += len(bad)
    drop = {line for line, _ in bad}
    with tempfile.TemporaryDirectory(prefix="sp-prm-jsonl-") as tmp:
        clean = Path(tmp) / "clean.jsonl"
        with opener(path, "rb") as f, open(clean, "wb") as out:
            for number, raw in enumerate(f, start=1):
                if number not in drop:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
        # keep_in_memory: the temporary file is gone once we return
        return load_dataset("json", data_files=str(clean), split="train", keep_in_memory=True)


def _looks_like_path(source: str) -> bool:
    """A name that can only be a local path (hub ids are ``name`` or ``owner/name``)."""
    first = source.split("/", 1)[0]
    return (source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
            or ("/" in source and Path(first).is_dir()))


def _builder(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    for suffix, builder in ((".jsonl", "json"), (".json", "json"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return builder
    return None


def read_file(path: Path, on_bad_rows: str = "error", skipped: Counter | None = None) -> Dataset:
    """One jsonl / json / csv / parquet file (optionally gzipped) as a table: the only place a file is parsed.

    json / jsonl go through :func:`read_json_file`, so a bad line is named as ``file:line: reason``.
    """
    builder = _builder(path)
    if builder is None:
        raise InputError(f"{path}: unknown file type (expected .jsonl, .json, .csv or .parquet, optionally .gz)")
    if builder == "json":
        return read_json_file(path, on_bad_rows, skipped)
    return load_dataset(builder, data_files=str(path), split="train")


def folder_files(folder: Path, split: str) -> list[Path]:
    """The data files of a folder, in name order; only ``split``'s when the file names name splits."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _builder(p) is not None)
    if not files:
        raise MissingPathError(f"{folder}: a folder with no .jsonl/.json/.csv/.parquet file and no saved dataset")
    named = {p: m.group(1) for p in files if (m := _SPLIT_IN_NAME.search(p.name.lower().split(".")[0] + "."))}
    if not named:
        return files
    chosen = [p for p, name in named.items() if name == split]
    if not chosen:
        raise MissingPathError(f"{folder}: no file for split {split!r}; the file names name the splits "
                                f"{sorted(set(named.values()))} (set --split)")
    return chosen


def read_table(source: str, split: str = "train", data_dir: str | None = None, on_bad_rows: str = "error",
               skipped: Counter | None = None) -> Dataset:
    """Load a source into a ``datasets.Dataset`` (see the module docstring).

    Bad jsonl lines raise an error naming ``file:line`` or, with ``on_bad_rows='skip'``, are counted in
    ``skipped``.
    """
    if source in BUILTIN_SOURCES:
        source = str(BUILTIN_SOURCES[source])
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return load_from_disk(str(path))
        tables = [read_file(p, on_bad_rows, skipped) for p in folder_files(path, split)]
        try:
            return tables[0] if len(tables) == 1 else concatenate_datasets(tables)
        except ValueError as e:
            raise InputError(f"{source}: its files do not share one set of columns ({e})") from e
    if path.exists():
        return read_file(path, on_bad_rows, skipped)
    if path.suffix.lower() in {*FILE_SUFFIXES, ".gz"} or _looks_like_path(source):
        raise MissingPathError(f"no such file or folder: {source}", hint="check the path (it is not a hub dataset id)")
    name, _, config = source.partition(":")
    try:
        return load_dataset(name, config or None, data_dir=data_dir, split=split)
    except (ConnectionError, FileNotFoundError) as err:  # datasets' DatasetNotFoundError is a FileNotFoundError
        raise MissingPathError(
            f"{source}: no such local file or folder, and no hub dataset of that name could be loaded ({err})",
            hint="check the path; for a hub dataset check the name and the connection (HF_ENDPOINT, HF_HUB_OFFLINE)",
        ) from err


def require_columns(table: Dataset, needed: dict[str, str], source: str) -> None:
    present = list(table.column_names)
    for role, column in needed.items():
        if column not in present:
            raise ColumnError(
                f"{source}: column {column!r} (for {role}) not found; columns present: {present}",
                hint=f"map it with --columns.{role} <name>",
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


@dataclass
class Sample:
    """Which pairs of a source are used: all, ``limit`` of them, or a ``fraction``."""

    limit: int | None = field(default=None, metadata={"help": "Use N pairs (after the subset split)."})
    fraction: float | None = field(default=None, metadata={"help": "Use this fraction of the pairs, in (0, 1]."})
    shuffle_seed: int | str = field(
        default=0,
        metadata={"help": "Seed of the draw: pairs are ranked by a hash of (seed, pair id), so the sample spreads "
                  "over the whole file and does not depend on its order. 'first': the first pairs instead."},
    )

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"sample.limit must be >= 1 or null, got {self.limit}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"sample.fraction must be in (0, 1] or null, got {self.fraction}")
        if isinstance(self.shuffle_seed, str) and self.shuffle_seed != "first":
            try:
                self.shuffle_seed = int(self.shuffle_seed)
            except ValueError:
                raise ValueError(f"sample.shuffle_seed must be an integer or 'first', got {self.shuffle_seed!r}") from None

    @property
    def active(self) -> bool:
        return self.limit is not None or self.fraction is not None


def sample_pairs(pairs: Dataset, sample: Sample) -> Dataset:
    """The pairs ``sample`` selects, in their original order (see the module docstring)."""
    if not sample.active or len(pairs) == 0:
        return pairs
    n = len(pairs)
    k = n if sample.fraction is None else max(1, round(sample.fraction * n))
    k = min(k, sample.limit if sample.limit is not None else n)
    if sample.shuffle_seed == "first":
        return pairs.select(range(k))

    def rank(pair_id: str) -> bytes:
        return hashlib.sha1(f"sample:{sample.shuffle_seed}:{pair_id}".encode()).digest()

    ids = pairs["id"]
    keep = sorted(sorted(range(n), key=lambda i: rank(str(ids[i])))[:k])
    return pairs.select(keep)


def source_field(name: str, **overrides: Any) -> Any:
    """A field with PreferenceSource's help text (so every command describes the block the same way)."""
    base = {f.name: f for f in PreferenceSource.__dataclass_fields__.values()}[name]
    kwargs = {"metadata": base.metadata}
    if "default" in overrides:
        kwargs["default"] = overrides["default"]
    elif base.default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = base.default_factory
    else:
        kwargs["default"] = base.default
    return field(**kwargs)


@dataclass
class PreferenceSource:
    """Where preference pairs come from and which of them are used (one block for every command)."""

    source: str = field(
        default="builtin:hh-rlhf-sample",
        metadata={"help": "Preference data: a jsonl/json/csv/parquet file (optionally .gz), a folder of them, a "
                  "save_to_disk folder, a hub dataset id (name or name:config), or builtin:hh-rlhf-sample."},
    )
    format: str = field(default="auto", metadata={"help": "auto, hh-rlhf, chat-pairs, tldr or pairs (see data_prep.loaders)."})
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Column mapping for the pairs format, e.g. {prompt: question, chosen: good, rejected: bad}."},
    )
    split: str = field(default="train", metadata={"help": "Split of a hub dataset, or of a folder whose file names "
                                                            "name splits."})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir of a hub dataset (e.g. harmless-base)."})
    subset: str = field(
        default="all",
        metadata={"help": "all, or train / eval: one side of a deterministic split by hashed pair id."},
    )
    eval_fraction: float = field(default=0.2, metadata={"help": "Share of pairs in the eval subset."})
    sample: Sample = field(default_factory=Sample, metadata={"help": "Which pairs are used (limit / fraction, seeded)."})
    limit: int | None = field(
        default=None,
        metadata={"help": "The first N source rows, in file order (kept for old recipes; sample.limit draws N pairs "
                  "from the whole file)."},
    )
    on_bad_rows: str = field(
        default="error",
        metadata={"help": "A jsonl line that is not a JSON object: error (names file:line) or skip (counted)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.sample, dict):
            self.sample = Sample(**self.sample)
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ConfigError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {self.on_bad_rows!r}")

    def source_block(self) -> PreferenceSource:
        """This block alone (for a config that extends it)."""
        return PreferenceSource(**{f: getattr(self, f) for f in PreferenceSource.__dataclass_fields__})


def load_preferences(
    source: str | PreferenceSource,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    split: str = "train",
    limit: int | None = None,
    subset: str = "all",
    eval_fraction: float = 0.2,
    data_dir: str | None = None,
    sample: Sample | None = None,
    on_bad_rows: str = "error",
) -> tuple[Dataset, LoadReport]:
    """Load and normalise preference pairs; returns the dataset and a report of what was skipped.

    ``source`` is a :class:`PreferenceSource` (the other arguments must then be left
    at their defaults) or, for short calls, the source string itself. ``subset`` =
    ``train`` / ``eval`` keeps one side of a deterministic split by hashed pair id
    (``eval_fraction`` held out), so training and evaluation never share a pair
    whatever tool loads them; ``sample`` then selects among the remaining pairs.
    ``on_bad_rows='skip'`` skips (and counts as ``bad_json_line``) jsonl lines that are not JSON
    objects; ``error`` names the first one.
    """
    if isinstance(source, PreferenceSource):
        block = source
        source, format, columns, split, limit = block.source, block.format, block.columns, block.split, block.limit
        subset, eval_fraction, data_dir, sample = block.subset, block.eval_fraction, block.data_dir, block.sample
        on_bad_rows = block.on_bad_rows
    report = LoadReport()
    table = read_table(source, split, data_dir, on_bad_rows, report.skipped)
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
    rows: dict[str, list] = {"id": [], "prompt": [], "chosen": [], "rejected": []}

    def add(index: int, prompt: Any, chosen: Any, rejected: Any, given_id: Any = None) -> None:
        messages = _prompt_messages(prompt)
        chosen, rejected = _final_assistant(chosen), _final_assistant(rejected)
        if prompt is None or chosen is None or rejected is None:
            # json rows without the key (or with null) read as None: name it, not as a wrong type
            report.skipped["missing_key"] += 1
        elif messages is None:
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
            if chosen is None or rejected is None:
                report.skipped["missing_key"] += 1
                continue
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
    if sample is not None and sample.active:
        before = len(pairs)
        pairs = sample_pairs(pairs, sample)
        report.skipped["not_in_sample"] += before - len(pairs)
    report.rows_kept = len(pairs)
    return pairs, report
