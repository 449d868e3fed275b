"""Results as JSON and as a markdown table with one row per decode run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# Column titles, in table order; the paper's abbreviations where it has them.
TITLES = {
    "reward": "Reward",
    "diversity": "Div.",
    "coherence": "Coh.",
    "rouge_l": "ROUGE-L",
    "gsm8k_accuracy": "Acc.",
    "judge_gsm8k": "Judge acc.",
    "asr": "ASR (refusal)",
    "asr_target": "ASR (target)",
    "asr_target_body": "ASR (target body)",
    "length": "Words",
    "judge_win": "Win",
    "judge_tie": "Tie",
    "judge_lose": "Lose",
    "judge_win_tie": "Win+Tie",
}


def format_cell(summary: dict[str, Any] | None, digits: int = 4) -> str:
    """``mean [low, high]``; an en dash when the metric is undefined for the run."""
    if not summary or summary.get("mean") is None:
        return "–"
    mean, low, high = summary["mean"], summary["ci_low"], summary["ci_high"]
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(runs: dict[str, dict[str, Any]], confidence: float = 0.95, baseline: str | None = None) -> str:
    """One row per run, one column per metric present in any run."""
    present = {m for run in runs.values() for m in run["metrics"]}
    columns = [m for m in TITLES if m in present] + sorted(present - set(TITLES))
    header = ["Run", "n", *(TITLES.get(m, m) for m in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, run in runs.items():
        cells = [name + (" (baseline)" if name == baseline else ""), str(run["n_records"])]
        cells += [format_cell(run["metrics"].get(m)) for m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMean over responses with a {confidence:.0%} percentile-bootstrap interval in brackets; "
            "– = not computed or undefined for that run.")
    if baseline is not None and any(m.startswith("judge_") and m != "judge_gsm8k" for m in present):
        note += f" Win/Tie/Lose: judged against {baseline!r}, both answer orders."
    return "\n".join(lines) + "\n" + note + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
