"""Reward-guided search speed: cached vs recompute-everything, measured side by side in one run.

    python bench/bench_search.py                          # small Llama pair on SmolLM2's tokenizer, CPU
    python bench/bench_search.py --T 128 --k 10 --hidden 576 --layers 30 --heads 9 --kv-heads 3   # 135M shape

Random weights (speed needs no training). Reports:

* ARGS-greedy: ours (policy KV cache + the decoder RM's prefix cache, k candidates scored as k
  short extensions in one batch) vs the naive recompute the published code does (a full policy
  forward per token, every candidate's whole text through the RM, batched). Ratio and whether
  the tokens are identical.
* CBS (W, K, L): ours (prompt prefilled once, beams forked with ``select``, RM prefix cache) vs a
  recompute variant that re-prefills every beam each round and rescores whole texts; same seeds,
  so the beams should match too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decoding.policy import Policy, SamplingParams, choose_tokens  # noqa: E402
from decoding.scorers import RewardModelScorer  # noqa: E402
from decoding.search.args import args_decode, extension_partial  # noqa: E402
from decoding.search.cards import CardsParams, calibrate_thresholds, cards  # noqa: E402
from decoding.search.cbs import chunk_beam_search, rank_top  # noqa: E402
from decoding.search.core import Candidate, expand, score  # noqa: E402
from decoding.types import Partial, Prompt, candidate_seed  # noqa: E402


@torch.no_grad()
def naive_args(policy: Policy, scorer: RewardModelScorer, prompt: Prompt, k: int, w: float, T: int) -> list[int]:
    """ARGS-greedy with no cache anywhere: full policy forward per token, every candidate rescored whole."""
    ctx = policy.encode(prompt.messages)
    cand = Candidate(prompt=0)
    for _ in range(T):
        ids = torch.tensor([ctx + cand.token_ids], device=policy.device)
        lp = policy.logits(policy.backbone(input_ids=ids).last_hidden_state[0, -1:]).log_softmax(-1)[0]
        top = lp.topk(k)
        vals, toks = top.values.cpu(), top.indices.tolist()
        parts = [extension_partial(policy, cand, t, float(v)) for t, v in zip(toks, vals)]
        rewards = scorer.score([prompt] * k, parts).float()
        s = vals + w * rewards
        j = int((s == s.max()).nonzero()[0, 0])
        if toks[j] in policy.stop_ids:
            break
        cand.token_ids.append(toks[j])
        cand.logprobs.append(float(vals[j]))
    return cand.token_ids


def recompute_cbs(policy: Policy, scorer: RewardModelScorer, prompts: list[Prompt], W: int, K: int, L: int,
                  params: SamplingParams, T: int, seed: int) -> list[list[list[int]]]:
    """CBS where every round re-prefills prompt + beam for every live beam (no forking, no RM cache)."""
    ctx = [policy.encode(p.messages) for p in prompts]
    live = [Candidate(prompt=i, subtree=b) for i in range(len(prompts)) for b in range(W)]
    finished: dict[int, list[Candidate]] = {i: [] for i in range(len(prompts))}
    r = 0
    while live:
        state = policy.prefill([ctx[c.prompt] + c.token_ids for c in live], [prompts[c.prompt].index for c in live])
        budgets = [min(L, T - len(c.token_ids)) for c in live]
        _, kids = expand(policy, state, live, prompts, K, params, seed, r, budgets, False, False)
        score(scorer, policy, prompts, kids, "last")
        nxt = []
        for i in range(len(prompts)):
            pool = finished[i] + [c for c in kids if c.prompt == i]
            n_old = len(finished[i])
            if len(pool) == n_old:
                continue
            finished[i] = []
            for slot, t in enumerate(rank_top([c.score for c in pool], W)):
                c = pool[t]
                c.subtree = slot
                (finished[i] if t < n_old or c.eos or len(c.token_ids) >= T else nxt).append(c)
        live = nxt
        r += 1
    return [[c.token_ids for c in sorted(finished[i], key=lambda c: c.subtree)] for i in range(len(prompts))]


@torch.no_grad()
def cache_off_cards(policy: Policy, scorer: RewardModelScorer, prompt: Prompt, cp: CardsParams,
                    params: SamplingParams, T: int, seed: int) -> list[int]:
    """CARDS as the published code runs it: KV cache off (a full policy forward per token), whole-text RM."""
    ctx = policy.encode(prompt.messages)
    resp: list[int] = []
    seg, done = 0, False
    while not done:
        best = None
        for att in range(cp.max_rejections + 1):
            budget = min(cp.max_segment_tokens, T - len(resp))
            g = torch.Generator().manual_seed(candidate_seed(seed, prompt.id, 0, seg, att))
            u = torch.rand(budget, generator=g, dtype=torch.float64).to(policy.device)
            toks: list[int] = []
            eos = False
            for t in range(budget):
                ids = torch.tensor([ctx + resp + toks], device=policy.device)
                lp = policy.logits(policy.backbone(input_ids=ids).last_hidden_state[0, -1:]).log_softmax(-1)
                if t and float(-(lp.exp() * lp).sum()) >= cp.tau_u:
                    break
                x = int(choose_tokens(lp, u[t: t + 1], params)[0])
                toks.append(x)
                if x in policy.stop_ids:
                    eos = True
                    break
            body = resp + (toks[:-1] if eos else toks)
            r = float(scorer.score([prompt], [Partial(policy.decode(body), body, eos, toks[-1:] if eos else [])])[0])
            if best is None or r > best[0]:
                best = (r, toks, eos)
            if r >= cp.threshold(len(body), T):
                best = (r, toks, eos)
                break
        assert best is not None
        _, toks, eos = best
        resp += toks[:-1] if eos else toks
        seg += 1
        done = eos or len(resp) >= T
    return resp


class FreeScorer:
    """A scorer that costs nothing (all zeros): what remains of a search is its sampling."""

    additive = False
    default_aggregation = "last"

    def score(self, prompts: list[Prompt], partials: list[Partial]) -> torch.Tensor:
        return torch.zeros(len(partials))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--T", type=int, default=48, help="ARGS tokens (issue target setting: 128)")
    ap.add_argument("--k", type=int, default=10, help="ARGS top-k")
    ap.add_argument("--w", type=float, default=1.5)
    ap.add_argument("--W", type=int, default=4)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--cbs-T", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--skip-args", action="store_true")
    ap.add_argument("--skip-cbs", action="store_true")
    ap.add_argument("--cards-T", type=int, default=64)
    ap.add_argument("--skip-cards", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="float64: rules out float noise when checking that beams/tokens are identical")
    ap.add_argument("--hh-prompts", action="store_true",
                    help="real prompts: the shipped HH-RLHF sample's conversations (multi-turn, ~100-300 tokens) "
                         "instead of one-line synthetic questions")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "smollm2_tokenizer")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True, num_labels=1)
    dtype = getattr(torch, args.dtype)
    lm = LlamaForCausalLM(cfg).eval().to(device, dtype)
    rm = LlamaForSequenceClassification(cfg).eval().to(device, dtype)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)  # visible rewards, so w matters
    policy = Policy(lm, tok)
    cached = RewardModelScorer(rm, tok)
    fresh = RewardModelScorer(rm, tok, cache=False)
    if args.hh_prompts:
        from data_prep.loaders import load_preferences

        pairs, _ = load_preferences("builtin:hh-rlhf-sample", limit=args.prompts)
        prompts = [Prompt(f"hh{i}", pair["prompt"], None, pair["prompt"][-1]["content"], None, i)
                   for i, pair in enumerate(pairs)]
    else:
        prompts = [Prompt(f"q{i}", [{"role": "system", "content": "I prefer short, practical answers."},
                                    {"role": "user", "content": f"How do I get better at task number {i} quickly?"}],
                          None, "q", None, i) for i in range(args.prompts)]
    print(f"device {device}, torch threads {torch.get_num_threads()}; model hidden {args.hidden}, layers "
          f"{args.layers}, {sum(p.numel() for p in lm.parameters()) / 1e6:.1f} M params (policy and RM alike); "
          f"prompt tokens {[len(policy.encode(p.messages)) for p in prompts]}")

    if not args.skip_args:
        bench_args(args, policy, cached, fresh, prompts)
    params = SamplingParams(temperature=1.0)
    if not args.skip_cbs:
        bench_cbs(args, policy, cached, fresh, prompts, params)
    if not args.skip_cards:
        bench_cards(args, policy, cached, fresh, prompts, params)


def bench_args(args: argparse.Namespace, policy: Policy, cached: RewardModelScorer, fresh: RewardModelScorer,
              prompts: list[Prompt]) -> None:
    # ARGS: one prompt at a time on both sides (the naive reference is per prompt).
    args_decode(policy, cached, prompts[:1], k=args.k, w=args.w, max_new_tokens=4)  # warm-up
    t_ours, t_naive, same = 0.0, 0.0, True
    naive_tokens: dict[str, list[int]] = {}
    for p in prompts:
        cached.prefix_cache.reset()
        dt, res = timed(lambda p=p: args_decode(policy, cached, [p], k=args.k, w=args.w, max_new_tokens=args.T))
        t_ours += dt
        dt, ref = timed(lambda p=p: naive_args(policy, fresh, p, args.k, args.w, args.T))
        t_naive += dt
        naive_tokens[p.id] = ref
        same &= res[0].best_candidate.token_ids == ref
    print(f"ARGS-greedy T={args.T} k={args.k} x {len(prompts)} prompts: ours {t_ours:.2f}s, naive recompute "
          f"{t_naive:.2f}s, speed-up {t_naive / t_ours:.1f}x, identical tokens: {same}")
    # Ablation: the RM's k candidates as k forked cache rows instead of one token tree per prompt.
    t_fork, same_fork = 0.0, True
    tree = cached.prefix_cache.tree_max_suffix
    cached.prefix_cache.tree_max_suffix = 0
    for p in prompts:
        cached.prefix_cache.reset()
        dt, res = timed(lambda p=p: args_decode(policy, cached, [p], k=args.k, w=args.w, max_new_tokens=args.T))
        t_fork += dt
        same_fork &= res[0].best_candidate.token_ids == naive_tokens[p.id]
    cached.prefix_cache.tree_max_suffix = tree
    print(f"  ablation, RM candidates as forked rows (no token tree): {t_fork:.2f}s; the tree is "
          f"{t_fork / t_ours:.2f}x faster; identical tokens: {same_fork}")
    batched, _ = timed(lambda: args_decode(policy, cached, prompts, k=args.k, w=args.w, max_new_tokens=args.T))
    print(f"ARGS-greedy, the {len(prompts)} prompts batched together: {batched:.2f}s")


def bench_cbs(args: argparse.Namespace, policy: Policy, cached: RewardModelScorer, fresh: RewardModelScorer,
              prompts: list[Prompt], params: SamplingParams) -> None:
    cached.prefix_cache.reset()
    dt_ours, res = timed(lambda: chunk_beam_search(policy, cached, prompts, args.W, args.K, args.L, params,
                                                   args.cbs_T, seed=0))
    dt_re, ref = timed(lambda: recompute_cbs(policy, fresh, prompts, args.W, args.K, args.L, params, args.cbs_T, 0))
    same_beams = [[c.token_ids for c in r.candidates] for r in res] == ref
    print(f"CBS W={args.W} K={args.K} L={args.L} T={args.cbs_T} x {len(prompts)} prompts: ours {dt_ours:.2f}s, "
          f"recompute {dt_re:.2f}s, speed-up {dt_re / dt_ours:.1f}x, identical beams: {same_beams}")
    # Ceiling of that ratio: our CBS with a free scorer is its sampling alone (the same W x K x L tokens per
    # round), which no caching removes; the recompute baseline cannot be beaten by more than recompute / this.
    dt_free, _ = timed(lambda: chunk_beam_search(policy, FreeScorer(), prompts, args.W, args.K, args.L, params,
                                                 args.cbs_T, seed=0))
    print(f"  our CBS with a free scorer (sampling alone): {dt_free:.2f}s -> ceiling of the speed-up against this "
          f"baseline {dt_re / dt_free:.1f}x; scoring + search bookkeeping is {dt_ours - dt_free:.2f}s of ours")


def bench_cards(args: argparse.Namespace, policy: Policy, cached: RewardModelScorer, fresh: RewardModelScorer,
                prompts: list[Prompt], params: SamplingParams) -> None:
    # tau_u: random weights are near-uniform (entropy ~ ln V), so a tau_u just under ln V makes
    # segments of a few tokens; thresholds calibrated from this RM's own scores.
    r0, r1 = calibrate_thresholds(policy, fresh, prompts, n=2, max_new_tokens=16, quantile=0.5)
    tau = 0.999 * float(torch.log(torch.tensor(float(policy.vocab_size))))
    cp = CardsParams(tau_u=tau, r_start=r0, r_end=r1, max_rejections=3, max_segment_tokens=16)
    cached.prefix_cache.reset()
    dt_ours, res = timed(lambda: cards(policy, cached, prompts, cp, params, args.cards_T, seed=0))
    dt_off, ref = timed(lambda: [cache_off_cards(policy, fresh, p, cp, params, args.cards_T, 0) for p in prompts])
    same = [r.best_candidate.token_ids for r in res] == ref
    print(f"CARDS T={args.cards_T} x {len(prompts)} prompts (segments <= 16, <= 3 rejections): ours {dt_ours:.2f}s, "
          f"cache-off {dt_off:.2f}s, speed-up {dt_off / dt_ours:.1f}x, identical tokens: {same}")


if __name__ == "__main__":
    main()
