"""2 processes on this CPU over gloo (DeepSpeed ZeRO-3, and DDP): a real step, the saved checkpoint
reloaded, and the weighted loss normalised the same on 2 processes as on one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from data_prep.prepare import PrepareConfig, prepare
from sp_prm.formatting import PrefixFormat
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=1, optim="sgd",
              learning_rate=0.05, max_grad_norm=0.0, lr_scheduler_type="constant", save_strategy="no", limit=4,
              logging_steps=1, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["zero3", "ddp"])
def test_two_processes_match_one_process(tiny_llama_rm_dir, tmp_path, launcher):
    data = tmp_path / "data"
    prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=8, model_name_or_path=str(tiny_llama_rm_dir),
                          reference_model=str(tiny_llama_rm_dir), output_dir=str(data), weight_cap=10.0, sst_k=3,
                          prefix=PrefixFormat(max_prompt_tokens=48, max_response_tokens=24)))
    out = tmp_path / "zero3"
    args = [f"--{k}={v}" for k, v in COMMON.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if launcher == "zero3":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes/accelerate/zero3.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               "--main_process_port", str(_free_port())]
    else:  # DDP over gloo: accelerate on a CPU machine would start one process; torchrun starts two
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port())]
        args.append("--use_cpu=true")
    cmd += ["-m", "sp_prm.train", "--model_name_or_path", str(tiny_llama_rm_dir), "--dataset", str(data),
            "--output_dir", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "'loss'" in proc.stdout + proc.stderr
    # ZeRO-3: the gathered 16-bit save wrote one full checkpoint that loads like any other.
    assert (out / "model.safetensors").exists()
    zero3 = AutoModelForSequenceClassification.from_pretrained(out)
    assert zero3.config.sp_prm["loss"] == "weighted"

    # Same 4 pairs in one process, one micro-batch: 2 processes x batch 1 x accumulation 2 must give the
    # same SGD update (loss normalised by the pairs of the whole step, over processes).
    single = dict(COMMON, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    config = SPPRMConfig(model_name_or_path=str(tiny_llama_rm_dir), dataset=str(data),
                         output_dir=str(tmp_path / "single"), use_cpu=True, **single)
    one = train(config).model
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir)
    ref, got, start = one.state_dict(), zero3.state_dict(), base.state_dict()
    moved = 0
    for name, value in ref.items():
        step = (value - start[name]).abs().max()
        moved += int(step > 0)
        assert torch.allclose(got[name], value, atol=1e-6 + 1e-3 * float(step)), name
    assert moved > 5
