"""Two ways a decoder reward model reads many related sequences, each against its plain path, side by side.

1. **Judge token trees** (``decoding.metrics.reward.rewards``): N policy samples of one prompt are scored
   as a tree on their common prefix (the prompt is read once) vs every sequence alone
   (``share_prefix=False``). Real samples: SmolLM2-135M-Instruct (fp32, T = 0.7, top-p 0.9) on HH
   harmless-base prompts; the judge is SmolLM2-135M as a one-output classifier (a seeded random head: the
   time does not depend on the head's values).
2. **Nested cross-tokenizer prefix scoring** (``sp_prm.prefix_scoring.PrefixScorer``): prefixes cut in
   MiniLM's token space, re-encoded for the SmolLM2 judge, read from the pass of the longest prefix they
   begin (``score_nested``) vs one pass per prefix (the path before it). Real HH pairs, both sides.

Both report the largest reward difference between the two paths, the tokens each fed to the model and the
seconds each took, measured in the same run.

    python bench/bench_judge.py [--prompts 8] [--samples 8] [--pairs 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_vllm_scorer import hh_prompts, hh_rows  # noqa: E402


def timed(fn, repeats: int):
    out = fn()  # warm-up (and the value compared)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return out, (time.perf_counter() - t0) / repeats


def counting_backbone(model):
    """Count the input ids every forward of ``model``'s backbone receives (tokens fed)."""
    fed = [0]
    backbone = model.model
    real = backbone.forward

    def forward(*a, **k):
        ids = k.get("input_ids", a[0] if a else None)
        fed[0] += int(ids.numel()) if ids is not None else int(k["inputs_embeds"].shape[:2].numel())
        return real(*a, **k)

    backbone.forward = forward
    return fed


def judge(args, policy, rm, tok) -> None:
    from decoding.metrics.reward import rewards
    from decoding.policy import SamplingParams
    from sp_prm.formatting import PrefixFormat

    prompts = hh_prompts(args.prompts)
    ids = [policy.encode(p.messages) for p in prompts for _ in range(args.samples)]
    with torch.no_grad():
        state = policy.prefill(ids, groups=[i // args.samples for i in range(len(ids))])
        samples = policy.sample(state, list(range(len(ids))), SamplingParams(temperature=0.7, top_p=0.9),
                                args.max_new_tokens, feed_final=False)
    msgs = [p.messages for p in prompts for _ in range(args.samples)]
    texts = [policy.decode(s.token_ids) for s in samples]
    complete = [s.eos for s in samples]
    fmt = PrefixFormat(template="plain", max_prompt_tokens=192, max_response_tokens=args.max_new_tokens)
    fed = counting_backbone(rm)
    results = {}
    for name, share in (("tree", True), ("plain", False)):
        fed[0] = 0
        vals, sec = timed(lambda s=share: rewards(rm, tok, msgs, texts, fmt, complete=complete, share_prefix=s),
                          args.repeats)
        results[name] = (vals, sec, fed[0] // (args.repeats + 1))
    diff = max(abs(a - b) for a, b in zip(results["tree"][0], results["plain"][0]))
    (_, t_tree, n_tree), (_, t_plain, n_plain) = results["tree"], results["plain"]
    print(f"1. judge token trees: {args.prompts} prompts x {args.samples} samples "
          f"(mean {sum(len(s.token_ids) for s in samples) / len(samples):.0f} new tokens)")
    print(f"   max |reward difference| {diff:.2e}")
    print(f"   plain: {n_plain} tokens, {t_plain:.2f} s; tree: {n_tree} tokens, {t_tree:.2f} s; "
          f"ratio {t_plain / t_tree:.2f}x (tokens {n_plain / n_tree:.2f}x)")


def nested(args, rm, tok) -> None:
    from data_prep.loaders import split_hh_pair
    from sp_prm import prefix_scoring
    from sp_prm.formatting import PrefixFormat, encode
    from sp_prm.models import load_tokenizer
    from sp_prm.prefix_scoring import PrefixScorer
    from sp_prm.scoring import RewardScorer

    cut_tok = load_tokenizer("builtin:all-minilm-l6-v2")
    fmt = PrefixFormat(template="plain", max_prompt_tokens=192, max_response_tokens=96)
    sides, msgs, texts = [], [], []
    for row in hh_rows(args.pairs):
        messages, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
        for r in (chosen, rejected):
            sides.append(encode(cut_tok, messages, r, fmt))
            msgs.append(messages)
            texts.append(r)
    cuts = [1, 2, 5, 10, 20, 40, 64, 96]
    positions = [[t for t in cuts if t <= s.length] or [s.length] for s in sides]
    scorer = PrefixScorer(RewardScorer(rm, tok.pad_token_id), tok, cut_tok, fmt)
    fed = counting_backbone(rm)
    real = prefix_scoring.score_nested

    def one_pass_each(inner, seqs, groups):  # the path before score_nested: every prefix its own pass
        return inner.score(seqs)

    results = {}
    for name, fn in (("nested", real), ("per prefix", one_pass_each)):
        prefix_scoring.score_nested = fn
        try:
            fed[0] = 0
            vals, sec = timed(lambda: scorer.score(sides, positions, msgs, texts), args.repeats)
        finally:
            prefix_scoring.score_nested = real
        results[name] = (torch.cat(vals), sec, fed[0] // (args.repeats + 1))
    diff = float((results["nested"][0] - results["per prefix"][0]).abs().max())
    (_, t_n, n_n), (_, t_p, n_p) = results["nested"], results["per prefix"]
    print(f"2. nested prefix scoring: {len(sides)} HH responses, {sum(map(len, positions))} MiniLM cuts at {cuts}")
    print(f"   max |reward difference| {diff:.2e}")
    print(f"   per prefix: {n_p} tokens, {t_p:.2f} s; nested: {n_n} tokens, {t_n:.2f} s; "
          f"ratio {t_p / t_n:.2f}x (tokens {n_p / n_n:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from transformers import AutoModelForSequenceClassification

    from decoding.decode import DecodeConfig, PolicyConfig, build_policy
    from decoding.types import Meter
    from sp_prm.models import load_tokenizer, resolve

    torch.manual_seed(0)
    name = "builtin:smollm2-135m-instruct"
    tok = load_tokenizer(name)
    rm = AutoModelForSequenceClassification.from_pretrained(resolve(name), num_labels=1, dtype=torch.float32).eval()
    rm.config.pad_token_id = tok.pad_token_id
    policy = build_policy(DecodeConfig(policy=PolicyConfig(model=name)), Meter())
    print(f"threads {torch.get_num_threads()}, fp32")
    judge(args, policy, rm, tok)
    nested(args, rm, tok)


if __name__ == "__main__":
    main()
