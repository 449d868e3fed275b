"""The rm: scorer on a vLLM pooling engine vs the HF scorer, side by side in one run: CBS (W = K = 4) on real HH prompts.

    python bench/bench_vllm_scorer.py                   # in the vllm venv: bash scripts/install.sh --dev --vllm
    python bench/bench_vllm_scorer.py --prompts 4 --chunk 16 --tokens 64 --block-size 32

The PRM: ``--prm <checkpoint>``, else a SmolLM2-135M sequence classifier trained here for a few
Bradley-Terry steps on real HH-RLHF pairs (``make_hh_prm``; the format recorded in ``config.sp_prm``).
The policy (SmolLM2-135M-Instruct, HF, fp32) samples the CBS candidates once; both scorers then run
the *same* search (same seeds): the HF scorer (``PrefixCache`` token tree) and the engine scorer
(``vllm.LLM(runner="pooling")`` with prefix caching, cold cache), so the selected beams match
when the rewards do.

Reports per scorer: wall time of the search, scorer tokens computed (HF: fed through the model;
engine: the prompt tokens it computed), tokens the engine served from its prefix cache and their
share, and the scorer's *new* tokens (per call, the tokens of each candidate past the longest
prefix shared with anything scored before: the least any scorer must compute). The goal:
engine-computed <= new + one block per candidate, reported as a ratio to the new tokens; the
block-size-16 (GPU) figure is the engine's cost model at that size -- per candidate, the new tokens
plus the part of its first new block its shared prefix fills -- computed from the same sequences.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch  # noqa: E402

from decoding.types import Prompt  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def hh_rows(k: int, offset: int = 0) -> list[dict]:
    with gzip.open(HH, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(offset + k), f)]
    return rows[offset:]


def hh_prompts(k: int, offset: int = 0, max_chars: int = 600) -> list[Prompt]:
    """The first ``k`` HH prompts (after ``offset``) whose shared context is at most ``max_chars`` long."""
    from data_prep.loaders import split_hh_pair

    out: list[Prompt] = []
    with gzip.open(HH, "rt") as f:
        for i, line in enumerate(f):
            if i < offset:
                continue
            row = json.loads(line)
            messages, _, _ = split_hh_pair(row["chosen"], row["rejected"])
            if sum(len(m["content"]) for m in messages) > max_chars:
                continue
            out.append(Prompt(f"hh{i}", messages, None, messages[-1]["content"], None, len(out)))
            if len(out) == k:
                break
    return out


def make_hh_prm(out: Path, pairs: int = 4, steps: int = 3, seed: int = 0) -> Path:
    """A SmolLM2-135M one-output classifier after ``steps`` Bradley-Terry steps on real HH pairs, saved with
    its tokenizer and ``config.sp_prm`` (the prefix format it was trained on). A few steps on CPU: the point
    is a real trained checkpoint of the shape users serve, not a good reward model."""
    from transformers import AutoModelForSequenceClassification

    from data_prep.loaders import split_hh_pair
    from sp_prm.formatting import PrefixFormat, encode
    from sp_prm.models import load_tokenizer, resolve

    torch.manual_seed(seed)
    name = "builtin:smollm2-135m-instruct"
    tok = load_tokenizer(name)
    model = AutoModelForSequenceClassification.from_pretrained(resolve(name), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    fmt = PrefixFormat(max_prompt_tokens=96, max_response_tokens=48)
    data = []
    for row in hh_rows(pairs):
        messages, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
        data.append([encode(tok, messages, r, fmt).sequence() for r in (chosen, rejected)])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    for step in range(steps):
        w, lo = data[step % len(data)]
        r = model(torch.tensor([w])).logits[0, 0] - model(torch.tensor([lo])).logits[0, 0]
        loss = -torch.nn.functional.logsigmoid(r)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.config.sp_prm = {"prefix": fmt.to_dict(), "note": f"bench/test PRM: {steps} BT steps on {pairs} HH pairs"}
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Recording:
    """Wraps a scorer: keeps every call's sequences (the RM's ids) to count new tokens afterwards."""

    def __init__(self, scorer) -> None:
        self.inner = scorer
        self.calls: list[list[list[int]]] = []
        self.seconds = 0.0  # in the scorer's calls alone
        self.scores: list[torch.Tensor] = []
        self.additive, self.default_aggregation = scorer.additive, scorer.default_aggregation

    @property
    def meter(self):
        return self.inner.meter

    @meter.setter
    def meter(self, value):
        self.inner.meter = value

    def score(self, prompts, partials):
        self.calls.append([self.inner.sequence(p, r) for p, r in zip(prompts, partials)])
        t0 = time.perf_counter()
        out = self.inner.score(prompts, partials)
        self.seconds += time.perf_counter() - t0
        self.scores.append(out)
        return out


def new_and_floor(calls: list[list[list[int]]], block: int) -> tuple[int, int, int]:
    """(new tokens, candidates, engine cost model at ``block``) over the calls in order.

    New tokens of a sequence: its length past the longest prefix it shares with any sequence scored
    before it (earlier calls, or earlier in its call). Engine cost model: a sequence is served its
    shared prefix rounded down to whole blocks, short of its last token (which it always computes).
    """
    import numpy as np

    seen: list[np.ndarray] = []
    new = cost = n = 0
    for call in calls:
        for s in call:
            a = np.asarray(s)
            lcp = 0
            for old in seen:
                m = min(len(old), len(a))
                eq = old[:m] == a[:m]
                lcp = max(lcp, m if eq.all() else int(np.argmin(eq)))
            new += len(a) - lcp
            cost += len(a) - min(lcp, len(a) - 1) // block * block
            n += 1
            seen.append(a)
    return new, n, cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prm", default=None, help="a reward-model checkpoint; default: train a SmolLM2-135M one here")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--width", type=int, default=4, help="CBS beams W")
    ap.add_argument("--successors", type=int, default=4, help="CBS successors per beam K")
    ap.add_argument("--chunk", type=int, default=16, help="CBS chunk length L")
    ap.add_argument("--tokens", type=int, default=64, help="response budget")
    ap.add_argument("--block-size", type=int, default=32, help="the engine's KV block (CPU: a multiple of 32)")
    ap.add_argument("--eager", action="store_true", default=True)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the HF side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from decoding.policy import Policy, SamplingParams
    from decoding.scorers import ClassifierScorer
    from decoding.scorers.rm_engine import EngineRewardScorer, LocalRewardEngine, checkpoint_format
    from decoding.search.cbs import chunk_beam_search
    from decoding.types import Meter
    from sp_prm.models import load_reward_model, load_tokenizer, resolve

    torch.set_num_threads(args.threads)
    prm = Path(args.prm) if args.prm else make_hh_prm(Path("/tmp") / f"sp_prm_bench_prm_{os.getpid()}")
    fmt = checkpoint_format(str(prm), None)
    rm_tok = load_tokenizer(str(prm))
    policy_name = "builtin:smollm2-135m-instruct"
    policy = Policy(AutoModelForCausalLM.from_pretrained(resolve(policy_name), dtype=torch.float32),
                    load_tokenizer(policy_name))
    prompts = hh_prompts(args.prompts)
    params = SamplingParams(temperature=1.0)
    print(f"CBS W={args.width} K={args.successors} L={args.chunk}, {args.tokens} tokens, {len(prompts)} HH prompts "
          f"(harmless-base test); PRM {prm} (fp32); engine block size {args.block_size}; cpus {os.cpu_count()}, "
          f"HF threads {args.threads}")

    def run(scorer):
        meter = Meter()
        policy.meter = meter
        scorer.meter = meter
        if getattr(scorer.inner, "prefix_cache", None) is not None:
            scorer.inner.prefix_cache.meter = meter
        t0 = time.perf_counter()
        res = chunk_beam_search(policy, scorer, prompts, args.width, args.successors, args.chunk, params,
                                args.tokens, seed=args.seed)
        return res, meter, time.perf_counter() - t0

    hf_scorer = Recording(ClassifierScorer(load_reward_model(str(prm), "float32", "cpu"), rm_tok, fmt))
    hf_res, hf_meter, hf_dt = run(hf_scorer)

    t0 = time.perf_counter()
    engine = LocalRewardEngine(str(prm), dtype="float32", enforce_eager=args.eager, max_model_len=2048,
                               engine_args={"block_size": args.block_size})
    print(f"pooling engine start-up: {time.perf_counter() - t0:.1f} s (block size {engine.block_size})")
    eng_scorer = Recording(EngineRewardScorer(engine, rm_tok, fmt))
    eng_scorer.inner.score(prompts[:1], [hf_res[0].candidates[0].partial(policy)])  # warm-up
    engine.reset_prefix_cache()
    eng_res, eng_meter, eng_dt = run(eng_scorer)

    same = all([c.token_ids for c in a.candidates] == [c.token_ids for c in b.candidates]
               for a, b in zip(hf_res, eng_res))
    # rewards of the same candidates: every call up to the first whose candidates differ
    k = next((i for i, (x, y) in enumerate(zip(hf_scorer.calls, eng_scorer.calls)) if x != y), len(eng_scorer.calls))
    diffs = [float((x - y).abs().max()) for x, y in zip(hf_scorer.scores[:k], eng_scorer.scores[:k])]
    new, n, _ = new_and_floor(eng_scorer.calls, engine.block_size)
    _, _, model16 = new_and_floor(eng_scorer.calls, 16)
    _, _, model_b = new_and_floor(eng_scorer.calls, engine.block_size)
    computed, cached = eng_meter.total("scorer_tokens"), eng_meter.total("scorer_tokens_cached")
    print(f"same final beams on both scorers: {same}; the scorer calls are the same candidates up to call {k} of "
          f"{len(eng_scorer.calls)}, max |reward difference| there {max(diffs, default=0.0):.2e}")
    print(f"{n} candidates scored in {len(eng_scorer.calls)} calls; new tokens {new}")
    print(f"HF scorer    : {hf_dt:7.2f} s search wall time, {hf_scorer.seconds:6.2f} s in the scorer; scorer tokens computed {hf_meter.total('scorer_tokens')} "
          f"({hf_meter.total('scorer_tokens') / new:.2f}x new)")
    print(f"engine scorer: {eng_dt:7.2f} s search wall time, {eng_scorer.seconds:6.2f} s in the scorer; scorer tokens computed {computed} ({computed / new:.2f}x new)"
          f", served from cache {cached} ({cached / (computed + cached):.1%} of {computed + cached})")
    print(f"goal computed <= new + one block per candidate = {new} + {n} x {engine.block_size} = "
          f"{new + n * engine.block_size}: {'met' if computed <= new + n * engine.block_size else 'NOT met'}")
    print(f"engine cost model at block {engine.block_size}: {model_b} ({model_b / new:.2f}x new; measured "
          f"{computed}); at block 16 (GPU): {model16} ({model16 / new:.2f}x new)")
    engine.close()


if __name__ == "__main__":  # vLLM starts its engine core in a subprocess
    main()
