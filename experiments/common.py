"""Shared plumbing of the experiment recipes: data paths, resumable jsonl, atomic writes, CI tables, plots."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from decoding.metrics.stats import summarize
from decoding.types import Meter
from sp_prm.errors import ConfigError, MissingPathError, OutputExistsError, guarded
from sp_prm.runtime import limit_heap_retention

REPO = Path(__file__).resolve().parents[2]


def resolve_data(path: str, what: str) -> Path:
    """A data path as given (absolute, or relative to the working directory), else relative to the repo root.

    Raises ``FileNotFoundError`` naming the option when neither exists (a user's clone
    has no ``../shared/data``: point the option at a local copy).
    """
    p = Path(path).expanduser()
    for candidate in ([p] if p.is_absolute() else [p, REPO / p]):
        if candidate.exists():
            return candidate
    raise MissingPathError(
        f"{what}: {path!r} not found (tried it relative to {Path.cwd()} and to the repo root {REPO}); "
        "the experiments read real data from ../shared/data next to the repo -- pass the path explicitly"
    )


def set_threads(threads: int | None) -> None:
    """The experiment process's torch threads (``None``: torch's default) and, with ``SP_PRM_MALLOC_TUNING=1``,
    glibc heap settings."""
    limit_heap_retention()
    if threads:
        torch.set_num_threads(int(threads))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a jsonl written by a (possibly killed) run; a torn last line is dropped and the file repaired."""
    if not path.exists():
        return []
    good, torn = [], False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    if torn:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good))
    return good


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append whole lines and flush them to disk (a kill mid-write leaves at most one torn line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Stopwatch:
    """Wall seconds and compute counters of one method over a run."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def time(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0


def use_meter(meter: Meter, *objects: Any) -> Meter:
    """Point a policy and scorers (and their prefix caches) at ``meter`` so one method's compute is counted alone."""
    for obj in objects:
        if obj is None:
            continue
        obj.meter = meter
        for attr in ("cache", "prefix_cache"):
            inner = getattr(obj, attr, None)
            if inner is not None and hasattr(inner, "meter"):
                inner.meter = meter
    return meter


def lam_label(lam: float) -> str:
    if math.isinf(lam):
        return "inf"
    return f"{lam:g}"


def stat(values: Sequence[float | None], resamples: int, seed: int = 0) -> dict[str, Any]:
    """Mean with a seeded percentile-bootstrap 95% CI over prompts (``decoding.metrics.stats.summarize``)."""
    return summarize(list(values), resamples=resamples, seed=seed)


def fmt(s: dict[str, Any] | None, percent: bool = False, digits: int = 3, signed: bool = False) -> str:
    """``mean [low, high]``; percentages with one decimal; ``signed`` for differences (``+0.040 [-0.043, +0.120]``)."""
    if not s or s.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    if percent:
        return f"{100 * s['mean']:{sign}.1f} [{100 * s['ci_low']:{sign}.1f}, {100 * s['ci_high']:{sign}.1f}]"
    return f"{s['mean']:{sign}.{digits}f} [{s['ci_low']:{sign}.{digits}f}, {s['ci_high']:{sign}.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def symlog_positions(lams: Sequence[float]) -> tuple[list[float], list[str]]:
    """x positions for a lambda axis that holds 0 and inf: log-like spacing, inf one step past the largest."""
    finite = [lam for lam in lams if not math.isinf(lam)]
    top = max(finite, default=1.0)
    xs = [math.log10(1 + (top * 2 if math.isinf(lam) else lam)) for lam in lams]
    return xs, [lam_label(lam) for lam in lams]


def changed_keys(old: dict[str, Any], new: dict[str, Any], keys: Any = None) -> list[str]:
    """Keys (of ``keys``, default all of ``new``) whose values differ between a saved and a new config.

    Nested mappings are compared key by key, and a key the saved config lacks is not a change: a
    field added to the code later (with a default) must not orphan a run written before it existed.
    """
    out = []
    for k in (new if keys is None else keys):
        if k not in old or k not in new:
            continue
        a, b = old[k], new[k]
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in changed_keys(a, b)]
        elif a != b:
            out.append(k)
    return sorted(out)


def write_summary_files(
    cfg: Any,
    command: str,
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]],
    to_markdown: Callable[[dict[str, Any], Any, str], str],
    plot: Callable[[dict[str, Any], Path], Any],
    plot_name: str,
) -> dict[str, Any]:
    """Summarize ``output_dir/records.jsonl`` into ``summary.json``, ``summary.md`` and a plot (atomically).

    ``summarize(records)`` builds the summary; ``plot(summary, path)`` draws it.
    """
    out = Path(cfg.output_dir)
    records = read_records(out / "records.jsonl")
    if not records:
        raise MissingPathError(f"no records in {out / 'records.jsonl'}; run the experiment first")
    summary = summarize(records)
    summary["command"] = command
    summary["config"] = json.loads(json.dumps(dataclasses.asdict(cfg)))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / "summary.md", to_markdown(summary, cfg, command) + "\n")
    plot(summary, out / plot_name)
    return summary


def load_judge_rm(path: str, device: str, dtype: str = "float32") -> tuple[Any, Any, Any]:
    """``(model, tokenizer, prefix format)`` of a reward model that judges outputs (its training format)."""
    from sp_prm.formatting import PrefixFormat
    from sp_prm.models import load_reward_model, load_tokenizer, trained_prefix_format

    tok = load_tokenizer(path)
    model = load_reward_model(path, dtype=dtype, device=device, pad_token_id=tok.pad_token_id)
    return model, tok, trained_prefix_format(model) or PrefixFormat()


@dataclasses.dataclass
class RunOptions:
    """How an experiment runs (shared by every experiment config; their own fields follow)."""

    max_batch_tokens: int = dataclasses.field(default=16384, metadata={"help": "Padded tokens per forward."})
    threads: int | None = dataclasses.field(default=None,
                                            metadata={"help": "torch CPU threads (null: torch's default)."})
    resume: bool = dataclasses.field(default=True, metadata={
        "help": "Skip records already in records.jsonl; false: refuse a non-empty output_dir."})
    summarize_only: bool = dataclasses.field(
        default=False, metadata={"help": "Only rebuild summary/plot from records.jsonl."})
    bootstrap_resamples: int = dataclasses.field(default=2000, metadata={"help": "Bootstrap resamples of the CIs."})
    progress: bool = dataclasses.field(default=True, metadata={"help": "Show a progress bar."})


def experiment_main(
    config_cls: type,
    module: str,
    run: Callable[[Any], Any],
    write_summary: Callable[[Any, str], Any],
    argv: list[str] | None = None,
) -> None:
    """The command line every experiment shares: recipe + overrides, run (unless summarize_only), summarize."""
    from sp_prm.config import load_config

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]

    def go() -> None:
        cfg = load_config(config_cls, argv)
        command = f"python -m {module} " + " ".join(argv)
        t0 = time.perf_counter()
        if not cfg.summarize_only:
            run(cfg)
        write_summary(cfg, command)
        print((Path(cfg.output_dir) / "summary.md").read_text())
        print(f"done in {time.perf_counter() - t0:.0f} s; outputs in {cfg.output_dir}", file=sys.stderr)

    # A user error (bad recipe, missing data, an output folder of another run) is one short message and
    # exit code 2, as in `sp-prm`; --debug shows the traceback.
    guarded("", go, debug, prog=f"python -m {module}")


def claim_output_dir(cfg: Any, out: Path, fingerprint: Sequence[str]) -> None:
    """Refuse to mix two runs in one ``output_dir``, then record this run's config (``config.json``).

    With records already there, the run must be a resume (``cfg.resume``) of a config that agrees on
    every ``fingerprint`` field (fields added to the code later are not a change, see
    :func:`changed_keys`).
    """
    records, saved = out / "records.jsonl", out / "config.json"
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if records.exists() and records.stat().st_size:
        if not cfg.resume:
            raise OutputExistsError(f"{records} exists; pass --resume true to continue it or choose another output_dir")
        if saved.exists():
            diff = changed_keys(json.loads(saved.read_text()), new, fingerprint)
            if diff:
                raise ConfigError(f"{out} holds a run with different {diff}; choose another output_dir")
    atomic_write_text(saved, json.dumps(new, indent=1) + "\n")
