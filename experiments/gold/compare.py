"""The comparison tables: the two pre-registered endpoints, pooled over training seeds.

**(a) agreement with V** (from each seed's ``value/rewards.pt`` and ``value/process_value.pt``):
per pair and cut, 1 if a contender orders the two prefixes as V does (V ties left out, RM ties
wrong, :func:`sp_prm.value_agreement.pair_agreement`). A contender's per-pair agreement is averaged
over seeds (V and the pairs are shared by all seeds), then over the primary cuts ``t <= 20``; its
difference to the ORM is bootstrapped over pairs, paired (the same resampled pairs for both).

**(b) teacher reward of guided search** (from each seed's ``search/records.jsonl``): per prompt,
decoder and guide, the teacher's reward of the output, averaged over seeds; the difference to
the ORM-guided output of the same decoder and prompt in units of the teacher-reward standard
deviation of the unguided samples, and the head-to-head win rate against it (ties half; the same
response picked by both is a tie), with bootstrap intervals over prompts. Also the mean teacher
reward per decoder x guide and the compute per prompt of every run.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common import atomic_write_text, read_records
from experiments.prm_guided import outcome, same_response
from sp_prm.errors import InputError, MissingPathError
from sp_prm.value_agreement import pair_agreement

PRIMARY_MAX_T = 20


def _boot(values: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(samples, len(v)))
    lo, hi = np.quantile(v[idx].mean(1), [0.025, 0.975])
    return float(lo), float(hi)


# z_{0.975} + z_{0.80}: a paired difference of per-unit SD sd over n units is detected at two-sided alpha = 0.05 with
# 80% power when it is at least MDE_FACTOR * sd / sqrt(n) (RESULTS.md section 5, "Sizing").
MDE_FACTOR = 2.80


def _spread(d: np.ndarray) -> dict[str, float]:
    """The per-unit SD of a paired difference, its units, and the smallest difference detectable with them."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return {"sd": sd, "units": len(d), "mde": MDE_FACTOR * sd / math.sqrt(len(d)) if len(d) > 1 else float("nan")}


def units_needed(sd: float, delta: float) -> int:
    """Units (pairs, prompts) a paired difference of per-unit SD ``sd`` needs for an MDE of ``delta``."""
    return math.ceil((MDE_FACTOR * sd / delta) ** 2) if math.isfinite(sd) else -1


def seed_agreements(value_dir: Path) -> tuple[list[str], dict[str, dict[str, np.ndarray]], list[str]]:
    """``(valued cuts, {model: {cut: per-pair agreement [n]}}, pair ids)`` of one seed's evaluate-rm output."""
    rw = torch.load(value_dir / "rewards.pt", weights_only=False)
    pv = torch.load(value_dir / "process_value.pt", weights_only=False)
    labels = rw["labels"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, r in rw["rewards"].items():
        out[name] = {}
        for cut in pv["labels"]:
            j = labels.index(cut)
            v = pv["rollouts"][cut].double().mean(1).numpy()
            out[name][cut] = pair_agreement(r["chosen"][:, j].numpy(), r["rejected"][:, j].numpy(), v[0::2], v[1::2])
    return list(pv["labels"]), out, list(pv["ids"])


def primary_cuts(cuts: list[str]) -> list[str]:
    return [c for c in cuts if c.startswith("t=") and int(c[2:]) <= PRIMARY_MAX_T]


def value_endpoint(value_dirs: list[Path], baseline: str = "orm", samples: int = 2000) -> dict[str, Any]:
    """Endpoint (a), pooled over the seeds' evaluations (see the module docstring)."""
    per_seed = [seed_agreements(d) for d in value_dirs]
    cuts, _, ids = per_seed[0]
    for c, _, i in per_seed[1:]:
        if c != cuts or i != ids:
            raise InputError("the seeds' value evaluations differ in cuts or pairs; they must share the value pairs")
    models = [m for m in per_seed[0][1] if all(m in s[1] for s in per_seed)]
    keys = [*cuts, "t<=20"]

    def pooled(model: str, key: str) -> np.ndarray:
        if key == "t<=20":
            return np.nanmean(np.stack([pooled(model, c) for c in primary_cuts(cuts)]), axis=0)
        return np.nanmean(np.stack([s[1][model][key] for s in per_seed]), axis=0)

    table: dict[str, Any] = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in models:
            table[m] = {}
            for k in keys:
                a = pooled(m, k)
                row = {"agreement": float(np.nanmean(a)), "ci": _boot(a, samples), "pairs": int(np.isfinite(a).sum())}
                if m != baseline and baseline in models:
                    d = a - pooled(baseline, k)
                    row["vs_baseline"] = {"diff": float(np.nanmean(d)), "ci": _boot(d, samples), **_spread(d)}
                table[m][k] = row
    return {"seeds": len(value_dirs), "cuts": keys, "primary": "t<=20", "models": table}


def head_to_head(x: dict[str, Any], base: dict[str, Any]) -> float:
    """Output ``x`` against ``base`` by teacher reward: 1 / 0.5 / 0, the same response a tie
    (``experiments.prm_guided.outcome``)."""
    return outcome(x["gold"], base["gold"], same_response(x, base))


def search_endpoint(search_dirs: list[Path], guides: list[str], methods: list[str], samples: int = 2000
                    ) -> dict[str, Any]:
    """Endpoint (b) and the reward / compute tables, pooled over the seeds' search records."""
    by_prompt: dict[str, dict[str, list[float]]] = {}
    wins: dict[str, dict[str, list[float]]] = {}
    sample_golds: list[float] = []
    compute: dict[str, list[dict[str, float]]] = {}
    for d in search_dirs:
        for rec in read_records(d / "records.jsonl"):
            sample_golds += [s["gold"] for s in rec["samples"] if s.get("gold") is not None]
            cell = by_prompt.setdefault(rec["id"], {})
            wcell = wins.setdefault(rec["id"], {})
            for key, o in rec["outputs"].items():
                if o.get("gold") is not None:
                    cell.setdefault(key, []).append(o["gold"])
            for m in methods:
                bo = rec["outputs"].get(f"{guides[0]}/{m}", {})
                for g in guides[1:]:
                    o = rec["outputs"].get(f"{g}/{m}", {})
                    if bo.get("gold") is not None and o.get("gold") is not None:
                        wcell.setdefault(f"{g}/{m}", []).append(head_to_head(o, bo))
            for key, c in rec.get("compute", {}).items():
                compute.setdefault(key, []).append(c)
    std = statistics.pstdev(sample_golds) if len(sample_golds) > 1 else 1.0
    std = std if std > 0 else 1.0

    def per_prompt(key: str) -> dict[str, float]:
        return {p: statistics.fmean(v[key]) for p, v in by_prompt.items() if key in v}

    rewards, paired = {}, {}
    for m in methods:
        for g in guides:
            vals = per_prompt(f"{g}/{m}")
            if vals:
                arr = np.array(list(vals.values()))
                rewards[f"{g}/{m}"] = {"mean": float(arr.mean()), "ci": _boot(arr, samples), "prompts": len(arr)}
        base = per_prompt(f"{guides[0]}/{m}")
        for g in guides[1:]:
            vals = per_prompt(f"{g}/{m}")
            common = sorted(set(vals) & set(base))
            if not common:
                continue
            d = np.array([(vals[p] - base[p]) / std for p in common])
            w = np.array([statistics.fmean(wins[p][f"{g}/{m}"]) for p in common if f"{g}/{m}" in wins[p]])
            paired[f"{g}/{m}"] = {"delta_sd": float(d.mean()), "delta_sd_ci": _boot(d, samples), "prompts": len(common),
                                  "win_rate": float(w.mean()), "win_rate_ci": _boot(w, samples), **_spread(d)}
    comp = {k: {f: statistics.fmean(r.get(f, 0) for r in rows) for f in sorted({f for r in rows for f in r})}
            for k, rows in compute.items()}
    return {"seeds": len(search_dirs), "teacher_sample_std": std, "rewards": rewards, "vs_orm": paired,
            "compute_per_prompt": comp}


def _fmt_ci(x: float, ci: tuple[float, float] | list[float], digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(x)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def _seeds(n: int) -> str:
    return "1 training seed" if n == 1 else f"{n} training seeds pooled"


def to_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Known-gold testbed: SP-PRM vs ORM", ""]
    va = summary.get("value")
    if va:
        lines += [f"## (a) Agreement with the process value V ({_seeds(va['seeds'])}; primary: t <= 20)", "",
                  "| contender | " + " | ".join(va["cuts"]) + " |", "|---|" + "---|" * len(va["cuts"])]
        for m, row in va["models"].items():
            cells = []
            for k in va["cuts"]:
                r = row[k]
                cell = f"{r['agreement']:.3f}"
                if "vs_baseline" in r:
                    cell += f" ({_fmt_ci(r['vs_baseline']['diff'], r['vs_baseline']['ci'], sign=True)})"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: agreement (difference to the ORM, paired bootstrap 95% CI over pairs).", "",
                  "The primary cell's difference to the ORM: the SD of its per-pair value, and the smallest difference "
                  f"these pairs detect (two-sided 5%, 80% power: {MDE_FACTOR} SD / sqrt(pairs)):", "",
                  "| contender | Δ agreement, t <= 20 | per-pair SD | pairs | detectable Δ |", "|---|---|---|---|---|"]
        for m, row in va["models"].items():
            vb = row[va["primary"]].get("vs_baseline")
            if vb:
                lines.append(f"| {m} | {vb['diff']:+.3f} | {vb['sd']:.3f} | {vb['units']} | {vb['mde']:.3f} |")
        lines.append("")
    se = summary.get("search")
    if se:
        lines += [f"## (b) Teacher reward of guided search ({_seeds(se['seeds'])})", "",
                  "| run | mean teacher reward [95% CI] | prompts |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt_ci(v['mean'], v['ci'])} | {v['prompts']} |" for k, v in se["rewards"].items()]
        lines += ["", f"Minus the ORM-guided run of the same decoder, in teacher-reward SDs of the unguided samples "
                  f"(SD = {se['teacher_sample_std']:.3f}), and the head-to-head win rate against it:", "",
                  "| run | Δ teacher reward (SD) | win rate vs ORM-guided | prompts | per-prompt SD of Δ | detectable Δ |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {_fmt_ci(v['delta_sd'], v['delta_sd_ci'], sign=True)} | "
                  f"{_fmt_ci(v['win_rate'], v['win_rate_ci'])} | {v['prompts']} | {v['sd']:.3f} | {v['mde']:.3f} |"
                  for k, v in se["vs_orm"].items()]
        keys = ["policy_tokens_generated", "policy_tokens_prefilled", "scorer_tokens", "scorer_calls", "seconds"]
        lines += ["", "Compute per prompt (`<guide>/bon` is the ranking of the shared `samples`):", "",
                  "| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {k} | " + " | ".join(f"{c.get(f, 0):.1f}" for f in keys) + " |"
                  for k, c in se["compute_per_prompt"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out: Path, prefix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    va, se = summary.get("value"), summary.get("search")
    if va:
        cuts = [c for c in va["cuts"] if c.startswith("t=")]
        xs = [int(c[2:]) for c in cuts]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for m, row in va["models"].items():
            ys = [row[c]["agreement"] for c in cuts]
            lo = [row[c]["agreement"] - row[c]["ci"][0] for c in cuts]
            hi = [row[c]["ci"][1] - row[c]["agreement"] for c in cuts]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=m)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("prefix length t (policy tokens)")
        ax.set_ylabel("agreement with V")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{prefix}agreement_vs_t.png", dpi=110)
        plt.close(fig)
    if se and se["rewards"]:
        keys = list(se["rewards"])
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(keys)), 3.8))
        ys = [se["rewards"][k]["mean"] for k in keys]
        err = [[y - se["rewards"][k]["ci"][0] for k, y in zip(keys, ys)],
               [se["rewards"][k]["ci"][1] - y for k, y in zip(keys, ys)]]
        ax.bar(range(len(keys)), ys, yerr=err, capsize=3)
        ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("mean teacher reward")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{prefix}teacher_reward.png", dpi=110)
        plt.close(fig)


def write_report(root: Path, seeds: list[int], guides: list[str], methods: list[str], samples: int = 2000,
                 search_name: str = "search", value_name: str = "value", name: str = "summary") -> dict[str, Any]:
    """Pool every finished seed under ``root`` into ``root/<name>.{json,md}`` and the two plots."""
    value_dirs = [root / f"seed{s}" / value_name for s in seeds
                  if (root / f"seed{s}" / value_name / "process_value.pt").exists()]
    search_dirs = [root / f"seed{s}" / search_name for s in seeds
                   if (root / f"seed{s}" / search_name / "records.jsonl").exists()]
    if not value_dirs and not search_dirs:
        raise MissingPathError(f"no finished value or search stage under {root}/seed{{{','.join(map(str, seeds))}}}")
    summary: dict[str, Any] = {"seeds_value": [d.parent.name for d in value_dirs],
                               "seeds_search": [d.parent.name for d in search_dirs]}
    if value_dirs:
        summary["value"] = value_endpoint(value_dirs, guides[0], samples)
    if search_dirs:
        summary["search"] = search_endpoint(search_dirs, guides, methods, samples)
    atomic_write_text(root / f"{name}.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(root / f"{name}.md", to_markdown(summary))
    plot(summary, root, "" if name == "summary" else f"{name}-")
    return summary
