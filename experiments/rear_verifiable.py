"""REAR on verifiable preferences (issue 8, part 1; REAR paper section 5.2, Fig. 2-3).

    python -m experiments.rear_verifiable --config recipes/experiments/rear_verifiable_smollm2.yaml
    python -m experiments.rear_verifiable --config ... --questions 8 --n 4 --max_new_tokens 32  # smoke
    python -m experiments.rear_verifiable --config ... --summarize_only true   # tables/plot again

Real helpful questions (HH-RLHF helpful, DOVE test split) are paired round-robin
with preferences a program can check (``decoding.verifiable``); the preference is
in the policy's context. Per prompt, with the same seeds for every method:

* ``greedy``: temperature 0 with the preference;
* ``bon``: N candidates sampled once; REAR's two sums ``A`` (question only) and
  ``B`` (with the preference) kept per candidate, so Best-of-N with REAR at every
  lambda, with and without length normalisation, is a post-hoc selection that
  equals a separate ``best_of_n`` run per lambda (``decoding.scorers.rear``); the
  random pick (expected over the N) and the oracle (any of the N satisfies) come
  from the same candidates;
* ``genrm``: the same N candidates scored by the policy as its own yes/no judge
  (REAR appendix C) -- Best-of-N with GenRM;
* ``dvts``: DVTS with REAR (``n / width`` subtrees of width ``width``, steps split
  on line breaks).

Every candidate is checked by its preference's verifier and gets a helpfulness
proxy: prompt-answer coherence (MiniLM cosine between the question and the answer)
and, when ``reward_model`` is set, the reward of an RM trained on HH-RLHF pairs.

Prompts are chosen deterministically (``selection_seed``): a ``dev`` split for any
choice made while setting the experiment up, then the ``test`` split that is
reported. Outputs in ``output_dir``: ``records.jsonl`` (one line per prompt: every
candidate with A, B, token counts, verifier result, proxies, compute),
``summary.json``, ``summary.md`` (tables with bootstrap 95% CIs over prompts) and
``satisfaction_vs_lambda.png``. A killed run resumes (prompts already written are
skipped); summaries and plots are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.decode import DecodeConfig, PolicyConfig, build_policy
from decoding.policy import SamplingParams
from decoding.prompts import DataConfig, to_prompt
from decoding.scorers.rear import rear_scores
from decoding.search.dvts import DvtsParams
from decoding.types import Meter
from decoding.verifiable import PREFERENCES, build_prompts
from experiments.common import (
    RunOptions,
    Stopwatch,
    append_records,
    atomic_savefig,
    claim_output_dir,
    experiment_main,
    fmt,
    lam_label,
    load_judge_rm,
    markdown_table,
    read_records,
    resolve_data,
    set_threads,
    stat,
    symlog_positions,
    use_meter,
    write_summary_files,
)
from sp_prm.errors import ConfigError

METHODS = ("greedy", "bon", "genrm", "dvts")
# Fields whose change makes earlier records of an output_dir incomparable (resume refuses to mix them).
_FINGERPRINT = ("policy", "sampling", "data_path", "preferences", "preference_as", "questions", "dev_questions",
                "selection_seed", "seed", "n", "max_new_tokens", "dvts", "dvts_lam", "dvts_length_normalize")
_MOVED = {"dvts_width": "dvts.width", "dvts_max_steps": "dvts.max_steps", "dvts_max_step_tokens": "dvts.max_step_tokens"}


@dataclass
class RearVerifiableConfig(RunOptions):
    """REAR on verifiable preferences: greedy, Best-of-N with a REAR lambda sweep, DVTS with REAR, BoN with GenRM."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    data_path: str = field(
        default="../shared/data/hh-rlhf-helpful-dove/test.jsonl",
        metadata={"help": "jsonl with an 'instruction' per row (relative: to the working dir, else the repo root)."})
    question_field: str = field(default="instruction", metadata={"help": "Field of data_path holding the question."})
    preferences: list[str] = field(
        default_factory=lambda: ["bullets", "two_sentences", "summary_first", "no_you", "end_question"],
        metadata={"help": f"Preferences paired round-robin with the questions; known: {sorted(PREFERENCES)}."})
    preference_as: str = field(default="system", metadata={"help": "How the policy sees the preference: system | "
                                                                   "prefix (of the question)."})
    questions: int = field(default=200, metadata={"help": "Reported (test) prompts: one question + one preference."})
    dev_questions: int = field(default=20, metadata={"help": "Held-out dev prompts (drawn first, never reported "
                                                             "with the test split); 0 = none."})
    splits: list[str] = field(default_factory=lambda: ["dev", "test"], metadata={"help": "Splits to run."})
    selection_seed: int = field(default=0, metadata={"help": "Seed of the shuffle that picks and splits questions."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (candidate seeds derive from it and the id)."})
    n: int = field(default=16, metadata={"help": "Best-of-N candidates; DVTS total completions."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget per response (all methods)."})
    lams: list[float] = field(default_factory=lambda: [0.0, 1.0, 3.0, 10.0, 20.0, 50.0],
                              metadata={"help": "REAR lambdas of the Best-of-N sweep (.inf: the limit B - A)."})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": f"Subset of {METHODS}."})
    dvts: DvtsParams = field(default_factory=lambda: DvtsParams(n=16, width=4, max_steps=16, max_step_tokens=64),
                             metadata={"help": "DVTS (decoding.search.dvts); its n is set to n (Best-of-N's budget) "
                                               "and steps end at a line break."})
    dvts_lam: float = field(default=20.0, metadata={"help": "REAR lambda of DVTS."})
    dvts_length_normalize: bool = field(default=False, metadata={"help": "DVTS: length-normalised REAR."})
    coherence_model: str | None = field(default="builtin:all-minilm-l6-v2",
                                        metadata={"help": "Embedder of the coherence proxy; null: skip."})
    reward_model: str | None = field(default=None, metadata={"help": "RM path for the reward proxy (e.g. an ORM "
                                                                      "trained on HH-RLHF pairs); null: skip."})
    reward_dtype: str = field(default="float32", metadata={"help": "Reward model dtype."})
    batch_size: int = field(default=2, metadata={"help": "Prompts decoded together."})
    output_dir: str = field(default="outputs/experiments/rear_verifiable_smollm2", metadata={"help": "Output folder."})

    @staticmethod
    def moved_keys() -> dict[str, str]:
        return _MOVED

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        if isinstance(self.sampling, dict):
            self.sampling = SamplingParams(**self.sampling)
        dvts = self.dvts if isinstance(self.dvts, dict) else dataclasses.asdict(self.dvts)
        width = dvts.get("width", 4)
        if "dvts" in self.methods and self.n % width:
            raise ConfigError(f"n={self.n} must be a multiple of dvts.width={width}")
        # dvts.n is n (Best-of-N's budget; a config that does not run DVTS keeps a valid block); steps: lines.
        self.dvts = DvtsParams(**{**dvts, "n": self.n if self.n % width == 0 else width, "delimiter": "\n"})
        unknown = [p for p in self.preferences if p not in PREFERENCES]
        if unknown or not self.preferences:
            raise ConfigError(f"preferences: unknown {unknown}; known: {sorted(PREFERENCES)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"methods: unknown {bad}; choose from {METHODS}")
        if "genrm" in self.methods and "bon" not in self.methods:
            raise ConfigError("methods: genrm scores the bon candidates; add bon")
        if any(s not in ("dev", "test") for s in self.splits):
            raise ConfigError(f"splits must be dev and/or test, got {self.splits}")
        if self.n < 1 or self.max_new_tokens < 1 or self.questions < 0 or self.dev_questions < 0:
            raise ConfigError("n and max_new_tokens must be >= 1; questions and dev_questions >= 0")
        self.lams = [float(x) for x in self.lams]
        if any(lam < 0 or math.isnan(lam) for lam in self.lams):
            raise ConfigError(f"lams must be >= 0, got {self.lams}")
        if self.dvts_lam < 0 or self.batch_size < 1:
            raise ConfigError("dvts_lam must be >= 0 and batch_size >= 1")
        if self.preference_as not in ("system", "prefix"):
            raise ConfigError(f"preference_as must be system or prefix, got {self.preference_as!r}")


# -- prompts -------------------------------------------------------------------------------------------


def select_prompts(cfg: RearVerifiableConfig) -> list[dict[str, str]]:
    """The run's prompt records (dev first, then test), deterministic in ``selection_seed``."""
    path = resolve_data(cfg.data_path, "data_path")
    rows = []
    with path.open() as f:
        for i, line in enumerate(f):
            if line.strip():
                q = json.loads(line).get(cfg.question_field)
                if isinstance(q, str) and q.strip():
                    rows.append((f"hh{i}", q.strip()))
    need = cfg.dev_questions + cfg.questions
    if need > len(rows):
        raise ConfigError(f"{path} has {len(rows)} questions; dev_questions + questions = {need}")
    random.Random(cfg.selection_seed).shuffle(rows)
    out = []
    for split, chunk in (("dev", rows[: cfg.dev_questions]), ("test", rows[cfg.dev_questions: need])):
        for rec in build_prompts(chunk, cfg.preferences):
            out.append({**rec, "split": split})
    return out


# -- running -------------------------------------------------------------------------------------------


def _verify(name: str, text: str) -> bool:
    return bool(PREFERENCES[name].check(text))


def pending(cfg: RearVerifiableConfig) -> tuple[Path, list[tuple[dict[str, Any], Any]], int]:
    """Stage 1: pick the prompts (fails before anything is written), claim ``output_dir``, skip decoded ones.

    Returns the records file, the pending (record, prompt) pairs and the number of prompts in all.
    """
    records = [r for r in select_prompts(cfg) if r["split"] in cfg.splits]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_output_dir(cfg, out, _FINGERPRINT)
    path = out / "records.jsonl"
    done = {r["id"] for r in read_records(path)}
    data_cfg = DataConfig(preference_as=cfg.preference_as)
    prompts = [to_prompt(r, i, data_cfg) for i, r in enumerate(records)]
    return path, [(r, p) for r, p in zip(records, prompts) if r["id"] not in done], len(records)


def _texts(policy: Any, candidates: Any, scores: bool = False) -> list[dict[str, Any]]:
    return [{"text": policy.decode(c.token_ids), "tokens": len(c.token_ids), "complete": c.complete,
             **({"score": c.score} if scores else {})} for c in candidates]


class BatchRun:
    """One batch of prompts: its records under construction and each method's compute, counted per prompt."""

    def __init__(self, policy: Any, chunk: list[tuple[dict[str, Any], Any]]) -> None:
        self.policy = policy
        self.batch = [p for _, p in chunk]
        self.recs = {p.id: {"id": r["id"], "split": r["split"], "question": r["question"],
                            "preference": r["preference"], "preference_name": r["preference_name"], "compute": {}}
                     for r, p in chunk}

    def timed(self, method: str, fn: Any, *objects: Any) -> Any:
        """``fn(meter)`` with the compute of ``policy`` and ``objects`` counted under ``method`` per prompt."""
        m, sw = use_meter(Meter(), self.policy, *objects), Stopwatch()
        with sw.time():
            res = fn(m)
        for p in self.batch:
            self.recs[p.id]["compute"][method] = {**m.for_group(p.index),
                                                  "seconds": round(sw.seconds / len(self.batch), 4)}
        return res


def decode_batch(cfg: RearVerifiableConfig, policy: Any, scorers: dict[str, Any], br: BatchRun) -> None:
    """Stage 2: greedy; Best-of-N's candidates with both REAR sums (the lambda sweep); GenRM on them; DVTS."""
    from decoding.scorers.rear import best_of_n_terms
    from decoding.search.best_of_n import best_of_n
    from decoding.search.dvts import run as dvts

    batch, recs = br.batch, br.recs
    if "greedy" in cfg.methods:
        g = scorers["greedy"]
        res = br.timed("greedy", lambda m: best_of_n(policy, g, batch, 1, SamplingParams(temperature=0.0),
                                                     cfg.max_new_tokens, cfg.seed), g)
        for r in res:
            recs[r.prompt.id]["greedy"] = _texts(policy, [r.best_candidate])[0]
    if "bon" in cfg.methods:
        swept = br.timed("bon", lambda m: best_of_n_terms(policy, batch, cfg.n, cfg.sampling, cfg.max_new_tokens,
                                                          cfg.seed, max_batch_tokens=cfg.max_batch_tokens, meter=m))
        for s in swept:
            recs[s.prompt.id]["bon"] = {"A": s.A.tolist(), "B": s.B.tolist(), "n_terms": list(s.n_terms),
                                        "candidates": _texts(policy, s.candidates)}
        if "genrm" in scorers:
            genrm = scorers["genrm"]
            flat = [(s.prompt, c.partial(policy)) for s in swept for c in s.candidates]
            scores = br.timed("genrm", lambda m: genrm.score([p for p, _ in flat], [c for _, c in flat]).tolist(),
                              genrm)
            for i, s in enumerate(swept):
                recs[s.prompt.id]["bon"]["genrm"] = scores[i * cfg.n: (i + 1) * cfg.n]
    if "dvts" in cfg.methods:
        d = scorers["dvts"]
        res = br.timed("dvts", lambda m: dvts(policy, d, batch, cfg.dvts, cfg.sampling, cfg.max_new_tokens,
                                              cfg.seed), d)
        for r in res:
            recs[r.prompt.id]["dvts"] = {"lam": cfg.dvts_lam, "length_normalize": cfg.dvts_length_normalize,
                                         "best": r.best, "candidates": _texts(policy, r.candidates, scores=True)}


def annotate_batch(cfg: RearVerifiableConfig, embedder: Any, rm: Any, br: BatchRun) -> None:
    """Stage 3: every output checked by its preference's verifier, and the coherence / reward proxies."""
    texts: list[tuple[str, dict[str, Any]]] = []  # (question, candidate dict) pairs for the proxies
    for rec in br.recs.values():
        cands = [rec["greedy"]] if "greedy" in rec else []
        for key in ("bon", "dvts"):
            if key in rec:
                cands += rec[key]["candidates"]
        for c in cands:
            c["satisfied"] = _verify(rec["preference_name"], c["text"])
            texts.append((rec["question"], c))
    if not texts:
        return
    proxies: dict[str, Any] = {}
    if embedder is not None:
        from decoding.metrics.coherence import coherence

        proxies["coherence"] = lambda: coherence([q for q, _ in texts], [c["text"] for _, c in texts], embedder)
    if rm is not None:
        from decoding.metrics.reward import rewards

        proxies["reward"] = lambda: rewards(rm[0], rm[1], [q for q, _ in texts], [c["text"] for _, c in texts], rm[2],
                                            complete=[c["complete"] for _, c in texts],
                                            max_batch_tokens=cfg.max_batch_tokens)
    for name, compute in proxies.items():
        sw = Stopwatch()
        with sw.time():
            values = compute()
        for (_, c), v in zip(texts, values):
            c[name] = v
        for rec in br.recs.values():
            rec["compute"][name] = {"seconds": round(sw.seconds / len(br.batch), 4)}


def run(cfg: RearVerifiableConfig, policy: Any = None, embedder: Any = None) -> Path:
    """Decode every pending prompt into ``output_dir/records.jsonl``; models can be passed in (tests)."""
    from decoding.scorers import GenRMScorer, RearScorer

    set_threads(cfg.threads)
    path, todo, total = pending(cfg)
    if not todo:
        return path
    meter = Meter()
    policy = policy or build_policy(DecodeConfig(policy=cfg.policy), meter)
    policy.delimiter = cfg.dvts.delimiter
    if embedder is None and cfg.coherence_model:
        from decoding.metrics.coherence import Embedder

        embedder = Embedder(cfg.coherence_model, device=str(policy.device))
    rm = load_judge_rm(cfg.reward_model, str(policy.device), cfg.reward_dtype) if cfg.reward_model else None
    kw = dict(max_batch_tokens=cfg.max_batch_tokens)
    scorers = {"greedy": RearScorer(policy, 1.0, **kw),  # lambda = 1 reuses the sampling log-probs: no extra pass
               "dvts": RearScorer(policy, cfg.dvts_lam, length_normalize=cfg.dvts_length_normalize, **kw)}
    if "genrm" in cfg.methods:
        scorers["genrm"] = GenRMScorer(policy, **kw)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(todo), desc="rear-verifiable", unit="prompt")
    for start in range(0, len(todo), cfg.batch_size):
        br = BatchRun(policy, todo[start: start + cfg.batch_size])
        decode_batch(cfg, policy, scorers, br)
        annotate_batch(cfg, embedder, rm, br)
        append_records(path, [br.recs[p.id] for p in br.batch])
        if bar is not None:
            bar.update(len(br.batch))
    if bar is not None:
        bar.close()
    return path


# -- analysis ------------------------------------------------------------------------------------------


def _pick(c: dict[str, Any]) -> dict[str, Any]:
    return {"satisfied": float(c["satisfied"]), "coherence": c.get("coherence"), "reward": c.get("reward"),
            "tokens": c["tokens"], "complete": float(c["complete"])}


def _mean_defined(values: list[Any]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


def method_picks(rec: dict[str, Any], lams: list[float]) -> dict[str, dict[str, Any]]:
    """Per method, what it returns for this prompt (expected values for the random pick)."""
    out: dict[str, dict[str, Any]] = {}
    if "greedy" in rec:
        out["greedy"] = _pick(rec["greedy"])
    if "bon" in rec:
        b = rec["bon"]
        cands = b["candidates"]
        out["random pick (expected)"] = {
            k: _mean_defined([_pick(c)[k] for c in cands]) for k in ("satisfied", "coherence", "reward", "tokens",
                                                                       "complete")}
        out["oracle (any of N)"] = {"satisfied": float(any(c["satisfied"] for c in cands)), "coherence": None,
                                   "reward": None, "tokens": None, "complete": None}
        for norm in (False, True):
            for lam in lams:
                s = rear_scores(b["A"], b["B"], b["n_terms"], lam, norm).tolist()
                j = max(range(len(s)), key=lambda i: (s[i], -i))
                out[_rear_name(lam, norm)] = _pick(cands[j])
        if "genrm" in b:
            g = b["genrm"]
            out["BoN GenRM"] = _pick(cands[max(range(len(g)), key=lambda i: (g[i], -i))])
    if "dvts" in rec:
        d = rec["dvts"]
        out[f"DVTS REAR λ={lam_label(d['lam'])}" + (" /len" if d["length_normalize"] else "")] = \
            _pick(d["candidates"][d["best"]])
    return out


def _rear_name(lam: float, norm: bool) -> str:
    return f"BoN REAR λ={lam_label(lam)}" + (" /len" if norm else "")


def summarize_records(records: list[dict[str, Any]], lams: list[float], resamples: int = 2000) -> dict[str, Any]:
    """Per split: per method satisfaction / proxies with bootstrap CIs, per preference rates, compute."""
    out: dict[str, Any] = {}
    for split in ("dev", "test"):
        recs = [r for r in records if r.get("split") == split]
        if not recs:
            continue
        picks = [method_picks(r, lams) for r in recs]
        names = list(dict.fromkeys(k for p in picks for k in p))
        methods = {}
        for name in names:
            rows = [p[name] for p in picks if name in p]
            entry = {k: stat([x[k] for x in rows], resamples) for k in ("satisfied", "coherence", "reward", "tokens",
                                                                          "complete")}
            if name != "random pick (expected)" and all("random pick (expected)" in p for p in picks):
                entry["satisfied_minus_random"] = stat(
                    [p[name]["satisfied"] - p["random pick (expected)"]["satisfied"] for p in picks if name in p],
                    resamples)
            by_pref: dict[str, list[float]] = {}
            for r, p in zip(recs, picks):
                if name in p:
                    by_pref.setdefault(r["preference_name"], []).append(p[name]["satisfied"])
            entry["by_preference"] = {k: {"n": len(v), "rate": sum(v) / len(v)} for k, v in sorted(by_pref.items())}
            methods[name] = entry
        compute: dict[str, dict[str, float]] = {}
        for key in ("greedy", "bon", "genrm", "dvts", "coherence", "reward"):
            rows = [r["compute"][key] for r in recs if key in r.get("compute", {})]
            if rows:
                fields = sorted({k for row in rows for k in row})
                compute[key] = {"prompts": len(rows), **{f"{k}_per_prompt": sum(row.get(k, 0) for row in rows) / len(rows)
                                                         for k in fields},
                                "seconds_total": sum(row.get("seconds", 0.0) for row in rows)}
        out[split] = {"prompts": len(recs), "methods": methods, "compute": compute}
    return out


def to_markdown(summary: dict[str, Any], cfg: RearVerifiableConfig, command: str) -> str:
    lines = ["# REAR on verifiable preferences", "",
             f"Command: `{command}`", "",
             f"Policy `{cfg.policy.model}`; data `{cfg.data_path}`; preferences {', '.join(cfg.preferences)} "
             f"(as {cfg.preference_as}); N = {cfg.n}; max_new_tokens = {cfg.max_new_tokens}; temperature "
             f"{cfg.sampling.temperature}; seed {cfg.seed}; selection_seed {cfg.selection_seed}; DVTS width "
             f"{cfg.dvts.width}, λ = {lam_label(cfg.dvts_lam)}. CIs: percentile bootstrap 95% over prompts "
             f"({cfg.bootstrap_resamples} resamples). Random pick: expectation over the N candidates. Oracle: share "
             "of prompts where any of the N Best-of-N candidates satisfies. '/len': REAR score divided by the "
             "number of summed tokens (not the paper's default).", ""]
    for split in ("test", "dev"):
        if split not in summary:
            continue
        s = summary[split]
        lines += [f"## {split} split ({s['prompts']} prompts)" + (" -- held out, not the reported numbers"
                                                                  if split == "dev" else ""), ""]
        has_reward = any(m["reward"]["mean"] is not None for m in s["methods"].values())
        header = ["method", "satisfied %", "Δ vs random (pp)", "coherence"] + (["reward"] if has_reward else []) + \
            ["tokens", "complete %"]
        rows = []
        for name, m in s["methods"].items():
            d = m.get("satisfied_minus_random")
            row = [name, fmt(m["satisfied"], True), fmt(d, True) if d else "", fmt(m["coherence"])]
            if has_reward:
                row.append(fmt(m["reward"]))
            row += [f"{m['tokens']['mean']:.0f}" if m["tokens"]["mean"] is not None else "n/a",
                    f"{100 * m['complete']['mean']:.0f}" if m["complete"]["mean"] is not None else "n/a"]
            rows.append(row)
        lines += [markdown_table(header, rows), ""]
        prefs = sorted({k for m in s["methods"].values() for k in m["by_preference"]})
        rows = [[name] + [f"{100 * m['by_preference'][p]['rate']:.0f} ({m['by_preference'][p]['n']})"
                          if p in m["by_preference"] else "" for p in prefs] for name, m in s["methods"].items()]
        lines += ["Satisfied % by preference (prompts):", "", markdown_table(["method"] + prefs, rows), ""]
        crow = []
        for key, c in s["compute"].items():
            crow.append([key, c["prompts"], f"{c.get('policy_tokens_generated_per_prompt', 0):.0f}",
                         f"{c.get('policy_tokens_prefilled_per_prompt', 0):.0f}",
                         f"{c.get('scorer_tokens_per_prompt', 0):.0f}", f"{c['seconds_per_prompt']:.2f}",
                         f"{c['seconds_total']:.0f}"])
        lines += ["Compute (BoN REAR at every λ, random and oracle share the `bon` samples; BoN GenRM = bon + genrm):",
                  "", markdown_table(["stage", "prompts", "tokens generated / prompt", "policy prefill / prompt",
                                      "scorer tokens / prompt", "s / prompt", "s total"], crow), ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], lams: list[float], path: Path, split: str = "test") -> bool:
    if split not in summary:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary[split]["methods"]
    metrics = [("satisfied", "preference satisfied (%)", 100.0), ("coherence", "prompt-answer coherence", 1.0)]
    if any(m["reward"]["mean"] is not None for m in methods.values()):
        metrics.append(("reward", "reward (HH RM)", 1.0))
    xs, labels = symlog_positions(lams)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0))
    for ax, (key, ylabel, scale) in zip(axes, metrics):
        for norm, style in ((False, "o-"), (True, "s--")):
            pts = [(x, methods[_rear_name(lam, norm)][key]) for x, lam in zip(xs, lams)
                   if _rear_name(lam, norm) in methods and methods[_rear_name(lam, norm)][key]["mean"] is not None]
            if not pts:
                continue
            x = [p[0] for p in pts]
            mean = [scale * p[1]["mean"] for p in pts]
            lo = [scale * p[1]["ci_low"] for p in pts]
            hi = [scale * p[1]["ci_high"] for p in pts]
            ax.plot(x, mean, style, label="BoN REAR" + (" /len" if norm else " (sum)"))
            ax.fill_between(x, lo, hi, alpha=0.15)
        for name, color in (("greedy", "k"), ("random pick (expected)", "gray"), ("oracle (any of N)", "g"),
                            ("BoN GenRM", "m")):
            if name in methods and methods[name][key]["mean"] is not None:
                ax.axhline(scale * methods[name][key]["mean"], color=color, ls=":", lw=1, label=name)
        for name, m in methods.items():
            if name.startswith("DVTS") and m[key]["mean"] is not None:
                lam = float(name.split("λ=")[1].split()[0])
                x = symlog_positions(list(lams) + [lam])[0][-1]
                ax.errorbar([x], [scale * m[key]["mean"]], yerr=[[scale * (m[key]["mean"] - m[key]["ci_low"])],
                                                                 [scale * (m[key]["ci_high"] - m[key]["mean"])]],
                            fmt="D", color="r", label=name)
        ax.set_xticks(xs, labels)
        ax.set_xlabel("λ")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"REAR on verifiable preferences ({split}: {summary[split]['prompts']} prompts, 95% bootstrap CIs)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return True


def write_summary(cfg: RearVerifiableConfig, command: str) -> dict[str, Any]:
    return write_summary_files(cfg, command, lambda recs: summarize_records(recs, cfg.lams, cfg.bootstrap_resamples),
                               to_markdown, lambda summary, path: plot(summary, cfg.lams, path),
                               "satisfaction_vs_lambda.png")


def main(argv: list[str] | None = None) -> None:
    experiment_main(RearVerifiableConfig, "experiments.rear_verifiable", run, write_summary, argv)


if __name__ == "__main__":
    main()
