"""glibc heap tuning (``SP_PRM_MALLOC_TUNING=1``, ``sp_prm/runtime.py``) on and off, side by side: the time and
the resident memory of repeated policy sampling, each setting in fresh processes, alternated.

The work: SmolLM2-135M-Instruct (fp32) prefills 2 HH harmless-base prompts forked to 8-16 rows and samples
24 tokens (T = 0.7, top-p 0.9), six times on different prompts and widths (a search's changing shapes);
resident memory is read after each round. The fixed 1 MiB thresholds give freed tensors back to the system
but make every 1+ MiB allocation a fresh ``mmap`` (page faults on first touch), which is what this measures.

    python bench/bench_heap.py [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys, time, torch
sys.path.insert(0, {repo!r})
from sp_prm.runtime import limit_heap_retention
applied = limit_heap_retention()
from bench.bench_vllm_scorer import hh_prompts
from decoding.decode import DecodeConfig, PolicyConfig, build_policy
from decoding.policy import SamplingParams
from decoding.types import Meter
torch.set_num_threads({threads})
policy = build_policy(DecodeConfig(policy=PolicyConfig(model="builtin:smollm2-135m-instruct")), Meter())
prompts = hh_prompts(12)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**30
mem = []
t0 = time.perf_counter()
for it in range(6):
    n = 8 + 4 * (it % 3)
    ids = [policy.encode(p.messages) for p in prompts[2 * it: 2 * it + 2] for _ in range(n)]
    with torch.no_grad():
        state = policy.prefill(ids, groups=[i // n for i in range(len(ids))])
        policy.sample(state, list(range(len(ids))), SamplingParams(temperature=0.7, top_p=0.9), 24, feed_final=False)
    del state
    mem.append(rss())
print(json.dumps({{"applied": applied, "seconds": time.perf_counter() - t0, "rss_gib": mem}}))
"""


def run(tuned: bool, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["SP_PRM_MALLOC_TUNING"] = "1" if tuned else "0"
    out = subprocess.run([sys.executable, "-c", WORKER.format(repo=str(REPO), threads=threads)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="processes per setting (alternated)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench_heap: glibc (Linux) only")
    res: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.repeats):
        for tuned in (False, True):
            res[tuned].append(run(tuned, args.threads))
    if not all(r["applied"] for r in res[True]):
        raise SystemExit("bench_heap: the tuning did not apply here (not glibc, or MALLOC_* set)")
    print(f"threads {args.threads}, {args.repeats} processes per setting, alternated")
    print("| setting | seconds (6 rounds) | resident GiB after each round |")
    print("|---|---|---|")
    for tuned in (False, True):
        for r in res[tuned]:
            mem = ", ".join(f"{x:.2f}" for x in r["rss_gib"])
            print(f"| {'tuned (1 MiB thresholds)' if tuned else 'glibc default'} | {r['seconds']:.1f} | {mem} |")
    mean = {t: sum(r["seconds"] for r in res[t]) / len(res[t]) for t in res}
    print(f"tuned / default time: {mean[True] / mean[False]:.2f}x")


if __name__ == "__main__":
    main()
