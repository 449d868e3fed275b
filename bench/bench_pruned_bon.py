"""PRM-pruned Best-of-N vs full Best-of-N at the same N, the same prompts and seeds, for two guides.

    python bench/bench_pruned_bon.py --orm outputs/hh-rlhf-orm-minilm --prm outputs/hh-rlhf-sp-prm-minilm

Policy: SmolLM2-135M-Instruct (builtin, fp32, CPU); prompts: the shipped preference prompts. For each
guide (an outcome RM and an SP-PRM made from it) it runs Best-of-N and pruned Best-of-N (``alpha``,
a checkpoint every ``every`` tokens) and reports policy tokens generated, scorer tokens, wall time,
and the final reward: the guide's own score of the chosen response (no gold judge here), the ORM's
score of it as a common yardstick, and the share of Best-of-N's gain over a single sample (candidate 0,
the same seed in both runs) that the pruned search keeps. Best-of-N's candidates do not depend on the
guide, so its samples are drawn once and scored by each guide (its wall time: the sampling plus that
guide's scoring).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decoding.decode import DecodeConfig, ScorerConfig, build_policy, build_scorer  # noqa: E402
from decoding.policy import SamplingParams  # noqa: E402
from decoding.prompts import DataConfig, load_prompts  # noqa: E402
from decoding.search import SEARCHES  # noqa: E402
from decoding.search.best_of_n import BestOfNParams  # noqa: E402
from decoding.search.core import argmax  # noqa: E402
from decoding.search.pruned_bon import PrunedBonParams  # noqa: E402
from decoding.types import Meter  # noqa: E402


def use(meter: Meter, *objects) -> None:
    for o in objects:
        o.meter = meter
        for inner in ("prefix_cache", "cache"):
            if getattr(o, inner, None) is not None and hasattr(getattr(o, inner), "meter"):
                getattr(o, inner).meter = meter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orm", required=True, help="outcome RM (rm: path)")
    ap.add_argument("--prm", required=True, help="SP-PRM made from it (rm: path)")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DecodeConfig(data=DataConfig(limit=args.prompts))
    prompts = load_prompts(cfg.data)
    meter = Meter()
    policy = build_policy(cfg, meter)
    guides = {name: build_scorer(DecodeConfig(scorer=ScorerConfig(name=f"rm:{path}")), policy, meter)
              for name, path in (("orm", args.orm), ("sp-prm", args.prm))}
    sampling = SamplingParams(temperature=1.0)
    T = args.tokens

    def timed(fn, *objects):
        m = Meter()
        use(m, policy, *objects)
        t0 = time.perf_counter()
        out = fn()
        return out, m, time.perf_counter() - t0

    # Best-of-N's samples, drawn once (scorer: a guide, but its scores are recomputed per guide below).
    first = guides["orm"]
    bon, m_sample, t_sample = timed(lambda: SEARCHES["best_of_n"].run(
        policy, first, prompts, BestOfNParams(n=args.n), sampling, T, args.seed), first)
    parts = [c.partial(policy) for r in bon for c in r.candidates]
    owners = [r.prompt for r in bon for _ in r.candidates]
    judge = guides["orm"]

    def yardstick(results, picks):
        chosen = [r.candidates[j].partial(policy) for r, j in zip(results, picks)]
        return judge.score([r.prompt for r in results], chosen).tolist()

    rows = []
    for name, g in guides.items():
        scores, m_score, t_score = timed(lambda g=g: g.score(owners, parts).tolist(), g)
        per = [scores[i * args.n:(i + 1) * args.n] for i in range(len(prompts))]
        picks = [argmax(s) for s in per]
        full = {"policy": m_sample.total("policy_tokens_generated"),
                "scorer": m_score.total("scorer_tokens"), "seconds": t_sample + t_score,
                "reward": [s[j] for s, j in zip(per, picks)], "single": [s[0] for s in per],
                "orm": yardstick(bon, picks)}
        params = PrunedBonParams(n=args.n, alpha=args.alpha, every=args.every)
        pruned, m_p, t_p = timed(lambda g=g, params=params: SEARCHES["pruned_bon"].run(policy, g, prompts, params,
                                                                                        sampling, T, args.seed), g)
        # the guide's final score of the pruned pick (its last checkpoint score is the full response's)
        rew = [r.best_candidate.score for r in pruned]
        orm = judge.score([r.prompt for r in pruned], [r.best_candidate.partial(policy) for r in pruned]).tolist()
        rows.append((name, full, {"policy": m_p.total("policy_tokens_generated"),
                                  "scorer": m_p.total("scorer_tokens"), "seconds": t_p, "reward": rew, "orm": orm}))

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"policy SmolLM2-135M-Instruct fp32, {len(prompts)} prompts, N = {args.n}, T = {T}, pruned: alpha = "
          f"{args.alpha}, a checkpoint every {args.every} tokens, min_keep 1; {args.threads} threads")
    print("| guide | search | policy tokens | scorer tokens | wall s | guide reward | ORM reward | gain kept |")
    print("|---|---|---|---|---|---|---|---|")
    for name, full, pr in rows:
        single = mean(full["single"])
        gain = mean(full["reward"]) - single
        for label, r in (("Best-of-N", full), ("pruned", pr)):
            kept = (mean(r["reward"]) - single) / gain if gain else float("nan")
            print(f"| {name} | {label} | {r['policy']} | {r['scorer']} | {r['seconds']:.1f} | "
                  f"{mean(r['reward']):.3f} | {mean(r['orm']):.3f} | {kept:.0%} |")
        print(f"| {name} | single sample | {full['policy'] // args.n} | - | - | {single:.3f} | - | 0% |")
        print(f"| {name} | pruned / BoN | {pr['policy'] / full['policy']:.2f}x | "
              f"{pr['scorer'] / max(1, full['scorer']):.2f}x | {pr['seconds'] / full['seconds']:.2f}x | | | |")


if __name__ == "__main__":
    main()
