"""Top-p sampling: the nucleus read from the 256 most likely tokens vs the full-vocabulary sort, side by side.

Real next-token log-probs: SmolLM2-135M-Instruct (builtin, fp32) prefilled on HH harmless-base prompts,
each row repeated to ``--rows`` rows (a Best-of-N step's shape), temperature 0.7, top-p 0.9. Both paths get
the same uniforms; the bench checks they draw the same tokens and reports the time per call of each.

    python bench/bench_sampling.py [--rows 64] [--prompts 8] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_vllm_scorer import hh_prompts  # noqa: E402
from decoding.decode import DecodeConfig, PolicyConfig, build_policy  # noqa: E402
from decoding.policy import SamplingParams, _inverse_cdf, choose_tokens  # noqa: E402
from decoding.types import Meter  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    policy = build_policy(DecodeConfig(policy=PolicyConfig(model="builtin:smollm2-135m-instruct")), Meter())
    prompts = hh_prompts(args.prompts)
    with torch.no_grad():
        state = policy.prefill([policy.encode(p.messages) for p in prompts])
    logprobs = state.next_logprobs.repeat((args.rows + len(prompts) - 1) // len(prompts), 1)[: args.rows]
    params = SamplingParams(temperature=0.7, top_p=0.9)
    uniforms = torch.rand(args.rows)
    fast = choose_tokens(logprobs, uniforms, params)
    ref = _inverse_cdf(logprobs / params.temperature, uniforms, params.top_p)
    t_fast = timed(lambda: choose_tokens(logprobs, uniforms, params), args.repeats)
    t_ref = timed(lambda: _inverse_cdf(logprobs / params.temperature, uniforms, params.top_p), args.repeats)
    print(f"rows {args.rows} x vocabulary {logprobs.shape[-1]}, threads {torch.get_num_threads()}")
    print(f"same tokens: {bool(torch.equal(fast, ref))}")
    print(f"full sort: {t_ref * 1e3:.1f} ms/call; top-256 nucleus: {t_fast * 1e3:.1f} ms/call; "
          f"ratio {t_ref / t_fast:.1f}x")


if __name__ == "__main__":
    main()
