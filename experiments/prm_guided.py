"""PRM-guided search on HH-RLHF prompts: the ORM vs the SP-PRM as guides (issue 8, part 3).

    bash scripts/experiment_prm_guided_hh.sh            # gold RMs + this experiment, one command
    python -m experiments.prm_guided --config recipes/experiments/prm_guided_hh.yaml
    python -m experiments.prm_guided --config ... --summarize_only true   # tables/plot again

SP-PRM paper, section 5.2-5.3: the same policy is steered by an outcome RM and by the
SP-PRM made from it, with Best-of-N, ARGS-greedy, CBS and CARDS, and the outputs are
judged by a reward model the guides never saw.

* **Guides**: ``guides`` maps a name to an RM path (the ORM and SP-PRM of
  ``scripts/experiment_sp_prm_hh.sh``, trained on the 1,452 train pairs).
* **Prompts**: the held-out pairs (``pairs_path``, never seen by the guides), split in two
  folds by hashed pair id (:func:`fold_of`).
* **Gold**: cross-fitted. ``gold_models[f]`` is an RM trained on the pairs of fold ``f``
  only; a prompt of fold ``f`` is judged by the gold RM of the *other* fold, so no judge has
  seen the prompt it judges nor any pair the guides saw. Each gold RM's accuracy on the other
  fold's human labels is measured here and reported with the results (how much to trust it).
* **Methods**, the same seeds for both guides: ``bon`` (N samples drawn once, each guide picks
  its best), ``args`` (greedy, top-k, w), ``cbs`` (W, K, L), ``cards`` (thresholds calibrated
  per guide on prompts that are not reported); unguided ``greedy`` and the N ``samples``.
* **Budget**: BoN and CBS sample the same number of tokens (N x T = W x K x T); ARGS and
  CARDS run at their papers' settings scaled to T. Every method's compute (policy tokens
  generated and prefilled, scorer tokens and calls, seconds) is recorded and reported.

Per output: the gold reward; the **win rate** against the prompt's N unguided samples under
the same gold RM (ties count half; scale-free, 0.5 = no better than sampling); the gold reward
as a z-score against the samples; both guides' rewards (how hard the search optimised its
guide); length; diversity (distinct 2/3/4-gram product) and prompt-answer coherence (MiniLM
cosine). Outputs in ``output_dir``: ``records.jsonl`` (one line per prompt; resumable),
``summary.json``, ``summary.md`` (bootstrap 95% CIs over prompts, paired SP-PRM - ORM
differences) and ``win_rate.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.decode import DecodeConfig, PolicyConfig, ScorerConfig, build_policy, build_scorer
from decoding.policy import SamplingParams
from decoding.prompts import DataConfig, to_prompt
from decoding.search import SEARCHES
from decoding.search.args import ArgsParams
from decoding.search.cards import CardsParams
from decoding.search.cbs import CbsParams
from decoding.types import Meter
from experiments.common import (
    RunOptions,
    Stopwatch,
    append_records,
    atomic_savefig,
    atomic_write_text,
    claim_output_dir,
    experiment_main,
    fmt,
    load_judge_rm,
    markdown_table,
    read_records,
    resolve_data,
    set_threads,
    stat,
    use_meter,
    write_summary_files,
)

METHODS = ("bon", "args", "cbs", "cards")
# (prompts_per_fold is not one: a larger value extends the reported prompts, see select_prompts.)
_FINGERPRINT = ("policy", "sampling", "pairs_path", "guides", "gold_models", "folds", "calibration_prompts",
                "selection_seed", "seed", "max_new_tokens", "n", "args", "cbs", "cards")
# The flat knobs this config had before each search got its own params block (decoding.search).
_MOVED = {"args_k": "args.k", "args_w": "args.w", "cbs_beam_width": "cbs.beam_width",
          "cbs_successors": "cbs.successors", "cbs_chunk_length": "cbs.chunk_length", "cards_tau_u": "cards.tau_u",
          "cards_max_rejections": "cards.max_rejections", "cards_max_segment_tokens": "cards.max_segment_tokens",
          "cards_quantile": "cards.calibration_quantile"}


def fold_of(pair_id: str, folds: int = 2) -> int:
    """The fold of a pair: a hash of its id (stable across runs, machines and Python versions)."""
    return int(hashlib.sha256(str(pair_id).encode()).hexdigest()[:8], 16) % folds


@dataclass
class PrmGuidedConfig(RunOptions):
    """PRM-guided Best-of-N / ARGS / CBS / CARDS with several guides, judged by cross-fitted gold RMs."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.7, top_p=0.9))
    pairs_path: str = field(default="outputs/exp-hh/seed0/eval.jsonl", metadata={
        "help": "Held-out preference pairs (jsonl: id, prompt messages, chosen, rejected) the guides never saw."})
    guides: dict[str, str] = field(
        default_factory=lambda: {"orm": "outputs/exp-hh/seed0/orm", "sp-prm": "outputs/exp-hh/seed0/sp-prm"},
        metadata={"help": "Guide name -> reward model path; the first is the baseline of the paired differences."})
    gold_models: list[str] = field(
        default_factory=lambda: ["outputs/exp-hh/seed0/gold0", "outputs/exp-hh/seed0/gold1"],
        metadata={"help": "gold_models[f]: an RM trained on fold f's pairs only (fold_of); judges the other fold. "
                          "One path instead: an external gold RM (trained elsewhere, on none of these pairs) "
                          "judges every prompt."})
    folds: int = field(default=2, metadata={"help": "Folds of pairs_path (= len(gold_models))."})
    check_gold: bool = field(default=True, metadata={
        "help": "Measure each gold RM's accuracy on pairs_path first (gold_accuracy.json). Off where the gold "
                "defines the labels (the known-gold testbed: its accuracy on its own labels is 1 by construction)."})
    prompts_per_fold: int = field(default=20, metadata={"help": "Reported prompts drawn from each fold."})
    calibration_prompts: int = field(default=4, metadata={
        "help": "Prompts (not reported; drawn after the reported ones) on which CARDS thresholds are calibrated."})
    selection_seed: int = field(default=0, metadata={"help": "Seed of the shuffle that picks the prompts."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (candidate seeds derive from it and the id)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Token budget T per response (every method)."})
    n: int = field(default=16, metadata={"help": "Best-of-N samples (also the unguided reference samples)."})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": f"Subset of {METHODS}."})
    args: ArgsParams = field(default_factory=lambda: ArgsParams(k=10, w=1.5), metadata={
        "help": "ARGS-greedy (decoding.search.args; paper: k = 30)."})
    cbs: CbsParams = field(default_factory=lambda: CbsParams(beam_width=4, successors=4, chunk_length=16), metadata={
        "help": "CBS (W x K = n: Best-of-N's sampled tokens)."})
    cards: CardsParams = field(default_factory=lambda: CardsParams(tau_u=7.0, max_rejections=4, max_segment_tokens=16,
                                                                   calibration_quantile=0.5), metadata={
        "help": "CARDS; r_start / r_end (and tau_u with tau_u_quantile) calibrated per guide on the "
                "calibration_prompts, which are never reported."})
    coherence_model: str | None = field(default="builtin:all-minilm-l6-v2",
                                        metadata={"help": "Embedder of the coherence proxy; null: skip."})
    batch_size: int = field(default=4, metadata={"help": "Prompts decoded together."})
    output_dir: str = field(default="outputs/experiments/prm_guided_hh", metadata={"help": "Output folder."})

    @staticmethod
    def moved_keys() -> dict[str, str]:
        return _MOVED

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        if isinstance(self.sampling, dict):
            self.sampling = SamplingParams(**self.sampling)
        for name, cls in (("args", ArgsParams), ("cbs", CbsParams), ("cards", CardsParams)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown {bad}; choose from {METHODS}")
        if not self.guides:
            raise ValueError("guides: give at least one name -> reward model path")
        if self.folds < 2 or len(self.gold_models) not in (1, self.folds):
            raise ValueError(f"gold_models: need one RM per fold (folds={self.folds}, got {len(self.gold_models)}) "
                             "or one external RM; folds must be >= 2 so every prompt has a gold RM that never saw it")
        if min(self.n, self.max_new_tokens, self.prompts_per_fold, self.batch_size) < 1:
            raise ValueError("n, max_new_tokens, prompts_per_fold and batch_size must be >= 1")
        if "cards" in self.methods and self.calibration_prompts < 1:
            raise ValueError("calibration_prompts must be >= 1 when cards runs (its thresholds are calibrated)")


# -- prompts -------------------------------------------------------------------------------------------


def select_prompts(cfg: PrmGuidedConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(reported, calibration) pair records; reported: ``prompts_per_fold`` per fold, deterministic."""
    path = resolve_data(cfg.pairs_path, "pairs_path")
    rows = read_records(path) if path.suffix == ".jsonl" else []
    if not rows:
        raise ValueError(f"pairs_path {path}: no records (expected jsonl rows with id, prompt, chosen, rejected)")
    for i, r in enumerate(rows):
        missing = [k for k in ("id", "prompt", "chosen", "rejected") if k not in r]
        if missing:
            raise ValueError(f"pairs_path {path}, row {i}: missing field(s) {missing}")
    by_fold: dict[int, list[dict[str, Any]]] = {f: [] for f in range(cfg.folds)}
    for r in rows:
        by_fold[fold_of(r["id"], cfg.folds)].append({**r, "fold": fold_of(r["id"], cfg.folds)})
    # Reported prompts come from the front of each fold's shuffle and calibration prompts from the back, so
    # a later run with a larger prompts_per_fold extends the reported set and keeps the calibration set.
    reported, tails = [], []
    for f, items in by_fold.items():
        random.Random(cfg.selection_seed + f).shuffle(items)
        reported += items[: cfg.prompts_per_fold]
        tails.append(items[cfg.prompts_per_fold:][::-1])
    calibration = [t[i] for i in range(max(map(len, tails), default=0)) for t in tails if i < len(t)]
    calibration = calibration[: cfg.calibration_prompts]
    short = [f for f, items in by_fold.items() if len(items) < cfg.prompts_per_fold]
    if short or len(calibration) < cfg.calibration_prompts:
        raise ValueError(f"{path}: fold sizes {[len(v) for v in by_fold.values()]} cannot give prompts_per_fold = "
                         f"{cfg.prompts_per_fold} reported prompts per fold plus {cfg.calibration_prompts} "
                         "calibration prompts")
    return reported, calibration


# -- running -------------------------------------------------------------------------------------------


def gold_accuracy(cfg: PrmGuidedConfig, device: str = "cpu") -> list[dict[str, Any]]:
    """Each gold RM's pairwise accuracy on the human labels of the folds it did not train on."""
    from decoding.metrics.reward import rewards

    rows = read_records(resolve_data(cfg.pairs_path, "pairs_path"))
    out = []
    for g, path in enumerate(cfg.gold_models):
        model, tok, fmt_ = load_judge_rm(path, device)
        external = len(cfg.gold_models) == 1
        judged = [r for r in rows if external or fold_of(r["id"], cfg.folds) != g]
        chosen = rewards(model, tok, [r["prompt"] for r in judged], [r["chosen"] for r in judged], fmt_,
                         max_batch_tokens=cfg.max_batch_tokens)
        rejected = rewards(model, tok, [r["prompt"] for r in judged], [r["rejected"] for r in judged], fmt_,
                           max_batch_tokens=cfg.max_batch_tokens)
        correct = [float(a > b) for a, b in zip(chosen, rejected) if a is not None and b is not None]
        out.append({"gold": path, "trained_on_fold": None if external else g, "pairs": len(correct),
                    "accuracy": stat(correct, cfg.bootstrap_resamples)})
    return out


def _out(policy: Any, c: Any) -> dict[str, Any]:
    return {"text": policy.decode(c.token_ids), "tokens": len(c.token_ids), "complete": c.complete}


@dataclass
class Pending:
    """What is left to decode: the records file, the prompts not yet in it, the calibration prompts."""

    path: Path
    todo: list[tuple[dict[str, Any], Any]]
    calibration: list[Any]
    total: int  # reported prompts, decoded or not


def pending(cfg: PrmGuidedConfig) -> Pending:
    """Stage 1: pick the prompts (fails before anything is written), claim ``output_dir``, skip decoded ones."""
    reported, calibration = select_prompts(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_output_dir(cfg, out, _FINGERPRINT)
    path = out / "records.jsonl"
    done = {r["id"] for r in read_records(path)}
    data_cfg = DataConfig(prompt_field="prompt")
    prompts = [to_prompt(r, i, data_cfg) for i, r in enumerate(reported)]
    calib = [to_prompt(r, len(prompts) + i, data_cfg) for i, r in enumerate(calibration)]
    return Pending(path, [(r, p) for r, p in zip(reported, prompts) if r["id"] not in done], calib, len(reported))


def load_guides_and_judges(cfg: PrmGuidedConfig, policy: Any, meter: Meter) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 2: the guides as search scorers; the judges (gold of the other fold, and every guide) per fold."""
    guides = {name: build_scorer(DecodeConfig(policy=cfg.policy, scorer=ScorerConfig(
        name=f"rm:{p}", max_batch_tokens=cfg.max_batch_tokens)), policy, meter) for name, p in cfg.guides.items()}
    golds = [load_judge_rm(p, str(policy.device)) for p in cfg.gold_models]
    judges = {"gold": [golds[(f + 1) % len(golds)] for f in range(cfg.folds)]}  # one external gold: golds[0]
    judges.update({f"guide:{name}": [(g.model, g.tokenizer, g.format)] * cfg.folds for name, g in guides.items()})
    return guides, judges


def calibrate_cards(cfg: PrmGuidedConfig, policy: Any, guides: dict[str, Any], calibration: list[Any]) -> dict[str, Any]:
    """Stage 3: each guide's CARDS params, calibrated on the unreported calibration prompts (registry ``prepare``)."""
    if "cards" not in cfg.methods:
        return {}
    cp = dataclasses.replace(cfg.cards, calibration_prompts=len(calibration))
    return {name: SEARCHES["cards"].prepare(policy, g, calibration, cp, cfg.sampling, cfg.max_new_tokens, cfg.seed)
            for name, g in guides.items()}


class BatchRun:
    """One batch of prompts: its records under construction and each method's compute, counted per prompt."""

    def __init__(self, policy: Any, chunk: list[tuple[dict[str, Any], Any]]) -> None:
        self.policy = policy
        self.batch = [p for _, p in chunk]
        self.recs = {p.id: {"id": r["id"], "fold": r["fold"], "prompt": r["prompt"], "outputs": {}, "compute": {}}
                     for r, p in chunk}

    def timed(self, key: str, scorer: Any, fn: Any, *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` with its compute counted under ``key`` for every prompt of the batch."""
        m, sw = use_meter(Meter(), self.policy, scorer), Stopwatch()
        with sw.time():
            res = fn(*args, **kw)
        for p in self.batch:
            self.recs[p.id]["compute"][key] = {**m.for_group(p.index), "seconds": round(sw.seconds / len(self.batch), 4)}
        return res


def decode_batch(cfg: PrmGuidedConfig, policy: Any, guides: dict[str, Any], cards_params: dict[str, Any],
                 br: BatchRun) -> None:
    """Stage 4: the unguided references (N samples, greedy), then every method under every guide."""
    batch = br.batch
    first = guides[next(iter(guides))]
    bon = SEARCHES["best_of_n"].run
    samples = br.timed("samples", first, bon, policy, first, batch, SEARCHES["best_of_n"].params(n=cfg.n),
                       cfg.sampling, cfg.max_new_tokens, cfg.seed)
    for r in samples:
        br.recs[r.prompt.id]["samples"] = [_out(policy, c) for c in r.candidates]
    greedy = br.timed("greedy", first, bon, policy, first, batch, SEARCHES["best_of_n"].params(n=1),
                      SamplingParams(temperature=0.0), cfg.max_new_tokens, cfg.seed)
    for r in greedy:
        br.recs[r.prompt.id]["outputs"]["greedy"] = _out(policy, r.best_candidate)
    parts = [[c.partial(policy) for c in r.candidates] for r in samples]
    for name, g in guides.items():
        if "bon" in cfg.methods:  # the shared samples ranked by this guide (compute: samples + this scoring)
            scores = br.timed(f"{name}/bon", g, g.score, [r.prompt for r in samples for _ in r.candidates],
                              [c for ps in parts for c in ps]).tolist()
            for i, r in enumerate(samples):
                s = scores[i * cfg.n: (i + 1) * cfg.n]
                j = max(range(len(s)), key=lambda i: (s[i], -i))
                br.recs[r.prompt.id]["outputs"][f"{name}/bon"] = {**_out(policy, r.candidates[j]), "pick": j}
        params = {"args": cfg.args, "cbs": cfg.cbs, "cards": cards_params.get(name)}
        for method in ("args", "cbs", "cards"):
            if method in cfg.methods:
                results = br.timed(f"{name}/{method}", g, SEARCHES[method].run, policy, g, batch, params[method],
                                   cfg.sampling, cfg.max_new_tokens, cfg.seed)
                for r in results:
                    br.recs[r.prompt.id]["outputs"][f"{name}/{method}"] = _out(policy, r.best_candidate)


def judge_batch(cfg: PrmGuidedConfig, judges: dict[str, Any], embedder: Any, br: BatchRun) -> None:
    """Stage 5: every judge (one pass per judge and fold) on every output and sample; diversity, coherence."""
    from decoding.metrics.reward import rewards
    from decoding.metrics.text import diversity

    items = [(rec, o) for rec in br.recs.values() for o in [*rec["samples"], *rec["outputs"].values()]]
    for judge, per_fold in judges.items():
        for f in range(cfg.folds):
            sel = [(rec, o) for rec, o in items if rec["fold"] == f]
            if not sel:
                continue
            model, tok, fmt_ = per_fold[f]
            # identical outputs (a Best-of-N pick is one of the samples; two guides often pick the same one) are
            # scored once, so they tie exactly: scored in differently padded batches they differ by float noise
            # (~1e-6), and a head-to-head win rate would break their tie at random
            uniq: dict[tuple[str, str, bool], str] = {}
            for rec, o in sel:
                uniq.setdefault((rec["id"], o["text"], o["complete"]), rec["prompt"])
            keys = list(uniq)
            vals = rewards(model, tok, [uniq[k] for k in keys], [k[1] for k in keys], fmt_,
                           complete=[k[2] for k in keys], max_batch_tokens=cfg.max_batch_tokens)
            by_key = dict(zip(keys, vals))
            for rec, o in sel:
                o[judge] = by_key[(rec["id"], o["text"], o["complete"])]
    for _, o in items:
        o["diversity"] = diversity(o["text"])
    if embedder is not None:
        from decoding.metrics.coherence import coherence

        vals = coherence([rec["prompt"] for rec, _ in items], [o["text"] for _, o in items], embedder)
        for (_, o), v in zip(items, vals):
            o["coherence"] = v


def run(cfg: PrmGuidedConfig, policy: Any = None, embedder: Any = None) -> Path:
    """Decode every pending prompt into ``output_dir/records.jsonl``; the policy can be passed in (tests)."""
    set_threads(cfg.threads)
    todo = pending(cfg)
    gold_path = Path(cfg.output_dir) / "gold_accuracy.json"
    if not todo.todo and gold_path.exists():
        return todo.path
    meter = Meter()
    policy = policy or build_policy(DecodeConfig(policy=cfg.policy), meter)
    if not gold_path.exists():
        checked = gold_accuracy(cfg, str(policy.device)) if cfg.check_gold else []
        atomic_write_text(gold_path, json.dumps(checked, indent=1) + "\n")
    if not todo.todo:
        return todo.path
    guides, judges = load_guides_and_judges(cfg, policy, meter)
    cards_params = calibrate_cards(cfg, policy, guides, todo.calibration)
    if cards_params:  # what calibration chose (tau_u, reward thresholds), so a reader can see segmentation happened
        atomic_write_text(Path(cfg.output_dir) / "cards_params.json",
                          json.dumps({n: dataclasses.asdict(p) for n, p in cards_params.items()}, indent=1) + "\n")
    if embedder is None and cfg.coherence_model:
        from decoding.metrics.coherence import Embedder

        embedder = Embedder(cfg.coherence_model, device=str(policy.device))
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo.total, initial=todo.total - len(todo.todo), desc="prm-guided", unit="prompt")
    for start in range(0, len(todo.todo), cfg.batch_size):
        br = BatchRun(policy, todo.todo[start: start + cfg.batch_size])
        decode_batch(cfg, policy, guides, cards_params, br)
        judge_batch(cfg, judges, embedder, br)
        append_records(todo.path, [br.recs[p.id] for p in br.batch])
        if bar is not None:
            bar.update(len(br.batch))
    if bar is not None:
        bar.close()
    return todo.path


# -- analysis ------------------------------------------------------------------------------------------


def same_response(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two outputs are one response: the same text, finished or not (records without text never are)."""
    return "text" in a and (a["text"], a.get("complete")) == (b.get("text"), b.get("complete"))


def outcome(value: float, reference: float, same: bool = False) -> float:
    """1 if ``value`` beats ``reference``, 0 if it loses, 0.5 for a tie. The same response is a tie whatever its
    two stored rewards: records judged before identical outputs were scored once carry ~1e-6 of float noise
    between a Best-of-N pick and its sample."""
    return 0.5 if same else 1.0 if value > reference else 0.5 if value == reference else 0.0


def win_rate(value: float, references: list[float], same: list[bool] | None = None) -> float:
    """Share of ``references`` that ``value`` beats, ties counted half; ``same[i]``: reference ``i`` is the same
    response (:func:`outcome`)."""
    same = same or [False] * len(references)
    return sum(outcome(value, r, t) for r, t in zip(references, same)) / len(references)


def _pooled_std(records: list[dict[str, Any]], fold: int) -> float:
    import statistics

    vals = [s["gold"] for r in records if r["fold"] == fold for s in r["samples"] if s.get("gold") is not None]
    std = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return std if std > 0 else 1.0


def per_prompt(rec: dict[str, Any], std: float) -> dict[str, dict[str, float | None]]:
    """Per method (and the unguided references) this prompt's metrics."""
    judged = [s for s in rec["samples"] if s.get("gold") is not None]
    ref = [s["gold"] for s in judged]
    mu = sum(ref) / len(ref) if ref else None

    def metrics(o: dict[str, Any]) -> dict[str, float | None]:
        g = o.get("gold")
        ok = g is not None and mu is not None
        same = [same_response(o, s) for s in judged]
        return {"win_rate": win_rate(g, ref, same) if ok else None, "gold_z": (g - mu) / std if ok else None, "gold": g,
                **{k: o.get(k) for k in ("diversity", "coherence")}, "tokens": float(o["tokens"]),
                "complete": float(o["complete"]), **{k: o.get(k) for k in o if k.startswith("guide:")}}

    out: dict[str, dict[str, float | None]] = {}
    n = len(rec["samples"])
    sample_metrics = [metrics(s) for s in rec["samples"]]
    out["sample (expected)"] = {k: _mean([m[k] for m in sample_metrics]) for k in sample_metrics[0]}
    golds = [s.get("gold") for s in rec["samples"]]
    if any(x is not None for x in golds):
        best = max((i for i in range(n) if golds[i] is not None), key=lambda i: (golds[i], -i))
        out["gold-best of N (oracle)"] = metrics(rec["samples"][best])
    for name, o in rec["outputs"].items():
        out[name] = metrics(o)
    return out


def _mean(values: list[Any]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


METRICS = ("win_rate", "gold_z", "diversity", "coherence", "tokens", "complete")


def _diff(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def summarize_records(records: list[dict[str, Any]], guides: list[str], resamples: int = 2000) -> dict[str, Any]:
    """Per method: metrics with bootstrap CIs over prompts; paired differences of each guide to the first."""
    stds = {f: _pooled_std(records, f) for f in {r["fold"] for r in records}}
    picks = [per_prompt(r, stds[r["fold"]]) for r in records]
    names = list(dict.fromkeys(k for p in picks for k in p))
    keys = list(METRICS) + [f"guide:{g}" for g in guides]
    methods = {}
    for name in names:
        rows = [p[name] for p in picks if name in p]
        methods[name] = {k: stat([x.get(k) for x in rows], resamples) for k in keys}
        methods[name]["prompts"] = len(rows)
    paired: dict[str, dict[str, Any]] = {}
    base = guides[0]
    for g in guides[1:]:
        for method in METHODS:
            a, b = f"{base}/{method}", f"{g}/{method}"
            both = [p for p in picks if a in p and b in p]
            if both:
                paired[f"{g} - {base}, {method}"] = {
                    k: stat([_diff(p[b].get(k), p[a].get(k)) for p in both], resamples)
                    for k in ("win_rate", "gold_z", *(f"guide:{h}" for h in guides))}
    compute: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(k for r in records for k in r.get("compute", {})):
        rows = [r["compute"][key] for r in records if key in r["compute"]]
        fields = sorted({k for row in rows for k in row})
        compute[key] = {"prompts": len(rows), **{f"{k}_per_prompt": sum(row.get(k, 0) for row in rows) / len(rows)
                                                 for k in fields}}
    return {"prompts": len(records), "folds": {str(f): sum(r["fold"] == f for r in records) for f in stds},
            "gold_sample_std": {str(f): s for f, s in stds.items()}, "methods": methods, "paired": paired,
            "compute": compute}


def to_markdown(summary: dict[str, Any], cfg: PrmGuidedConfig, command: str) -> str:
    guides = list(cfg.guides)
    lines = ["# PRM-guided search on HH-RLHF prompts", "", f"Command: `{command}`", "",
             f"Policy `{cfg.policy.model}`; prompts: {summary['prompts']} held-out HH-RLHF pairs' prompts "
             f"({cfg.prompts_per_fold} per fold, folds by hashed pair id); T = {cfg.max_new_tokens} tokens; sampling "
             f"temperature {cfg.sampling.temperature}, top-p {cfg.sampling.top_p}; seed {cfg.seed}. Guides: "
             + ", ".join(f"{k} = `{v}`" for k, v in cfg.guides.items())
             + f". BoN N = {cfg.n}; ARGS greedy k = {cfg.args.k}, w = {cfg.args.w}; CBS W = {cfg.cbs.beam_width}, "
             f"K = {cfg.cbs.successors}, L = {cfg.cbs.chunk_length}; CARDS τ_u = {cfg.cards.tau_u}, segments <= "
             f"{cfg.cards.max_segment_tokens} tokens, <= {cfg.cards.max_rejections} rejections, thresholds = the "
             f"{cfg.cards.calibration_quantile} quantile of each guide's scores on {cfg.calibration_prompts} "
             "unreported prompts.",
             "", "Gold: each prompt judged by the RM trained on the *other* fold's pairs. Win rate: share of the "
             "prompt's N unguided samples the output beats under that gold RM (ties half; 0.5 = sampling). "
             "gold z: (gold - mean of the N samples) / the fold's sample std. CIs: percentile bootstrap 95% over "
             f"prompts ({cfg.bootstrap_resamples} resamples).", ""]
    if "gold_accuracy" in summary:
        rows = [[a["gold"], "external" if a["trained_on_fold"] is None else a["trained_on_fold"], a["pairs"],
                 fmt(a["accuracy"], True)] for a in summary["gold_accuracy"]]
        lines += ["Gold RMs, accuracy on the human labels of the pairs they did not train on:", "",
                  markdown_table(["gold RM", "trained on fold", "judged pairs", "accuracy %"], rows), ""]
    header = ["method", "win rate vs samples", "gold z", *[f"{g} score" for g in guides], "diversity", "coherence",
              "tokens", "complete %"]
    rows = []
    for name, m in summary["methods"].items():
        rows.append([name, fmt(m["win_rate"], True), fmt(m["gold_z"], digits=2),
                     *[fmt(m[f"guide:{g}"], digits=2) for g in guides], fmt(m["diversity"], digits=2),
                     fmt(m["coherence"], digits=2), f"{m['tokens']['mean']:.0f}",
                     f"{100 * m['complete']['mean']:.0f}"])
    lines += [markdown_table(header, rows), ""]
    if summary["paired"]:
        keys = ["win_rate", "gold_z", *(f"guide:{g}" for g in guides)]
        rows = []
        for name, v in summary["paired"].items():
            cells = [fmt(v[k], True) if k == "win_rate" else fmt(v.get(k), digits=2) for k in keys]
            rows.append([name, *[f"**{c}**" if _excludes_zero(v.get(k) or {}) else c for c, k in zip(cells, keys)]])
        lines += ["Paired differences on the same prompts (bold: the 95% CI excludes 0); the guide-score columns "
                  "ask each guide which guided output it prefers:", "",
                  markdown_table(["comparison", "Δ win rate (pp)", "Δ gold z", *[f"Δ {g} score" for g in guides]],
                                 rows), ""]
    crow = [[key, f"{c.get('policy_tokens_generated_per_prompt', 0):.0f}",
             f"{c.get('policy_tokens_prefilled_per_prompt', 0):.0f}", f"{c.get('scorer_tokens_per_prompt', 0):.0f}",
             f"{c.get('scorer_calls_per_prompt', 0):.0f}", f"{c.get('seconds_per_prompt', 0):.2f}"]
            for key, c in summary["compute"].items()]
    lines += ["Compute per prompt (`<guide>/bon` is the scoring of the shared `samples`; add both for BoN's total):",
              "", markdown_table(["stage", "tokens generated", "policy prefill", "scorer tokens", "scorer calls",
                                  "seconds"], crow), ""]
    return "\n".join(lines)


def _excludes_zero(s: dict[str, Any]) -> bool:
    return s.get("ci_low") is not None and (s["ci_low"] > 0 or s["ci_high"] < 0)


def plot(summary: dict[str, Any], cfg: PrmGuidedConfig, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guides = list(cfg.guides)
    methods = [m for m in METHODS if any(f"{g}/{m}" in summary["methods"] for g in guides)]
    if not methods:
        return False
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(methods) * len(guides) / 2, 3.8))
    width = 0.8 / len(guides)
    for gi, g in enumerate(guides):
        xs, ys, lo, hi = [], [], [], []
        for mi, m in enumerate(methods):
            s = summary["methods"].get(f"{g}/{m}", {}).get("win_rate")
            if s and s["mean"] is not None:
                xs.append(mi + (gi - (len(guides) - 1) / 2) * width)
                ys.append(100 * s["mean"])
                lo.append(100 * (s["mean"] - s["ci_low"]))
                hi.append(100 * (s["ci_high"] - s["mean"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=g)
    ax.axhline(50, color="gray", ls=":", lw=1, label="unguided sample")
    oracle = summary["methods"].get("gold-best of N (oracle)", {}).get("win_rate")
    if oracle and oracle["mean"] is not None:
        ax.axhline(100 * oracle["mean"], color="g", ls=":", lw=1, label="gold-best of N")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("gold win rate vs N samples (%)")
    ax.set_title(f"Guided search, {summary['prompts']} HH prompts (95% bootstrap CIs)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return True


def write_summary(cfg: PrmGuidedConfig, command: str) -> dict[str, Any]:
    gold = Path(cfg.output_dir) / "gold_accuracy.json"

    def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
        summary = summarize_records(records, list(cfg.guides), cfg.bootstrap_resamples)
        if gold.exists():
            summary["gold_accuracy"] = json.loads(gold.read_text())
        return summary

    return write_summary_files(cfg, command, summarize, to_markdown,
                               lambda summary, path: plot(summary, cfg, path), "win_rate.png")


def main(argv: list[str] | None = None) -> None:
    experiment_main(PrmGuidedConfig, "experiments.prm_guided", run, write_summary, argv)


if __name__ == "__main__":
    main()
