"""Stage b: on-policy preference pairs. The policy samples several responses per prompt; the teacher labels.

* **Prompts**: HH-RLHF harmless-base prompts and HH helpful single-turn (DOVE) instructions,
  deduplicated by text. The evaluation prompts are the first ``eval_prompts`` in the order of a
  hash of the prompt text (stable, independent of file order); the rest are training prompts. No
  evaluation prompt is ever trained on.
* **Samples**: ``samples_per_prompt`` responses per prompt, each from its own seed (hashed from the
  data seed, the prompt id and the sample index), at most ``max_new_tokens`` policy tokens; a
  response cut by the budget is judged by the teacher as a partial one (no end marker), as every
  judge of the toolkit does (search outputs, rollouts of V).
* **Labels**: every pair of a prompt's samples whose teacher gap is at least ``min_gap_std``
  standard deviations of all samples' teacher rewards (near-ties are skipped); the higher one is
  ``chosen``. On training pairs only, a ``label_noise`` share is flipped (seeded; ``flipped`` says
  which), the knob that makes the teacher a noisy labeller.

Files in ``<work_dir>/data/``: ``samples.jsonl`` (one line per prompt, resumable), ``train.jsonl``,
``eval.jsonl`` (pairs: id, prompt, chosen, rejected, teacher_gap, flipped), ``value.jsonl`` (one
evaluation pair per prompt, so the process-value pairs are independent), ``search_prompts.jsonl``
(one row per evaluation prompt) and ``data.json`` (counts).
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from typing import Any

from experiments.common import append_records, atomic_write_text, read_records
from experiments.gold.config import GoldConfig
from sp_prm.errors import ConfigError


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def collect_prompts(sources: list[str]) -> list[dict[str, Any]]:
    """Unique prompts (``id``, ``prompt`` messages) of HH pair files and DOVE instruction files."""
    from data_prep.loaders import load_preferences, read_table

    seen: dict[str, dict[str, Any]] = {}
    for src in sources:
        table = read_table(src)
        if "instruction" in table.column_names:
            msgs = [[{"role": "user", "content": str(r["instruction"])}] for r in table]
        else:
            msgs = [p["prompt"] for p in load_preferences(src, subset="all")[0]]
        for m in msgs:
            key = text_hash(json.dumps(m, sort_keys=True))
            seen.setdefault(key, {"id": key[:16], "prompt": m})
    return list(seen.values())


def split_prompts(prompts: list[dict[str, Any]], eval_n: int, train_n: int | None) -> tuple[list, list]:
    """(train, eval): eval = the first ``eval_n`` prompts by id hash, train = the next ``train_n`` (or all)."""
    order = sorted(prompts, key=lambda p: text_hash("split/" + p["id"]))
    if len(order) <= eval_n:
        raise ConfigError(f"data.eval_prompts = {eval_n} leaves no training prompts ({len(order)} prompts in all)")
    rest = order[eval_n:]
    return (rest if train_n is None else rest[:train_n]), order[:eval_n]


def sample_seed(seed: int, prompt_id: str, j: int) -> int:
    return int(hashlib.sha256(f"onpolicy/{seed}/{prompt_id}/{j}".encode()).hexdigest()[:15], 16)


def label_pairs(prompt_id: str, responses: list[str], rewards: list[float], min_gap: float, noise: float,
                rng: random.Random) -> list[dict[str, Any]]:
    """Every pair (i < j) of one prompt's responses with |gap| >= ``min_gap``; flipped with prob. ``noise``."""
    out = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            gap = rewards[i] - rewards[j]
            if abs(gap) < min_gap or responses[i] == responses[j]:
                continue
            hi, lo = (i, j) if gap > 0 else (j, i)
            flipped = noise > 0 and rng.random() < noise
            if flipped:
                hi, lo = lo, hi
            out.append({"id": f"{prompt_id}/{i}-{j}", "chosen": responses[hi], "rejected": responses[lo],
                        "teacher_gap": abs(gap), "flipped": flipped})
    return out


def rng_pick(pairs: list[dict[str, Any]], prompt_id: str, seed: int) -> dict[str, Any]:
    """One of a prompt's pairs, chosen by a seeded hash (stable whatever else is in the data)."""
    return pairs[int(text_hash(f"value/{seed}/{prompt_id}"), 16) % len(pairs)]


def sample_and_judge(cfg: GoldConfig, rows: list[dict[str, Any]], policy: Any, judge: Any) -> list[dict[str, Any]]:
    """Sample ``samples_per_prompt`` responses for each row (one batched decode) and score them with the teacher."""
    k, dc = cfg.data.samples_per_prompt, cfg.data
    state = policy.prefill([policy.encode(r["prompt"]) for r in rows])
    state = state.select([i for i in range(len(rows)) for _ in range(k)])
    seeds = [sample_seed(dc.seed, r["id"], j) for r in rows for j in range(k)]
    samples = policy.sample(state, seeds, cfg.sampling, dc.max_new_tokens, feed_final=False)
    texts = [policy.decode(s.token_ids) for s in samples]
    prompts = [r["prompt"] for r in rows for _ in range(k)]
    scores = judge(prompts, texts, [s.eos for s in samples])  # a response cut by the budget is judged partial
    out = []
    for i, r in enumerate(rows):
        sl = slice(i * k, (i + 1) * k)
        out.append({**r, "responses": texts[sl], "tokens": [len(s.token_ids) for s in samples[sl]],
                    "eos": [s.eos for s in samples[sl]], "teacher": scores[sl]})
    return out


def build_data(cfg: GoldConfig, policy: Any = None, judge: Any = None, progress: bool = True) -> dict[str, Any]:
    """Sample, judge (resumable per prompt) and pair; writes the files of the module docstring."""
    dc = cfg.data
    out = cfg.data_dir
    out.mkdir(parents=True, exist_ok=True)
    train, held = split_prompts(collect_prompts(dc.prompt_sources), dc.eval_prompts, dc.train_prompts)
    rows = [{**p, "split": "eval"} for p in held] + [{**p, "split": "train"} for p in train]
    path = out / "samples.jsonl"
    done = {r["id"] for r in read_records(path)}
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        if policy is None or judge is None:
            policy, judge = _load_policy_and_teacher(cfg)
        chunks = range(0, len(todo), dc.batch_prompts)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="on-policy samples", unit="batch")
        for start in chunks:
            append_records(path, sample_and_judge(cfg, todo[start: start + dc.batch_prompts], policy, judge))
    return write_pairs(cfg)


def write_pairs(cfg: GoldConfig) -> dict[str, Any]:
    """Pairs from ``samples.jsonl`` (deterministic given the samples and the data seed)."""
    dc, out = cfg.data, cfg.data_dir
    samples = read_records(out / "samples.jsonl")
    all_rewards = [v for r in samples for v in r["teacher"]]
    std = statistics.pstdev(all_rewards) if len(all_rewards) > 1 else 1.0
    min_gap = dc.min_gap_std * std
    rng = random.Random(f"noise/{dc.seed}")
    pairs: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    search, value = [], []
    possible = 0
    for r in samples:
        noise = dc.label_noise if r["split"] == "train" else 0.0
        got = label_pairs(r["id"], r["responses"], r["teacher"], min_gap, noise, rng)
        possible += len(r["responses"]) * (len(r["responses"]) - 1) // 2
        pairs[r["split"]] += [{**p, "prompt": r["prompt"], "prompt_id": r["id"]} for p in got]
        if r["split"] == "eval" and got:  # one pair per prompt: independent pairs for the process-value endpoint
            value.append({**rng_pick(got, r["id"], dc.seed), "prompt": r["prompt"], "prompt_id": r["id"]})
        if r["split"] == "eval":
            best = max(range(len(r["teacher"])), key=lambda i: r["teacher"][i])
            worst = min(range(len(r["teacher"])), key=lambda i: r["teacher"][i])
            search.append({"id": r["id"], "prompt": r["prompt"], "chosen": r["responses"][best],
                           "rejected": r["responses"][worst]})
    for name, rows in (("train", pairs["train"]), ("eval", pairs["eval"]), ("search_prompts", search),
                       ("value", value)):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    tokens = [t for r in samples for t in r["tokens"]]
    report = {
        "prompts": {"train": sum(r["split"] == "train" for r in samples), "eval": sum(r["split"] == "eval" for r in samples)},
        "samples": len(all_rewards), "teacher_reward_mean": statistics.fmean(all_rewards) if all_rewards else None,
        "teacher_reward_std": std, "min_gap": min_gap, "possible_pairs": possible,
        "pairs": {**{k: len(v) for k, v in pairs.items()}, "value": len(value)}, "flipped_train_pairs": sum(p["flipped"] for p in pairs["train"]),
        "label_noise": dc.label_noise, "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "ended_by_eos": sum(e for r in samples for e in r["eos"]) / max(1, len(tokens)),
    }
    atomic_write_text(out / "data.json", json.dumps(report, indent=1) + "\n")
    return report


def _load_policy_and_teacher(cfg: GoldConfig) -> tuple[Any, Any]:
    import torch

    from decoding.decode import DecodeConfig, PolicyConfig, build_policy
    from decoding.process_value import Judge
    from decoding.types import Meter
    from sp_prm.models import load_reward_model, load_tokenizer, trained_prefix_format

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = build_policy(DecodeConfig(policy=PolicyConfig(model=cfg.policy, dtype=cfg.dtype, device=device)), Meter())
    tok = load_tokenizer(str(cfg.teacher_dir))
    model = load_reward_model(str(cfg.teacher_dir), cfg.dtype, device, pad_token_id=tok.pad_token_id)
    return policy, Judge(model, tok, trained_prefix_format(model) or cfg.teacher.prefix)
