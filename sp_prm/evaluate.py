"""``sp-prm evaluate-rm``: does a reward model rank partial responses the way it ranks full ones?

For held-out preference pairs ``(x, y_w, y_l)`` and each reward model, on identical prefixes
(cut in one token space, see :mod:`sp_prm.prefix_scoring`):

* ``full``: accuracy on complete responses, ``r(y_w) > r(y_l)`` strictly (ties are wrong, as in
  RewardBench);
* ``t=N``: both responses cut to their first N tokens (a shorter response stays complete, the
  paper's padding). Accuracy here is the paper's AR_RM-SC(t) (appendix B):
  ``1/N sum 1[r(x, y_w[:t]) > r(x, y_l[:t])]``;
* ``f=F``: each response cut to its first ``ceil(F * |y|)`` tokens (``f=1.0`` equals ``full``);
* with a reference RM: agreement AR_RM-REF = share of prefix pairs both models order the same way
  (``r(y_w) > r(y_l)`` as a boolean, XNOR), the paper's AR_RM-HP with the reference standing in
  for human judgement;
* the mean reward gap ``r(y_w) - r(y_l)`` and its mean absolute value (the paper's Delta_r);
* with two or more models: each model's accuracy minus the baseline's (the first model unless
  ``baseline`` names another) with a **paired** bootstrap 95% interval. The models are scored on
  the same pairs, so the difference's noise is far smaller than two independent intervals suggest:
  resampling pairs (not models) keeps that pairing.

Accuracies come with a 95% normal-approximation interval (1.96 * sqrt(p(1-p)/n)). Output:
``results.json``, ``results.md``, ``curves.png`` (one line per model) and ``rewards.pt`` (every
model's reward of every chosen/rejected prefix, ``[pairs, cuts]``, for further analysis), written
atomically.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data_prep.loaders import PreferenceSource, source_field
from sp_prm.formatting import EncodedResponse, PrefixFormat, PromptTooLong, encode
from sp_prm.models import load_reward_model, load_tokenizer, trained_prefix_format
from sp_prm.prefix_scoring import PrefixScorer, original_prefix
from sp_prm.scoring import RewardScorer


@dataclass
class ProcessValueConfig:
    """Ground-truth process value V(prefix) = mean gold reward of policy rollouts (decoding.process_value)."""

    policy: str = field(default="builtin:smollm2-135m-instruct", metadata={"help": "Policy that continues prefixes."})
    gold_rm: str = field(default="", metadata={"help": "Gold reward model that judges the finished responses."})
    rollouts: int = field(default=8, metadata={"help": "Continuations M per prefix (V is their mean gold reward)."})
    max_response_tokens: int = field(default=64, metadata={
        "help": "Policy tokens a whole response may have (a continuation gets what the prefix leaves)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus mass of the rollouts."})
    seed: int = field(default=0, metadata={"help": "Base seed; each rollout's seed hashes it with the prefix."})
    budget_ends_response: bool = field(default=False, metadata={
        "help": "Judge a rollout that reached max_response_tokens as a finished response (a testbed whose "
                "responses are whatever the policy wrote within the budget), not as a partial one."})
    cuts: list[str] | None = field(default=None, metadata={
        "help": "Cut labels valued (default: full and every t=N; f=F cuts cost as much again)."})
    dtype: str = field(default="float32", metadata={"help": "Policy and gold RM dtype."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda if available)."})
    batch_rows: int = field(default=64, metadata={"help": "Rollout rows sampled together."})
    cache: str | None = field(default=None, metadata={
        "help": "File of computed values to reuse and extend (so several evaluations share rollouts)."})
    progress: bool = field(default=True, metadata={"help": "Progress bar over rollout chunks."})

    def __post_init__(self) -> None:
        if not self.gold_rm:
            raise ValueError("process_value.gold_rm: give the gold reward model that defines V")
        if self.rollouts < 2:
            raise ValueError(f"process_value.rollouts must be >= 2 (V's split-half reliability), got {self.rollouts}")


@dataclass
class EvaluateConfig(PreferenceSource):
    """Evaluate reward models on full and partial responses of held-out preference pairs."""

    models: list[str] = field(default_factory=list, metadata={"help": "Reward model paths or hub ids (any number)."})
    names: list[str] | None = field(default=None, metadata={"help": "Display names, one per model."})
    reference_model: str | None = field(
        default=None, metadata={"help": "Reference RM: agreement with it is reported; it is also evaluated."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Token space the prefixes are cut in (default: the first model's)."}
    )
    # The preference-source block (source, format, columns, data_dir, eval_fraction, sample, limit) is
    # PreferenceSource's; evaluation reads the test split's held-out side by default.
    split: str = source_field("split", default="test")
    subset: str = source_field("subset", default="eval")
    token_counts: list[int] = field(
        default_factory=lambda: [1, 5, 10, 20, 30, 50], metadata={"help": "Prefix lengths in tokens."}
    )
    fractions: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        metadata={"help": "Prefix lengths as fractions of each response."},
    )
    prefix: PrefixFormat = field(default_factory=PrefixFormat, metadata={"help": "Prefix representation."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype."})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda (default: cuda if available)."})
    batch_tokens: int = field(default=16384, metadata={"help": "Padded tokens per forward pass."})
    baseline: str | None = field(
        default=None, metadata={"help": "Name of the model the others are compared with (default: the first)."}
    )
    bootstrap_samples: int = field(default=2000, metadata={"help": "Resamples of the paired bootstrap."})
    seed: int = field(default=0, metadata={"help": "Seed of the paired bootstrap."})
    output_dir: str = field(default="outputs/eval-rm", metadata={"help": "Where results are written."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    allow_untrained_head: bool = field(
        default=False, metadata={"help": "Accept a model whose score head is newly initialised (random rewards; "
                                          "for tests only). Off: such a model is refused."})
    process_value: ProcessValueConfig | None = field(default=None, metadata={
        "help": "Compare every RM with the true process value V of the prefixes (rollouts judged by a gold RM); "
                "needs `sp-prm evaluate-rm` (the decoding layer computes V)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prefix, dict):
            self.prefix = PrefixFormat(**self.prefix)
        if isinstance(self.process_value, dict):
            self.process_value = ProcessValueConfig(**self.process_value)
        if isinstance(self.models, str):
            self.models = [self.models]
        if not self.models:
            raise ValueError("give at least one model: --models '[path1, path2]'")
        if self.names is not None and len(self.names) != len(self.models):
            raise ValueError(f"names has {len(self.names)} entries for {len(self.models)} models")
        if any(t < 1 for t in self.token_counts):
            raise ValueError(f"token_counts must be >= 1, got {self.token_counts}")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if self.bootstrap_samples < 1:
            raise ValueError(f"bootstrap_samples must be >= 1, got {self.bootstrap_samples}")


def cut_labels(config: EvaluateConfig) -> list[str]:
    return ["full"] + [f"t={t}" for t in config.token_counts] + [f"f={f:g}" for f in config.fractions]


def cut_positions(side: EncodedResponse, config: EvaluateConfig) -> list[int]:
    """Response tokens kept for each cut label, in ``cut_labels`` order."""
    n = side.length
    return [n] + [min(t, n) for t in config.token_counts] + [max(1, math.ceil(f * n)) for f in config.fractions]


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict[str, float]:
    """Metrics for one model at one cut over ``n`` pairs."""
    n = len(chosen)
    wins = (chosen > rejected).float()
    acc = float(wins.mean())
    out = {
        "n": n,
        "accuracy": acc,
        "ci95": 1.96 * math.sqrt(acc * (1 - acc) / n) if n else float("nan"),
        "mean_gap": float((chosen - rejected).mean()),
        "mean_abs_gap": float((chosen - rejected).abs().mean()),
    }
    if ref is not None:
        ref_order = ref[0] > ref[1]
        out["agreement_with_reference"] = float(((chosen > rejected) == ref_order).float().mean())
    return out


def paired_difference(
    wins: np.ndarray, base_wins: np.ndarray, samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Accuracy difference of two models on the same pairs, with a paired bootstrap 95% interval.

    ``wins`` / ``base_wins``: ``[n]`` booleans, pair ``i`` ranked right by each model. Every
    resample draws ``n`` pair indices with replacement and takes both models' wins on them.
    """
    wins, base_wins = np.asarray(wins, dtype=np.float64), np.asarray(base_wins, dtype=np.float64)
    if wins.shape != base_wins.shape or wins.ndim != 1:
        raise ValueError(f"paired_difference needs two [n] arrays, got {wins.shape} and {base_wins.shape}")
    d = wins - base_wins
    idx = np.random.default_rng(seed).integers(0, len(d), size=(samples, len(d)))
    boot = d[idx].mean(1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return {"diff": float(d.mean()), "ci_low": float(low), "ci_high": float(high),
            "only_model_right": int((d > 0).sum()), "only_baseline_right": int((d < 0).sum())}


def _plot(results: dict[str, Any], config: EvaluateConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for name, cuts in results.items():
        for ax, xs, labels in (
            (axes[0], config.token_counts, [f"t={t}" for t in config.token_counts]),
            (axes[1], config.fractions, [f"f={f:g}" for f in config.fractions]),
        ):
            ys = [cuts[label]["accuracy"] for label in labels]
            err = [cuts[label]["ci95"] for label in labels]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    axes[0].set_xlabel("prefix length (tokens)")
    axes[1].set_xlabel("prefix length (fraction of response)")
    axes[0].set_ylabel("accuracy r(y_w prefix) > r(y_l prefix)")
    for ax in axes:
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(results: dict[str, Any], labels: list[str], n: int, has_ref: bool, baseline: str | None = None) -> str:
    names = list(results)
    lines = [f"# Reward-model evaluation ({n} held-out pairs)", "", "## Accuracy (95% CI)", "",
             "| cut | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in labels:
        cells = [f"{results[m][label]['accuracy']:.3f} ± {results[m][label]['ci95']:.3f}" for m in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if has_ref:
        lines += ["", "## Agreement with the reference RM", "", "| cut | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for label in labels:
            cells = [f"{results[m][label]['agreement_with_reference']:.3f}" for m in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean reward gap r(y_w) - r(y_l) (mean |gap|)", "", "| cut | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for label in labels:
        cells = [f"{results[m][label]['mean_gap']:.3f} ({results[m][label]['mean_abs_gap']:.3f})" for m in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    others = [m for m in names if m != baseline and "vs_baseline" in results[m][labels[0]]]
    if baseline is not None and others:
        lines += ["", f"## Accuracy minus {baseline}'s, same pairs (paired bootstrap 95% CI)", "",
                  "| cut | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for label in labels:
            cells = []
            for m in others:
                v = results[m][label]["vs_baseline"]
                cells.append(f"{v['diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate(config: EvaluateConfig, value_fn: Any = None) -> dict[str, Any]:
    """Score every model on identical prefixes; write and return the results.

    ``value_fn`` (needed with ``config.process_value``): prefixes -> ``[n, M]`` rollout gold rewards,
    e.g. ``decoding.process_value.value_function``. It is passed in rather than imported because
    ``sp_prm`` is the bottom layer and must not import ``decoding`` (the policy lives there);
    ``sp-prm evaluate-rm`` dispatches to ``decoding.process_value.main``, which passes it.
    """
    if config.process_value is not None and value_fn is None:
        raise ValueError("process_value needs the policy (the decoding layer): run `sp-prm evaluate-rm`, "
                         "not `python -m sp_prm.evaluate`")
    from data_prep.loaders import load_preferences

    pairs, report = load_preferences(config.source_block())
    cut_tok = load_tokenizer(config.tokenizer or config.models[0], config.trust_remote_code)
    sides: list[EncodedResponse] = []
    messages = []
    kept_ids: list[str] = []
    responses: list[str] = []
    skipped = 0
    for pair in pairs:
        try:
            encs = [encode(cut_tok, pair["prompt"], pair[k], config.prefix) for k in ("chosen", "rejected")]
        except PromptTooLong:
            skipped += 1
            continue
        if min(e.length for e in encs) == 0:
            skipped += 1
            continue
        sides += encs
        messages += [pair["prompt"], pair["prompt"]]
        kept_ids.append(str(pair["id"]))
        responses += [pair["chosen"], pair["rejected"]]
    if not sides:
        raise ValueError(f"{config.source}: no usable pairs to evaluate (loader: {report.to_dict()})")
    positions = [cut_positions(s, config) for s in sides]
    labels = cut_labels(config)
    names = list(config.names or [Path(m).name or m for m in config.models])
    paths = list(config.models)
    if config.reference_model:
        names.append("reference")
        paths.append(config.reference_model)

    if config.baseline is not None and config.baseline not in names:  # before any model is scored
        raise ValueError(f"baseline {config.baseline!r} is not one of the evaluated models {names}")

    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, path in tqdm(list(zip(names, paths)), desc="evaluate-rm", unit="model"):
        tok = load_tokenizer(path, config.trust_remote_code)
        model = load_reward_model(path, config.dtype, config.device, config.trust_remote_code, tok.pad_token_id,
                                  allow_untrained_head=config.allow_untrained_head)
        trained = trained_prefix_format(model)
        if trained is None:
            warnings.warn(f"{path} has no config.sp_prm (not trained by `sp-prm train`): scoring it with the prefix "
                          f"format {config.prefix.to_dict()}, which may not be the one it was trained on",
                          stacklevel=2)
        if trained is not None and trained != config.prefix:
            raise ValueError(
                f"{path} was trained on prefixes rendered as {trained.to_dict()}, but this evaluation renders "
                f"{config.prefix.to_dict()}; set --prefix to the model's format"
            )
        scorer = PrefixScorer(RewardScorer(model, tok.pad_token_id, config.batch_tokens), tok, cut_tok, config.prefix)
        rewards = torch.stack(scorer.score(sides, positions, messages, responses))  # [2 * pairs, cuts]
        scores[name] = (rewards[0::2], rewards[1::2])
        del model, scorer
        gc.collect()

    ref = scores.get("reference")
    results: dict[str, Any] = {}
    for name, (chosen, rejected) in scores.items():
        results[name] = {
            label: pair_metrics(chosen[:, j], rejected[:, j], (ref[0][:, j], ref[1][:, j]) if ref else None)
            for j, label in enumerate(labels)
        }
    baseline = config.baseline or names[0]
    if len(scores) > 1:
        base_wins = (scores[baseline][0] > scores[baseline][1]).numpy()
        for name, (chosen, rejected) in scores.items():
            if name == baseline:
                continue
            wins = (chosen > rejected).numpy()
            for j, label in enumerate(labels):
                results[name][label]["vs_baseline"] = paired_difference(
                    wins[:, j], base_wins[:, j], config.bootstrap_samples, config.seed)
    out = {"config": asdict(config), "n_pairs": len(sides) // 2, "skipped_pairs": skipped,
           "loader": report.to_dict(), "baseline": baseline if len(scores) > 1 else None, "results": results}
    values = None
    if config.process_value is not None:
        values = _process_value(config, value_fn, sides, positions, messages, responses, labels, cut_tok)
        out["process_value"] = _value_results(config, values, scores, labels, baseline)

    target = Path(config.output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    (tmp / "results.json").write_text(json.dumps(out, indent=2))
    (tmp / "results.md").write_text(
        _markdown(results, labels, out["n_pairs"], ref is not None, out["baseline"])
        + (_value_markdown(out["process_value"]) if values is not None else ""))
    if values is not None:
        torch.save({"labels": values["labels"], "ids": kept_ids, "rollouts": values["rollouts"]},
                   tmp / "process_value.pt")
    torch.save({"labels": labels, "rewards": {k: {"chosen": c, "rejected": r} for k, (c, r) in scores.items()}},
               tmp / "rewards.pt")
    _plot(results, config, tmp / "curves.png")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    print((target / "results.md").read_text())
    return out


def _process_value(config: EvaluateConfig, value_fn: Any, sides: list[EncodedResponse], positions: list[list[int]],
                   messages: list[Any], responses: list[str], labels: list[str], cut_tok: Any) -> dict[str, Any]:
    """Rollout gold rewards ``[2 * pairs, M]`` of every side's prefix at each valued cut."""
    pv = config.process_value
    valued = pv.cuts if pv.cuts is not None else [c for c in labels if c == "full" or c.startswith("t=")]
    unknown = [c for c in valued if c not in labels]
    if unknown:
        raise ValueError(f"process_value.cuts: {unknown} are not evaluated cuts {labels}")
    from sp_prm.formatting import as_messages

    items, where = [], []
    for label in valued:
        j = labels.index(label)
        for s, (side, msgs) in enumerate(zip(sides, messages)):
            t = positions[s][j]
            text = original_prefix(cut_tok, responses[s], side, t)
            items.append((as_messages(msgs), text, side.is_complete(t)))
            where.append((label, s))
    # the decoding layer's PrefixItem is built from these (messages, text, complete) triples
    rollouts = value_fn(items)
    if rollouts.shape[0] != len(items):
        raise ValueError(f"value_fn returned {rollouts.shape[0]} rows for {len(items)} prefixes")
    per_cut = {label: rollouts[i * len(sides):(i + 1) * len(sides)] for i, label in enumerate(valued)}
    return {"labels": valued, "rollouts": per_cut}


def _value_results(config: EvaluateConfig, values: dict[str, Any], scores: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   labels: list[str], baseline: str) -> dict[str, Any]:
    from sp_prm.value_agreement import value_metrics

    out: dict[str, Any] = {"rollouts": config.process_value.rollouts, "cuts": {}}
    for label in values["labels"]:
        j = labels.index(label)
        roll = values["rollouts"][label].numpy()  # [2n, M]
        v = roll.mean(1)
        even, odd = roll[:, 0::2].mean(1), roll[:, 1::2].mean(1)
        rewards = {name: (c[:, j].numpy(), r[:, j].numpy()) for name, (c, r) in scores.items()}
        m = value_metrics(rewards, v[0::2], v[1::2], ((even[0::2], even[1::2]), (odd[0::2], odd[1::2])),
                          baseline if len(scores) > 1 else None, config.bootstrap_samples, seed=config.seed)
        m["v_mean"] = float(v.mean())
        m["v_std"] = float(v.std())
        m["v_mc_stderr"] = float((roll.std(1, ddof=1) / np.sqrt(roll.shape[1])).mean())
        out["cuts"][label] = m
    return out


def _value_markdown(pv: dict[str, Any]) -> str:
    cuts = pv["cuts"]
    names = list(next(iter(cuts.values()))["models"])

    def ci(m: dict[str, Any], key: str, digits: int = 3) -> str:
        lo, hi = m[f"{key}_ci"]
        return f"{m[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    lines = ["", f"## Agreement with the process value V (mean gold reward of {pv['rollouts']} policy rollouts)", "",
             "Share of pairs ordered as V orders them (pairs with equal V left out; RM ties wrong), bootstrap 95% CI. "
             "V ceiling: V from the even rollouts vs V from the odd ones.", "",
             "| cut | pairs (distinct V) | V ceiling | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for label, m in cuts.items():
        lo, hi = m["v_split_half_agreement_ci"]
        cells = [ci(m["models"][n], "agreement") for n in names]
        lines.append(f"| {label} | {m['pairs']} ({m['pairs_with_distinct_v']}) | {m['v_split_half_agreement']:.3f} "
                     f"[{lo:.3f}, {hi:.3f}] | " + " | ".join(cells) + " |")
    others = [n for n in names if "agreement_vs_baseline" in next(iter(cuts.values()))["models"][n]]
    if others:
        lines += ["", "Agreement with V minus the baseline's, same pairs (paired bootstrap 95% CI):", "",
                  "| cut | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for label, m in cuts.items():
            cells = []
            for n in others:
                d = m["models"][n]["agreement_vs_baseline"]
                cells.append(f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Rank correlation with V over all prefixes of the cut: Spearman rho / Kendall tau-b (95% CI):", "",
              "| cut | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, m in cuts.items():
        cells = [f"{ci(m['models'][n], 'spearman', 2)} / {ci(m['models'][n], 'kendall', 2)}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from sp_prm.config import load_config

    evaluate(load_config(EvaluateConfig, argv))


if __name__ == "__main__":
    main()
