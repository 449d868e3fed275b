"""``sp-prm decode``: reward-guided decoding of a prompt set, one jsonl line per prompt.

    sp-prm decode                                   # the default recipe: REAR Best-of-8, SmolLM2, 6 prompts
    sp-prm decode --config recipes/decode/dvts_rear_smollm2.yaml --scorer.lam 10 --output out.jsonl
    sp-prm decode --scorer.name rm:path/to/prm --search.method dvts --data.path prompts.jsonl
    sp-prm decode --config recipes/decode/args_rear_smollm2.yaml     # ARGS-greedy; also cbs_*, cards_* recipes
    sp-prm decode --config recipes/decode/bon_rear_smollm2_vllm.yaml [--policy.vllm.url http://host:8000]

Searches are the entries of ``decoding.search.SEARCHES``; each has its own params block::

    search: {method: cards, max_new_tokens: 128, cards: {tau_u: 7.0, max_segment_tokens: 32}}
    --search.method args --search.args.k 10 --search.args.w_units spread

Backends (``policy.backend``): ``hf`` runs every search and scorer; ``vllm`` (in-process
``vllm.LLM`` or a server URL) runs the sequence-level searches (best_of_n, dvts, cbs, pruned_bon)
with the rear and rm: scorers.
ARGS and CARDS need the next-token distribution at every token and GenRM the one after its
judge prompt, which an engine does not expose: asking the vllm backend for them is a config error.

Output record (one JSON object per line, in input order within a run)::

    id          str    the record's id (``data.id_field``, else its row number)
    prompt      str    the question / prompt text (the last user turn for chat prompts)
    preference  str    the preference text, or null
    messages    list   the full chat context the policy saw (without a prefill, see ``prefill``)
    response    str    the selected response (the whole assistant turn: a prefill included)
    prefill     str    the assistant prefill the policy continued (AdvBench sure_mode: prefill), or null
    response_includes_prefill  bool  whether ``response`` starts with ``prefill`` (true whenever there is one)
    score       float  its aggregated score
    complete    bool   False when a token/step budget cut it (no EOS)
    best_index  int    index of the response among the candidates
    n           int    number of candidates (search.<method>.n; args, cards: 1; cbs: the final beams, <= beam_width)
    candidates  list   [{response, score, complete}] for all n (only with save_candidates)
    search      str    method; scorer: str scorer name; policy: str policy.model
    <kept>             input-record fields named in ``data.keep_fields`` (default: sure_mode, target) when present
    compute     {policy_tokens_generated, policy_tokens_prefilled, scorer_tokens, scorer_calls,
                 policy_tokens_cached, scorer_tokens_cached, seconds}

``compute`` counts tokens exactly per prompt (sampled tokens of every candidate,
including discarded DVTS branches; prompt and teacher-forced tokens through the
policy; tokens through the scorer's model); ``seconds`` is the batch's wall time
split evenly over its prompts. On the vllm backend the counts are the engine's:
prompt tokens it computed (``*_prefilled``, ``scorer_tokens``) and served from its
prefix cache (``*_cached``; 0 on hf). A killed run resumes: records whose id is already
in ``output`` are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from decoding.backend import token_level_error
from decoding.policy import Policy, SamplingParams
from decoding.prompts import DataConfig, load_prompts
from decoding.scorers import ClassifierScorer, GenRMScorer, RearScorer
from decoding.search import SEARCHES, SearchConfig
from decoding.types import AGGREGATIONS, Meter
from sp_prm.config import load_config
from sp_prm.errors import OutputExistsError
from sp_prm.formatting import PrefixFormat, require_same_format

METHODS = tuple(SEARCHES)
BACKENDS = ("hf", "vllm")


@dataclass
class VllmConfig:
    """The vllm policy backend: vllm.LLM in this process, or a running OpenAI-compatible server (url)."""

    url: str | None = field(default=None, metadata={"help": "A `vllm serve` (or SGLang) base URL, e.g. "
                                                        "http://10.0.0.5:8000; null: vllm.LLM in this process."})
    served_model: str | None = field(default=None, metadata={
        "help": "Server mode: the served model name; null: the only model the server lists."})
    enforce_eager: bool = field(default=False, metadata={
        "help": "In-process: skip graph compilation (faster start-up, slower sampling)."})
    enable_prefix_caching: bool = field(default=True, metadata={"help": "In-process: reuse shared prefixes' KV."})
    max_model_len: int | None = field(default=4096, metadata={"help": "In-process: context length of the engine."})
    engine_args: dict = field(default_factory=dict, metadata={
        "help": "In-process: more vllm.LLM arguments (tensor_parallel_size, gpu_memory_utilization, ...)."})
    timeout: float = field(default=600.0, metadata={"help": "Server mode: seconds per request."})
    retries: int = field(default=3, metadata={"help": "Server mode: attempts per request on connection errors."})
    workers: int = field(default=64, metadata={"help": "Server mode: concurrent requests."})
    check_tokenizer: bool = field(default=True, metadata={
        "help": "Refuse an engine whose tokenizer disagrees with policy.model's."})


@dataclass
class PolicyConfig:
    """The sampling model."""

    model: str = field(default="builtin:smollm2-135m-instruct", metadata={"help": "HF path/id or builtin: name."})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; null: cuda when available."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})
    backend: str = field(default="hf", metadata={
        "help": "hf (transformers in this process; every search) | vllm (an inference engine; best_of_n, dvts, "
                "cbs with the rear and rm: scorers)."})
    vllm: VllmConfig = field(default_factory=VllmConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"policy.backend must be one of {BACKENDS}, got {self.backend!r}")
        if isinstance(self.vllm, dict):
            self.vllm = VllmConfig(**self.vllm)


@dataclass
class ScorerConfig:
    """What scores candidates: 'rear', 'genrm' or 'rm:<path>'."""

    name: str = field(default="rear", metadata={"help": "rear | genrm | rm:<path or builtin: name>."})
    lam: float = field(default=20.0, metadata={"help": "REAR lambda (>= 0); 1 = the policy's log-likelihood."})
    length_normalize: bool = field(
        default=False, metadata={"help": "REAR: divide the score by the response's token count (not the paper's "
                                          "default; counters the sum's preference for short answers)."})
    aggregation: str | None = field(
        default=None, metadata={"help": f"Step-score aggregation {AGGREGATIONS}; null: the scorer's default."}
    )
    cache: bool = field(default=True, metadata={"help": "Keep decoder scorers' KV cache across calls."})
    max_batch_tokens: int = field(default=16384, metadata={"help": "Padded tokens per scorer forward."})
    max_batch_size: int = field(default=64, metadata={"help": "Rows per scorer forward."})
    dtype: str = field(default="float32", metadata={"help": "Reward model dtype (rm: scorers)."})
    prefix: PrefixFormat | None = field(
        default=None,
        metadata={"help": "How an rm: scorer renders (prompt, partial response); null: the format an sp-prm "
                  "model was trained with (config.sp_prm), else the PrefixFormat defaults (with a warning)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the rm: checkpoint (independent of the policy's)."})
    allow_untrained_head: bool = field(
        default=False, metadata={"help": "Accept an rm: checkpoint whose score head is newly initialised (random "
                                          "rewards; for tests only). Off: such a checkpoint is refused."})
    backend: str = field(default="hf", metadata={
        "help": "rm: scorers: hf (transformers in this process) | vllm (a vLLM pooling engine: in-process, or "
                "scorer.vllm.url; see decoding.scorers.rm_engine)."})
    vllm: VllmConfig = field(default_factory=VllmConfig, metadata={
        "help": "scorer.backend vllm: the pooling engine (url: a `vllm serve <prm> --runner pooling`)."})

    def __post_init__(self) -> None:
        if self.name not in ("rear", "genrm") and not self.name.startswith("rm:"):
            raise ValueError(f"scorer.name must be rear, genrm or rm:<path>, got {self.name!r}")
        if self.name.startswith("rm:") and not self.name[3:]:
            raise ValueError("scorer.name rm: needs a path, e.g. rm:outputs/prm")
        if self.lam < 0:
            raise ValueError(f"scorer.lam must be >= 0, got {self.lam}")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"scorer.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if isinstance(self.prefix, dict):
            self.prefix = PrefixFormat(**self.prefix)
        if isinstance(self.vllm, dict):
            self.vllm = VllmConfig(**self.vllm)
        if self.backend not in BACKENDS:
            raise ValueError(f"scorer.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "vllm" and not self.name.startswith("rm:"):
            raise ValueError(f"scorer.backend: vllm serves rm: reward models; scorer {self.name!r} runs on the policy")


@dataclass
class DecodeConfig:
    """Reward-guided decoding of a prompt set (REAR / GenRM / RM scorers; Best-of-N, DVTS, ARGS, CBS/TBS, CARDS)."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: str = field(default="outputs/decode/bon_rear_smollm2.jsonl", metadata={"help": "Output jsonl."})
    save_candidates: bool = field(default=True, metadata={"help": "Write all n candidates with their scores."})
    batch_size: int = field(default=4, metadata={"help": "Prompts decoded together (one batched search)."})
    seed: int = field(default=0, metadata={"help": "Run seed; candidate seeds derive from it and the record id."})
    resume: bool = field(default=True, metadata={"help": "Skip prompts already in output; false: refuse to overwrite."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.policy.backend != "hf":
            entry = SEARCHES[self.search.method]
            if entry.token_level:
                raise token_level_error(self.policy.backend, self.search.method, entry.why)
            if self.scorer.name == "genrm":
                raise ValueError(f"scorer.name=genrm needs policy.backend: hf (it reads the next-token distribution "
                                 f"after its judge prompt, which the {self.policy.backend} backend does not expose)")


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


def build_policy(cfg: DecodeConfig, meter: Meter) -> Any:
    from transformers import AutoModelForCausalLM

    from sp_prm.models import load_tokenizer, resolve

    if cfg.policy.backend == "vllm":
        return build_vllm_policy(cfg, meter)
    device = cfg.policy.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.policy.model, trust_remote_code=cfg.policy.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        resolve(cfg.policy.model), dtype=_dtype(cfg.policy.dtype), trust_remote_code=cfg.policy.trust_remote_code
    ).to(device)
    return Policy(model, tokenizer, delimiter=cfg.search.dvts.delimiter, meter=meter)


def build_vllm_policy(cfg: DecodeConfig, meter: Meter) -> Any:
    """A ``VllmPolicy`` on ``vllm.LLM`` (needs the vllm extra) or on the server at ``policy.vllm.url``."""
    from transformers import GenerationConfig

    from decoding.vllm_policy import LocalEngine, ServerEngine, VllmPolicy, make_engine
    from sp_prm.models import load_tokenizer, resolve

    vc = cfg.policy.vllm
    path = resolve(cfg.policy.model)
    tokenizer = load_tokenizer(cfg.policy.model, trust_remote_code=cfg.policy.trust_remote_code)
    engine = make_engine(vc, path, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.seed, LocalEngine, ServerEngine)
    try:  # the model's generation config may add stop tokens (as the HF backend reads them)
        gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        gen_eos = None
    gen_eos = [] if gen_eos is None else ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos))
    return VllmPolicy(engine, tokenizer, delimiter=cfg.search.dvts.delimiter, meter=meter, generation_eos=gen_eos,
                      check_tokenizer=vc.check_tokenizer)


def build_scorer(cfg: DecodeConfig, policy: Any, meter: Meter) -> Any:
    sc = cfg.scorer
    if sc.name == "rear":
        return RearScorer(policy, sc.lam, cache=sc.cache, max_batch_tokens=sc.max_batch_tokens,
                          max_batch_size=sc.max_batch_size, meter=meter, length_normalize=sc.length_normalize)
    if sc.name == "genrm":
        return GenRMScorer(policy, max_batch_tokens=sc.max_batch_tokens, max_batch_size=sc.max_batch_size,
                           meter=meter)
    from sp_prm.models import load_reward_model, load_tokenizer, scoring_prefix_format, trained_prefix_format

    path = sc.name[3:]
    if sc.backend == "vllm":
        from decoding.scorers.rm_engine import build_engine_scorer

        return build_engine_scorer(path, sc.vllm, sc.prefix, sc.dtype, sc.trust_remote_code, cfg.seed, meter)
    tokenizer = load_tokenizer(path, trust_remote_code=sc.trust_remote_code)
    # The RM runs here with transformers on either backend (on vllm: the policy's device setting, else cuda if any).
    device = str(policy.device) if cfg.policy.backend == "hf" else (
        cfg.policy.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_reward_model(path, dtype=sc.dtype, device=device, trust_remote_code=sc.trust_remote_code,
                              pad_token_id=tokenizer.pad_token_id, allow_untrained_head=sc.allow_untrained_head)
    prefix = scoring_prefix_format(model, sc.name, sc.prefix)
    require_same_format(trained_prefix_format(model), prefix, path)  # e.g. end_marker: the PRM's own mode
    return ClassifierScorer(model, tokenizer, prefix, cache=sc.cache, max_batch_tokens=sc.max_batch_tokens,
                             max_batch_size=sc.max_batch_size, meter=meter)


def done_ids(path: Path) -> set[str]:
    """Ids already written (a torn last line from a killed run is ignored and rewritten)."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    good: list[str] = []
    with path.open() as f:
        for line in f:
            try:
                ids.add(str(json.loads(line)["id"]))
                good.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError):
                continue
    path.write_text("".join(good))
    return ids


def run(cfg: DecodeConfig, policy: Policy | None = None, scorer: Any = None, meter: Meter | None = None) -> Path:
    """Decode every prompt of ``cfg.data`` into ``cfg.output``; models can be passed in (tests, notebooks)."""
    prompts = load_prompts(cfg.data, require_preference=cfg.scorer.name == "rear" and cfg.scorer.lam != 1.0)
    out = Path(cfg.output)
    if out.exists() and not cfg.resume and out.stat().st_size:
        raise OutputExistsError(f"output {out} exists; pass --resume true to continue it or choose another --output")
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = done_ids(out)
    todo = [p for p in prompts if p.id not in skip]
    meter = meter or (policy.meter if policy is not None else Meter())
    policy = policy or build_policy(cfg, meter)
    policy.meter = meter
    policy.delimiter = cfg.search.dvts.delimiter
    scorer = scorer or build_scorer(cfg, policy, meter)
    scorer.meter = meter
    if hasattr(scorer, "cache") and hasattr(scorer.cache, "meter"):
        scorer.cache.meter = meter
    if getattr(scorer, "prefix_cache", None) is not None:
        scorer.prefix_cache.meter = meter
    method, entry = cfg.search.method, SEARCHES[cfg.search.method]
    params = cfg.search.params
    if entry.prepare is not None and todo:
        calibration = todo
        if getattr(params, "calibration_data", None):
            calibration = load_prompts(dataclasses.replace(cfg.data, path=params.calibration_data, limit=None))
        prepared = entry.prepare(policy, scorer, calibration, params, cfg.sampling, cfg.search.max_new_tokens,
                                 cfg.seed)
        if prepared != params:
            changed = {f.name: getattr(prepared, f.name) for f in dataclasses.fields(prepared)
                       if getattr(prepared, f.name) != getattr(params, f.name)}
            print(f"{method}: calibrated thresholds " + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()), file=sys.stderr)
        params = prepared
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="decode", unit="prompt")
    with out.open("a") as f:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start: start + cfg.batch_size]
            t0 = time.perf_counter()
            results = entry.run(policy, scorer, batch, params, cfg.sampling, cfg.search.max_new_tokens, cfg.seed,
                                cfg.scorer.aggregation)
            seconds = (time.perf_counter() - t0) / len(batch)
            for r in results:
                best = r.best_candidate
                # A prefill is stored as part of the response (the whole assistant turn, as the scorer read it)
                # and `messages` is the conversation without it, so (messages, response) is what was scored.
                prefill = r.prompt.prefill
                record = {
                    **r.prompt.meta,
                    "id": r.prompt.id, "prompt": r.prompt.question, "preference": r.prompt.preference,
                    "messages": r.prompt.context_messages, "response": prefill + policy.decode(best.token_ids),
                    "prefill": prefill or None, "response_includes_prefill": bool(prefill),
                    "score": best.score, "complete": best.complete, "best_index": r.best, "n": len(r.candidates),
                    "search": method, "scorer": cfg.scorer.name, "policy": cfg.policy.model,
                }
                if cfg.save_candidates:
                    record["candidates"] = [
                        {"response": prefill + policy.decode(c.token_ids), "score": c.score, "complete": c.complete}
                        for c in r.candidates
                    ]
                record["compute"] = {**meter.for_group(r.prompt.index), "seconds": round(seconds, 4)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


def main(argv: list[str] | None = None) -> None:
    from sp_prm.runtime import limit_heap_retention

    limit_heap_retention()
    cfg = load_config(DecodeConfig, argv)
    path = run(cfg)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
