"""Reading decode outputs and reference files, and joining them.

Decode outputs are jsonl, one record per prompt (``sp-prm decode`` writes ``id``,
``prompt``, ``messages``, ``response``, ``complete``, ...). References come from a
separate file (GSM8K ``test.jsonl``, TL;DR ``test.json``, AdvBench ``.csv``) joined
by id or by row order, or from a field of the record itself.

A reference row's id follows ``sp-prm decode``'s rule -- its ``id_field`` value,
else its row number -- so decoding a file that has no ids (GSM8K) and joining the
outputs back to the same file by id just works.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

from sp_prm.errors import MissingPathError


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl / .json (a list, or JSON Lines under a .json name) / .csv file, optionally .gz."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"no such file: {path}")
    stem_suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    with _open_text(path) as f:
        if stem_suffix == ".csv":
            return [dict(row) for row in csv.DictReader(f)]
        text = f.read()
    if stem_suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # some releases (e.g. TL;DR test.json) are JSON Lines despite the name
        if isinstance(data, list):
            return data
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
    return rows


def record_id(row: dict[str, Any], index: int, id_field: str) -> str:
    """The id ``sp-prm decode`` gives a row: its id field, else its row number."""
    value = row.get(id_field)
    return str(index if value is None else value)


def join_references(
    records: list[dict[str, Any]],
    references: list[dict[str, Any]],
    record_id_field: str,
    reference_id_field: str,
    field: str,
    join: str = "id",
) -> list[Any]:
    """The reference ``field`` for each record, matched by id or by position."""
    if join == "order":
        if len(references) < len(records):
            raise ValueError(f"join=order: {len(records)} records but only {len(references)} references")
        return [_field(ref, field, i) for i, ref in enumerate(references[: len(records)])]
    if join != "id":
        raise ValueError(f"references.join must be id or order, got {join!r}")
    by_id = {record_id(ref, i, reference_id_field): ref for i, ref in enumerate(references)}
    out = []
    for i, rec in enumerate(records):
        rid = record_id(rec, i, record_id_field)
        if rid not in by_id:
            raise KeyError(f"record id {rid!r} has no reference (references joined on {reference_id_field!r})")
        out.append(_field(by_id[rid], field, rid))
    return out


def _field(row: dict[str, Any], field: str, where: Any) -> Any:
    if field not in row:
        raise KeyError(f"reference {where!r} has no field {field!r}; fields: {sorted(row)}")
    return row[field]
