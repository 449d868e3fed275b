"""The GPU suite: one command that measures training, ZeRO-3 and guided decoding side by side, in < 8 minutes.

    bash bench/gpu_suite.sh                                  # on the GPU machine: carried wheels, then this
    python bench/gpu_suite.py --out results/gpu_suite        # the same without the wheel step
    python bench/gpu_suite.py --smoke --out /tmp/s           # tiny shapes on a CPU (the default test tier runs it)

Every figure is measured in this run, next to the yardstick it is divided by; random weights at real sizes
(speed needs no training), bf16 on a GPU (fp32 in ``--smoke``). Writes ``gpu_suite.json`` and ``gpu_suite.md``
(a markdown table) under ``--out``, staged and renamed into place.

Parts (each with a wall-clock cap; what does not fit is marked ``skipped`` or ``timed out``, never guessed):

* ``train``: SP-PRM multi-prefix vs TRL ``RewardTrainer`` on the same SST-shaped partial pairs (prompt 128
  tokens + response prefixes t ~ U(1, 384), k ~ U{0..2K} prefixes per pair), a Gemma-2B-sized random RM, bf16
  autocast, no gradient checkpointing for either: partial pairs/s, real tokens/s, MFU; then full pairs
  (512 tokens) for both. MFU = 6 x non-embedding parameters x real tokens run / s / peak (attention FLOPs
  not counted, as in ``../shared/GPU.md``); the peak used is printed with the device name.
* ``zero3``: ``accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1`` (NCCL on a
  GPU): a few SP-PRM steps of a Llama-3.2-1B-sized RM built after the training arguments (``from_config``,
  so under ``deepspeed.zero.Init``), the gathered 16-bit model saved, reloaded with ``from_pretrained``,
  rewards before and after compared. In ``--smoke`` it is skipped (DeepSpeed over gloo takes 50-130 s on the
  CI box) unless ``--zero3`` is given (``tests/test_gpu_suite.py``, ``distributed`` marker).
* ``decode``: a Llama-3.2-1B-sized policy and a Gemma-2B-sized decoder RM: HF ``generate`` greedy with the
  dynamic and the static cache (the yardstick), ARGS k = 30, CBS W = K = 8 L = 30, Best-of-16 with the RM
  and with REAR, and Best-of-16 with a free scorer (plain sampling), each on 1 prompt and on 16 at once.
* ``env``: versions of the stack, which packages came from the carried wheels (``.gpu-site``) and how a bare
  GPU machine gets them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOKENIZER_DIR = REPO / "tests" / "fixtures" / "smollm2_tokenizer"

# Dense bf16 peak of the device, by the name torch reports (the spec sheets' figure without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
    "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12, "B200": 2250e12,
}

# What a bare GPU machine lacks (``../shared/GPU.md``) and how it is brought there.
CARRIED = ("trl", "datasets", "deepspeed", "dill", "multiprocess", "hjson", "pydantic", "pydantic_core")
BRING = ("on the CPU machine, inside the checkout: bash ../shared/gpu/make-wheels.sh (fills the git-ignored .whl/); "
         "send .whl along; on the GPU machine bench/gpu_suite.sh runs python3 -m pip install -q --no-index --no-deps "
         "--no-compile --no-cache-dir --upgrade --target .gpu-site .whl/*.whl and puts .gpu-site first on PYTHONPATH")


# -- shapes -------------------------------------------------------------------------------------------------
@dataclass
class Shapes:
    """Every size the suite uses; ``FULL`` is the GPU run, ``SMOKE`` the CPU test."""

    vocab: int = 128256  # the policy's (Llama-3.2); the tokenizer is padded with added tokens up to it
    policy: dict[str, Any] = field(default_factory=lambda: dict(  # Llama-3.2-1B
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, rope_theta=500000.0, tie_word_embeddings=True))
    rm: dict[str, Any] = field(default_factory=lambda: dict(  # Gemma-2B
        hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, vocab_size=256000))
    prompt_tokens: int = 128
    response_tokens: int = 384
    sst_k: int = 5
    trl_batch: int = 8  # partial pairs per step; TRL runs 2 sequences per pair
    sp_prm_batch: int = 32  # about the real tokens per step of TRL's 8 (multi-prefix packs a pair's prefixes)
    full_batch: int = 8
    warm_steps: int = 2
    timed_steps: int = 8
    zero3_steps: int = 4
    new_tokens: int = 128
    many_prompts: int = 16
    args_k: int = 30
    cbs: tuple[int, int, int] = (8, 8, 30)  # W, K, L
    bon_n: int = 16
    caps: dict[str, float] = field(default_factory=lambda: {"train": 140.0, "zero3": 110.0, "decode": 190.0})


FULL = Shapes()
SMOKE = Shapes(
    vocab=49152 + 64,
    policy=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    rm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, vocab_size=49152 + 64),
    prompt_tokens=24, response_tokens=16, sst_k=2, trl_batch=4, sp_prm_batch=8, full_batch=2, warm_steps=1,
    timed_steps=1, zero3_steps=1, new_tokens=4, many_prompts=3, args_k=3, cbs=(2, 2, 2), bon_n=2,
    caps={"train": 60.0, "zero3": 240.0, "decode": 60.0},
)


# -- timing and caps ----------------------------------------------------------------------------------------
class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def cap(seconds: float) -> Iterator[Callable[[], float]]:
    """Raise ``PartTimeout`` in this (main) thread after ``seconds``; yields a 'seconds left' function."""
    start = time.perf_counter()

    def left() -> float:
        return seconds - (time.perf_counter() - start)

    def fire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"part cap of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield left
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_info() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"device": "cpu", "name": "cpu", "peak_bf16_flops": None,
                "peak_note": "no peak on a CPU: MFU not reported"}
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return {"device": "cuda", "name": name, "peak_bf16_flops": peak,
            "peak_note": f"dense bf16 peak of {name}: {peak / 1e12:.0f} TFLOP/s" if peak else
            f"no peak known for {name!r}: MFU not reported (add it to PEAK_BF16_FLOPS)"}


# -- models -------------------------------------------------------------------------------------------------
def tokenizer_for(shapes: Shapes) -> Any:
    """SmolLM2's tokenizer padded with added tokens to the policy's vocabulary (one id = one token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.model_max_length = 1 << 20
    if len(tok) < shapes.vocab:
        tok.add_tokens([f"<x{i}>" for i in range(shapes.vocab - len(tok))])
    return tok


def rm_config(shapes: Shapes, tok: Any) -> Any:
    from transformers import GemmaConfig

    values = dict(shapes.rm)
    values.setdefault("vocab_size", len(tok))
    return GemmaConfig(**values, max_position_embeddings=8192, num_labels=1, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)


def policy_config(shapes: Shapes, tok: Any, num_labels: int | None = None) -> Any:
    from transformers import LlamaConfig

    extra = {"num_labels": num_labels} if num_labels else {}
    return LlamaConfig(**shapes.policy, vocab_size=shapes.vocab, max_position_embeddings=8192,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       **extra)


def build(kind: str, config: Any, device: str, dtype: torch.dtype | None = None, seed: int = 0) -> Any:
    """A random model made on ``device`` directly (no CPU init of billions of weights)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cls = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    with torch.device(device):
        model = cls.from_config(config, dtype=dtype) if dtype is not None else cls.from_config(config)
    if kind == "rm":
        with torch.no_grad():  # a visible head: rewards that differ, so the guidance weight matters
            model.score.weight.normal_(0, 1.0 / config.hidden_size ** 0.5)
    return model.eval() if kind == "lm" else model


def billions(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def non_embedding_params(model: Any) -> int:
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


# -- training -------------------------------------------------------------------------------------------------
def sst_data(shapes: Shapes, n_sources: int, vocab: int, seed: int = 0, full: bool = False) -> Any:
    """Synthetic SST-shaped pairs in token space: prompt + chosen / rejected response prefixes of t tokens."""
    from datasets import Dataset

    from data_prep.truncation import sst_positions

    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"id": [], "chosen_ids": [], "rejected_ids": [], "weight": [], "position": []}
    low = 1000  # clear of the special tokens
    for s in range(n_sources):
        prompt = rng.integers(low, vocab, shapes.prompt_tokens).tolist()
        chosen = rng.integers(low, vocab, shapes.response_tokens).tolist()
        rejected = rng.integers(low, vocab, shapes.response_tokens).tolist()
        positions = [shapes.response_tokens] if full else sst_positions(len(chosen), len(rejected), shapes.sst_k, rng)
        for t in positions:
            rows["id"].append(f"p{s}")
            rows["chosen_ids"].append(prompt + chosen[:t])
            rows["rejected_ids"].append(prompt + rejected[:t])
            rows["weight"].append(1.0)
            rows["position"].append(t)
    return Dataset.from_dict(rows)


class StepClock:
    """A trainer callback: wall time of the steps after the warm-up ones, and the real tokens of each batch."""

    def __init__(self, warm: int) -> None:
        self.warm = warm
        self.start: float | None = None
        self.end: float | None = None
        self.batch_tokens: list[int] = []
        self.batch_pairs: list[int] = []

    def wrap(self, collator: Callable, pairs_of: Callable[[dict], int]) -> Callable:
        def counted(rows: list[dict]) -> dict:
            batch = collator(rows)
            self.batch_tokens.append(int(batch["attention_mask"].sum()))
            self.batch_pairs.append(pairs_of(batch) if pairs_of else len(rows))
            return batch
        return counted

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == clock.warm and clock.start is None:
                    sync()
                    clock.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync()
                clock.end = time.perf_counter()
        return _CB()

    def figures(self, steps: int, n_params: int, peak: float | None) -> dict[str, Any]:
        assert self.start is not None and self.end is not None
        seconds = self.end - self.start
        sl = slice(self.warm, self.warm + steps)
        pairs, tokens = sum(self.batch_pairs[sl]), sum(self.batch_tokens[sl])
        out = {"seconds": round(seconds, 3), "steps": steps, "pairs": pairs, "real_tokens": tokens,
               "pairs_per_s": round(pairs / seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        out["mfu"] = round(6 * n_params * tokens / seconds / peak, 3) if peak else None
        if torch.cuda.is_available():
            out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        return out


def common_args(out: str, batch: int, steps: int, bf16: bool) -> dict[str, Any]:
    return dict(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-5,
                logging_steps=10_000, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                disable_tqdm=True, dataloader_num_workers=0, seed=0, bf16=bf16)


def sp_prm_trainer(model: Any, tok: Any, data: Any, args: dict[str, Any], callbacks: list[Any],
                   multi_prefix: bool = True) -> Any:
    """SP-PRM's trainer on collated pairs (the one place to re-point when the trainer's API moves)."""
    from sp_prm.collator import PairCollator
    from sp_prm.train_config import SPPRMConfig
    from sp_prm.trainer import SPPRMTrainer

    config = SPPRMConfig(loss="unweighted", **args)
    collator = PairCollator(tok.pad_token_id, multi_prefix=multi_prefix)
    return SPPRMTrainer(model=model, args=config, train_dataset=data, data_collator=collator,
                        loss_type="unweighted", causal=True, group_by_pair=multi_prefix, callbacks=callbacks)


def trl_trainer(model: Any, tok: Any, data: Any, args: dict[str, Any], callbacks: list[Any]) -> Any:
    from trl import RewardConfig, RewardTrainer

    # RewardConfig defaults to gradient checkpointing on: off here like ours (args), dropout off like ours.
    config = RewardConfig(max_length=None, disable_dropout=True, gradient_checkpointing=False, **args)
    flat = data.remove_columns([c for c in data.column_names if c not in ("chosen_ids", "rejected_ids")])
    return RewardTrainer(model=model, args=config, train_dataset=flat, processing_class=tok, callbacks=callbacks)


def run_trainer(name: str, make: Callable[..., Any], model: Any, tok: Any, data: Any, shapes: Shapes, batch: int,
                bf16: bool, n_params: int, peak: float | None, tmp: str) -> dict[str, Any]:
    steps = shapes.warm_steps + shapes.timed_steps
    clock = StepClock(shapes.warm_steps)
    trainer = make(model, tok, data, common_args(f"{tmp}/{name}", batch, steps, bf16), [clock.callback()])
    # SP-PRM's batches carry one weight per pair; TRL's stack the chosen then the rejected sequences
    pairs_of = (lambda b: int(b["weight"].numel())) if make is sp_prm_trainer else (lambda b: b["input_ids"].shape[0] // 2)
    trainer.data_collator = clock.wrap(trainer.data_collator, pairs_of)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    out = clock.figures(shapes.timed_steps, n_params, peak)
    out["batch_pairs"] = batch
    a = trainer.args  # checked, not assumed: TRL's config defaults to checkpointing on
    out["checkpointing"] = bool(getattr(a, "activation_checkpointing", None) or getattr(a, "gradient_checkpointing", None))
    del trainer
    free_memory()
    return out


def part_train(shapes: Shapes, tok: Any, dev: dict[str, Any], tmp: str, out: dict[str, Any]) -> None:
    cuda = torch.cuda.is_available()
    config = rm_config(shapes, tok)
    model = build("rm", config, "cuda" if cuda else "cpu")  # fp32 weights, bf16 autocast (both trainers)
    n_params = non_embedding_params(model)
    del model
    vocab = min(len(tok), config.vocab_size)
    steps = shapes.warm_steps + shapes.timed_steps
    partial = sst_data(shapes, max(8, 3 * steps * shapes.sp_prm_batch // max(shapes.sst_k, 1)), vocab)
    full = sst_data(shapes, steps * shapes.full_batch + 4, vocab, seed=1, full=True)
    out.update({"model": f"Gemma-sized RM, {billions(n_params)} non-embedding params",
                "precision": "bf16 autocast" if cuda else "fp32", "partial_pairs_in_data": len(partial),
                "mfu_formula": "6 x non-embedding params x real tokens / s / peak"})
    runs = [("trl_partial", trl_trainer, partial, shapes.trl_batch),
            ("sp_prm_partial", sp_prm_trainer, partial, shapes.sp_prm_batch),
            ("trl_full", trl_trainer, full, shapes.full_batch),
            ("sp_prm_full", sp_prm_trainer, full, shapes.full_batch)]
    for name, make, data, batch in runs:
        # a fresh model per run (same seed, same weights): accelerate wraps a prepared model's forward in place
        model = None
        try:
            model = build("rm", config, "cuda" if cuda else "cpu")
            out[name] = run_trainer(name, make, model, tok, data, shapes, batch, cuda, n_params,
                                    dev["peak_bf16_flops"], tmp)
        except PartTimeout as e:
            out[name] = {"timed_out": str(e)}
            break
        except torch.cuda.OutOfMemoryError as e:  # report it and go on: the other runs still mean something
            out[name] = {"error": f"out of memory: {str(e)[:200]}"}
        finally:
            del model
            free_memory()
    for kind in ("partial", "full"):
        a, b = out.get(f"sp_prm_{kind}", {}), out.get(f"trl_{kind}", {})
        if "pairs_per_s" in a and "pairs_per_s" in b:
            out[f"ratio_{kind}_pairs_per_s"] = round(a["pairs_per_s"] / b["pairs_per_s"], 2)


# -- ZeRO-3 -------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_batch(vocab: int, rows: int = 4, length: int = 24, seed: int = 7) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1000, vocab, length - r).tolist() for r in range(rows)]


@torch.no_grad()
def rewards_of(model: Any, seqs: list[list[int]], pad_id: int) -> list[float]:
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return [float(x) for x in logits.float().reshape(-1).cpu()]


def zero3_worker(out_dir: str, smoke: bool) -> None:
    """Inside ``accelerate launch``: arguments first, then the model (under zero.Init), train, save 16-bit."""
    shapes = SMOKE if smoke else FULL
    if not torch.cuda.is_available():  # DeepSpeed's process group over gloo before the training arguments
        import deepspeed

        for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                             ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, default)
        deepspeed.init_distributed(dist_backend="gloo")
    tok = tokenizer_for(shapes)
    steps = shapes.zero3_steps
    args = common_args(f"{out_dir}/run", shapes.full_batch, steps, torch.cuda.is_available())
    args.pop("use_cpu")  # with use_cpu accelerate never selects DeepSpeed
    if not torch.cuda.is_available():
        args["ddp_backend"] = "gloo"
    from sp_prm.collator import PairCollator
    from sp_prm.train_config import SPPRMConfig
    from sp_prm.trainer import SPPRMTrainer

    config = SPPRMConfig(loss="unweighted", **args)  # before the model: it sets up zero.Init
    from transformers import AutoModelForSequenceClassification

    model_config = policy_config(shapes, tok, num_labels=1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(model_config)
    data = sst_data(shapes, steps * shapes.full_batch + 2, len(tok), seed=2, full=True)
    trainer = SPPRMTrainer(model=model, args=config, train_dataset=data, loss_type="unweighted", causal=True,
                           data_collator=PairCollator(tok.pad_token_id), group_by_pair=False)
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    trainer.model.eval()
    probe = probe_batch(len(tok))
    before = rewards_of(trainer.model, probe, tok.pad_token_id)
    t = time.perf_counter()
    trainer.save_model(f"{out_dir}/model")
    save_s = time.perf_counter() - t
    if trainer.accelerator.is_main_process:
        Path(f"{out_dir}/worker.json").write_text(json.dumps({
            "rewards": before, "train_s": round(train_s, 2), "save_s": round(save_s, 2), "steps": steps,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()),
        }))


def part_zero3(shapes: Shapes, smoke: bool, tmp: str, left: Callable[[], float], out: dict[str, Any]) -> None:
    cuda = torch.cuda.is_available()
    out_dir = Path(tmp) / "zero3"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes/accelerate/zero3.yaml"), "--num_processes", "1", "--mixed_precision",
           "bf16" if cuda else "no", "--main_process_port", str(_free_port()),
           str(Path(__file__).resolve()), "--zero3-worker", str(out_dir)] + (["--smoke"] if smoke else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if not cuda:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(left() - 5, 1))
    except subprocess.TimeoutExpired:
        out["timed_out"] = f"accelerate launch ran past the part cap ({shapes.caps['zero3']:.0f} s)"
        return
    wall = time.perf_counter() - t
    log = (proc.stdout + proc.stderr)[-2500:]
    if proc.returncode != 0 or not (out_dir / "worker.json").exists():
        out.update(error=f"accelerate launch exited {proc.returncode}", log_tail=log)
        return
    worker = json.loads((out_dir / "worker.json").read_text())
    from transformers import AutoModelForSequenceClassification

    tok = tokenizer_for(shapes)
    files = sorted(p.name for p in (out_dir / "model").iterdir())
    dtype = torch.bfloat16 if cuda else torch.float32
    reloaded = AutoModelForSequenceClassification.from_pretrained(out_dir / "model", dtype=dtype).to(
        "cuda" if cuda else "cpu").eval()
    after = rewards_of(reloaded, probe_batch(len(tok)), tok.pad_token_id)
    before = worker["rewards"]
    diff = max(abs(a - b) for a, b in zip(before, after))
    scale = max(1.0, max(abs(b) for b in before))
    tol = (2e-2 if cuda else 1e-4) * scale  # bf16 kernels may differ between the DeepSpeed engine and plain HF
    del reloaded
    free_memory()
    out.update({"launcher": "accelerate launch, recipes/accelerate/zero3.yaml, 1 process", "backend": worker["backend"],
            "model_params": worker["params"], "steps": worker["steps"], "train_s": worker["train_s"],
            "save_s": worker["save_s"], "wall_s": round(wall, 1), "saved_files": files,
            "rewards_before": [round(x, 5) for x in before], "rewards_after": [round(x, 5) for x in after],
            "max_abs_diff": diff, "tolerance": tol, "rewards_equal": diff <= tol})


# -- decoding -----------------------------------------------------------------------------------------------
class FreeScorer:
    """All-zero scores at no cost: Best-of-N with it is plain sampling."""

    additive = False
    default_aggregation = "last"
    causal = False

    def score(self, prompts: Sequence[Any], partials: Sequence[Any]) -> torch.Tensor:
        return torch.zeros(len(partials))


def run_search(name: str, policy: Any, scorer: Any, prompts: Sequence[Any], shapes: Shapes, new_tokens: int) -> list:
    """Every search the suite times goes through here: the registry's one run signature."""
    from decoding.policy import SamplingParams
    from decoding.search import SEARCHES

    W, K, L = shapes.cbs
    params = {"args": ("args", dict(k=shapes.args_k, w=1.5)),
              "cbs": ("cbs", dict(beam_width=W, successors=K, chunk_length=L)),
              "bon": ("best_of_n", dict(n=shapes.bon_n))}
    if name not in params:
        raise ValueError(f"unknown search {name!r}")
    method, values = params[name]
    entry = SEARCHES[method]
    return entry.run(policy, scorer, list(prompts), entry.params(**values), SamplingParams(temperature=1.0),
                     new_tokens, seed=0)


def make_prompts(policy: Any, n: int, length: int, seed: int = 3) -> list[Any]:
    """Prompts of ``length`` policy tokens: a preference (system) + a question of added tokens (one id each)."""
    from decoding.types import Prompt

    rng = np.random.default_rng(seed)
    tok = policy.tokenizer
    added = sum(1 for t in tok.get_added_vocab() if t.startswith("<x"))  # from tokenizer_for
    pref = "I prefer short answers."

    def prompt(i: int, words: int) -> Any:
        question = "".join(f"<x{j}>" for j in rng.integers(0, added, words))
        return Prompt(f"g{i}", [{"role": "system", "content": pref}, {"role": "user", "content": question}],
                      [{"role": "user", "content": question}], question, pref, i)

    overhead = len(policy.encode(prompt(0, 4).messages)) - 4  # the chat template and the preference
    return [prompt(i, max(length - overhead, 4)) for i in range(n)]


def hf_greedy(lm: Any, tok: Any, prompts: Sequence[list[int]], new_tokens: int, static: bool) -> int:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as generate wants for a decoder
        ids[i, width - len(p):] = torch.as_tensor(p)
        mask[i, width - len(p):] = 1
    device = next(lm.parameters()).device
    extra = {"cache_implementation": "static"} if static else {}
    out = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id, **extra)
    return int(out[:, width:].numel())  # min_new_tokens = max_new_tokens: every row has exactly new_tokens


def part_decode(shapes: Shapes, tok: Any, left: Callable[[], float], out: dict[str, Any]) -> None:
    from decoding.policy import Policy
    from decoding.scorers import RearScorer, RewardModelScorer

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    lm = build("lm", policy_config(shapes, tok), device, dtype)
    rm = build("rm", rm_config(shapes, tok), device, dtype, seed=1).eval()
    policy = Policy(lm, tok)
    rm_scorer = RewardModelScorer(rm, tok)
    rear = RearScorer(policy, 20.0)
    scorers = {"rm": rm_scorer, "rear": rear, "free": FreeScorer()}
    T = shapes.new_tokens
    sets = {1: make_prompts(policy, 1, shapes.prompt_tokens), shapes.many_prompts:
            make_prompts(policy, shapes.many_prompts, shapes.prompt_tokens, seed=4)}
    out.update({"policy": f"Llama-sized, {billions(sum(p.numel() for p in lm.parameters()))} params",
                           "rm": f"Gemma-sized decoder RM, {billions(sum(p.numel() for p in rm.parameters()))} params",
                           "precision": str(dtype).replace("torch.", ""), "new_tokens": T,
                           "prompt_tokens": len(policy.encode(sets[1][0].messages)), "rows": []})

    def reset() -> None:
        for s in (rm_scorer.prefix_cache, rear.cache):
            if s is not None and hasattr(s, "reset"):
                s.reset()

    def record(what: str, n: int, fn: Callable[[], tuple[int, int]], note: str = "") -> None:
        row: dict[str, Any] = {"what": what, "prompts": n}
        if note:
            row["note"] = note
        if left() < 1:
            row["skipped"] = "part cap reached"
        else:
            try:
                reset()
                before = policy.meter.total("policy_tokens_generated")
                seconds, (tokens, sampled) = timed(fn)
                sampled = sampled or (policy.meter.total("policy_tokens_generated") - before)
                row.update(seconds=round(seconds, 3), tokens=tokens, tok_per_s=round(tokens / seconds, 1))
                if sampled:
                    row.update(sampled_tokens=sampled, sampled_tok_per_s=round(sampled / seconds, 1))
            except PartTimeout as e:
                row["timed_out"] = str(e)
        print(f"  decode {what} x{n}: {row}", flush=True)
        out["rows"].append(row)

    def search(name: str, scorer: str, ps: list) -> Callable[[], tuple[int, int]]:
        def go() -> tuple[int, int]:
            res = run_search(name, policy, scorers[scorer], ps, shapes, T)
            return sum(len(r.best_candidate.token_ids) for r in res), 0
        return go

    def greedy(ps: list, static: bool) -> Callable[[], tuple[int, int]]:
        enc = [policy.encode(p.messages) for p in ps]
        return lambda: (hf_greedy(lm, tok, enc, T, static), 0)

    # untimed warm-up of every path (lazy initialisations, kernel selection), a few tokens each
    warm = replace(shapes, new_tokens=2)
    with torch.no_grad():
        greedy(sets[1], False)()
        for name, scorer in (("args", "rm"), ("cbs", "rm"), ("bon", "rear")):
            run_search(name, policy, scorers[scorer], sets[1], warm, 2)
    for n, ps in sets.items():  # most important first: what does not fit the cap is at the end
        record("hf_greedy_dynamic", n, greedy(ps, False))
    for n, ps in sets.items():
        record("args", n, search("args", "rm", ps), f"k = {shapes.args_k}, w = 1.5, RM prefix cache + token trees")
        record("bon_rm", n, search("bon", "rm", ps), f"N = {shapes.bon_n}, decoder RM")
        record("bon_rear", n, search("bon", "rear", ps), f"N = {shapes.bon_n}, REAR (lambda 20)")
        record("bon_plain", n, search("bon", "free", ps), f"N = {shapes.bon_n}, free scorer: plain sampling")
        record("cbs", n, search("cbs", "rm", ps), "W, K, L = {}, {}, {}".format(*shapes.cbs))
    for n, ps in sets.items():  # static cache: on a GPU the first call compiles the decode step (timed apart)
        record("hf_greedy_static_first_call", n, greedy(ps, True), "includes torch.compile on a GPU")
        record("hf_greedy_static", n, greedy(ps, True))
    by = {(r["what"], r["prompts"]): r for r in out["rows"]}
    for r in out["rows"]:
        base = by.get(("hf_greedy_dynamic", r["prompts"]), {})
        if "tok_per_s" in r and "tok_per_s" in base:
            r["x_hf_greedy"] = round(r["tok_per_s"] / base["tok_per_s"], 3)
    many = shapes.many_prompts
    goals = {}

    def ratio(a: tuple[str, int], b: tuple[str, int], key: str = "tok_per_s", inverse: bool = False) -> float | None:
        x, y = by.get(a, {}).get(key), by.get(b, {}).get(key)
        return None if x is None or y is None else round((y / x) if inverse else (x / y), 3)

    goals["args_vs_hf_dynamic_greedy (goal >= 1)"] = ratio(("args", 1), ("hf_greedy_dynamic", 1))
    goals["args_vs_hf_static_greedy (stretch >= 0.5)"] = ratio(("args", 1), ("hf_greedy_static", 1))
    for s in ("bon_rm", "bon_rear", "cbs"):
        goals[f"{s}_{many}_prompts_vs_1 (goal >= 8)"] = ratio((s, many), (s, 1))
    for n in sets:
        x, y = by.get(("bon_rear", n), {}).get("seconds"), by.get(("bon_plain", n), {}).get("seconds")
        goals[f"bon_rear_time_vs_plain_sampling_{n}_prompts (goal <= 1.05)"] = None if x is None or y is None \
            else round(x / y, 3)
    out["goals"] = goals


# -- environment --------------------------------------------------------------------------------------------
def part_env() -> dict[str, Any]:
    import importlib

    packages = {}
    for name in ("torch", "transformers", "accelerate", "peft", "datasets", "trl", "deepspeed", "pyarrow"):
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing or broken package is what this part reports
            packages[name] = {"missing": f"{type(e).__name__}: {str(e)[:120]}"}
            continue
        where = str(Path(getattr(mod, "__file__", "") or "").resolve())
        packages[name] = {"version": getattr(mod, "__version__", "?"),
                          "from": "carried wheel (.gpu-site)" if ".gpu-site" in where else "machine"}
    wheels = sorted(p.name for p in (REPO / ".whl").glob("*.whl")) if (REPO / ".whl").exists() else []
    return {"python": sys.version.split()[0], "cuda": torch.version.cuda, "packages": packages,
            "carried_wheels": wheels, "bare_machine_lacks": list(CARRIED), "how_brought": BRING}


# -- report -------------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    dev = report["device"]
    lines = [f"# GPU suite ({'smoke, tiny shapes' if report['smoke'] else 'full shapes'})", "",
             f"{report['date']} on {dev['name']}; {dev['peak_note']}; total {report['total_s']} s.", ""]
    tr = report.get("train", {})
    if tr and "error" not in tr and "skipped" not in tr:
        lines += [f"## Training: {tr.get('model')}, {tr.get('precision')}", "",
                  "| run | batch (pairs) | pairs/s | real tokens/s | MFU | peak GiB |", "|---|---|---|---|---|---|"]
        for name in ("trl_partial", "sp_prm_partial", "trl_full", "sp_prm_full"):
            r = tr.get(name, {})
            if "pairs_per_s" in r:
                lines.append(f"| {name} | {r['batch_pairs']} | {r['pairs_per_s']} | {r['tokens_per_s']} | "
                             f"{r['mfu'] if r['mfu'] is not None else '-'} | {r.get('peak_gib', '-')} |")
            else:
                lines.append(f"| {name} | {r or 'not run'} | | | | |")
        lines += ["", f"SP-PRM / TRL partial pairs/s: {tr.get('ratio_partial_pairs_per_s')}; full pairs/s: "
                  f"{tr.get('ratio_full_pairs_per_s')}. MFU = {tr.get('mfu_formula')}.", ""]
    elif tr:
        lines += ["## Training", "", f"{tr}", ""]
    z = report.get("zero3", {})
    lines += ["## ZeRO-3, one process", ""]
    if "rewards_equal" in z:
        lines += [f"{z['launcher']}, backend {z['backend']}, {billions(z['model_params'])} params, {z['steps']} "
                  f"steps in {z['train_s']} s, 16-bit save {z['save_s']} s ({', '.join(z['saved_files'])}); rewards "
                  f"before/after reload max |diff| {z['max_abs_diff']:.2e} (tolerance {z['tolerance']:.1e}): "
                  f"**{'equal' if z['rewards_equal'] else 'DIFFERENT'}**.", ""]
    else:
        lines += [f"{z}", ""]
    d = report.get("decode", {})
    if "rows" in d:
        lines += [f"## Decoding: {d['policy']} policy, {d['rm']}, {d['precision']}, prompt {d['prompt_tokens']} "
                  f"tokens, {d['new_tokens']} new", "",
                  "| search | prompts | s | tokens | tok/s | x HF greedy (dynamic) | sampled tok/s | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            if "tok_per_s" in r:
                lines.append(f"| {r['what']} | {r['prompts']} | {r['seconds']} | {r['tokens']} | {r['tok_per_s']} | "
                             f"{r.get('x_hf_greedy', '-')} | {r.get('sampled_tok_per_s', '-')} | {r.get('note', '')} |")
            else:
                lines.append(f"| {r['what']} | {r['prompts']} | {r.get('skipped') or r.get('timed_out')} | | | | | |")
        lines += ["", "| goal | measured |", "|---|---|"] + [f"| {k} | {v} |" for k, v in d["goals"].items()] + [""]
    elif d:
        lines += ["## Decoding", "", f"{d}", ""]
    env = report.get("env", {})
    if env:
        pk = ", ".join(f"{k} {v.get('version', v.get('missing'))} ({v.get('from', '-')})" for k, v in env["packages"].items())
        lines += ["## Environment", "", f"Python {env['python']}, CUDA {env['cuda']}: {pk}.", "",
                  f"A bare GPU machine lacks {', '.join(env['bare_machine_lacks'])}: {env['how_brought']}.", ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_suite(out: Path, smoke: bool, parts: Sequence[str], zero3_in_smoke: bool = False) -> dict[str, Any]:
    shapes = SMOKE if smoke else FULL
    start = time.perf_counter()
    if not torch.cuda.is_available() and not smoke:
        print("warning: no GPU; full shapes on a CPU take very long (use --smoke)", flush=True)
    dev = device_info()
    report: dict[str, Any] = {"smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "device": dev, "shapes": asdict(shapes), "caps_s": shapes.caps}
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_for(shapes)
    if "env" in parts:
        report["env"] = part_env()
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("train", "zero3", "decode"):
            if part not in parts:
                continue
            if part == "zero3" and smoke and not zero3_in_smoke:
                report["zero3"] = {"skipped": "smoke: DeepSpeed ZeRO-3 over gloo in a subprocess takes 50-130 s on "
                                              "the CI box, over the default tier's budget; --zero3 runs it"}
                continue
            print(f"[{part}] cap {shapes.caps[part]:.0f} s", flush=True)
            t = time.perf_counter()
            slot = report[part] = {}  # filled as the part goes: a timed-out part keeps what it measured
            try:
                with cap(shapes.caps[part]) as left:
                    if part == "train":
                        part_train(shapes, tok, dev, tmp, slot)
                    elif part == "zero3":
                        part_zero3(shapes, smoke, tmp, left, slot)
                    else:
                        with torch.no_grad():
                            part_decode(shapes, tok, left, slot)
            except PartTimeout as e:
                slot["timed_out"] = str(e)
            report[part]["part_s"] = round(time.perf_counter() - t, 1)
            free_memory()
    report["total_s"] = round(time.perf_counter() - start, 1)
    write_atomic(out / "gpu_suite.json", json.dumps(report, indent=1))
    write_atomic(out / "gpu_suite.md", markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "results" / "gpu_suite"), help="folder for gpu_suite.json / .md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, seconds)")
    ap.add_argument("--parts", default="env,train,zero3,decode", help="comma-separated subset")
    ap.add_argument("--zero3", action="store_true", help="run the ZeRO-3 part in --smoke too (gloo, ~1-2 min)")
    ap.add_argument("--zero3-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.zero3_worker:
        zero3_worker(a.zero3_worker, a.smoke)
        return None
    report = run_suite(Path(a.out), a.smoke, [p.strip() for p in a.parts.split(",")], a.zero3)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
