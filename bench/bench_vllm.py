"""The vllm policy backend vs the HF one, as ratios measured side by side in one run (SmolLM2-135M).

    python bench/bench_vllm.py                         # in the vllm venv: bash scripts/install.sh --dev --vllm
    python bench/bench_vllm.py --dtype float32 --eager

Reports:
* Best-of-16 x 64 tokens (sampling only: a zero scorer) on the vllm backend (in-process
  ``vllm.LLM``) vs the HF backend, same model, dtype, prompts and machine: generated tokens/s
  and their ratio (target >= 2x on CPU).
* REAR (lambda = 20) scoring of those candidates on vllm with prefix caching vs without
  (requests that skip reading the cache); the engine's cache is reset before each, so the
  shared prompt is computed once per prompt with caching and once per candidate without.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch  # noqa: E402

from decoding.policy import Policy, SamplingParams  # noqa: E402
from decoding.scorers import RearScorer  # noqa: E402
from decoding.search.best_of_n import best_of_n  # noqa: E402
from decoding.types import Meter, Partial, Prompt  # noqa: E402

PREFERENCE = ("I prefer practical answers from a patient teacher: explain the idea in plain words first, then "
              "give one concrete example, and end with a short summary I can remember.")
QUESTIONS = ["How do I get better at public speaking?", "Why is the sky blue?", "How do vaccines work?",
             "What should I pack for a weekend hike?"]


class ZeroScorer:
    """Scores nothing (every candidate 0): the Best-of-N timing is the sampling alone."""

    additive = False
    default_aggregation = "last"

    def __init__(self) -> None:
        self.meter = Meter()

    def score(self, prompts, partials):
        return torch.zeros(len(partials))


# A long shared context (a post to summarize, as in TL;DR): REAR's question-only context then has a
# long prefix shared by all candidates of a prompt, which is what prefix caching saves.
POST = ("I moved to a new city six months ago for work. The job is fine, but I have not made any friends "
        "yet. My coworkers are friendly during the day, but they all have families and leave right at five. "
        "I tried a climbing gym, a book club and a running group. At the gym people come in pairs and keep "
        "to themselves; the book club met twice and then stopped; the running group is fast and nobody "
        "talks during the run. On weekends I mostly stay home, call my old friends and watch shows. I am "
        "starting to wonder if the move was a mistake, even though the money is better and the work is more "
        "interesting than at my old job. My lease ends in three months and I have to decide whether to renew "
        "it. Part of me wants to go back, part of me thinks I have not given it enough time. ")


def make_prompts(k: int, long_context: bool = False) -> list[Prompt]:
    out = []
    for i, q in enumerate(QUESTIONS[:k]):
        if long_context:
            q = f"{POST * 2}\nSummarize my situation and tell me what to do. (Post {i}.)"
        out.append(Prompt(f"q{i}", [{"role": "system", "content": PREFERENCE}, {"role": "user", "content": q}],
                          [{"role": "user", "content": q}], q, PREFERENCE, i))
    return out


def timed_bon(policy, prompts, n, tokens, seed):
    policy.meter = Meter()
    t0 = time.perf_counter()
    res = best_of_n(policy, ZeroScorer(), prompts, n, SamplingParams(temperature=1.0), tokens, seed=seed)
    dt = time.perf_counter() - t0
    return res, policy.meter.total("policy_tokens_generated"), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16", help="both backends (float32 to compare numbers, bf16 for speed)")
    ap.add_argument("--eager", action="store_true", help="vLLM without graph compilation (faster start-up)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--long-context", action="store_true", help="a ~400-token post in every question")
    ap.add_argument("--hf-threads", type=int, default=1,
                    help="torch threads of the HF backend (1: vLLM's CPU engine binds one core too)")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from decoding.vllm_policy import LocalEngine, VllmPolicy
    from sp_prm.models import load_tokenizer, resolve

    path = resolve(args.model)
    tok = load_tokenizer(args.model)
    prompts = make_prompts(args.prompts, args.long_context)
    print(f"model {args.model} ({args.dtype}); {args.prompts} prompts x BoN-{args.n} x {args.tokens} tokens; "
          f"{'long' if args.long_context else 'short'} prompts ({len(tok(prompts[0].question)['input_ids'])} question "
          f"tokens); HF torch threads {args.hf_threads}, cpus {os.cpu_count()}")

    # HF first, before the engine exists: vLLM's engine core keeps one core busy while it is up.
    best = {"vllm": (0.0, 0, 0.0), "hf": (0.0, 0, 0.0)}
    torch.set_num_threads(args.hf_threads)
    hf = Policy(AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)), tok)
    hf.delimiter_mask()
    timed_bon(hf, prompts[:1], 2, 4, seed=99)  # warm-up
    for r in range(args.repeats):
        _, toks, dt = timed_bon(hf, prompts, args.n, args.tokens, seed=r)
        if toks / dt > best["hf"][0]:
            best["hf"] = (toks / dt, toks, dt)
    del hf

    t0 = time.perf_counter()
    engine = LocalEngine(path, dtype=args.dtype, enforce_eager=args.eager, max_model_len=2048,
                         engine_args={"block_size": 32} if not torch.cuda.is_available() else None)
    print(f"vllm start-up ({'eager' if args.eager else 'compiled'}): {time.perf_counter() - t0:.1f} s")
    vpol = VllmPolicy(engine, tok)
    timed_bon(vpol, prompts[:1], 2, 4, seed=99)  # warm-up (first-request overheads)
    results = None
    for r in range(args.repeats):
        engine.reset_prefix_cache()  # each repeat from a cold cache
        results, toks, dt = timed_bon(vpol, prompts, args.n, args.tokens, seed=r)
        if toks / dt > best["vllm"][0]:
            best["vllm"] = (toks / dt, toks, dt)
    for name in ("vllm", "hf"):
        rate, toks, dt = best[name]
        print(f"BoN-{args.n} {name:>4}: {toks} tokens in {dt:.2f} s = {rate:.1f} tok/s (best of {args.repeats})")
    print(f"BoN speed-up vllm / hf: {best['vllm'][0] / best['hf'][0]:.2f}x")

    assert results is not None
    P = [r.prompt for r in results for _ in r.candidates]
    R = [Partial(vpol.decode(c.token_ids), c.token_ids, c.eos, c.end_ids, c.logprobs + c.end_logprobs)
         for r in results for c in r.candidates]
    times: dict[bool, float] = {}
    computed: dict[bool, int] = {}
    scores = {}
    for _ in range(args.repeats):
        for cache in (True, False):
            engine.reset_prefix_cache()
            meter = Meter()
            scorer = RearScorer(vpol, 20.0, cache=cache, meter=meter)
            t0 = time.perf_counter()
            scores[cache] = scorer.score(P, R)
            dt = time.perf_counter() - t0
            if dt < times.get(cache, float("inf")):
                times[cache], computed[cache] = dt, meter.total("scorer_tokens")
    diff = float((scores[True] - scores[False]).abs().max())
    for cache in (True, False):
        print(f"REAR scoring of {len(R)} candidates, prefix caching {'on ' if cache else 'off'}: {times[cache]:.2f} s, "
              f"{computed[cache]} prompt tokens computed")
    print(f"REAR cost ratio off / on: {times[False] / times[True]:.2f}x (max score difference {diff:.2e})")
    engine.close()


if __name__ == "__main__":  # vLLM starts its engine in a subprocess
    main()
