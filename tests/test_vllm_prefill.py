"""AdvBench's prefill mode on the vllm policy backend (marker ``vllm``, its own venv; mirrors test_vllm_backend).

    bash scripts/install.sh --vllm && python -m pytest -m vllm tests/test_vllm_prefill.py
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the vllm tier needs vLLM: bash scripts/install.sh --vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from decoding.decode import DecodeConfig, run  # noqa: E402
from decoding.metrics import advbench  # noqa: E402
from decoding.policy import Policy, SamplingParams  # noqa: E402
from decoding.prompts import DataConfig, load_prompts  # noqa: E402
from decoding.scorers import RearScorer  # noqa: E402
from decoding.search.best_of_n import best_of_n  # noqa: E402
from decoding.types import Meter  # noqa: E402
from decoding.vllm_policy import LocalEngine, VllmPolicy  # noqa: E402
from sp_prm.config import build  # noqa: E402
from sp_prm.models import load_tokenizer, resolve  # noqa: E402
from tests.conftest import shared_data  # noqa: E402

MODEL = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def engine():
    eng = LocalEngine(resolve(MODEL), dtype="float32", enforce_eager=True, max_model_len=2048,
                      engine_args={"block_size": 32})
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(tokenizer):
    from transformers import AutoModelForCausalLM

    return Policy(AutoModelForCausalLM.from_pretrained(resolve(MODEL), dtype=torch.float32), tokenizer)


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "advbench.jsonl"
    advbench.main(["--csv", str(shared_data("advbench", "harmful_behaviors.csv")), "--output", str(path),
                   "--limit", "2", "--sure_mode", "prefill"])
    return path


def test_vllm_continues_the_prefill(engine, tokenizer, hf, prompt_file, tmp_path):
    policy = VllmPolicy(engine, tokenizer, meter=Meter())
    ps = load_prompts(DataConfig(path=str(prompt_file)))
    for p in ps:
        cue = tokenizer.apply_chat_template(p.context_messages, tokenize=False, add_generation_prompt=True)
        hand = tokenizer(cue + advbench.SURE_HERES, add_special_tokens=False)["input_ids"]
        assert policy.encode(p.messages) == hf.encode(p.messages) == hand
    res = best_of_n(policy, RearScorer(policy, 1.0), ps, 2, SamplingParams(), 16, seed=1)
    for r in res:
        for c in r.candidates:  # the engine sampled after the phrase: HF teacher forcing on the same ids agrees
            ref = hf.sequence_logprobs(hf.encode(r.prompt.messages), c.token_ids + c.end_ids)
            assert torch.allclose(torch.tensor(c.logprobs + c.end_logprobs), ref, atol=1e-3)
    cfg = build(DecodeConfig, {"policy": {"backend": "vllm"}, "data": {"path": str(prompt_file)},
                               "output": str(tmp_path / "o.jsonl"), "progress": False,
                               "search": {"max_new_tokens": 8, "best_of_n": {"n": 2}}, "scorer": {"name": "rear", "lam": 1.0}})
    lines = [json.loads(x) for x in run(cfg, policy=policy).read_text().splitlines()]
    for x in lines:
        assert x["response"].startswith(advbench.SURE_HERES) and x["response_includes_prefill"] is True
        assert x["sure_mode"] == "prefill" and x["messages"][-1]["role"] == "user"
