"""Stages c-d: the contenders' training commands, the process-value evaluation and the guided search.

Each contender is one ``sp-prm`` command (the toolkit's own recipes, so the testbed measures what a
user would run); a command whose output already exists is skipped, so a killed run resumes. All
contenders start from the student ORM and get the same budget: ``extra_steps`` optimizer steps of
``extra_batch`` pairs, with the training seed.

========================  =====================================================================
contender                 what it is
========================  =====================================================================
``orm``                   Bradley-Terry on the full on-policy pairs (``orm_epochs``)
``orm-control``           the ORM trained ``extra_steps`` more on full pairs: the compute control
``sp-prm-student-ref``    Eq. 3 on SST partial pairs weighted (and filtered) by the student ORM
``sp-prm-teacher-ref``    Eq. 3 with the teacher as the reference (the paper's regime: a separate,
                          stronger reference RM)
``eq2``                   Eq. 2: every SST pair, weight 1 (the paper's ablation)
``eq2-filtered``          Eq. 2 on the teacher-filtered pairs: ``loss: unweighted`` on the teacher-
                          referenced data. The SP-PRM authors' released collator never passes the
                          weights to the loss, so this is their released code's effective loss.
                          Expressed through data, no trainer option: ``prepare`` with a reference
                          keeps only the pairs it orders like the label; ``unweighted`` ignores the
                          weights it wrote.
========================  =====================================================================
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments.common import atomic_write_text
from experiments.gold.config import GoldConfig
from sp_prm.errors import ConfigError

SST_DATA = {"sp-prm-student-ref": "sst-student", "sp-prm-teacher-ref": "sst-teacher", "eq2": "sst-all",
            "eq2-filtered": "sst-teacher"}
LOSS = {"sp-prm-student-ref": "weighted", "sp-prm-teacher-ref": "weighted", "eq2": "unweighted",
        "eq2-filtered": "unweighted"}


def _prefix_args(cfg: GoldConfig) -> list[str]:
    p = cfg.student_prefix
    return ["--prefix.template", p.template, "--prefix.max_prompt_tokens", str(p.max_prompt_tokens),
            "--prefix.max_response_tokens", str(p.max_response_tokens)]


def done(path: Path) -> bool:
    """A trained model folder, or a prepared dataset folder, that is complete."""
    return (path / "config.json").exists() or (path / "dataset_info.json").exists() or (path / "state.json").exists()


def sst_dir(cfg: GoldConfig, name: str, seed: int) -> Path:
    """Where a partial-pair dataset lives: per seed for the student-referenced one, shared otherwise."""
    return cfg.seed_dir(seed) / name if name == "sst-student" else cfg.root / name


def contender_commands(cfg: GoldConfig, seed: int) -> list[tuple[str, Path, list[str]]]:
    """``(name, output folder, sp-prm argv)`` in run order for one training seed."""
    s, d = cfg.seed_dir(seed), cfg.data_dir
    common = ["--seed", str(seed), "--resume", "false"]
    orm = s / "orm"
    cmds: list[tuple[str, Path, list[str]]] = [
        ("orm", orm, ["train", "--config", cfg.orm_recipe, "--model_name_or_path", cfg.student,
                      "--dataset", str(d / "train.jsonl"), "--eval_fraction", "0", "--num_train_epochs",
                      str(cfg.orm_epochs), *common, "--output_dir", str(orm), *_prefix_args(cfg)])]
    wanted = set(cfg.contenders)
    # The SST cut positions use the data seed, so the teacher-referenced and unweighted partial pairs are
    # prepared once and shared by every training seed (the teacher scores each prefix in its own pass, the
    # costliest CPU step); the student-referenced data depends on the seed's ORM and is per seed.
    sst_refs = {"sst-student": str(orm), "sst-teacher": str(cfg.teacher_dir), "sst-all": "null"}
    needed = {SST_DATA[c] for c in wanted if c in SST_DATA}
    limit = ["--limit", str(cfg.sst_pairs)] if cfg.sst_pairs else []
    for name, ref in sst_refs.items():
        if name in needed:
            out = sst_dir(cfg, name, seed)
            cmds.append((name, out, ["prepare", "--config", cfg.sst_recipe, "--source", str(d / "train.jsonl"),
                                     *limit, "--model_name_or_path", cfg.student, "--seed", str(cfg.data.seed),
                                     "--reference_model", ref, "--reference_dtype", cfg.dtype,
                                     "--output_dir", str(out), "--overwrite", "true", *_prefix_args(cfg)]))
    budget = ["--max_steps", str(cfg.extra_steps), "--per_device_train_batch_size", str(cfg.extra_batch)]
    if "orm-control" in wanted:
        cmds.append(("orm-control", s / "orm-control",
                     ["train", "--config", cfg.orm_recipe, "--model_name_or_path", str(orm), "--dataset",
                      str(d / "train.jsonl"), "--eval_fraction", "0", *budget, *common, "--output_dir",
                      str(s / "orm-control"), *_prefix_args(cfg)]))
    for name in ("sp-prm-student-ref", "sp-prm-teacher-ref", "eq2", "eq2-filtered"):
        if name in wanted:
            data = sst_dir(cfg, SST_DATA[name], seed)
            cmds.append((name, s / name, ["train", "--config", cfg.sp_recipe, "--dataset", str(data),
                                          "--loss", LOSS[name], "--model_name_or_path", str(orm), "--eval_fraction",
                                          "0", *budget, *common, "--output_dir", str(s / name)]))
    return cmds


def value_command(cfg: GoldConfig, seed: int) -> list[str]:
    """``sp-prm evaluate-rm`` of every contender with the process value V on the held-out value pairs.

    Prefixes are cut in the *policy's* token space (t = policy tokens, the unit a search step has):
    its decoding is lossless, so the rollouts continue exactly the text each contender scores (the
    MiniLM contenders are uncased and read the same text re-encoded).
    """
    s = cfg.seed_dir(seed)
    names = list(cfg.contenders)
    return ["evaluate-rm", "--source", str(cfg.data_dir / "value.jsonl"), "--subset", "all", "--limit",
            str(cfg.value_pairs), "--models", "[" + ", ".join(str(s / n) for n in names) + "]",
            "--names", "[" + ", ".join(names) + "]", "--baseline", "orm", "--tokenizer", cfg.policy,
            "--token_counts", "[" + ", ".join(map(str, cfg.token_counts)) + "]", "--fractions", "[1.0]",
            *_prefix_args(cfg), "--bootstrap_samples", str(cfg.bootstrap_resamples), "--output_dir", str(s / cfg.value_name),
            "--process_value.policy", cfg.policy, "--process_value.gold_rm", str(cfg.teacher_dir),
            "--process_value.rollouts", str(cfg.rollouts), "--process_value.batch_rows", str(cfg.value_batch_rows),
            "--process_value.max_response_tokens",
            str(cfg.data.max_new_tokens), "--process_value.temperature", str(cfg.sampling.temperature),
            "--process_value.top_p", str(cfg.sampling.top_p), "--process_value.seed", "0",
            "--process_value.dtype", cfg.dtype, "--process_value.cache", str(cfg.root / "value_cache.pt")]


def run_sp_prm(argv: list[str], log: Path) -> float:
    """Run one ``sp-prm`` command in a child process (memory is returned between models); its wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sp_prm.cli", *argv], check=True)
    seconds = time.perf_counter() - t0
    times = json.loads(log.read_text()) if log.exists() else {}
    times[argv[0] + " " + argv[argv.index("--output_dir") + 1] if "--output_dir" in argv else argv[0]] = round(seconds, 1)
    atomic_write_text(log, json.dumps(times, indent=1) + "\n")
    return seconds


def run_contenders(cfg: GoldConfig, seed: int) -> None:
    log = cfg.seed_dir(seed) / "times.json"
    for name, out, argv in contender_commands(cfg, seed):
        if done(out):
            print(f"[gold] {name}: {out} exists, skipped")
            continue
        print(f"[gold] {name}: sp-prm {' '.join(argv)}")
        run_sp_prm(argv, log)


def run_value(cfg: GoldConfig, seed: int) -> None:
    out = cfg.seed_dir(seed) / cfg.value_name
    if (out / "results.json").exists():
        print(f"[gold] value: {out} exists, skipped")
        return
    run_sp_prm(value_command(cfg, seed), cfg.seed_dir(seed) / "times.json")


# -- search ----------------------------------------------------------------------------------------------

# ARGS's w in units of each guide's reward spread over the k candidates, and CARDS's tau_u as a quantile of the
# policy's own entropy, unless search_overrides set them: otherwise ARGS uses one w for guides whose reward scales
# differ and CARDS a tau_u the policy never reaches (RESULTS.md section 4's two flaws).
NEEDS = {"args": ("w_units", "spread"), "cards": ("tau_u_quantile", 0.9)}


def search_config(cfg: GoldConfig, seed: int, module: Any = None) -> Any:
    if module is None:
        import experiments.prm_guided as module
    fields = {f.name for f in dataclasses.fields(module.PrmGuidedConfig)}
    guides = cfg.search_guides or list(cfg.contenders)
    if guides[0] != "orm":
        raise ConfigError(f"search_guides must start with orm (the baseline of the paired differences), got {guides}")
    extra = dict(cfg.search_overrides)
    unknown = [k for k in extra if k not in fields]
    if unknown:
        raise ConfigError(f"search_overrides: {unknown} are not fields of the prm_guided config")
    s = cfg.seed_dir(seed)
    values = dict(
        policy={"model": cfg.policy, "dtype": cfg.dtype, "device": cfg.device},
        sampling=dataclasses.asdict(cfg.sampling), pairs_path=str(cfg.data_dir / "search_prompts.jsonl"),
        # the teacher labelled the search prompts' pairs itself: its accuracy on them is 1, not worth a pass
        guides={g: str(s / g) for g in guides}, gold_models=[str(cfg.teacher_dir)], folds=2, check_gold=False,
        prompts_per_fold=cfg.search_prompts_per_fold, seed=seed, max_new_tokens=cfg.data.max_new_tokens,
        methods=list(cfg.search_methods), output_dir=str(s / cfg.search_name), bootstrap_resamples=cfg.bootstrap_resamples,
        **extra)
    from sp_prm.config import build

    config = build(module.PrmGuidedConfig, values)
    for method, (key, default) in NEEDS.items():
        given = extra.get(method)
        if method in cfg.search_methods and not (isinstance(given, dict) and key in given):
            setattr(config, method, dataclasses.replace(getattr(config, method), **{key: default}))
    return config


def run_search(cfg: GoldConfig, seed: int) -> None:
    import experiments.prm_guided as module

    scfg = search_config(cfg, seed, module)
    t0 = time.perf_counter()
    module.run(scfg)
    module.write_summary(scfg, f"python -m experiments.gold.run search --seed {seed}")
    log = cfg.seed_dir(seed) / "times.json"
    times = json.loads(log.read_text()) if log.exists() else {}
    times["search"] = round(time.perf_counter() - t0 + times.get("search", 0.0), 1)
    atomic_write_text(log, json.dumps(times, indent=1) + "\n")
