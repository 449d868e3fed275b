"""The engine scorer without an engine: ids, accounting, refusals and the server protocol.

A stand-in engine classifies with the tiny HF reward model itself, and a stand-in pooling server
(stdlib ``http.server`` on 127.0.0.1) speaks vLLM's ``/v1/models``, ``/tokenize``, ``/classify``
and ``/metrics``; the real engine and server are in ``tests/test_vllm_scorer.py`` (vllm tier).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from decoding.decode import DecodeConfig, build_scorer
from decoding.policy import Policy, SamplingParams
from decoding.scorers import ClassifierScorer
from decoding.scorers.rm_engine import (
    Classified,
    EngineRewardScorer,
    ServerRewardEngine,
    checkpoint_format,
)
from decoding.search.best_of_n import best_of_n
from decoding.types import Meter, Partial
from decoding.vllm_policy import TOKENIZER_PROBE, EngineError
from sp_prm.config import build
from sp_prm.formatting import PrefixFormat
from tests.test_decoding_search import prompts


def _lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class HFEngine:
    """Classifies with a transformers RM (one uncached forward per sequence), recording what it was sent;
    reports ``cached`` tokens per sequence as the longest prefix shared with anything sent before."""

    description = "hf stand-in"

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.sent: list[list[int]] = []

    def encode_text(self, text):
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def vocab_size(self):
        return len(self.tokenizer)

    def classify(self, seqs):
        out = []
        for s in seqs:
            seen = max((_lcp(s, old) for old in self.sent), default=0)
            with torch.no_grad():
                r = float(self.model(torch.tensor([s])).logits[0, 0])
            out.append(Classified(r, len(s), min(seen, len(s) - 1)))
            self.sent.append(list(s))
        return out


def candidates(policy, k=2, n=3, tokens=8):
    res = best_of_n(policy, _Zero(), prompts(k), n, SamplingParams(), tokens, seed=1)
    P = [r.prompt for r in res for _ in r.candidates]
    R = [c.partial(policy) for r in res for c in r.candidates]
    R[0] = Partial(R[0].text, R[0].token_ids, True, [policy.stop_ids[0]], None)  # one complete: gets the end marker
    return P, R


class _Zero:
    additive, default_aggregation = False, "last"

    def __init__(self):
        self.meter = Meter()

    def score(self, prompts, partials):
        return torch.zeros(len(partials))


def test_engine_scorer_sends_the_hf_scorers_ids_and_counts_cache(tiny_llama_lm, tiny_llama_rm, smollm_tokenizer):
    policy = Policy(tiny_llama_lm, smollm_tokenizer)
    P, R = candidates(policy)
    fmt = PrefixFormat(max_prompt_tokens=64)
    hf = ClassifierScorer(tiny_llama_rm, smollm_tokenizer, fmt, cache=False)
    engine = HFEngine(tiny_llama_rm, smollm_tokenizer)
    scorer = EngineRewardScorer(engine, smollm_tokenizer, fmt, meter=Meter())
    got = scorer.score(P, R)
    assert engine.sent == [hf.sequence(p, r) for p, r in zip(P, R)]
    im_end = smollm_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert engine.sent[0].count(im_end) == engine.sent[1].count(im_end) + 1  # complete: the end marker
    assert torch.allclose(got, hf.score(P, R), atol=1e-5)
    m = scorer.meter
    total = sum(len(s) for s in engine.sent)
    assert m.total("scorer_tokens") + m.total("scorer_tokens_cached") == total
    assert m.total("scorer_tokens_cached") > 0  # the second candidate of a prompt shares its prompt
    assert m.for_group(0)["scorer_calls"] == 1 and m.for_group(1)["scorer_calls"] == 1


def test_engine_scorer_sends_identical_ids_once(tiny_llama_lm, tiny_llama_rm, smollm_tokenizer):
    """Rows with the same RM ids (the same text tokenised two ways by the policy) are one request, so their
    rewards are bit-identical and a top-k breaks their tie by slot, as on the HF token tree."""
    policy = Policy(tiny_llama_lm, smollm_tokenizer)
    P, R = candidates(policy)
    fmt = PrefixFormat(max_prompt_tokens=64)
    order = [0, 1, 0, 2, 1, 0]  # rows 2 and 5 repeat row 0, row 4 repeats row 1
    P2, R2 = [P[i] for i in order], [R[i] for i in order]

    class Noisy(HFEngine):  # an engine whose answer depends on the request's place in the batch
        def classify(self, seqs):
            return [Classified(c.reward + 1e-3 * k, c.prompt_tokens, c.cached_tokens)
                    for k, c in enumerate(super().classify(seqs))]

    engine = Noisy(tiny_llama_rm, smollm_tokenizer)
    scorer = EngineRewardScorer(engine, smollm_tokenizer, fmt, meter=Meter())
    got = scorer.score(P2, R2)
    hf = ClassifierScorer(tiny_llama_rm, smollm_tokenizer, fmt, cache=False)
    assert engine.sent == [hf.sequence(P[i], R[i]) for i in (0, 1, 2)]  # each distinct sequence once, in order
    assert got[0] == got[2] == got[5] and got[1] == got[4]
    assert torch.allclose(got[[0, 1, 3]], hf.score([P[i] for i in (0, 1, 2)], [R[i] for i in (0, 1, 2)])
                          + torch.tensor([0.0, 1e-3, 2e-3]), atol=1e-5)
    assert scorer.meter.total("scorer_tokens") + scorer.meter.total("scorer_tokens_cached") == sum(map(len, engine.sent))


def test_tokenizer_mismatch_is_refused(tiny_llama_rm, smollm_tokenizer, minilm_tokenizer):
    with pytest.raises(ValueError, match="reward model's tokenizer disagree"):
        EngineRewardScorer(HFEngine(tiny_llama_rm, minilm_tokenizer), smollm_tokenizer)


def test_checkpoint_format_refusals(tmp_path, tiny_llama_rm, tiny_bert_rm_dir, tiny_llama_lm_dir, smollm_tokenizer):
    fmt = PrefixFormat(template="plain", max_prompt_tokens=64, max_response_tokens=16)
    tiny_llama_rm.config.sp_prm = {"prefix": fmt.to_dict()}
    tiny_llama_rm.save_pretrained(tmp_path / "prm")
    assert checkpoint_format(str(tmp_path / "prm"), None) == fmt
    assert checkpoint_format(str(tmp_path / "prm"), fmt) == fmt
    with pytest.raises(ValueError, match="was trained on prefixes rendered as"):
        checkpoint_format(str(tmp_path / "prm"), PrefixFormat())
    with pytest.raises(ValueError, match="is an encoder"):
        checkpoint_format(str(tiny_bert_rm_dir), None)
    with pytest.raises(ValueError, match="not a one-output sequence classifier"):
        checkpoint_format(str(tiny_llama_lm_dir), None)


def test_config_hook():
    cfg = build(DecodeConfig, {"scorer": {"name": "rm:x", "backend": "vllm", "vllm": {"url": "http://h:1"}}})
    assert cfg.scorer.vllm.url == "http://h:1"
    with pytest.raises(ValueError, match="scorer.backend: vllm serves rm:"):
        build(DecodeConfig, {"scorer": {"name": "rear", "backend": "vllm"}})
    with pytest.raises(ValueError, match="scorer.backend must be one of"):
        build(DecodeConfig, {"scorer": {"name": "rm:x", "backend": "sglang"}})


# -- the server protocol -------------------------------------------------------------------------------------------
class FakePoolingServer:
    """vLLM's pooling endpoints as 0.32 answers them; the reward of ids is ``sum(ids) / 1000``; the hit counter
    grows by the tokens each sequence shares with earlier ones (whole 4-token blocks)."""

    def __init__(self, tokenizer, classify: bool = True, metrics: bool = True) -> None:
        self.tokenizer, self.classify, self.metrics = tokenizer, classify, metrics
        self.bodies: list[dict] = []
        self.hits = 0
        self.seen: list[list[int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, ctype="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": "prm", "root": "/ckpt/prm"}]})
                if self.path == "/metrics" and server.metrics:
                    return self._send(200, f'# TYPE x counter\nvllm:prefix_cache_hits_total{{engine="0",'
                                           f'model_name="prm"}} {float(server.hits)}\n', "text/plain")
                return self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    return self._send(200, {"tokens": server.tokenizer(body["prompt"], add_special_tokens=False)
                                            ["input_ids"]})
                if self.path == "/classify" and server.classify:
                    server.bodies.append(body)
                    data = []
                    for i, ids in enumerate(body["input"]):
                        shared = max((_lcp(ids, old) for old in server.seen), default=0)
                        server.hits += min(shared, len(ids) - 1) // 4 * 4
                        server.seen.append(ids)
                        data.append({"index": i, "label": None, "probs": [sum(ids) / 1000], "num_classes": 1})
                    return self._send(200, {"data": data, "usage": {"prompt_tokens": 0}})
                return self._send(404, {"error": f"{self.path} not served"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def fake_server(smollm_tokenizer):
    servers = []

    def make(**kw):
        s = FakePoolingServer(smollm_tokenizer, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_server_engine_sends_ids_and_splits_the_hit_counter(fake_server, tiny_llama_lm, smollm_tokenizer):
    server = fake_server()
    engine = ServerRewardEngine(server.url, "/ckpt/prm", batch=2, workers=3)  # by its root: resolved to "prm"
    assert engine.model == "prm"
    policy = Policy(tiny_llama_lm, smollm_tokenizer)
    P, R = candidates(policy)
    scorer = EngineRewardScorer(engine, smollm_tokenizer, PrefixFormat(), meter=Meter())
    hits_before = server.hits
    got = scorer.score(P, R)
    seqs = [scorer.sequence(p, r) for p, r in zip(P, R)]
    assert got.tolist() == pytest.approx([sum(s) / 1000 for s in seqs])
    bodies = server.bodies[1:]  # the first is the start-up probe
    assert [len(b["input"]) for b in bodies] == [2, 2, 2]  # batch 2: three requests
    assert sorted(map(tuple, (x for b in bodies for x in b["input"]))) == sorted(map(tuple, seqs))
    assert all(b["use_activation"] is False and b["add_special_tokens"] is False and b["model"] == "prm"
               for b in bodies)
    m = scorer.meter
    assert m.total("scorer_tokens_cached") == server.hits - hits_before > 0  # the call's hits, split exactly
    assert m.total("scorer_tokens") + m.total("scorer_tokens_cached") == sum(len(s) for s in seqs)


def test_server_refusals(fake_server, smollm_tokenizer):
    with pytest.raises(EngineError, match="does not classify.*--runner pooling"):
        ServerRewardEngine(fake_server(classify=False).url)
    with pytest.raises(EngineError, match="not 'other'.*scorer.vllm.served_model"):
        ServerRewardEngine(fake_server().url, "other")
    with pytest.raises(EngineError, match="unreachable.*fix scorer.vllm.url"):
        ServerRewardEngine("http://127.0.0.1:9", retries=1, connect_timeout=1)
    engine = ServerRewardEngine(fake_server(metrics=False).url)
    with pytest.warns(UserWarning, match="no prefix-cache counter"):
        res = engine.classify([[1, 2, 3], [1, 2, 3, 4]])
    assert [r.cached_tokens for r in res] == [None, None]
    assert engine.encode_text(TOKENIZER_PROBE) == smollm_tokenizer(TOKENIZER_PROBE, add_special_tokens=False)[
        "input_ids"]


def test_build_scorer_on_a_server(fake_server, tmp_path, tiny_llama_rm, smollm_tokenizer):
    fmt = PrefixFormat(max_prompt_tokens=64)
    tiny_llama_rm.config.sp_prm = {"prefix": fmt.to_dict()}
    tiny_llama_rm.save_pretrained(tmp_path / "prm")
    smollm_tokenizer.save_pretrained(tmp_path / "prm")
    server = fake_server()
    cfg = build(DecodeConfig, {"scorer": {"name": f"rm:{tmp_path / 'prm'}", "backend": "vllm",
                                          "vllm": {"url": server.url}}})
    scorer = build_scorer(cfg, None, Meter())
    assert isinstance(scorer, EngineRewardScorer) and scorer.format == fmt
    cfg.scorer.prefix = PrefixFormat()
    with pytest.raises(ValueError, match="was trained on prefixes rendered as"):
        build_scorer(cfg, None, Meter())
