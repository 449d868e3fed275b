"""The controls a sceptic asks of a guided-search comparison, read from a search stage's ``records.jsonl``.

- every run (and greedy, and the teacher's own pick of the 16 samples) minus the expected unguided sample, in
  teacher SDs of the unguided samples of its fold: do the guides steer at all, and how much of the oracle's
  headroom do they take;
- each guide's Spearman correlation with the teacher over a prompt's samples (how well it ranks on-policy
  responses), and the paired difference of every other guide to the first (the baseline);
- how often each other guide picks the same Best-of-N sample as the baseline;
- with a second training seed's search (``--other_seed``): the training-seed control. Each guide's run of
  the other seed minus this seed's on the same prompts, and how often one guide's two seeds pick the same
  Best-of-N sample: is the SP-PRM further from its ORM than the ORM is from itself retrained?

Paired percentile bootstrap over prompts (``decoding.metrics.stats.summarize``).

    python -m experiments.gold.controls outputs/gold/seed0/search [--guides orm,sp-prm-teacher-ref]
    python -m experiments.gold.controls outputs/gold/seed0/search --other_seed outputs/gold/seed1/search
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from decoding.metrics.stats import summarize
from experiments.common import atomic_write_text, fmt, read_records
from experiments.prm_guided import _pooled_std, per_prompt
from sp_prm.errors import MissingPathError, guarded
from sp_prm.value_agreement import spearman


def _records(search_dir: Path) -> list[dict[str, Any]]:
    path = search_dir / "records.jsonl"
    if not path.exists():
        raise MissingPathError(f"{path}: no search records (run the search stage first)")
    return read_records(path)


def _same_pick(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> float | None:
    """Share of (output, output) pairs with the same Best-of-N ``pick``; ``None`` where any pick is missing."""
    picks = [(x.get("pick"), y.get("pick")) for x, y in pairs]
    if not picks or any(None in p for p in picks):
        return None
    return float(np.mean([x == y for x, y in picks]))


def search_controls(search_dir: Path, guides: list[str], resamples: int = 4000) -> dict[str, Any]:
    recs = _records(search_dir)
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
    # every other guide against the first (the baseline), so a six-guide run gets each secondary contrast
    b = guides[0]
    for a in guides[1:]:
        out["spearman_with_teacher"][f"{a} - {b}"] = summarize([x - y for x, y in zip(rho[a], rho[b])], resamples)
        same = _same_pick([(r["outputs"].get(f"{a}/bon", {}), r["outputs"].get(f"{b}/bon", {})) for r in recs])
        if same is not None:
            out.setdefault("same_bon_pick", {})[a] = same
    return out


def seed_controls(search_dir: Path, other_dir: Path, guides: list[str], resamples: int = 4000) -> dict[str, Any]:
    """Per guide and decoder, the other seed's run minus this seed's (teacher SDs of this seed's unguided
    samples, per fold), with its per-prompt SD; and, where both seeds drew the same samples, per guide the
    share of prompts whose Best-of-N pick is the same in both."""
    a, b = ({r["id"]: r for r in _records(d)} for d in (search_dir, other_dir))
    common = sorted(set(a) & set(b))
    if not common:
        raise MissingPathError(f"{search_dir} and {other_dir} share no prompt")
    stds = {f: _pooled_std(list(a.values()), f) for f in {a[p]["fold"] for p in common}}
    runs = sorted({k for p in common for k in a[p]["outputs"] if k in b[p]["outputs"]})

    def gold(rec: dict[str, Any], run: str) -> float | None:
        return rec["outputs"].get(run, {}).get("gold")

    out: dict[str, Any] = {"prompts": len(common), "other_minus_this_sd": {}, "same_bon_pick_across_seeds": {}}
    for run in runs:
        pairs = [(gold(a[p], run), gold(b[p], run), stds[a[p]["fold"]]) for p in common]
        d = [(y - x) / sd if None not in (x, y) else None for x, y, sd in pairs]
        vals = [x for x in d if x is not None]
        out["other_minus_this_sd"][run] = {**summarize(d, resamples),
                                           "per_prompt_sd": float(np.std(vals)) if vals else float("nan")}
    # A pick index means the same sample in both seeds only where both drew the same samples (the gold
    # stage seeds its search with the training seed, so by default they differ and this is left out).
    out["same_samples"] = all([s.get("gold") for s in a[p]["samples"]] == [s.get("gold") for s in b[p]["samples"]]
                              for p in common)
    for g in guides if out["same_samples"] else []:
        same = _same_pick([(a[p]["outputs"].get(f"{g}/bon", {}), b[p]["outputs"].get(f"{g}/bon", {})) for p in common])
        if same is not None:
            out["same_bon_pick_across_seeds"][g] = same
    return out


def seed_markdown(c: dict[str, Any], this: str, other: str) -> str:
    lines = [f"# Training-seed control: {other} minus {this} ({c['prompts']} prompts)", "",
             "| run | other seed minus this seed (SD) [95% CI] | per-prompt SD |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(v, signed=True)} | {v['per_prompt_sd']:.3f} |" for k, v in c["other_minus_this_sd"].items()]
    if not c["same_samples"]:
        lines += ["", "The two seeds drew different samples (different search seeds): each difference includes "
                  "the sampling noise of a re-run, not only the retrained guide."]
    if c["same_bon_pick_across_seeds"]:
        lines += ["", "Same Best-of-N pick in both seeds: "
                  + ", ".join(f"{g} {x:.1%}" for g, x in c["same_bon_pick_across_seeds"].items()) + "."]
    return "\n".join(lines) + "\n"


def to_markdown(c: dict[str, Any]) -> str:
    lines = [f"# Search controls ({c['prompts']} prompts)", "", "| run | minus unguided sample (SD) [95% CI] |",
             "|---|---|"]
    lines += [f"| {k} | {fmt(v, signed=True)} |" for k, v in c["minus_sample_sd"].items()]
    lines += ["", "| guide | Spearman with the teacher over a prompt's samples [95% CI] |", "|---|---|"]
    lines += [f"| {k} | {fmt(v, signed=True)} |" for k, v in c["spearman_with_teacher"].items()]
    if c.get("same_bon_pick"):
        lines += ["", "| guide | same Best-of-N pick as the baseline |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} of prompts |" for k, v in c["same_bon_pick"].items()]
    return "\n".join(lines) + "\n"


def seed_control_stem(other_dir: Path) -> str:
    """Output name of the control against ``other_dir``, so one seed's controls against two others do not
    overwrite each other: ``seed_control-seed2`` for ``.../seed2/search``, ``seed_control-seed2-search-bon6``
    for another search name."""
    other = Path(other_dir).resolve()
    tag = other.parent.name if other.name == "search" else f"{other.parent.name}-{other.name}"
    return f"seed_control-{tag}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search_dir", type=Path)
    ap.add_argument("--guides", default="orm,sp-prm-teacher-ref", help="comma-separated; the first is the baseline")
    ap.add_argument("--resamples", type=int, default=4000)
    ap.add_argument("--other_seed", type=Path, default=None,
                    help="another training seed's search folder: writes the training-seed control "
                         "(seed_control-<its seed folder>.{json,md} in search_dir) instead")
    args = ap.parse_args(argv)

    def go() -> None:
        guides = args.guides.split(",")
        if args.other_seed is not None:
            c = seed_controls(args.search_dir, args.other_seed, guides, args.resamples)
            stem, md = seed_control_stem(args.other_seed), seed_markdown(c, str(args.search_dir), str(args.other_seed))
        else:
            c = search_controls(args.search_dir, guides, args.resamples)
            stem, md = "controls", to_markdown(c)
        atomic_write_text(args.search_dir / f"{stem}.json", json.dumps(c, indent=1) + "\n")
        atomic_write_text(args.search_dir / f"{stem}.md", md)
        print(md)

    guarded("experiments.gold.controls", go, False)


if __name__ == "__main__":
    main()
