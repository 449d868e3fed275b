"""Decoding speed, as ratios measured side by side in one run (random weights: speed needs no training).

    python bench/bench_decoding.py                 # small Llama on SmolLM2's tokenizer, CPU
    python bench/bench_decoding.py --hidden 576 --layers 30 --heads 9 --kv-heads 3   # SmolLM2-135M shape

Reports:
* REAR Best-of-N vs plain sampling of the same N responses (same seeds, same sampler):
  overhead = (sample + REAR) / sample; target <= 1.3x.
* DVTS (REAR) tokens/s (sampled tokens of every branch / wall time).
* RM scoring of k candidates in one batched call vs one call per candidate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decoding.policy import Policy, SamplingParams  # noqa: E402
from decoding.scorers import RearScorer, RewardModelScorer  # noqa: E402
from decoding.search.best_of_n import best_of_n  # noqa: E402
from decoding.search.core import Candidate, expand  # noqa: E402
from decoding.search.dvts import dvts  # noqa: E402
from decoding.types import Partial, Prompt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "smollm2_tokenizer")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True, num_labels=1)
    lm = LlamaForCausalLM(cfg).eval()
    rm = LlamaForSequenceClassification(cfg).eval()
    policy = Policy(lm, tok)
    policy.delimiter_mask()
    prompts = [Prompt(f"q{i}", [{"role": "system", "content": "I prefer short, practical answers."},
                                {"role": "user", "content": f"How do I get better at task number {i} quickly?"}],
                      [{"role": "user", "content": f"How do I get better at task number {i} quickly?"}],
                      "q", "p", i) for i in range(args.prompts)]
    params = SamplingParams(temperature=1.0)
    print(f"model: hidden {args.hidden}, layers {args.layers}, params {sum(p.numel() for p in lm.parameters())/1e6:.1f} M;"
          f" {args.prompts} prompts x N={args.n}, {args.tokens} tokens, torch threads {torch.get_num_threads()}")

    def plain() -> None:
        state = policy.prefill([policy.encode(p.messages) for p in prompts], [p.index for p in prompts])
        expand(policy, state, [Candidate(prompt=i) for i in range(len(prompts))], prompts, args.n, params, 0, 0,
               [args.tokens] * len(prompts), stop_at_delimiter=False, feed_final=False)

    def rear_bon() -> None:
        best_of_n(policy, RearScorer(policy, 20.0), prompts, args.n, params, args.tokens, seed=0)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    timed(plain)  # warm-up
    t_plain, t_rear = [], []
    for _ in range(args.repeats):  # interleaved so that machine load hits both alike
        t_plain.append(timed(plain))
        t_rear.append(timed(rear_bon))
    tp, tr = min(t_plain), min(t_rear)
    print(f"BoN: plain sampling {tp:.2f} s, REAR-BoN {tr:.2f} s -> overhead {tr / tp:.3f}x (target <= 1.3x)")

    gen0 = policy.meter.total("policy_tokens_generated")
    t = timed(lambda: dvts(policy, RearScorer(policy, 20.0), prompts, n=args.n, width=4, params=params,
                           max_new_tokens=args.tokens, max_steps=4, max_step_tokens=args.tokens // 4, seed=0))
    gen = policy.meter.total("policy_tokens_generated") - gen0
    print(f"DVTS (n={args.n}, width 4, 4 steps): {gen} tokens in {t:.2f} s -> {gen / t:.0f} tokens/s "
          f"(plain sampling: {args.prompts * args.n * args.tokens / tp:.0f} tokens/s)")

    state = policy.prefill([policy.encode(p.messages) for p in prompts]).select(
        [i for i in range(len(prompts)) for _ in range(args.n)])
    samples = policy.sample(state, list(range(len(state))), params, args.tokens, feed_final=False)
    parts = [Partial(policy.decode(s.token_ids), s.token_ids, s.eos) for s in samples]
    pr = [prompts[i] for i in range(len(prompts)) for _ in range(args.n)]
    one_by_one = RewardModelScorer(rm, tok, cache=False, max_batch_size=1)
    batched = RewardModelScorer(rm, tok, cache=False)
    cached = RewardModelScorer(rm, tok, cache=True)
    t1s, tbs, tcs = [], [], []
    for _ in range(args.repeats):  # interleaved, min of repeats: robust to load from other jobs
        t1s.append(timed(lambda: [one_by_one.score([p], [r]) for p, r in zip(pr, parts)]))
        tbs.append(timed(lambda: batched.score(pr, parts)))
        cached.prefix_cache.reset()  # each repeat starts cold: the cache must earn its keep within one call
        tcs.append(timed(lambda: cached.score(pr, parts)))
    t1, tb, tc = min(t1s), min(tbs), min(tcs)
    print(f"RM scoring of {len(parts)} candidates: one by one {t1:.2f} s, batched {tb:.2f} s ({t1 / tb:.1f}x), "
          f"batched + shared-prefix cache {tc:.2f} s ({t1 / tc:.1f}x)")


if __name__ == "__main__":
    main()
