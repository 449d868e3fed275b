"""The engine scorer on a real vLLM pooling engine (marker ``vllm``, its own venv).

    bash scripts/install.sh --dev --vllm && VLLM_CPU_KVCACHE_SPACE=2 python -m pytest -m vllm tests/test_vllm_scorer.py

The reward model is a real SmolLM2-135M sequence classifier saved from a short Bradley-Terry run
on real HH-RLHF pairs (``bench.bench_vllm_scorer.make_hh_prm``: 3 steps, ~1 min on 2 CPU cores),
with its training format in ``config.sp_prm``. One in-process pooling engine (fp32, eager,
block size 32) is shared by the module; the server test starts a pooling server on 127.0.0.1
with a bounded wait and always stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the vllm tier needs vLLM: bash scripts/install.sh --vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from bench.bench_vllm_scorer import hh_prompts, make_hh_prm, new_and_floor  # noqa: E402
from decoding.decode import DecodeConfig, run  # noqa: E402
from decoding.policy import Policy, SamplingParams  # noqa: E402
from decoding.scorers import ClassifierScorer  # noqa: E402
from decoding.scorers.rm_engine import EngineRewardScorer, LocalRewardEngine, ServerRewardEngine  # noqa: E402
from decoding.search.args import args_decode  # noqa: E402
from decoding.search.best_of_n import best_of_n  # noqa: E402
from decoding.search.cards import CardsParams, cards  # noqa: E402
from decoding.search.cbs import chunk_beam_search  # noqa: E402
from decoding.search.dvts import dvts  # noqa: E402
from decoding.types import Meter  # noqa: E402
from decoding.vllm_policy import EngineError, LocalEngine, VllmPolicy  # noqa: E402
from sp_prm.config import build  # noqa: E402
from sp_prm.models import load_reward_model, load_tokenizer, resolve, trained_prefix_format  # noqa: E402
from tests.conftest import shared_data  # noqa: E402
from tests.test_vllm_backend import _free_port, _stop, _wait_until_serving  # noqa: E402

POLICY = "builtin:smollm2-135m-instruct"
BLOCK = 32
SERVER_START_TIMEOUT = 300


@pytest.fixture(scope="module")
def prm(tmp_path_factory) -> Path:
    shared_data("hh-rlhf", "harmless-base", "test.jsonl.gz")
    return make_hh_prm(tmp_path_factory.mktemp("prm") / "smollm2-prm")


@pytest.fixture(scope="module")
def hf_model(prm):
    return load_reward_model(str(prm), "float32", "cpu")


@pytest.fixture(scope="module")
def rm_tokenizer(prm):
    return load_tokenizer(str(prm))


@pytest.fixture(scope="module")
def fmt(hf_model):
    f = trained_prefix_format(hf_model)
    assert f is not None and f.max_prompt_tokens == 96  # the training run's format, recorded in the checkpoint
    return f


@pytest.fixture(scope="module")
def engine(prm):
    eng = LocalRewardEngine(str(prm), dtype="float32", enforce_eager=True, max_model_len=2048,
                            engine_args={"block_size": BLOCK})
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def policy():
    from transformers import AutoModelForCausalLM

    return Policy(AutoModelForCausalLM.from_pretrained(resolve(POLICY), dtype=torch.float32), load_tokenizer(POLICY))


@pytest.fixture(scope="module")
def prompts():
    return hh_prompts(2)


@pytest.fixture(scope="module")
def tiny_policy():
    """A random tiny Llama on SmolLM2's tokenizer: its samples cost nothing, and the scorers read them the same way."""
    from tests.conftest import smollm_tokenizer_, tiny_llama_lm_

    tok = smollm_tokenizer_()
    return Policy(tiny_llama_lm_(tok), tok)


def scorers(engine, hf_model, rm_tokenizer, fmt):
    return (EngineRewardScorer(engine, rm_tokenizer, fmt, meter=Meter()),
            ClassifierScorer(hf_model, rm_tokenizer, fmt, meter=Meter()))


def test_rewards_equal_the_hf_scorers(engine, hf_model, rm_tokenizer, fmt, policy, prompts):
    res = best_of_n(policy, ClassifierScorer(hf_model, rm_tokenizer, fmt), prompts, 4, SamplingParams(), 24, seed=2)
    P = [r.prompt for r in res for _ in r.candidates]
    R = [c.partial(policy) for r in res for c in r.candidates]
    eng, _ = scorers(engine, hf_model, rm_tokenizer, fmt)
    ref = ClassifierScorer(hf_model, rm_tokenizer, fmt, cache=False).score(P, R)  # plain uncached forwards
    engine.reset_prefix_cache()
    got = eng.score(P, R)
    assert torch.allclose(got, ref, atol=1e-3), (got, ref)
    assert ref.std() > 1e-3  # the rewards differ between candidates: the comparison can fail
    first = eng.meter.total("scorer_tokens")
    again = eng.score(P, R)  # everything but the last block of each from the cache
    assert torch.allclose(again, ref, atol=1e-3)
    m = eng.meter
    assert m.total("scorer_tokens") + m.total("scorer_tokens_cached") == 2 * sum(len(eng.sequence(p, r))
                                                                                 for p, r in zip(P, R))
    assert m.total("scorer_tokens") - first <= len(R) * BLOCK  # a repeat: at most one block per sequence
    # the first call: the prompt's full blocks computed once, its other candidates served them
    assert m.for_group(0)["scorer_tokens_cached"] > 0 and m.for_group(1)["scorer_tokens_cached"] > 0


def test_every_search_selects_what_the_hf_scorer_selects(engine, hf_model, rm_tokenizer, fmt, tiny_policy, prompts):
    """Same policy, same seeds: rewards equal within 1e-3, so every search keeps the same candidates."""
    policy, params, ps = tiny_policy, SamplingParams(), prompts[:1]
    runs = {
        "bon": lambda s: best_of_n(policy, s, ps, 3, params, 8, seed=1),
        "dvts": lambda s: dvts(policy, s, ps, n=4, width=2, params=params, max_new_tokens=8, max_steps=2,
                               max_step_tokens=4, seed=1),
        "cbs": lambda s: chunk_beam_search(policy, s, ps, 2, 2, 4, params, 8, seed=1),
        "tbs": lambda s: chunk_beam_search(policy, s, ps, 2, 2, 1, params, 2, seed=1),
        "cards": lambda s: cards(policy, s, ps, CardsParams(tau_u=3.0, r_start=-50.0, r_end=-50.0,
                                                            max_segment_tokens=4), params, 8, seed=1),
        "args": lambda s: args_decode(policy, s, ps, k=2, w=1.5, max_new_tokens=2, seed=1),
    }
    for name, go in runs.items():
        eng, hf = scorers(engine, hf_model, rm_tokenizer, fmt)
        a, b = go(eng), go(hf)
        for x, y in zip(a, b):
            assert [c.token_ids for c in x.candidates] == [c.token_ids for c in y.candidates], name
            assert [c.score for c in x.candidates] == pytest.approx([c.score for c in y.candidates], abs=1e-3), name
            assert x.best == y.best, name
        assert eng.meter.total("scorer_tokens_cached") > 0, name  # later steps read the earlier steps' blocks


def test_cbs_scorer_compute_within_one_block_per_candidate(engine, hf_model, rm_tokenizer, fmt, tiny_policy, prompts):
    eng, _ = scorers(engine, hf_model, rm_tokenizer, fmt)
    calls: list[list[list[int]]] = []
    computed: list[int] = []
    inner = eng.score

    def recording(P, R):
        calls.append([eng.sequence(p, r) for p, r in zip(P, R)])
        before = eng.meter.total("scorer_tokens")
        out = inner(P, R)
        computed.append(eng.meter.total("scorer_tokens") - before)
        return out

    eng.score = recording
    engine.reset_prefix_cache()
    chunk_beam_search(tiny_policy, eng, prompts, 4, 4, 12, SamplingParams(), 36, seed=3)
    assert len(calls) >= 2
    for k in range(len(calls)):  # per call: computed <= its new tokens + one block per candidate
        new_k = new_and_floor(calls[: k + 1], BLOCK)[0] - new_and_floor(calls[:k], BLOCK)[0]
        assert computed[k] <= new_k + len(calls[k]) * BLOCK, k
    new, n, model = new_and_floor(calls, BLOCK)
    assert sum(computed) <= new + n * BLOCK
    assert sum(computed) <= model  # the engine computes no more than whole-block reuse predicts


def test_cbs_with_the_vllm_policy_and_the_engine_scorer(engine, hf_model, rm_tokenizer, fmt, prompts):
    """Both on engines (the scale-out setting): CBS runs, its beams' scores are the HF scorer's."""
    tok = load_tokenizer(POLICY)
    peng = LocalEngine(resolve(POLICY), dtype="float32", enforce_eager=True, max_model_len=2048,
                       engine_args={"block_size": BLOCK})
    try:
        vpol = VllmPolicy(peng, tok, meter=Meter())
        eng = EngineRewardScorer(engine, rm_tokenizer, fmt, meter=vpol.meter)
        res = chunk_beam_search(vpol, eng, prompts, 2, 3, 8, SamplingParams(), 16, seed=4)
        P = [r.prompt for r in res for _ in r.candidates]
        R = [c.partial(vpol) for r in res for c in r.candidates]
        ref = ClassifierScorer(hf_model, rm_tokenizer, fmt, cache=False).score(P, R)
        assert [c.score for r in res for c in r.candidates] == pytest.approx(ref.tolist(), abs=1e-3)
        assert vpol.meter.total("scorer_tokens_cached") > 0 and vpol.meter.total("policy_tokens_cached") > 0
    finally:
        peng.close()


def test_decode_run_with_scorer_backend_vllm(tmp_path, engine, hf_model, rm_tokenizer, fmt, policy, prm):
    import json

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Question {i}: how do I boil an egg?"}) + "\n"
                            for i in range(2)))
    cfg = build(DecodeConfig, {"data": {"path": str(data)}, "output": str(tmp_path / "o.jsonl"), "progress": False,
                               "search": {"method": "cbs", "max_new_tokens": 12,
                                          "cbs": {"beam_width": 2, "successors": 2, "chunk_length": 6}},
                               "scorer": {"name": f"rm:{prm}", "backend": "vllm"}})
    out = run(cfg, policy=policy, scorer=EngineRewardScorer(engine, rm_tokenizer, fmt))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2
    for x in lines:
        c = x["compute"]
        assert c["scorer_calls"] >= 2 and c["scorer_tokens"] > 0 and c["scorer_tokens_cached"] > 0


def test_server_mode(prm, engine, hf_model, rm_tokenizer, fmt, policy, prompts, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 -- closed in finally
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(prm), "--host", "127.0.0.1",
           "--port", str(port), "--runner", "pooling", "--pooler-config",
           '{"pooling_type": "LAST", "use_activation": false}', "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "2048", "--served-model-name", "prm", "--block-size", str(BLOCK)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_serving(proc, url, log, "pooling server", SERVER_START_TIMEOUT)
        with pytest.raises(EngineError, match="not 'other-prm'"):
            ServerRewardEngine(url, "other-prm")
        served = EngineRewardScorer(ServerRewardEngine(url, str(prm), batch=4), rm_tokenizer, fmt, meter=Meter())
        res = chunk_beam_search(policy, served, prompts, 2, 2, 8, SamplingParams(), 16, seed=5)
        local = chunk_beam_search(policy, EngineRewardScorer(engine, rm_tokenizer, fmt), prompts, 2, 2, 8,
                                  SamplingParams(), 16, seed=5)
        for a, b in zip(res, local):
            assert [c.token_ids for c in a.candidates] == [c.token_ids for c in b.candidates]
            assert [c.score for c in a.candidates] == pytest.approx([c.score for c in b.candidates], abs=1e-3)
        m = served.meter
        assert m.total("scorer_tokens_cached") > 0  # from the server's prefix-cache counter
        P = [r.prompt for r in res for _ in r.candidates]
        R = [c.partial(policy) for r in res for c in r.candidates]
        assert m.total("scorer_tokens") > 0
        ref = ClassifierScorer(hf_model, rm_tokenizer, fmt, cache=False).score(P, R)
        assert torch.allclose(served.score(P, R), ref, atol=1e-3)
    finally:
        _stop(proc)
        log.close()
