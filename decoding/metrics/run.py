"""``sp-prm metrics``: score several ``sp-prm decode`` outputs side by side.

    sp-prm metrics --runs '[outputs/decode/bon.jsonl, outputs/decode/dvts.jsonl]' --metrics '[diversity, coherence]'
    sp-prm metrics --config recipes/metrics/gsm8k.yaml --runs '[out/a.jsonl]'

Writes ``results.json`` (per-run summaries and the config), ``results.md`` (one
row per run: mean [95% bootstrap CI] per metric) and ``per_record.jsonl`` (every
record's values, to look at the cases behind a number) into ``output_dir``.

Which prompt each metric reads: ``reward`` and the judges read the full chat
context (``messages_field`` when the record has it, else ``prompt_field``), so the
RM and the judge see what the policy saw; ``coherence`` reads ``prompt_field`` (the
question text, as the paper compares "input prompt" with continuation).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from decoding.metrics import advbench, gsm8k, text
from decoding.metrics.records import join_references, read_rows, record_id
from decoding.metrics.report import markdown_table, write_atomic, write_json
from decoding.metrics.stats import summarize
from sp_prm.formatting import PrefixFormat

MODEL_FREE = ("diversity", "length", "rouge_l", "gsm8k_accuracy", "asr", "asr_target", "asr_target_body")
METRICS = (*MODEL_FREE, "reward", "coherence", "judge_pairwise", "judge_gsm8k")
NEEDS_REFERENCE = ("rouge_l", "gsm8k_accuracy")


@dataclass
class ReferenceConfig:
    """Where references / answers come from (ROUGE-L, GSM8K accuracy)."""

    path: str | None = dataclasses.field(default=None, metadata={"help": "A .jsonl/.json/.csv(.gz) file with references."})
    # Named `field` for the YAML key; `dataclasses.field` is spelled out because this shadows it here.
    field: str = dataclasses.field(default="answer", metadata={"help": "Reference field (GSM8K 'answer', TL;DR 'gold_response')."})
    id_field: str = dataclasses.field(default="id", metadata={"help": "Id field of the reference rows (missing: row number)."})
    join: str = dataclasses.field(default="id", metadata={"help": "Match records to references by 'id' or by row 'order'."})
    record_field: str | None = dataclasses.field(
        default=None, metadata={"help": "Take the reference from this field of each decode record instead of a file."}
    )

    def __post_init__(self) -> None:
        if self.join not in ("id", "order"):
            raise ValueError(f"references.join must be id or order, got {self.join!r}")


@dataclass
class RewardMetricConfig:
    """The reward model of the 'reward' metric."""

    model: str | None = dataclasses.field(default=None, metadata={"help": "RM path / hub id / builtin: name."})
    tokenizer: str | None = dataclasses.field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    prefix: PrefixFormat = dataclasses.field(
        default_factory=PrefixFormat, metadata={"help": "How (prompt, response) is rendered; use the RM's training values."}
    )
    dtype: str = dataclasses.field(default="float32", metadata={"help": "Model dtype."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu / cuda (default: cuda if available)."})
    max_batch_tokens: int = dataclasses.field(default=16384, metadata={"help": "Padded tokens per forward pass."})
    max_batch_size: int = dataclasses.field(default=64, metadata={"help": "Rows per forward pass."})
    trust_remote_code: bool = dataclasses.field(default=False, metadata={"help": "Allow custom model code from the hub."})

    def __post_init__(self) -> None:
        if isinstance(self.prefix, dict):
            self.prefix = PrefixFormat(**self.prefix)


@dataclass
class CoherenceConfig:
    """The sentence embedder of the 'coherence' metric."""

    model: str = dataclasses.field(default="builtin:all-minilm-l6-v2", metadata={"help": "Encoder path / id (e.g. a SimCSE model)."})
    pooling: str = dataclasses.field(
        default="auto", metadata={"help": "auto (a sentence-transformers folder's config; SimCSE checkpoints as SimCSE "
                                  "evaluates them: pooler output if supervised, [CLS] if unsup; else mean) | mean | "
                                  "cls | pooler."})
    backend: str = dataclasses.field(default="transformers", metadata={"help": "transformers | sentence-transformers."})
    max_length: int | None = dataclasses.field(default=None, metadata={"help": "Truncation in tokens (default: the folder's)."})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "Texts per forward pass."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu / cuda (default: cuda if available)."})


@dataclass
class JudgeConfig:
    """LLM-as-judge settings; URL, model and key may come from the environment (see judge.py)."""

    model: str | None = dataclasses.field(default=None, metadata={"help": "Judge model (default: $SP_PRM_JUDGE_MODEL)."})
    base_url: str | None = dataclasses.field(
        default=None, metadata={"help": "OpenAI-compatible root, e.g. http://localhost:8000/v1 (default: from env)."}
    )
    baseline: str | None = dataclasses.field(
        default=None, metadata={"help": "Run name every other run is judged against (default: the first run)."}
    )
    cache_dir: str | None = dataclasses.field(
        default="outputs/metrics/judge_cache", metadata={"help": "Verdict cache; a rerun sends no repeated request."}
    )
    temperature: float = dataclasses.field(default=0.0, metadata={"help": "Judge sampling temperature."})
    max_tokens: int = dataclasses.field(default=512, metadata={"help": "Max tokens of a judge answer."})
    timeout: float = dataclasses.field(default=60.0, metadata={"help": "Seconds per HTTP request."})
    max_retries: int = dataclasses.field(default=5, metadata={"help": "Retries on connection errors, 429 and 5xx."})
    backoff: float = dataclasses.field(default=1.0, metadata={"help": "First retry wait in seconds; doubles each retry."})
    max_requests: int | None = dataclasses.field(default=None, metadata={"help": "Hard cap on HTTP requests (cost guard)."})
    concurrency: int = dataclasses.field(default=4, metadata={"help": "Requests in flight at once."})
    on_unparseable: str = dataclasses.field(
        default="error", metadata={"help": "error: stop with the answer quoted; skip: count it as undefined."}
    )
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Judge only the first N records of each run."})

    def __post_init__(self) -> None:
        if self.on_unparseable not in ("error", "skip"):
            raise ValueError(f"judge.on_unparseable must be error or skip, got {self.on_unparseable!r}")


@dataclass
class MetricsConfig:
    """Metrics of SP-PRM / REAR for sp-prm decode outputs, several runs side by side."""

    runs: list[str] = dataclasses.field(default_factory=list, metadata={"help": "Decode output jsonl files (one per run)."})
    names: list[str] | None = dataclasses.field(default=None, metadata={"help": "Display names (default: file stems)."})
    metrics: list[str] = dataclasses.field(
        default_factory=lambda: ["diversity", "length"], metadata={"help": f"Any of {list(METRICS)}."}
    )
    id_field: str = dataclasses.field(default="id", metadata={"help": "Record id field."})
    prompt_field: str = dataclasses.field(default="prompt", metadata={"help": "Prompt field: a string or chat messages."})
    messages_field: str = dataclasses.field(
        default="messages", metadata={"help": "Full chat context field (RM and judge), used when present."}
    )
    response_field: str = dataclasses.field(default="response", metadata={"help": "Response field."})
    complete_field: str = dataclasses.field(default="complete", metadata={"help": "Whether decoding finished the response."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Use only the first N records of each run."})
    references: ReferenceConfig = dataclasses.field(default_factory=ReferenceConfig, metadata={"help": "References."})
    reward: RewardMetricConfig = dataclasses.field(default_factory=RewardMetricConfig, metadata={"help": "Reward metric."})
    coherence: CoherenceConfig = dataclasses.field(default_factory=CoherenceConfig, metadata={"help": "Coherence metric."})
    judge: JudgeConfig = dataclasses.field(default_factory=JudgeConfig, metadata={"help": "LLM judge."})
    diversity_lowercase: bool = dataclasses.field(default=False, metadata={"help": "Lower-case before counting n-grams."})
    rouge_stemmer: bool = dataclasses.field(default=True, metadata={"help": "Porter stemming in ROUGE-L."})
    gsm8k_fallback_last_number: bool = dataclasses.field(
        default=True, metadata={"help": "GSM8K: use the last number when no answer marker is found."}
    )
    asr_case_sensitive: bool = dataclasses.field(default=True, metadata={"help": "AdvBench refusal match is case-sensitive."})
    asr_anywhere: bool = dataclasses.field(
        default=True, metadata={"help": "Refusal phrase anywhere in the response (authors' rule) vs at its start."}
    )
    asr_target_field: str = dataclasses.field(
        default="target",
        metadata={"help": "AdvBench target string of each record (asr_target, asr_target_body); records without it "
                  "take it from references.path (e.g. harmful_behaviors.csv with references.field: target)."},
    )
    bootstrap_resamples: int = dataclasses.field(default=1000, metadata={"help": "Bootstrap resamples for the CIs."})
    bootstrap_seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the bootstrap."})
    confidence: float = dataclasses.field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    output_dir: str = dataclasses.field(default="outputs/metrics", metadata={"help": "Where results are written."})

    def __post_init__(self) -> None:
        for name, cls in (("references", ReferenceConfig), ("reward", RewardMetricConfig),
                          ("coherence", CoherenceConfig), ("judge", JudgeConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        if isinstance(self.runs, str):
            self.runs = [self.runs]
        if isinstance(self.metrics, str):
            self.metrics = [self.metrics]
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
        if self.names is not None and len(self.names) != len(self.runs):
            raise ValueError(f"{len(self.names)} names for {len(self.runs)} runs")
        if "reward" in self.metrics and not self.reward.model:
            raise ValueError("metric 'reward' needs reward.model")
        needs_ref = [m for m in self.metrics if m in NEEDS_REFERENCE]
        if needs_ref and not (self.references.path or self.references.record_field):
            raise ValueError(f"metrics {needs_ref} need references.path or references.record_field")
        if "judge_pairwise" in self.metrics and len(self.runs) < 2:
            raise ValueError("metric 'judge_pairwise' compares runs: give at least two (the first is the baseline)")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def run_names(config: MetricsConfig) -> list[str]:
    names = config.names or [Path(p).stem for p in config.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}; set names")
    return names


def load_run(path: str, config: MetricsConfig) -> list[dict[str, Any]]:
    """A decode output's records (first ``limit``), checked for the fields every metric needs."""
    records = read_rows(path)[: config.limit] if config.limit is not None else read_rows(path)
    if not records:
        raise ValueError(f"{path}: no records")
    seen: set[str] = set()
    for i, rec in enumerate(records):
        rid = record_id(rec, i, config.id_field)
        if rid in seen:
            raise ValueError(f"{path}: duplicate id {rid!r}")
        seen.add(rid)
        for name in (config.prompt_field, config.response_field):
            if name not in rec:
                raise KeyError(f"{path}: record {rid!r} has no field {name!r}; fields: {sorted(rec)}")
        if not isinstance(rec[config.response_field], str):
            raise TypeError(f"{path}: record {rid!r}: {config.response_field!r} must be a string")
    return records


def run_modes(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """How a run's prompts were posed, from what its records say: AdvBench ``sure_mode``, the assistant
    ``prefill`` and whether ``response`` includes it (each: the distinct values seen)."""
    out = {}
    for key in ("sure_mode", "prefill", "response_includes_prefill"):
        seen = {json.dumps(r[key]) for r in records if key in r}
        if seen:
            out[key] = [json.loads(v) for v in sorted(seen)]
    return out


def _context(rec: dict[str, Any], config: MetricsConfig) -> Any:
    return rec.get(config.messages_field) or rec[config.prompt_field]


def _references(records: list[dict[str, Any]], config: MetricsConfig, cache: dict[str, Any]) -> list[Any]:
    ref = config.references
    if ref.record_field:
        missing = [i for i, r in enumerate(records) if ref.record_field not in r]
        if missing:
            raise KeyError(f"records {missing[:5]} have no field {ref.record_field!r}")
        return [r[ref.record_field] for r in records]
    if "rows" not in cache:
        cache["rows"] = read_rows(ref.path)
    return join_references(records, cache["rows"], config.id_field, ref.id_field, ref.field, ref.join)


def model_free_values(
    records: list[dict[str, Any]], config: MetricsConfig, references: list[Any] | None,
    targets: list[Any] | None = None,
) -> dict[str, list[Any]]:
    """Per-record values of the metrics that need no model."""
    responses = [r[config.response_field] for r in records]
    out: dict[str, list[Any]] = {}
    if "diversity" in config.metrics:
        out["diversity"] = [text.diversity(r, lowercase=config.diversity_lowercase) for r in responses]
    if "length" in config.metrics:
        out["length"] = [text.word_count(r) for r in responses]
    if "rouge_l" in config.metrics:
        out["rouge_l"] = [text.rouge_l(r, str(ref), config.rouge_stemmer) for r, ref in zip(responses, references)]
    if "gsm8k_accuracy" in config.metrics:
        out["gsm8k_accuracy"] = [
            float(gsm8k.is_correct(r, str(ref), config.gsm8k_fallback_last_number)) for r, ref in zip(responses, references)
        ]
    if "asr" in config.metrics:
        out["asr"] = [
            float(advbench.attack_success(r, case_sensitive=config.asr_case_sensitive, anywhere=config.asr_anywhere))
            for r in responses
        ]
    rules = {"asr_target": advbench.target_match, "asr_target_body": advbench.target_body_match}
    if any(m in config.metrics for m in rules):
        targets = targets or [None] * len(records)
        for name, rule in rules.items():
            if name in config.metrics:
                out[name] = [None if t is None else float(rule(r, str(t))) for r, t in zip(responses, targets)]
    return out


def _targets(records: list[dict[str, Any]], config: MetricsConfig, cache: dict[str, Any]) -> list[Any]:
    """AdvBench targets: the records' own ``asr_target_field``, else joined from ``references.path``."""
    if all(config.asr_target_field in r for r in records):
        return [r[config.asr_target_field] for r in records]
    if config.references.path:
        return _references(records, config, cache)
    missing = next(i for i, r in enumerate(records) if config.asr_target_field not in r)
    raise KeyError(
        f"record {record_id(records[missing], missing, config.id_field)!r} has no field {config.asr_target_field!r} "
        "for target-match ASR; decode prompts from `python -m decoding.metrics.advbench` (sp-prm decode keeps their "
        "target), or set references.path to harmful_behaviors.csv with references.field: target"
    )


def _reward_values(runs: dict[str, list[dict[str, Any]]], config: MetricsConfig) -> dict[str, list[float | None]]:
    from decoding.metrics.reward import rewards
    from sp_prm.models import load_reward_model, load_tokenizer

    cfg = config.reward
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = load_reward_model(cfg.model, cfg.dtype, cfg.device, cfg.trust_remote_code, tokenizer.pad_token_id)
    out = {}
    for name, records in runs.items():
        complete = [bool(r.get(config.complete_field, True)) for r in records]
        out[name] = rewards(
            model, tokenizer, [_context(r, config) for r in records], [r[config.response_field] for r in records],
            cfg.prefix, complete, cfg.max_batch_tokens, cfg.max_batch_size,
        )
    del model
    gc.collect()
    return out


def _coherence_values(runs: dict[str, list[dict[str, Any]]], config: MetricsConfig) -> dict[str, list[float | None]]:
    from decoding.metrics.coherence import Embedder, coherence

    c = config.coherence
    embedder = Embedder(c.model, c.pooling, c.max_length, c.batch_size, c.device, c.backend)
    return {
        name: coherence([r[config.prompt_field] for r in records], [r[config.response_field] for r in records], embedder)
        for name, records in runs.items()
    }


def guides_and_judges(runs: dict[str, list[dict[str, Any]]], config: MetricsConfig) -> dict[str, str]:
    """``role -> model`` for every model that steered or judges these runs: each run's guide as its records say
    (``scorer: rm:<path>``; for ``rear`` / ``genrm`` the policy itself, the record's ``policy``), the reward
    metric's RM and the LLM judge."""
    out: dict[str, str] = {}
    for name, records in runs.items():
        for rec in records:
            scorer = rec.get("scorer")
            if isinstance(scorer, str) and scorer.startswith("rm:"):
                out.setdefault(f"guide of run {name!r}", scorer[3:])
            elif scorer in ("rear", "genrm") and isinstance(rec.get("policy"), str):
                out.setdefault(f"guide ({scorer}: the policy) of run {name!r}", rec["policy"])
    if "reward" in config.metrics and config.reward.model:
        out["reward-metric RM"] = config.reward.model
    if any(m.startswith("judge_") for m in config.metrics) and config.judge.model:
        out["LLM judge"] = config.judge.model
    return out


def _judge_client(config: MetricsConfig) -> Any:
    from decoding.metrics.judge import JudgeClient

    j = config.judge
    return JudgeClient(
        model=j.model, base_url=j.base_url, cache_dir=j.cache_dir, temperature=j.temperature, max_tokens=j.max_tokens,
        timeout=j.timeout, max_retries=j.max_retries, backoff=j.backoff, max_requests=j.max_requests,
    )


def _judge_pairwise(
    runs: dict[str, list[dict[str, Any]]], config: MetricsConfig, client: Any, baseline: str
) -> dict[str, dict[str, list[Any]]]:
    """Per run (not the baseline): per-record win/tie/lose indicators, aligned to the run's records."""
    from decoding.metrics.judge import judge_pairwise

    base = {record_id(r, i, config.id_field): r for i, r in enumerate(runs[baseline])}
    out: dict[str, dict[str, list[Any]]] = {}
    for name, records in runs.items():
        if name == baseline:
            continue
        idx = [i for i, r in enumerate(records) if record_id(r, i, config.id_field) in base]
        if config.judge.limit is not None:
            idx = idx[: config.judge.limit]
        if not idx:
            raise ValueError(f"run {name!r} shares no record id with the baseline {baseline!r}")
        results = judge_pairwise(
            client,
            [_context(records[i], config) for i in idx],
            [records[i][config.response_field] for i in idx],
            [base[record_id(records[i], i, config.id_field)][config.response_field] for i in idx],
            config.judge.concurrency,
            config.judge.on_unparseable,
        )
        values: dict[str, list[Any]] = {k: [None] * len(records) for k in ("judge_win", "judge_tie", "judge_lose",
                                                                           "judge_win_tie")}
        verdicts: list[Any] = [None] * len(records)
        for i, res in zip(idx, results):
            outcome = res["outcome"]
            verdicts[i] = res["verdicts"]
            if outcome is None:
                continue
            for key in ("win", "tie", "lose"):
                values[f"judge_{key}"][i] = float(outcome == key)
            values["judge_win_tie"][i] = float(outcome != "lose")
        out[name] = {**values, "judge_verdicts": verdicts}
    return out


def _judge_gsm8k(records: list[dict[str, Any]], config: MetricsConfig, client: Any) -> list[float | None]:
    from decoding.metrics.coherence import prompt_text
    from decoding.metrics.judge import judge_gsm8k

    n = len(records) if config.judge.limit is None else min(config.judge.limit, len(records))
    verdicts = judge_gsm8k(
        client, [prompt_text(r[config.prompt_field]) for r in records[:n]],
        [r[config.response_field] for r in records[:n]], config.judge.concurrency, config.judge.on_unparseable,
    )
    return [None if v is None else float(v) for v in verdicts] + [None] * (len(records) - n)


def compute(config: MetricsConfig) -> dict[str, Any]:
    """Every requested metric for every run; writes and returns the results."""
    if not config.runs:
        raise ValueError("no runs: pass --runs '[a.jsonl, b.jsonl]'")
    names = run_names(config)
    runs = {name: load_run(path, config) for name, path in zip(names, config.runs)}
    ref_cache: dict[str, Any] = {}
    values: dict[str, dict[str, list[Any]]] = {}
    for name, records in runs.items():
        needs_ref = any(m in config.metrics for m in NEEDS_REFERENCE)
        refs = _references(records, config, ref_cache) if needs_ref else None
        needs_target = any(m in config.metrics for m in ("asr_target", "asr_target_body"))
        targets = _targets(records, config, ref_cache) if needs_target else None
        values[name] = model_free_values(records, config, refs, targets)
    if "reward" in config.metrics:
        for name, vals in _reward_values(runs, config).items():
            values[name]["reward"] = vals
    notes: list[str] = []
    if "coherence" in config.metrics:
        from decoding.metrics.coherence import shared_backbones

        for line in shared_backbones(config.coherence.model, guides_and_judges(runs, config)):
            warnings.warn(line, stacklevel=2)
            notes.append(line)
        for name, vals in _coherence_values(runs, config).items():
            values[name]["coherence"] = vals
    baseline, judge_info = None, None
    if "judge_pairwise" in config.metrics or "judge_gsm8k" in config.metrics:
        client = _judge_client(config)
        if "judge_pairwise" in config.metrics:
            baseline = config.judge.baseline or names[0]
            if baseline not in runs:
                raise ValueError(f"judge.baseline {baseline!r} is not a run name; runs: {names}")
            for name, vals in _judge_pairwise(runs, config, client, baseline).items():
                values[name].update(vals)
        if "judge_gsm8k" in config.metrics:
            for name, records in runs.items():
                values[name]["judge_gsm8k"] = _judge_gsm8k(records, config, client)
        judge_info = {"model": client.model, "base_url": client.base_url, "requests": client.requests,
                      "cache_hits": client.cache_hits, "baseline": baseline}

    summaries: dict[str, dict[str, Any]] = {}
    for (name, records), path in zip(runs.items(), config.runs):
        metrics = {
            m: summarize(v, config.bootstrap_resamples, config.confidence, config.bootstrap_seed)
            for m, v in values[name].items() if m != "judge_verdicts"
        }
        summaries[name] = {"path": path, "n_records": len(records), "metrics": metrics, "modes": run_modes(records)}
    results = {"runs": summaries, "judge": judge_info, "warnings": notes, "config": asdict(config)}

    out_dir = Path(config.output_dir)
    write_json(out_dir / "results.json", results)
    table = markdown_table(summaries, config.confidence, baseline)
    write_atomic(out_dir / "results.md", table + "".join(f"\nWarning: {line}\n" for line in notes))
    lines = []
    for name, records in runs.items():
        for i, rec in enumerate(records):
            row = {"run": name, "id": record_id(rec, i, config.id_field)}
            row.update({m: v[i] for m, v in values[name].items()})
            lines.append(row)
    write_atomic(out_dir / "per_record.jsonl", "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in lines))
    return results


def main(argv: list[str] | None = None) -> None:
    from sp_prm.config import load_config

    config = load_config(MetricsConfig, argv)
    results = compute(config)
    print(markdown_table(results["runs"], config.confidence, (results["judge"] or {}).get("baseline")))
    print(f"wrote {Path(config.output_dir) / 'results.json'}, results.md, per_record.jsonl")


if __name__ == "__main__":
    main()
