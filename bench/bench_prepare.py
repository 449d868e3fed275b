"""Reference scoring for TLT: one forward pass per response vs one pass per prefix, side by side.

    python bench/bench_prepare.py                       # small random Llama on SmolLM2's tokenizer
    python bench/bench_prepare.py --size smollm2        # SmolLM2-135M-sized random RM (slower)

Real HH-RLHF pairs (the shipped sample) are tokenized with SmolLM2's chat template; responses are
cut to ``--response-tokens`` (default 128) and every prefix t = 1..T of both sides is scored (TLT).
Both paths run in this process on the same model and inputs; the script checks that they agree and
prints the speed-up. Random weights: speed needs no training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from data_prep.loaders import load_preferences
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.scoring import RewardScorer

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2_tokenizer"
SIZES = {
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    args = parser.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = LlamaConfig(vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id, **SIZES[args.size])
    model = LlamaForSequenceClassification(config).eval()
    fmt = PrefixFormat(max_prompt_tokens=64, max_response_tokens=args.response_tokens)
    pairs, _ = load_preferences("builtin:hh-rlhf-sample")
    sides = []
    for pair in pairs:
        encs = [encode(tok, pair["prompt"], pair[k], fmt) for k in ("chosen", "rejected")]
        if min(e.length for e in encs) >= args.response_tokens:
            sides += encs
        if len(sides) >= 2 * args.pairs:
            break
    positions = [list(range(1, e.length + 1)) for e in sides]
    n_prefixes = sum(len(p) for p in positions)
    scorer = RewardScorer(model, tok.pad_token_id, max_batch_tokens=args.batch_tokens)

    start = time.perf_counter()
    one_pass = scorer.score_positions([e.sequence() for e in sides],
                                      [[e.reward_index(t) for t in p] for e, p in zip(sides, positions)])
    t_one = time.perf_counter() - start
    tokens_one = scorer.tokens_scored

    start = time.perf_counter()
    per_prefix = scorer.score([e.sequence(t) for e, p in zip(sides, positions) for t in p])
    t_per = time.perf_counter() - start
    tokens_per = scorer.tokens_scored - tokens_one

    diff = (torch.cat(one_pass) - per_prefix).abs().max().item()
    print(f"model={args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, fp32, "
          f"{torch.get_num_threads()} threads); {len(sides)} responses x {args.response_tokens} tokens, "
          f"{n_prefixes} prefixes (TLT)")
    print(f"one pass per response : {t_one:8.2f} s  {tokens_one:>9,} tokens  {n_prefixes / t_one:8.1f} prefixes/s")
    print(f"one pass per prefix   : {t_per:8.2f} s  {tokens_per:>9,} tokens  {n_prefixes / t_per:8.1f} prefixes/s")
    print(f"speed-up: {t_per / t_one:.1f}x   max |reward difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
