"""The controls a sceptic asks of a guided-search comparison, read from a search stage's ``records.jsonl``.

- every run (and greedy, and the teacher's own pick of the 16 samples) minus the expected unguided sample, in
  teacher SDs of the unguided samples of its fold: do the guides steer at all, and how much of the oracle's
  headroom do they take;
- each guide's Spearman correlation with the teacher over a prompt's samples (how well it ranks on-policy
  responses), and the paired difference of the two guides;
- how often the two guides pick the same Best-of-N sample.

Paired percentile bootstrap over prompts (``decoding.metrics.stats.summarize``).

    python -m experiments.gold.controls outputs/gold/seed0/search [--guides orm,sp-prm-teacher-ref]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from decoding.metrics.stats import summarize
from experiments.common import atomic_write_text, read_records
from experiments.prm_guided import _pooled_std, per_prompt
from sp_prm.errors import MissingPathError, guarded
from sp_prm.value_agreement import spearman


def search_controls(search_dir: Path, guides: list[str], resamples: int = 4000) -> dict[str, Any]:
    path = search_dir / "records.jsonl"
    if not path.exists():
        raise MissingPathError(f"{path}: no search records (run the search stage first)")
    recs = read_records(path)
    stds = {f: _pooled_std(recs, f) for f in {r["fold"] for r in recs}}
    picks = [per_prompt(r, stds[r["fold"]]) for r in recs]
    sd = [stds[r["fold"]] for r in recs]
    base = [p["sample (expected)"]["gold"] for p in picks]
    out: dict[str, Any] = {"prompts": len(recs), "minus_sample_sd": {}, "spearman_with_teacher": {}}
    for run in picks[0]:
        if run == "sample (expected)":
            continue
        diffs = [(p[run]["gold"] - b) / s if p[run]["gold"] is not None else None for p, b, s in zip(picks, base, sd)]
        out["minus_sample_sd"][run] = summarize(diffs, resamples)
    rho = {g: [spearman([s[f"guide:{g}"] for s in r["samples"]], [s["gold"] for s in r["samples"]]) for r in recs]
           for g in guides}
    for g in guides:
        out["spearman_with_teacher"][g] = summarize(rho[g], resamples)
    if len(guides) == 2:
        a, b = guides[1], guides[0]
        out["spearman_with_teacher"][f"{a} - {b}"] = summarize([x - y for x, y in zip(rho[a], rho[b])], resamples)
        picked = [(r["outputs"].get(f"{a}/bon", {}).get("pick"), r["outputs"].get(f"{b}/bon", {}).get("pick"))
                  for r in recs]
        if all(None not in p for p in picked):
            out["same_bon_pick"] = float(np.mean([x == y for x, y in picked]))
    return out


def to_markdown(c: dict[str, Any]) -> str:
    def cell(s: dict[str, Any]) -> str:
        return f"{s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"

    lines = [f"# Search controls ({c['prompts']} prompts)", "", "| run | minus unguided sample (SD) [95% CI] |",
             "|---|---|"]
    lines += [f"| {k} | {cell(v)} |" for k, v in c["minus_sample_sd"].items()]
    lines += ["", "| guide | Spearman with the teacher over a prompt's samples [95% CI] |", "|---|---|"]
    lines += [f"| {k} | {cell(v)} |" for k, v in c["spearman_with_teacher"].items()]
    if "same_bon_pick" in c:
        lines += ["", f"Same Best-of-N pick: {c['same_bon_pick']:.1%} of prompts."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search_dir", type=Path)
    ap.add_argument("--guides", default="orm,sp-prm-teacher-ref", help="comma-separated; the first is the baseline")
    ap.add_argument("--resamples", type=int, default=4000)
    args = ap.parse_args(argv)

    def go() -> None:
        c = search_controls(args.search_dir, args.guides.split(","), args.resamples)
        atomic_write_text(args.search_dir / "controls.json", json.dumps(c, indent=1) + "\n")
        atomic_write_text(args.search_dir / "controls.md", to_markdown(c))
        print(to_markdown(c))

    guarded("experiments.gold.controls", go, False)


if __name__ == "__main__":
    main()
