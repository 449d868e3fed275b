"""The ``size`` stage: how many value pairs and search prompts each endpoint needs, from a pilot.

RESULTS.md section 5 fixes the rule before any run: a paired difference with per-unit SD ``sd``
over ``n`` units is detected (two-sided 5%, 80% power) when it is at least
``2.80 * sd / sqrt(n)``, so a target ``delta`` needs ``n = (2.80 * sd / delta)^2`` units. Here
``sd`` comes from one seed's pilot evaluation (``value_name``, ``search_name`` of ``--seed``):

* endpoint (a): the SD over value pairs of a contender's per-pair agreement with V (averaged over
  the primary cuts t <= 20) minus the ORM's;
* endpoint (b): the SD over prompts of the guided run's teacher reward minus the ORM-guided run's,
  in teacher SDs of the unguided samples.

Only the spread of the paired differences is read and reported, as in an internal pilot (Wittes
and Brittain 1990): the sizes follow from the nuisance parameter, and the report leaves the effects
out, so sizing cannot be steered by them. A single-seed ``sd``
overstates the pooled design's (averaging over seeds can only lower it), so the sizes are
conservative. V's split-half ceiling per cut (its Monte Carlo reliability) is reported beside them.

Writes ``<work_dir>/sizing.json`` and ``sizing.md``.
"""

from __future__ import annotations

import json
from typing import Any

from experiments.common import atomic_write_text
from experiments.gold import compare
from experiments.gold.config import GoldConfig
from sp_prm.errors import MissingPathError


def size_design(cfg: GoldConfig) -> dict[str, Any]:
    """The sizing report of the pilot run of ``cfg.seed`` (see the module docstring)."""
    s = cfg.seed_dir()
    value_dir, search_dir = s / cfg.value_name, s / cfg.search_name
    have_value = (value_dir / "process_value.pt").exists()
    have_search = (search_dir / "records.jsonl").exists()
    if not have_value and not have_search:
        raise MissingPathError(f"no finished value ({value_dir}) or search ({search_dir}) run to size from")
    guides = cfg.search_guides or list(cfg.contenders)
    out: dict[str, Any] = {"seed": cfg.seed, "targets": dict(cfg.sizing_targets), "factor": compare.MDE_FACTOR}
    if have_value:
        va = compare.value_endpoint([value_dir], guides[0], cfg.bootstrap_resamples)
        rows = {}
        for m, row in va["models"].items():
            vb = row[va["primary"]].get("vs_baseline")
            if vb:
                rows[m] = {"sd": vb["sd"], "pairs": vb["units"], "mde": vb["mde"],
                           "pairs_needed": compare.units_needed(vb["sd"], cfg.sizing_targets["value"])}
        results = json.loads((value_dir / "results.json").read_text()) if (value_dir / "results.json").exists() else {}
        cuts = results.get("process_value", {}).get("cuts", {})
        out["value"] = {"contrasts": rows, "v_split_half": {c: m.get("v_split_half_agreement") for c, m in cuts.items()}}
    if have_search:
        se = compare.search_endpoint([search_dir], guides, cfg.search_methods, cfg.bootstrap_resamples)
        out["search"] = {"contrasts": {k: {"sd": v["sd"], "prompts": v["units"], "mde": v["mde"],
                                           "prompts_needed": compare.units_needed(v["sd"], cfg.sizing_targets["search"])}
                                       for k, v in se["vs_orm"].items()},
                         "teacher_sample_std": se["teacher_sample_std"]}
    atomic_write_text(cfg.root / "sizing.json", json.dumps(out, indent=1) + "\n")
    atomic_write_text(cfg.root / "sizing.md", to_markdown(out))
    return out


def to_markdown(out: dict[str, Any]) -> str:
    f = out["factor"]
    lines = [f"# Sizing from the pilot (seed {out['seed']})", "",
             f"Detectable difference = {f} x per-unit SD / sqrt(units) (two-sided 5%, 80% power); units needed = "
             f"({f} x SD / target)^2.", ""]
    if "value" in out:
        t = out["targets"]["value"]
        lines += [f"## (a) agreement with V, t <= 20 (target {t:.3f})", "",
                  "| contrast vs orm | per-pair SD | pairs | detectable Δ now | pairs needed |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m} | {r['sd']:.3f} | {r['pairs']} | {r['mde']:.3f} | {r['pairs_needed']} |"
                  for m, r in out["value"]["contrasts"].items()]
        sh = out["value"]["v_split_half"]
        if sh:
            lines += ["", "V split-half ceiling: " + ", ".join(f"{c} {v:.3f}" for c, v in sh.items() if v is not None)]
        lines.append("")
    if "search" in out:
        t = out["targets"]["search"]
        lines += [f"## (b) teacher reward of guided search, in teacher SDs (target {t:.2f}; SD = "
                  f"{out['search']['teacher_sample_std']:.3f})", "",
                  "| run vs orm-guided | per-prompt SD | prompts | detectable Δ now | prompts needed |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {r['sd']:.3f} | {r['prompts']} | {r['mde']:.3f} | {r['prompts_needed']} |"
                  for k, r in out["search"]["contrasts"].items()]
    return "\n".join(lines) + "\n"
