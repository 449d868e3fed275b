"""The backend-agnostic policy interface, without vLLM: token-id state, clear errors, config checks.

The searches run on a fake engine that draws tokens from a seeded RNG, so the vllm backend's
bookkeeping (stop classification, state ids, accounting, REAR's cached-position filling) is
checked here in the default tier; ``tests/test_vllm_backend.py`` (marker ``vllm``) runs the
real engine.
"""

from __future__ import annotations

import math
import random
import socket

import pytest
import torch

from decoding.backend import TokenState, require_token_level
from decoding.decode import DecodeConfig
from decoding.policy import Policy, SamplingParams
from decoding.scorers import GenRMScorer, RearScorer
from decoding.search.args import args_decode
from decoding.search.best_of_n import best_of_n
from decoding.search.cards import CardsParams, cards
from decoding.search.cbs import chunk_beam_search
from decoding.search.dvts import dvts
from decoding.types import Partial
from decoding.vllm_policy import EngineError, EngineResult, ServerEngine, VllmPolicy
from sp_prm.config import build
from tests.test_decoding_search import prompts


class FakeEngine:
    """Stands in for vLLM: tokens from the policy model's own distribution (HF, exact), seeded per request.

    Prompt log-probs are the HF teacher-forced ones; with ``cached`` the first ``cached`` positions
    come back unset (as vLLM leaves prefix-cache hits), to exercise the filling logic.
    """

    description = "fake engine"

    def __init__(self, hf: Policy, cached: int = 0) -> None:
        self.hf, self.cached, self.calls = hf, cached, 0

    def run(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            if r.prompt_logprobs:
                lp = [math.nan] + self.hf.sequence_logprobs(r.prompt[:1], r.prompt[1:]).tolist()
                hit = min(self.cached, len(r.prompt) - 1) if r.read_cache else 0
                lp = [math.nan if p <= hit else v for p, v in enumerate(lp)]
                out.append(EngineResult([], [], "length", None, len(r.prompt), hit, lp))
                continue
            rng = random.Random(r.seed)
            ids, toks, lps, reason = list(r.prompt), [], [], "length"
            for _ in range(r.max_tokens):
                state = self.hf.prefill([ids])
                dist = state.next_logprobs[0]
                x = int(torch.multinomial(dist.exp(), 1, generator=torch.Generator().manual_seed(rng.randrange(2**31))))
                toks.append(x)
                lps.append(float(dist[x]))
                ids.append(x)
                if x in r.stop_token_ids:
                    reason = "stop"
                    break
            out.append(EngineResult(toks, lps, reason, None, len(r.prompt), 0))
        return out

    def encode_text(self, text):
        return list(self.hf.tokenizer(text, add_special_tokens=False)["input_ids"])

    def vocab_size(self):
        return len(self.hf.tokenizer)


@pytest.fixture()
def hf(tiny_llama_lm, smollm_tokenizer):
    return Policy(tiny_llama_lm, smollm_tokenizer)


@pytest.fixture()
def fake(hf, smollm_tokenizer):
    return VllmPolicy(FakeEngine(hf), smollm_tokenizer)


def test_token_state_select_copies():
    s = TokenState([[1, 2], [3]], [0, 1])
    t = s.select([0, 0, 1])
    t.ids[0].append(9)
    assert s.ids == [[1, 2], [3]] and t.ids == [[1, 2, 9], [1, 2], [3]] and t.groups == [0, 0, 1]
    assert t.prompt_lengths == [2, 2, 1] and not t.compact() and len(t) == 3


def test_searches_run_unchanged_on_token_state(fake, hf):
    ps = prompts(2)
    res = best_of_n(fake, RearScorer(fake, 3.0), ps, 3, SamplingParams(), 8, seed=2)
    again = best_of_n(fake, RearScorer(fake, 3.0), ps, 3, SamplingParams(), 8, seed=2)
    for r, a in zip(res, again):
        assert len(r.candidates) == 3
        assert [c.token_ids for c in r.candidates] == [c.token_ids for c in a.candidates]
        for c in r.candidates:
            ref = hf.sequence_logprobs(hf.encode(r.prompt.messages), c.token_ids + c.end_ids)
            assert c.logprobs + c.end_logprobs == pytest.approx(ref.tolist(), abs=1e-4)
    comp = fake.meter.for_group(0)
    assert comp["policy_tokens_generated"] >= 3 and comp["policy_tokens_prefilled"] > 0
    d = dvts(VllmPolicy(FakeEngine(hf), hf.tokenizer, delimiter="e"), RearScorer(fake, 2.0), ps[:1], 4, 2,
             SamplingParams(), 12, max_steps=3, max_step_tokens=4, seed=1)
    assert len(d[0].candidates) == 4
    b = chunk_beam_search(fake, RearScorer(fake, 2.0), ps[:1], 2, 2, 3, SamplingParams(), 7, seed=1)
    assert 1 <= len(b[0].candidates) <= 2 and all(len(c.token_ids) <= 7 for c in b[0].candidates)


def test_rear_fills_cached_positions_and_matches_hf(hf, smollm_tokenizer):
    """Positions the engine served from its cache are filled from shared prefixes or recomputed: same sums."""
    engine = FakeEngine(hf, cached=12)
    pol = VllmPolicy(engine, smollm_tokenizer)
    ps = prompts(1) * 3
    parts = [Partial("", [28, 29, 30, 31][:k], False, [], None) for k in (2, 3, 4)]
    ref = RearScorer(hf, 5.0, reuse_generation_logprobs=False, cache=False).score(ps, parts)
    scorer = RearScorer(pol, 5.0, reuse_generation_logprobs=False)
    assert scorer.score(ps, parts).tolist() == pytest.approx(ref.tolist(), abs=1e-4)
    engine.cached = 10_000  # everything "cached": the last call's rows must supply the values, else a recompute
    assert scorer.score(ps, parts).tolist() == pytest.approx(ref.tolist(), abs=1e-4)


def test_token_level_methods_and_genrm_refuse_vllm(fake, hf):
    ps = prompts(1)
    with pytest.raises(NotImplementedError, match="args does not run on the vllm policy backend"):
        args_decode(fake, RearScorer(fake), ps, 3, 1.0, 4)
    with pytest.raises(NotImplementedError, match="cards does not run on the vllm"):
        cards(fake, RearScorer(fake), ps, CardsParams(7.0, 0.0, 0.0), SamplingParams(), 4)
    with pytest.raises(NotImplementedError, match="genrm"):
        GenRMScorer(fake)
    require_token_level(hf, "args")  # the HF backend has it
    for method in ("args", "cards"):
        with pytest.raises(NotImplementedError, match=f"{method} does not run on the vllm"):
            build(DecodeConfig, {"policy": {"backend": "vllm"}, "search": {"method": method}})
    with pytest.raises(ValueError, match="genrm needs policy.backend: hf"):
        build(DecodeConfig, {"policy": {"backend": "vllm"}, "scorer": {"name": "genrm"}})
    with pytest.raises(ValueError, match="policy.backend must be one of"):
        build(DecodeConfig, {"policy": {"backend": "sglang"}})
    cfg = build(DecodeConfig, {"policy": {"backend": "vllm", "vllm": {"url": "http://x:1", "enforce_eager": True}}})
    assert cfg.policy.vllm.url == "http://x:1" and cfg.policy.vllm.enforce_eager


def test_tokenizer_mismatch_is_refused(hf, minilm_tokenizer):
    with pytest.raises(ValueError, match="engine's model and the policy's tokenizer disagree"):
        VllmPolicy(FakeEngine(hf), minilm_tokenizer)


def test_unreachable_server_names_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(EngineError, match=f"unreachable at {url}/v1/models"):
        ServerEngine(url, "m", retries=1, connect_timeout=2)
