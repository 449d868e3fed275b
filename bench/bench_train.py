"""Training throughput: SP-PRM (multi-prefix for decoders) vs TRL's RewardTrainer on the same partial pairs.

Both trainers see the same SST partial pairs (K = 5 by default, built from the
shipped HH-RLHF sample in the model's token space), the same randomly
initialised model of a given size, the same batch size, fp32 (``--bf16``: bf16
autocast for both), no gradient
checkpointing, dropout off, one epoch. TRL receives the pairs pre-tokenized
(``chosen_ids`` / ``rejected_ids``) so it trains on exactly the same ids.

Reported per trainer: partial pairs/s, and tokens/s counted as the real tokens of
the flat pairs (what every pair costs when each prefix is its own sequence), so
the two figures are directly comparable; "run tokens" is what the trainer really
pushed through the model. Only the training loop is timed, after an untimed
warm-up of both paths. Runs alternate (SP-PRM, TRL, SP-PRM, TRL, ...) and the
best of the repeats is kept, as the machine is shared.

    python bench/bench_train.py                     # decoder and encoder, CPU-sized
    python bench/bench_train.py --models decoder --pairs 60 --hidden 576 --layers 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    TrainerCallback,
)

from data_prep.loaders import load_preferences  # noqa: E402
from data_prep.truncation import pair_rng, sst_positions  # noqa: E402
from sp_prm.collator import PairCollator  # noqa: E402
from sp_prm.formatting import PrefixFormat, encode  # noqa: E402
from sp_prm.train_config import SPPRMConfig  # noqa: E402
from sp_prm.trainer import SPPRMTrainer  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def partial_pairs(tokenizer, n_pairs: int, k: int, fmt: PrefixFormat, seed: int = 0) -> Dataset:
    pairs, _ = load_preferences("builtin:hh-rlhf-sample", limit=n_pairs)
    rows = {"id": [], "chosen_ids": [], "rejected_ids": [], "weight": [], "position": []}
    for pair in pairs:
        c = encode(tokenizer, pair["prompt"], pair["chosen"], fmt)
        r = encode(tokenizer, pair["prompt"], pair["rejected"], fmt)
        if not c.length or not r.length:
            continue
        for t in sst_positions(c.length, r.length, k, pair_rng(seed, pair["id"])):
            rows["id"].append(pair["id"])
            rows["chosen_ids"].append(c.sequence(t, fmt.end_marker))
            rows["rejected_ids"].append(r.sequence(t, fmt.end_marker))
            rows["weight"].append(1.0)
            rows["position"].append(t)
    return Dataset.from_dict(rows)


def build_model(kind: str, tokenizer, hidden: int, layers: int, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "decoder":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                             num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                             num_key_value_heads=max(hidden // 192, 1), max_position_embeddings=4096, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
        return LlamaForSequenceClassification(config)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4,
                        num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1), num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


class Timer(TrainerCallback):
    """Wall time of the training loop only (from on_train_begin to on_train_end): set-up and the
    trainers' end-of-run clean-up (a gc.collect) are the same fixed cost for both and are left out."""

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self.elapsed = time.perf_counter() - self.start


BF16 = [False]  # set from --bf16: the same precision for both trainers
COMMON = dict(per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-5, logging_steps=10_000,
              save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
              dataloader_num_workers=0, seed=0)


def run_sp_prm(model, tokenizer, data, out: str, causal: bool) -> tuple[float, dict]:
    config = SPPRMConfig(output_dir=out, loss="unweighted", bf16=BF16[0], **COMMON)
    collator = PairCollator(tokenizer.pad_token_id, multi_prefix=causal)
    timer = Timer()
    trainer = SPPRMTrainer(model=model, args=config, train_dataset=data, data_collator=collator,
                           loss_type="unweighted", causal=causal, group_by_pair=causal, callbacks=[timer])
    trainer.train()
    elapsed = timer.elapsed
    # Tokens actually run through the model: recollate the epoch's batches in the sampler's order.
    order = list(trainer._get_train_sampler())
    bs = COMMON["per_device_train_batch_size"]
    run_tokens = sum(int(collator([data[i] for i in order[j: j + bs]])["attention_mask"].sum())
                     for j in range(0, len(order), bs))
    return elapsed, {"run_tokens": run_tokens}


def run_trl(model, tokenizer, data, out: str) -> tuple[float, dict]:
    from trl import RewardConfig, RewardTrainer

    # TRL's RewardConfig defaults to bf16=True and gradient checkpointing on: set both like ours.
    config = RewardConfig(output_dir=out, max_length=None, gradient_checkpointing=False, disable_dropout=True,
                          bf16=BF16[0], **COMMON)
    trl_data = data.remove_columns([c for c in data.column_names if c not in ("chosen_ids", "rejected_ids")])
    timer = Timer()
    trainer = RewardTrainer(model=model, args=config, train_dataset=trl_data, processing_class=tokenizer,
                            callbacks=[timer])
    trainer.train()
    elapsed = timer.elapsed
    run_tokens = sum(len(c) + len(r) for c, r in zip(data["chosen_ids"], data["rejected_ids"]))
    return elapsed, {"run_tokens": run_tokens}


def bench(kind: str, args: argparse.Namespace) -> dict:
    if kind == "decoder":
        tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "smollm2_tokenizer")
        fmt = PrefixFormat(template="chat", max_prompt_tokens=args.prompt_tokens, max_response_tokens=args.response_tokens)
    else:
        tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "minilm_tokenizer")
        fmt = PrefixFormat(template="plain", max_prompt_tokens=args.prompt_tokens, max_response_tokens=args.response_tokens)
    data = partial_pairs(tokenizer, args.pairs, args.k, fmt)
    flat_tokens = sum(len(c) + len(r) for c, r in zip(data["chosen_ids"], data["rejected_ids"]))
    best: dict[str, tuple[float, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed warm-up of both code paths (first-call allocations, lazy imports).
        warm = data.select(range(min(16, len(data))))
        run_sp_prm(build_model(kind, tokenizer, args.hidden, args.layers), tokenizer, warm, f"{tmp}/w1", kind == "decoder")
        run_trl(build_model(kind, tokenizer, args.hidden, args.layers), tokenizer, warm, f"{tmp}/w2")
        for rep in range(args.repeats):
            for name in ("sp_prm", "trl"):
                model = build_model(kind, tokenizer, args.hidden, args.layers)
                if name == "sp_prm":
                    result = run_sp_prm(model, tokenizer, data, f"{tmp}/{name}{rep}", causal=(kind == "decoder"))
                else:
                    result = run_trl(model, tokenizer, data, f"{tmp}/{name}{rep}")
                print(f"  [{kind}] {name} repeat {rep}: {result[0]:.2f} s", flush=True)
                if name not in best or result[0] < best[name][0]:
                    best[name] = result
    report = {"model": kind, "hidden": args.hidden, "layers": args.layers, "partial_pairs": len(data),
              "source_pairs": len(set(data["id"])), "flat_tokens": flat_tokens}
    for name, (elapsed, extra) in best.items():
        report[name] = {"seconds": round(elapsed, 2), "pairs_per_s": round(len(data) / elapsed, 2),
                        "tokens_per_s": round(flat_tokens / elapsed, 1), "run_tokens": extra["run_tokens"]}
    report["speedup_pairs_per_s"] = round(best["trl"][0] / best["sp_prm"][0], 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="decoder,encoder", help="decoder, encoder or both (comma separated)")
    parser.add_argument("--pairs", type=int, default=40, help="source preference pairs from the shipped sample")
    parser.add_argument("--k", type=int, default=5, help="SST K: k ~ U{0..2K} prefixes per pair")
    parser.add_argument("--prompt_tokens", type=int, default=128)
    parser.add_argument("--response_tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both trainers (default: fp32)")
    args = parser.parse_args()
    BF16[0] = args.bf16
    if args.threads:
        torch.set_num_threads(args.threads)
    reports = []
    for kind in args.models.split(","):
        report = bench(kind.strip(), args)
        reports.append(report)
        print(json.dumps(report), flush=True)
    print("\nmodel     pairs  SP-PRM pairs/s  TRL pairs/s  SP-PRM tok/s  TRL tok/s  ratio  SP-PRM run/flat tokens")
    for r in reports:
        print(f"{r['model']:<9} {r['partial_pairs']:>5}  {r['sp_prm']['pairs_per_s']:>14}  {r['trl']['pairs_per_s']:>11}  "
              f"{r['sp_prm']['tokens_per_s']:>12}  {r['trl']['tokens_per_s']:>9}  {r['speedup_pairs_per_s']:>5}x  "
              f"{r['sp_prm']['run_tokens'] / r['flat_tokens']:.2f}")


if __name__ == "__main__":
    main()
