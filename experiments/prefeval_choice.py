"""REAR on PrefEval implicit choice (issue 8, part 2; REAR paper section 5.2, Fig. 2 right).

    python -m experiments.prefeval_choice --config recipes/experiments/prefeval_choice_smollm2.yaml
    python -m experiments.prefeval_choice --config ... --limit 8          # smoke
    python -m experiments.prefeval_choice --config ... --summarize_only true

Data (PrefEval, CC BY-NC 4.0: evaluation only; read from ``data_dir``, never copied
into the repo): per topic, row ``i`` of ``implicit_preference/choice-based`` holds
the conversation in which the user reveals a preference by choosing one of an
assistant's suggestions (``query``, ``assistant_options``, ``user_selection``,
``assistant_acknowledgment``) and the later ``question``; row ``i`` of
``mcq_options`` holds the four answers to that question
(``classification_task_options``), the first of which follows the preference
(PrefEval's convention; it ships no gold index). Options are shuffled per item
with a seeded RNG, so no position carries the answer.

No generation and no LLM judge: each option is scored as the assistant's answer
by teacher forcing, under the question alone (``A``: the sum of its tokens'
log-probs, stop token included) and under the conversation followed by the
question (``B``). REAR(lambda) = (1 - lambda) A + lambda B picks the option
(ties: the first after shuffling); accuracy against the preference-following
option, for every lambda in ``lams``, summed and per token (``/len``), with
bootstrap 95% CIs over items. Chance is 25%; the shortest- and longest-option
picks are reported as length baselines.

Outputs in ``output_dir``: ``records.jsonl`` (per item: option token counts,
A, B, gold index), ``summary.json``, ``summary.md``, ``accuracy_vs_lambda.png``.
Resumable; summaries and plots are written atomically.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.decode import DecodeConfig, PolicyConfig, build_policy
from decoding.scorers.rear import rear_scores
from decoding.types import Meter, Partial, Prompt
from experiments.common import (
    RunOptions,
    Stopwatch,
    append_records,
    atomic_savefig,
    claim_output_dir,
    experiment_main,
    fmt,
    lam_label,
    markdown_table,
    read_records,
    resolve_data,
    set_threads,
    stat,
    symlog_positions,
    use_meter,
    write_summary_files,
)

LETTERS = "ABCD"
# Fields whose change makes earlier records of an output_dir incomparable (resume refuses to mix them).
_FINGERPRINT = ("policy", "data_dir", "seed", "include_end", "options_in_prompt")


@dataclass
class PrefEvalChoiceConfig(RunOptions):
    """REAR on PrefEval implicit choice: option log-likelihoods with and without the revealing conversation."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data_dir: str = field(default="../shared/data/prefeval", metadata={
        "help": "PrefEval benchmark_dataset folder (relative: to the working dir, else the repo root)."})
    topics: list[str] | None = field(default=None, metadata={"help": "Topic files to use; null: every topic present."})
    limit: int | None = field(default=None, metadata={"help": "Use the first N items of a seeded shuffle over all "
                                                              "topics; null: all."})
    seed: int = field(default=0, metadata={"help": "Seed of the item order and of each item's option shuffle."})
    lams: list[float] = field(default_factory=lambda: [0.0, 1.0, 3.0, 10.0, 20.0, 50.0],
                              metadata={"help": "REAR lambdas (.inf: the limit B - A)."})
    include_end: bool = field(default=True, metadata={"help": "Count the stop token after the option (the answer's "
                                                              "last action, as REAR does for a complete response)."})
    options_in_prompt: bool = field(default=False, metadata={
        "help": "Also list the four options (A-D) under the question in both contexts; false: plain question."})
    batch_size: int = field(default=8, metadata={"help": "Items scored together."})
    output_dir: str = field(default="outputs/experiments/prefeval_choice_smollm2", metadata={"help": "Output folder."})

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        self.lams = [float(x) for x in self.lams]
        if not self.lams or any(lam < 0 or math.isnan(lam) for lam in self.lams):
            raise ValueError(f"lams must be non-empty and >= 0, got {self.lams}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# -- data ----------------------------------------------------------------------------------------------


def conversation_messages(conv: dict[str, str]) -> list[dict[str, str]]:
    """The preference-revealing exchange as chat turns: user query, assistant options, user choice, acknowledgment."""
    keys = ("query", "assistant_options", "user_selection", "assistant_acknowledgment")
    missing = [k for k in keys if not isinstance(conv.get(k), str) or not conv[k].strip()]
    if missing:
        raise ValueError(f"conversation lacks {missing}")
    return [{"role": role, "content": conv[k].strip()} for role, k in zip(("user", "assistant") * 2, keys)]


def load_items(data_dir: str | Path, topics: list[str] | None = None, seed: int = 0,
               limit: int | None = None) -> list[dict[str, Any]]:
    """PrefEval implicit-choice items ``{id, topic, row, conversation, question, options, gold}`` (options shuffled).

    Items are in a seeded order over all topics (so ``limit`` mixes topics);
    ``options[gold]`` is the preference-following answer (``classification_task_options[0]``).
    """
    root = resolve_data(str(data_dir), "data_dir")
    choice_dir, mcq_dir = root / "implicit_preference" / "choice-based", root / "mcq_options"
    if not choice_dir.is_dir() or not mcq_dir.is_dir():
        raise FileNotFoundError(f"{root}: expected implicit_preference/choice-based/ and mcq_options/ (PrefEval's "
                                "benchmark_dataset layout)")
    present = sorted(p.stem for p in choice_dir.glob("*.json"))
    names = present if topics is None else list(topics)
    unknown = [t for t in names if t not in present]
    if unknown:
        raise ValueError(f"topics {unknown} not in {choice_dir}; present: {present}")
    items = []
    for topic in names:
        choice = json.loads((choice_dir / f"{topic}.json").read_text())
        mcq_path = mcq_dir / f"{topic}.json"
        if not mcq_path.exists():
            raise FileNotFoundError(f"{mcq_path} is missing (needed for the options of topic {topic})")
        mcq = json.loads(mcq_path.read_text())
        if len(choice) != len(mcq):
            raise ValueError(f"topic {topic}: {len(choice)} choice-based rows but {len(mcq)} mcq rows")
        for i, (c, m) in enumerate(zip(choice, mcq)):
            rid = f"{topic}:{i}"
            if c["question"].strip() != m["question"].strip():
                raise ValueError(f"{rid}: choice-based and mcq_options questions differ; rows are misaligned")
            options = [str(o).strip() for o in m["classification_task_options"]]
            if len(options) != 4 or len(set(options)) != 4:
                raise ValueError(f"{rid}: expected 4 distinct options, got {options}")
            order = list(range(4))
            random.Random(f"{seed}:{rid}").shuffle(order)
            items.append({"id": rid, "topic": topic, "row": i,
                          "conversation": conversation_messages(c["conversation"]),
                          "question": c["question"].strip(), "options": [options[k] for k in order],
                          "gold": order.index(0)})
    random.Random(seed).shuffle(items)
    return items[:limit] if limit is not None else items


def question_text(item: dict[str, Any], options_in_prompt: bool) -> str:
    if not options_in_prompt:
        return item["question"]
    listed = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(item["options"]))
    return f"{item['question']}\n\nOptions:\n{listed}"


# -- running -------------------------------------------------------------------------------------------


def score_items(policy: Any, items: list[dict[str, Any]], cfg: PrefEvalChoiceConfig, first_index: int = 0,
                meter: Meter | None = None) -> list[dict[str, Any]]:
    """A and B of every option of every item (teacher forced; one cached context pass per item and context)."""
    from decoding.scorers import RearScorer

    meter = meter or Meter()
    kw = dict(reuse_generation_logprobs=False, max_batch_tokens=cfg.max_batch_tokens, meter=meter)
    only_q, only_full = RearScorer(policy, 0.0, **kw), RearScorer(policy, 1.0, **kw)
    use_meter(meter, policy, only_q, only_full)
    prompts, partials = [], []
    for k, item in enumerate(items):
        q = [{"role": "user", "content": question_text(item, cfg.options_in_prompt)}]
        p = Prompt(item["id"], item["conversation"] + q, q, item["question"], None, first_index + k)
        for option in item["options"]:
            ids = list(policy.tokenizer(option, add_special_tokens=False)["input_ids"])
            end = [policy.stop_ids[0]] if cfg.include_end else []
            prompts.append(p)
            partials.append(Partial(option, ids, cfg.include_end, end))
    A, _ = only_q.terms(prompts, partials)
    _, B = only_full.terms(prompts, partials)
    out = []
    for k, item in enumerate(items):
        rows = slice(4 * k, 4 * k + 4)
        out.append({"id": item["id"], "topic": item["topic"], "row": item["row"], "gold": item["gold"],
                    "n_terms": [len(r.token_ids) + len(r.end_ids) for r in partials[rows]],
                    "A": A[rows].tolist(), "B": B[rows].tolist(),
                    "compute": meter.for_group(first_index + k)})
    return out


def run(cfg: PrefEvalChoiceConfig, policy: Any = None) -> Path:
    set_threads(cfg.threads)
    items = load_items(cfg.data_dir, cfg.topics, cfg.seed, cfg.limit)  # fails before anything is written
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_output_dir(cfg, out, _FINGERPRINT)
    path = out / "records.jsonl"
    done = {r["id"] for r in read_records(path)}
    todo = [(i, it) for i, it in enumerate(items) if it["id"] not in done]
    if not todo:
        return path
    policy = policy or build_policy(DecodeConfig(policy=cfg.policy), Meter())
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="prefeval-choice", unit="item")
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start: start + cfg.batch_size]
        sw = Stopwatch()
        with sw.time():
            recs = score_items(policy, [it for _, it in chunk], cfg, first_index=chunk[0][0])
        for r in recs:
            r["compute"]["seconds"] = round(sw.seconds / len(chunk), 4)
        append_records(path, recs)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return path


# -- analysis ------------------------------------------------------------------------------------------


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choices(rec: dict[str, Any], lams: list[float]) -> dict[str, int]:
    """The option each rule picks for one item."""
    out = {}
    for norm in (False, True):
        for lam in lams:
            out[_name(lam, norm)] = _argmax(rear_scores(rec["A"], rec["B"], rec["n_terms"], lam, norm).tolist())
    out["shortest option"] = _argmax([-k for k in rec["n_terms"]])
    out["longest option"] = _argmax(list(rec["n_terms"]))
    return out


def _name(lam: float, norm: bool) -> str:
    return f"REAR λ={lam_label(lam)}" + (" /len" if norm else "")


def summarize_records(records: list[dict[str, Any]], lams: list[float], resamples: int = 2000) -> dict[str, Any]:
    picks = [choices(r, lams) for r in records]
    rules = {}
    for name in picks[0] if picks else []:
        hits = [float(p[name] == r["gold"]) for p, r in zip(picks, records)]
        rules[name] = stat(hits, resamples)
    topics = sorted({r["topic"] for r in records})
    seconds = sum(r["compute"].get("seconds", 0.0) for r in records)
    tokens = sum(r["compute"].get("scorer_tokens", 0) for r in records)
    gold_len = [float(r["n_terms"][r["gold"]] == min(r["n_terms"])) for r in records]
    return {"items": len(records), "topics": topics, "chance": 0.25, "rules": rules,
            "gold_is_shortest": sum(gold_len) / len(gold_len) if gold_len else None,
            "compute": {"scored_tokens_per_item": tokens / max(1, len(records)),
                        "seconds_per_item": seconds / max(1, len(records)), "seconds_total": seconds}}


def to_markdown(summary: dict[str, Any], cfg: PrefEvalChoiceConfig, command: str) -> str:
    rows = [[name, fmt(s, True)] for name, s in summary["rules"].items()]
    c = summary["compute"]
    return "\n".join([
        "# REAR on PrefEval implicit choice", "",
        f"Command: `{command}`", "",
        f"Policy `{cfg.policy.model}`; {summary['items']} items from {len(summary['topics'])} topics "
        f"({cfg.data_dir}); seed {cfg.seed}; options {'listed in' if cfg.options_in_prompt else 'not shown in'} the "
        f"prompt; stop token {'counted' if cfg.include_end else 'not counted'}. Each option is scored by "
        "teacher forcing: A = log-likelihood under the question alone, B = under the revealing conversation + "
        "question; REAR(λ) = (1-λ)A + λB, '/len' divides by the option's token count. Accuracy against the "
        "preference-following option; 95% percentile-bootstrap CIs over items "
        f"({cfg.bootstrap_resamples} resamples). Chance: 25%.", "",
        markdown_table(["rule", "accuracy %"], rows), "",
        f"The preference-following option is the shortest (by tokens) in "
        f"{100 * (summary['gold_is_shortest'] or 0):.1f}% of items.", "",
        f"Compute: {c['scored_tokens_per_item']:.0f} tokens through the policy per item, "
        f"{c['seconds_per_item']:.3f} s per item, {c['seconds_total']:.0f} s in all.", ""])


def plot(summary: dict[str, Any], lams: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = summary["rules"]
    xs, labels = symlog_positions(lams)
    fig, ax = plt.subplots(figsize=(6, 4))
    for norm, style in ((False, "o-"), (True, "s--")):
        s = [rules[_name(lam, norm)] for lam in lams]
        ax.plot(xs, [100 * v["mean"] for v in s], style, label="REAR" + (" /len" if norm else " (sum)"))
        ax.fill_between(xs, [100 * v["ci_low"] for v in s], [100 * v["ci_high"] for v in s], alpha=0.15)
    ax.axhline(25, color="k", ls=":", lw=1, label="chance")
    for name, color in (("shortest option", "gray"), ("longest option", "brown")):
        ax.axhline(100 * rules[name]["mean"], color=color, ls="-.", lw=1, label=name)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("λ")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"PrefEval implicit choice ({summary['items']} items, 95% bootstrap CIs)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def write_summary(cfg: PrefEvalChoiceConfig, command: str) -> dict[str, Any]:
    return write_summary_files(cfg, command, lambda recs: summarize_records(recs, cfg.lams, cfg.bootstrap_resamples),
                               to_markdown, lambda summary, path: plot(summary, cfg.lams, path),
                               "accuracy_vs_lambda.png")


def main(argv: list[str] | None = None) -> None:
    experiment_main(PrefEvalChoiceConfig, "experiments.prefeval_choice", run, write_summary, argv)


if __name__ == "__main__":
    main()
