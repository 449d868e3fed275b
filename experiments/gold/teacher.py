"""Stage a: the gold teacher reward model, trained once and kept.

Default ``kind: probe``: a Bradley-Terry linear head over the *frozen* last-token hidden states of
SmolLM2-135M-Instruct. Why this and not a full fine-tune or MiniLM:

* cost: one forward pass per response and no backward (a full SmolLM2 fine-tune measured 0.38
  pairs/s here, about 2 h for 2 epochs of these pairs on 2 cores; the features take one
  evaluation-speed pass, ~1.25 pairs/s, and the head fits in seconds);
* independence: the contenders are MiniLM encoders; a decoder teacher of another family keeps
  "the student learns the teacher" from being trivial, and it shares the policy's tokenizer;
* it is a plain sequence classifier when saved (the head becomes ``score.weight``), so every tool
  (prepare's reference, evaluate-rm, the search judges) reads it like any other RM.

Its score *is* quality in this testbed; its accuracy on held-out human labels is reported only to
say how much it resembles human preference (a weak teacher still defines an exact gold).

The features are standardised per dimension for the fit (so one L2 strength suits every
dimension); ``w / sd`` is what is saved (Bradley-Terry ignores a constant, so no bias is needed).
The L2 strength is chosen on an inner 20% of the train side; the reported accuracy is the fit on
the train side evaluated on the held-out side (the team's hashed-id split); the saved teacher is
then refit on every pair.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.gold.config import GoldConfig
from sp_prm.errors import ConfigError
from sp_prm.formatting import PrefixFormat, PromptTooLong, encode
from sp_prm.scoring import last_token_index, length_batches, pad, unwrap


def load_pairs(sources: list[str], subset: str = "all", eval_fraction: float = 0.2) -> list[dict[str, Any]]:
    """Normalised pairs (id, prompt messages, chosen, rejected, source) of every source, one side of the id split."""
    from data_prep.loaders import load_preferences, read_table

    out = []
    for src in sources:
        table = read_table(src)
        columns = ({"prompt": "i_chosen", "chosen": "r_chosen", "rejected": "r_reject"}
                   if "i_chosen" in table.column_names else {})
        pairs, _ = load_preferences(src, "pairs" if columns else "auto", columns, subset=subset,
                                    eval_fraction=eval_fraction)
        out += [{**p, "source": Path(src).name} for p in pairs]
    return out


@torch.no_grad()
def last_token_features(model: Any, tokenizer: Any, fmt: PrefixFormat, prompts: list[Any], responses: list[str],
                        batch_tokens: int = 8192, progress: bool = False) -> torch.Tensor:
    """``[n, hidden]`` fp64: the backbone's hidden state at the last real token of each (prompt, response)."""
    inner = unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    seqs = []
    for p, r in zip(prompts, responses, strict=True):
        try:
            seqs.append(encode(tokenizer, p, r, fmt).sequence(end_marker=fmt.end_marker))
        except PromptTooLong as e:
            raise ConfigError(f"teacher.prefix drops a prompt ({e}); use prompt_overflow: truncate") from e
    device = next(model.parameters()).device
    out = torch.empty(len(seqs), inner.config.hidden_size, dtype=torch.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = list(length_batches([len(s) for s in seqs], batch_tokens, 64))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="teacher features", unit="batch", mininterval=30)
    for idx in batches:
        ids, mask = pad([seqs[i] for i in idx], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        h = backbone(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        out[idx] = h[torch.arange(len(idx), device=device), last_token_index(mask)].double().cpu()
    return out


def fit_probe(diffs: torch.Tensor, l2: float, seed: int = 0, iters: int = 200) -> torch.Tensor:
    """``w`` minimising ``mean softplus(-diffs @ w) + l2 * |w|^2`` (Bradley-Terry on feature differences)."""
    torch.manual_seed(seed)
    w = torch.zeros(diffs.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(diffs @ w)).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def pair_accuracy(diffs: torch.Tensor, w: torch.Tensor) -> float:
    return float(((diffs @ w) > 0).double().mean()) if len(diffs) else float("nan")


def choose_l2(diffs: torch.Tensor, grid: list[float], seed: int) -> tuple[float, dict[str, float]]:
    """The grid value with the best accuracy (then the larger L2) on an inner 20% split of ``diffs``."""
    order = list(range(len(diffs)))
    random.Random(seed).shuffle(order)
    cut = max(1, len(order) // 5)
    val, fit = torch.as_tensor(order[:cut]), torch.as_tensor(order[cut:])
    scores = {str(g): pair_accuracy(diffs[val], fit_probe(diffs[fit], g, seed)) for g in grid}
    best = max(grid, key=lambda g: (scores[str(g)], g))
    return best, scores


def train_teacher(cfg: GoldConfig, model: Any = None, tokenizer: Any = None, progress: bool = False) -> dict[str, Any]:
    """Fit the probe teacher, save it to ``cfg.teacher_dir`` (atomically) and return its report."""
    from transformers import AutoModelForSequenceClassification

    from sp_prm.models import load_tokenizer, resolve

    tc = cfg.teacher
    t0 = time.perf_counter()
    if model is None:
        tokenizer = load_tokenizer(tc.backbone)
        model = AutoModelForSequenceClassification.from_pretrained(resolve(tc.backbone), num_labels=1,
                                                                   dtype=getattr(torch, cfg.dtype))
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    train = load_pairs(tc.sources, "train", tc.eval_fraction)
    held = load_pairs(tc.sources, "eval", tc.eval_fraction)
    pairs = train + held
    prompts = [p["prompt"] for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p["chosen"], p["rejected"])]
    feats = last_token_features(model, tokenizer, tc.prefix, prompts, responses, tc.batch_tokens, progress=progress)
    t_feat = time.perf_counter() - t0
    mu, sd = feats.mean(0), feats.std(0).clamp(min=1e-8)
    z = (feats - mu) / sd
    diffs = z[0::2] - z[1::2]  # chosen - rejected
    n_train = len(train)
    l2, inner = choose_l2(diffs[:n_train], tc.l2_grid, tc.seed)
    w_train = fit_probe(diffs[:n_train], l2, tc.seed)
    held_diffs = diffs[n_train:]
    correct = ((held_diffs @ w_train) > 0).double().numpy()
    rng = np.random.default_rng(tc.seed)
    boot = correct[rng.integers(0, len(correct), size=(cfg.bootstrap_resamples, len(correct)))].mean(1)
    per_source = {}
    for src in sorted({p["source"] for p in held}):
        sel = [i for i, p in enumerate(held) if p["source"] == src]
        per_source[src] = {"pairs": len(sel), "accuracy": float(correct[sel].mean())}
    w_all = fit_probe(diffs, l2, tc.seed)
    report = {
        "kind": "probe", "backbone": tc.backbone, "pairs_train": n_train, "pairs_held_out": len(held),
        "l2": l2, "inner_accuracy_by_l2": inner, "train_accuracy": pair_accuracy(diffs[:n_train], w_train),
        "held_out_accuracy": float(correct.mean()),
        "held_out_ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "held_out_by_source": per_source, "final_fit_pairs": len(pairs),
        "final_fit_accuracy": pair_accuracy(diffs, w_all), "seconds_features": round(t_feat, 1),
        "seconds_total": round(time.perf_counter() - t0, 1), "prefix": tc.prefix.to_dict(),
    }
    with torch.no_grad():
        head = unwrap(model).score
        head.weight.copy_((w_all / sd).to(head.weight.dtype)[None].to(head.weight.device))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    unwrap(model).config.sp_prm = {"prefix": tc.prefix.to_dict(), "loss": "probe", "base_model": tc.backbone,
                                   "teacher": {k: report[k] for k in ("l2", "held_out_accuracy", "final_fit_pairs")}}
    _save(model, tokenizer, cfg.teacher_dir, report)
    return report


def finetune_teacher(cfg: GoldConfig) -> dict[str, Any]:
    """``kind: finetune``: ``sp-prm train --loss orm`` on the train side, held-out accuracy on the other side.

    The comparison option (e.g. ``--teacher.backbone builtin:all-minilm-l6-v2``, or SmolLM2 on a GPU). Unlike the
    probe it is not refit on the held-out pairs: a second full training would double the cost.
    """
    import subprocess
    import sys

    from decoding.metrics.reward import rewards
    from sp_prm.models import load_reward_model, load_tokenizer

    tc = cfg.teacher
    t0 = time.perf_counter()
    train = load_pairs(tc.sources, "train", tc.eval_fraction)
    held = load_pairs(tc.sources, "eval", tc.eval_fraction)
    work = cfg.root / "teacher-finetune"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({k: p[k] for k in ("id", "prompt", "chosen", "rejected")}) + "\n"
                            for p in train))
    p = tc.prefix
    subprocess.run([sys.executable, "-m", "sp_prm.cli", "train", "--config", tc.finetune_recipe,
                    "--model_name_or_path", tc.backbone, "--dataset", str(data), "--eval_fraction", "0",
                    "--seed", str(tc.seed), "--resume", "false", "--output_dir", str(work / "model"),
                    "--prefix.template", p.template, "--prefix.max_prompt_tokens", str(p.max_prompt_tokens),
                    "--prefix.max_response_tokens", str(p.max_response_tokens)], check=True)
    tok = load_tokenizer(str(work / "model"))
    model = load_reward_model(str(work / "model"), cfg.dtype, cfg.device, pad_token_id=tok.pad_token_id)
    prompts = [h["prompt"] for h in held]
    rc = rewards(model, tok, prompts, [h["chosen"] for h in held], p)
    rr = rewards(model, tok, prompts, [h["rejected"] for h in held], p)
    correct = np.array([float(a > b) for a, b in zip(rc, rr)])
    rng = np.random.default_rng(tc.seed)
    boot = correct[rng.integers(0, len(correct), size=(cfg.bootstrap_resamples, len(correct)))].mean(1)
    report = {"kind": "finetune", "backbone": tc.backbone, "pairs_train": len(train), "pairs_held_out": len(held),
              "l2": float("nan"), "held_out_accuracy": float(correct.mean()),
              "held_out_ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
              "final_fit_pairs": len(train), "seconds_features": 0.0,
              "seconds_total": round(time.perf_counter() - t0, 1), "prefix": p.to_dict()}
    _save(model, tok, cfg.teacher_dir, report)
    return report


def _save(model: Any, tokenizer: Any, target: Path, report: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "teacher.json").write_text(json.dumps(report, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def teacher_ready(cfg: GoldConfig) -> bool:
    return (cfg.teacher_dir / "teacher.json").exists() and (cfg.teacher_dir / "config.json").exists()


def describe(report: dict[str, Any]) -> str:
    lo, hi = report["held_out_ci95"]
    return (f"teacher ({report['kind']}, {report['backbone']}): held-out accuracy {report['held_out_accuracy']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] on {report['pairs_held_out']} pairs (L2 {report['l2']:g}); refit on "
            f"{report['final_fit_pairs']} pairs; {report['seconds_total']:.0f} s "
            f"({report['seconds_features']:.0f} s features)")
