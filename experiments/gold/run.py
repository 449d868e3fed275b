"""The gold testbed's command line: ``python -m experiments.gold.run <stage> --config <recipe> [--key value ...]``.

Stages: ``teacher`` (a), ``data`` (b), ``contenders`` (c, per ``--seed``), ``value`` and ``search``
(d, per ``--seed``), ``compare`` (every finished seed of ``seeds``), ``size`` (the pilot's sizing:
the units each endpoint needs, from one seed's value and search runs), ``all`` (every stage for one
seed, then compare). Each skips what it already finished, so a killed run resumes with the same
command. Wall times go to ``<work_dir>/times.json`` and ``<work_dir>/seed<N>/times.json``.
"""

from __future__ import annotations

import json
import sys
import time

from experiments.common import atomic_write_text
from experiments.gold.config import GoldConfig
from sp_prm.errors import ConfigError, MissingPathError, guarded

STAGES = ("teacher", "data", "contenders", "value", "search", "compare", "size", "all")


def _log_time(cfg: GoldConfig, stage: str, seconds: float) -> None:
    log = cfg.root / "times.json"
    times = json.loads(log.read_text()) if log.exists() else {}
    times[stage] = round(times.get(stage, 0.0) + seconds, 1)
    atomic_write_text(log, json.dumps(times, indent=1) + "\n")


def run_stage(cfg: GoldConfig, stage: str) -> None:
    from experiments.gold import compare, onpolicy, stages, teacher

    t0 = time.perf_counter()
    if stage == "teacher":
        if teacher.teacher_ready(cfg):
            print(f"[gold] teacher: {cfg.teacher_dir} exists, skipped")
            return
        train = teacher.train_teacher if cfg.teacher.kind == "probe" else teacher.finetune_teacher
        print(teacher.describe(train(cfg, progress=True) if cfg.teacher.kind == "probe" else train(cfg)))
    elif stage == "data":
        if not teacher.teacher_ready(cfg):
            raise MissingPathError(f"{cfg.teacher_dir}: run the teacher stage first")
        print(json.dumps(onpolicy.build_data(cfg), indent=1))
    elif stage == "contenders":
        stages.run_contenders(cfg, cfg.seed)
    elif stage == "value":
        stages.run_value(cfg, cfg.seed)
    elif stage == "search":
        stages.run_search(cfg, cfg.seed)
    elif stage == "compare":
        guides = cfg.search_guides or list(cfg.contenders)
        summary = compare.write_report(cfg.root, cfg.seeds, guides, cfg.search_methods, cfg.bootstrap_resamples,
                                       cfg.search_name, cfg.value_name, cfg.report_name)
        print(compare.to_markdown(summary))
        return
    elif stage == "size":
        from experiments.gold import sizing

        print(sizing.to_markdown(sizing.size_design(cfg)))
        return
    elif stage == "all":
        for s in STAGES[:STAGES.index("compare") + 1]:
            run_stage(cfg, s)
        return
    else:
        raise ConfigError(f"unknown stage {stage!r}; choose from {STAGES}")
    _log_time(cfg, stage if stage in ("teacher", "data") else f"seed{cfg.seed}/{stage}", time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    from sp_prm.config import load_config
    from sp_prm.runtime import limit_heap_retention

    limit_heap_retention()  # only with SP_PRM_MALLOC_TUNING=1 (memory for speed): see sp_prm/runtime.py
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m experiments.gold.run {{{','.join(STAGES)}}} --config recipe.yaml [--seed N] "
              "[--key value ...]", file=sys.stderr)
        raise SystemExit(2)
    debug = "--debug" in argv
    rest = [a for a in argv[1:] if a != "--debug"]
    # A user error is one short message and exit code 2 (--debug: the traceback), as in `sp-prm`.
    guarded(argv[0], lambda: run_stage(load_config(GoldConfig, rest), argv[0]), debug,
            prog="python -m experiments.gold.run")


if __name__ == "__main__":
    main()
