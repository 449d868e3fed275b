"""The main job: train a reference ORM, an SP-PRM weighted by it, compare them, decode with both.

    python scripts/main_job.py            # (scripts/main_job.sh runs this) CPU, the embedded default

Stages (each prints its elapsed time):

1. **orm**: the reference ORM, ``recipes/hh-rlhf/train_orm_minilm.yaml`` (full pairs of the shipped
   HH-RLHF sample, the train side of the hashed-id split);
2. **prepare**: SST partial pairs weighted by it, ``recipes/hh-rlhf/prepare_sst_minilm.yaml``; the
   weight distribution is checked: a flat one (the reference is equally unsure of every prefix, so
   Eq. 3 is Eq. 2 times a constant) is reported as a failure of the job;
3. **sp-prm**: the SP-PRM (Eq. 3), ``recipes/hh-rlhf/train_sst_minilm.yaml``;
4. **evaluate**: both on the held-out pairs, full responses and prefixes of 5/10/20/40 tokens,
   paired bootstrap of SP-PRM - ORM (``sp-prm evaluate-rm``);
5. **judge**: a third reward model that guides nothing: a Bradley-Terry linear probe on frozen
   SmolLM2-135M features (another model family than the MiniLM guides), fit on the same train pairs;
6. **decode**: SmolLM2-135M-Instruct samples N candidates per held-out prompt once
   (:func:`decode_candidates`, the only decode call); plain sampling takes the first, Best-of-N takes
   the ORM's or the SP-PRM's argmax over the *same* candidates, so the comparison is paired;
7. **summary**: ``outputs/SUMMARY.md`` + ``outputs/summary.png``, printed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = Path("outputs")
ORM_DIR, PRM_DIR, DATA_DIR = OUT / "hh-rlhf-orm-minilm", OUT / "hh-rlhf-sp-prm-minilm", OUT / "hh-rlhf-sst-minilm"
EVAL_DIR, DECODE_DIR = OUT / "eval-rm-minilm", OUT / "decode"
RECIPES = ROOT / "recipes"
POLICY = "builtin:smollm2-135m-instruct"
DECODE = {"prompts": 8, "n": 4, "max_new_tokens": 32}
# Sized for 2 CPU cores (the recipes keep their own, larger settings): shorter prefixes for every stage
# (they must agree between the ORM, the prepared data, the SP-PRM and the evaluation), SST K = 3.
PREFIX = ["--prefix.max_prompt_tokens", "96", "--prefix.max_response_tokens", "48"]
PREPARE = ["--sst_k", "3"]
JUDGE_PAIRS = 160  # train pairs the judge probe is fit on (a seeded sample of the train side)
TOKEN_CUTS = [5, 10, 20, 40]  # responses are cut at 48 tokens (PREFIX below)
# The weight distribution counts as flat when the middle 80% of the weights lie within 5% of each other.
FLAT_RATIO = 1.05
TIMES: dict[str, float] = {}
REUSE = [False]  # --reuse: keep the trained models, prepared data and evaluation in outputs/ (stages 5-7 only)
# CPU seconds of this process (all its threads) per stage: on a shared machine the wall time says more
# about the neighbours than about the job; CPU seconds / cores is the wall time the stage needs alone.
CPU: dict[str, float] = {}


@contextmanager
def stage(name: str):
    t0, c0 = time.perf_counter(), time.process_time()
    print(f"\n=== {name} ===", flush=True)
    yield
    TIMES[name], CPU[name] = time.perf_counter() - t0, time.process_time() - c0
    print(f"=== {name}: {TIMES[name]:.1f} s wall, {CPU[name]:.1f} s CPU, load {os.getloadavg()[0]:.1f} ===",
          flush=True)


def bootstrap(diff: np.ndarray, samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% percentile-bootstrap interval (resampling prompts / pairs)."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def verdict(low: float, high: float) -> str:
    return "within the noise (the interval covers 0)" if low <= 0 <= high else ("better" if low > 0 else "worse")


# -- stages 1-4: the recipes, run in this process -------------------------------------------------------
def train_orm() -> None:
    from sp_prm.config import load_config
    from sp_prm.train import train
    from sp_prm.train_config import SPPRMConfig

    train(load_config(SPPRMConfig, ["--config", str(RECIPES / "hh-rlhf/train_orm_minilm.yaml"), "--resume", "false",
                                      *PREFIX]))


def prepare_pairs() -> dict[str, Any]:
    from datasets import load_from_disk

    from data_prep.prepare import PrepareConfig, prepare
    from sp_prm.config import load_config

    cfg = load_config(PrepareConfig, ["--config", str(RECIPES / "hh-rlhf/prepare_sst_minilm.yaml"),
                                      "--reference_model", str(ORM_DIR), "--overwrite", "true",
                                      *PREFIX, *PREPARE])
    data = load_from_disk(str(prepare(cfg) if not REUSE[0] else DATA_DIR))
    w, gap = np.asarray(data["weight"], dtype=float), np.abs(np.asarray(data["ref_gap"], dtype=float))
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    stats = {"pairs": len(data), "source_pairs": len(set(data["id"])), "sst_k": cfg.sst_k,
             "weight_cap": cfg.weight_cap, "weight_normalize": cfg.weight_normalize,
             "weight_quantiles": dict(zip(map(str, qs), np.quantile(w, qs).round(3).tolist())),
             "gap_quantiles": dict(zip(map(str, qs), np.quantile(gap, qs).round(3).tolist())),
             "weights": w.tolist()}
    q10, q90 = np.quantile(w, [0.1, 0.9])
    stats["spread_ratio"] = float(q90 / q10)
    stats["flat"] = bool(q90 / q10 < FLAT_RATIO)
    print(f"weights: quantiles {stats['weight_quantiles']}; |reference gap| quantiles {stats['gap_quantiles']}")
    if stats["flat"]:
        print(f"FAILURE: the weight distribution is flat (q90/q10 = {q90 / q10:.3f} < {FLAT_RATIO})")
    return stats


def train_prm() -> None:
    from sp_prm.config import load_config
    from sp_prm.train import train
    from sp_prm.train_config import SPPRMConfig

    train(load_config(SPPRMConfig, ["--config", str(RECIPES / "hh-rlhf/train_sst_minilm.yaml"), "--resume", "false"]))


def evaluate_both() -> dict[str, Any]:
    from sp_prm.config import load_config
    from sp_prm.evaluate import EvaluateConfig, evaluate

    cfg = load_config(EvaluateConfig, ["--config", str(RECIPES / "hh-rlhf/evaluate_minilm.yaml"),
                                       "--models", f"[{ORM_DIR}, {PRM_DIR}]", "--names", "[orm, sp-prm]",
                                       "--token_counts", json.dumps(TOKEN_CUTS), "--fractions", "[0.5]",
                                       "--output_dir", str(EVAL_DIR), *PREFIX])
    return evaluate(cfg)


# -- stage 5: the judge ---------------------------------------------------------------------------------
class ProbeJudge:
    """Bradley-Terry linear probe on the frozen last-token hidden state of SmolLM2-135M."""

    def __init__(self) -> None:
        from transformers import AutoModel

        from sp_prm.formatting import PrefixFormat
        from sp_prm.models import load_tokenizer, resolve

        self.tok = load_tokenizer(POLICY)
        self.model = AutoModel.from_pretrained(resolve(POLICY), dtype=torch.bfloat16).eval()
        self.fmt = PrefixFormat(template="chat", max_prompt_tokens=128, max_response_tokens=48)
        self.w: torch.Tensor | None = None
        self.tokens = 0

    @torch.no_grad()
    def features(self, items: list[tuple[list[dict], str, bool]]) -> torch.Tensor:
        from sp_prm.formatting import encode
        from sp_prm.scoring import last_token_index, length_batches, pad

        seqs = [encode(self.tok, m, r, self.fmt).sequence(None, complete) for m, r, complete in items]
        self.tokens += sum(map(len, seqs))
        out = torch.zeros(len(seqs), self.model.config.hidden_size)
        for idx in length_batches([len(s) for s in seqs], 4096, 32):
            ids, mask = pad([seqs[i] for i in idx], self.tok.pad_token_id)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            out[idx] = hidden[torch.arange(len(idx)), last_token_index(mask)].float()
        return out

    def fit(self, pairs: list[dict], l2: float = 1e-2) -> None:
        fc = self.features([(p["prompt"], p["chosen"], True) for p in pairs])
        fr = self.features([(p["prompt"], p["rejected"], True) for p in pairs])
        diff = fc - fr
        self.sd = diff.std(0).clamp(min=1e-6)
        x = diff / self.sd
        w = torch.zeros(x.shape[1], requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.softplus(-(x @ w)).mean() + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w = (w.detach() / self.sd)

    def score(self, items: list[tuple[list[dict], str, bool]]) -> np.ndarray:
        return (self.features(items) @ self.w).numpy()


def fit_judge() -> tuple[ProbeJudge, dict[str, Any]]:
    from data_prep.loaders import PreferenceSource, load_preferences

    train_pairs, _ = load_preferences(PreferenceSource(subset="train", eval_fraction=0.2,
                                                       sample={"limit": JUDGE_PAIRS}))
    held, _ = load_preferences(PreferenceSource(subset="eval", eval_fraction=0.2))
    judge = ProbeJudge()
    judge.fit(list(train_pairs))
    sc = judge.score([(p["prompt"], p["chosen"], True) for p in held])
    sr = judge.score([(p["prompt"], p["rejected"], True) for p in held])
    acc = float((sc > sr).mean())
    print(f"judge: SmolLM2-135M probe fit on {len(train_pairs)} train pairs; held-out accuracy {acc:.3f} "
          f"on {len(held)} pairs")
    return judge, {"train_pairs": len(train_pairs), "heldout_pairs": len(held), "heldout_accuracy": acc}


# -- stage 6: decoding (the one place that calls the decoding package) -----------------------------------
def decode_candidates(prompts: list[dict], scorer_dir: Path, n: int, max_new_tokens: int, seed: int = 0) -> list[dict]:
    """Best-of-``n`` with SmolLM2 guided by ``scorer_dir``, every candidate saved (one jsonl record per prompt)."""
    from decoding.decode import DecodeConfig, run
    from sp_prm.config import load_config

    DECODE_DIR.mkdir(parents=True, exist_ok=True)
    prompts_path, out = DECODE_DIR / "main_job_prompts.jsonl", DECODE_DIR / "main_job_bon.jsonl"
    prompts_path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out.unlink(missing_ok=True)
    cfg = load_config(DecodeConfig, [
        "--config", str(RECIPES / "decode/bon_prm_minilm_smollm2.yaml"), "--scorer.name", f"rm:{scorer_dir}",
        "--search.best_of_n.n", str(n), "--search.max_new_tokens", str(max_new_tokens), "--data.path", str(prompts_path),
        "--data.limit", "null", "--batch_size", str(len(prompts)), "--save_candidates", "true",
        "--output", str(out), "--seed", str(seed), "--progress", "false"])
    run(cfg)
    return [json.loads(line) for line in out.read_text().splitlines()]


def rm_scores(model_dir: Path, items: list[tuple[list[dict], str, bool]]) -> tuple[np.ndarray, int]:
    """Rewards of complete/cut responses under a trained RM, rendered with its recorded prefix format."""
    from sp_prm.formatting import encode
    from sp_prm.models import load_reward_model, load_tokenizer, trained_prefix_format
    from sp_prm.scoring import RewardScorer

    tok = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), "float32", "cpu", False, tok.pad_token_id)
    fmt = trained_prefix_format(model)
    seqs = [encode(tok, m, r, fmt).sequence(None, complete) for m, r, complete in items]
    return RewardScorer(model, tok.pad_token_id).score(seqs).numpy(), sum(map(len, seqs))


def decode_compare(judge: ProbeJudge) -> dict[str, Any]:
    from data_prep.loaders import PreferenceSource, load_preferences
    from sp_prm.models import load_tokenizer

    held, _ = load_preferences(PreferenceSource(subset="eval", eval_fraction=0.2,
                                                sample={"limit": DECODE["prompts"]}))
    prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in held]
    records = decode_candidates(prompts, PRM_DIR, DECODE["n"], DECODE["max_new_tokens"])
    by_id = {p["id"]: p["prompt"] for p in prompts}
    items = [(by_id[r["id"]], c["response"], c["complete"]) for r in records for c in r["candidates"]]
    n = DECODE["n"]
    shape = (len(records), n)
    prm, scorer_tokens = rm_scores(PRM_DIR, items)
    orm, _ = rm_scores(ORM_DIR, items)
    judge.tokens = 0
    gold = judge.score(items).reshape(shape)
    prm, orm = prm.reshape(shape), orm.reshape(shape)
    # decode's own PRM scores of the candidates must be the ones recomputed here
    decoded = np.array([[c["score"] for c in r["candidates"]] for r in records])
    prm_consistent = bool(np.allclose(decoded, prm, atol=1e-3))
    rows = np.arange(len(records))
    pick = {"plain sampling": np.zeros(len(records), dtype=int), "BoN, ORM-guided": orm.argmax(1),
            "BoN, SP-PRM-guided": prm.argmax(1)}
    judged = {k: gold[rows, v] for k, v in pick.items()}
    pol_tok = load_tokenizer(POLICY)
    generated_all = sum(r["compute"]["policy_tokens_generated"] for r in records)
    first_tokens = sum(len(pol_tok(r["candidates"][0]["response"], add_special_tokens=False)["input_ids"])
                       for r in records)
    compute = {"plain sampling": {"policy_tokens_generated": first_tokens, "scorer_tokens": 0},
               "BoN, ORM-guided": {"policy_tokens_generated": generated_all, "scorer_tokens": scorer_tokens},
               "BoN, SP-PRM-guided": {"policy_tokens_generated": generated_all, "scorer_tokens": scorer_tokens}}
    pairs = {}
    for a, b in (("BoN, SP-PRM-guided", "BoN, ORM-guided"), ("BoN, SP-PRM-guided", "plain sampling"),
                 ("BoN, ORM-guided", "plain sampling")):
        pairs[f"{a} - {b}"] = bootstrap(judged[a] - judged[b])
    same_pick = float((pick["BoN, ORM-guided"] == pick["BoN, SP-PRM-guided"]).mean())
    return {"prompts": len(records), "n": n, "max_new_tokens": DECODE["max_new_tokens"],
            "judge_mean": {k: float(v.mean()) for k, v in judged.items()},
            "judge_sd": {k: float(v.std(ddof=1)) for k, v in judged.items()},
            "paired": pairs, "same_pick_rate": same_pick, "compute": compute,
            "decode_seconds": sum(r["compute"]["seconds"] for r in records), "prm_scores_consistent": prm_consistent,
            "examples": [{"prompt": by_id[r["id"]][-1]["content"], **{k: r["candidates"][int(v[i])]["response"]
                          for k, v in pick.items()}} for i, r in enumerate(records[:2])]}


# -- stage 7: the summary -------------------------------------------------------------------------------
def plot(weights: dict, evals: dict, dec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].hist(weights["weights"], bins=40, color="tab:blue")
    ax[0].set(title=f"SP-PRM weights 1/H ({weights['pairs']} partial pairs)", xlabel="weight", ylabel="pairs")
    labels = list(evals["results"]["orm"])  # full, t=..., f=... as evaluated
    for name, color in (("orm", "tab:gray"), ("sp-prm", "tab:red")):
        res = evals["results"][name]
        acc = [res[k]["accuracy"] for k in labels]
        ci = [res[k]["ci95"] for k in labels]
        ax[1].errorbar(range(len(labels)), acc, yerr=ci, label=name, color=color, capsize=3, marker="o")
    ax[1].axhline(0.5, color="k", lw=0.5)
    ax[1].set(xticks=range(len(labels)), xticklabels=labels, title="held-out pair accuracy (95% CI)", ylabel="accuracy")
    ax[1].legend()
    names = list(dec["judge_mean"])
    sd = [dec["judge_sd"][k] / math.sqrt(dec["prompts"]) * 1.96 for k in names]
    ax[2].bar(range(len(names)), [dec["judge_mean"][k] for k in names], yerr=sd, capsize=4,
              color=["tab:gray", "tab:olive", "tab:red"])
    ax[2].set(xticks=range(len(names)), xticklabels=[k.replace(", ", "\n") for k in names],
              title=f"judge score of the picked response ({dec['prompts']} prompts)", ylabel="judge reward")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(weights: dict, evals: dict, judge_info: dict, dec: dict) -> str:
    import platform

    res = evals["results"]
    labels = list(evals["results"]["orm"])  # full, t=..., f=... as evaluated
    wq = weights["weight_quantiles"]
    lines = [
        "# Main job summary", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}; "
        f"load average at the end {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min). "
        f"Total {TIMES['total'] / 60:.1f} min wall, {CPU['total'] / 60:.1f} CPU-min "
        f"(= {CPU['total'] / 60 / torch.get_num_threads():.1f} min on {torch.get_num_threads()} idle cores).", "",
        "## What was trained on what", "",
        f"- Data: the shipped HH-RLHF harmless sample (builtin:hh-rlhf-sample), split by hashed pair id: "
        f"the train side (80%) for training, {evals['n_pairs']} held-out pairs (nobody trains on them).",
        "- Reference ORM: all-MiniLM-L6-v2 + a score head, Bradley-Terry on full train pairs "
        "(recipes/hh-rlhf/train_orm_minilm.yaml).",
        f"- SP-PRM: all-MiniLM-L6-v2, weighted Bradley-Terry (Eq. 3) on {weights['pairs']} SST partial pairs "
        f"(K = {weights['sst_k']}) of {weights['source_pairs']} source pairs, weights w = 1/H(sigmoid(reference gap)), "
        f"cap {weights['weight_cap']}, normalisation {weights['weight_normalize']}.",
        f"- Judge (guides nothing): a Bradley-Terry linear probe on frozen SmolLM2-135M-Instruct features, fit on "
        f"{judge_info['train_pairs']} of the same train pairs; held-out accuracy on human labels {judge_info['heldout_accuracy']:.3f} "
        f"({judge_info['heldout_pairs']} pairs). It is a third reward model, not ground truth.",
        "", "## The weight distribution", "",
        "| | min | q10 | q25 | median | q75 | q90 | max |", "|---|---|---|---|---|---|---|---|",
        "| weight | " + " | ".join(f"{wq[q]:.3f}" for q in ("0.0", "0.1", "0.25", "0.5", "0.75", "0.9", "1.0")) + " |",
        "| abs reference gap | " + " | ".join(f"{weights['gap_quantiles'][q]:.3f}"
                                             for q in ("0.0", "0.1", "0.25", "0.5", "0.75", "0.9", "1.0")) + " |",
        "",
        (f"**FAILURE: the weights are flat** (q90/q10 = {weights['spread_ratio']:.3f}): Eq. 3 is Eq. 2 times a constant."
         if weights["flat"] else
         f"The weights spread: q90/q10 = {weights['spread_ratio']:.2f} (flat would be < {FLAT_RATIO}); the reference is "
         "sure of some prefixes and unsure of others, so Eq. 3 reweights the pairs."),
        "", "## ORM vs SP-PRM on held-out pairs", "",
        f"Accuracy r(chosen prefix) > r(rejected prefix) on {evals['n_pairs']} held-out pairs (± 95%), and the "
        "paired bootstrap of SP-PRM - ORM:", "",
        "| cut | ORM | SP-PRM | SP-PRM - ORM [95% CI] | |", "|---|---|---|---|---|",
    ]
    for k in labels:
        v = res["sp-prm"][k]["vs_baseline"]
        lines.append(f"| {k} | {res['orm'][k]['accuracy']:.3f} ± {res['orm'][k]['ci95']:.3f} | "
                     f"{res['sp-prm'][k]['accuracy']:.3f} ± {res['sp-prm'][k]['ci95']:.3f} | "
                     f"{v['diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] | {verdict(v['ci_low'], v['ci_high'])} |")
    c = dec["compute"]
    lines += [
        "", "## Decoding: the same prompts, the same candidates", "",
        f"SmolLM2-135M-Instruct samples N = {dec['n']} candidates (temperature 1, up to {dec['max_new_tokens']} new "
        f"tokens) for each of {dec['prompts']} held-out prompts, once. Plain sampling keeps the first candidate; "
        "Best-of-N keeps the ORM's or the SP-PRM's best, so all three are paired on identical samples. "
        f"The two guides picked the same candidate on {dec['same_pick_rate']:.0%} of the prompts. "
        f"Decode's own SP-PRM scores match the recomputed ones: {dec['prm_scores_consistent']}.", "",
        "| method | judge score (mean ± sd) | policy tokens generated | guide tokens scored |", "|---|---|---|---|",
    ]
    for k, m in dec["judge_mean"].items():
        lines.append(f"| {k} | {m:+.3f} ± {dec['judge_sd'][k]:.3f} | {c[k]['policy_tokens_generated']} | "
                     f"{c[k]['scorer_tokens']} |")
    lines += ["", "Paired differences of the judge score over prompts (95% bootstrap CI):", ""]
    for name, (d, lo, hi) in dec["paired"].items():
        lines.append(f"- {name}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]: {verdict(lo, hi)}")
    lines += ["", f"With {dec['prompts']} prompts these intervals are wide; a difference inside them is not evidence "
              "either way.", "", "## Time per stage", "",
              f"Wall seconds, and CPU seconds of the job's process (all threads; divided by the {torch.get_num_threads()} "
              "torch threads it is the wall time the stage needs on otherwise idle cores).", "",
              "| stage | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {CPU.get(k, float('nan')):.1f} |" for k, v in TIMES.items()]
    lines += ["", "![summary](summary.png)", ""]
    return "\n".join(lines)


def main() -> None:
    torch.manual_seed(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    REUSE[0] = "--reuse" in sys.argv[1:]
    if not REUSE[0]:
        with stage("1. reference ORM (sp-prm train --loss orm)"):
            train_orm()
    with stage("2. weighted SST partial pairs (sp-prm prepare)"):
        weights = prepare_pairs()
    if not REUSE[0]:
        with stage("3. SP-PRM (sp-prm train --loss weighted)"):
            train_prm()
        with stage("4. ORM vs SP-PRM on held-out pairs (sp-prm evaluate-rm)"):
            evals = evaluate_both()
    else:
        evals = json.loads((EVAL_DIR / "results.json").read_text())
    with stage("5. judge (SmolLM2 probe)"):
        judge, judge_info = fit_judge()
    with stage("6. decode: plain / BoN-ORM / BoN-SP-PRM, judged"):
        dec = decode_compare(judge)
    with stage("7. summary"):
        plot(weights, evals, dec, OUT / "summary.png")
        TIMES["total"], CPU["total"] = time.perf_counter() - start, time.process_time() - cpu_start
        text = summary(weights, evals, judge_info, dec)
        tmp = OUT / ".SUMMARY.md.tmp"
        tmp.write_text(text)
        os.replace(tmp, OUT / "SUMMARY.md")
        (OUT / "summary.json").write_text(json.dumps({"weights": {k: v for k, v in weights.items() if k != "weights"},
                                                      "judge": judge_info, "decode": dec, "times": TIMES}, indent=2))
    print("\n" + text)
    if weights["flat"]:
        raise SystemExit("main job: the weight distribution is flat (see outputs/SUMMARY.md)")


if __name__ == "__main__":
    main()
