"""LLM-as-judge against a small OpenAI-compatible server on 127.0.0.1 started by each test.

The server answers at most ``max_requests`` requests and stops by itself after a few
seconds either way, so a failing test never leaves it running.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from decoding.metrics import judge as J

KEY = "sk-test-not-a-real-key-123"


class FakeEndpoint:
    """``POST /v1/chat/completions``; ``responder(body, hit) -> (status, content or payload, headers)``."""

    def __init__(self, responder: Callable[[dict, int], tuple], max_requests: int = 40, lifetime: float = 15.0):
        self.responder, self.hits, self.lock = responder, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.hits.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    hit = len(outer.hits) - 1
                status, content, headers = outer.responder(body, hit)
                payload = content if isinstance(content, (dict, bytes)) else {
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.1
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        deadline = time.monotonic() + lifetime

        def serve():
            while len(self.hits) < max_requests and time.monotonic() < deadline and not self.stopped:
                self.server.handle_request()
            self.server.server_close()

        self.stopped = False
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopped = True
        self.thread.join(timeout=2)


@pytest.fixture()
def endpoint(monkeypatch):
    started = []

    def start(responder, **kw):
        ep = FakeEndpoint(responder, **kw)
        started.append(ep)
        monkeypatch.setenv("SP_PRM_JUDGE_BASE_URL", ep.url)
        monkeypatch.setenv("SP_PRM_JUDGE_API_KEY", KEY)
        monkeypatch.setenv("SP_PRM_JUDGE_MODEL", "fake-judge")
        return ep

    yield start
    for ep in started:
        ep.stop()


def prefers_good(body: dict, hit: int) -> tuple:
    """A fair judge: picks the answer containing GOOD; the same (-1) when both or neither do."""
    user = body["messages"][1]["content"]
    a = re.search(r"\(A\) (.*?)\n\n\(B\)", user, re.S).group(1)
    b = re.search(r"\(B\) (.*?)\n\nPlease choose", user, re.S).group(1)
    verdict = -1 if ("GOOD" in a) == ("GOOD" in b) else (1 if "GOOD" in a else 2)
    return 200, json.dumps({"Explanation": "because", "Verdict": verdict}), {}


def client(tmp_path, **kw) -> J.JudgeClient:
    return J.JudgeClient(cache_dir=tmp_path / "cache", backoff=0.01, timeout=5, **kw)


def test_pairwise_both_orders_and_cache(endpoint, tmp_path):
    ep = endpoint(prefers_good)
    prompts = ["Q1", [{"role": "user", "content": "Q2"}], "\n\nHuman: Q3"]
    run, base = ["GOOD answer", "meh", "same"], ["meh", "GOOD answer", "same"]
    c = client(tmp_path)
    out = J.judge_pairwise(c, prompts, run, base, concurrency=2)
    assert [o["outcome"] for o in out] == ["win", "lose", "tie"]
    assert out[0]["verdicts"] == [1, 2]  # run as A wins, then run as B wins
    # 6 judgements, 5 requests: the tie's two orders are the same request (equal answers), sent once.
    assert len(ep.hits) == 5 and c.requests == 5
    hit = ep.hits[0]
    assert hit["path"] == "/v1/chat/completions" and hit["auth"] == f"Bearer {KEY}"
    assert hit["body"]["model"] == "fake-judge" and hit["body"]["temperature"] == 0.0
    users = [h["body"]["messages"][1]["content"] for h in ep.hits]
    assert any("Human: Q2\n\nOptions" in u for u in users) and any("\n\nHuman: Q3" not in u for u in users)
    assert all(h["body"]["messages"][0]["content"] == J.HH_SYSTEM for h in ep.hits)

    again = client(tmp_path)  # a rerun: every verdict comes from the cache
    assert J.judge_pairwise(again, prompts, run, base) == out
    assert len(ep.hits) == 5 and again.requests == 0 and again.cache_hits == 5
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert KEY not in cached and KEY not in repr(again)


def test_position_bias_becomes_tie(endpoint, tmp_path):
    endpoint(lambda body, hit: (200, '{"Explanation": "first is best", "Verdict": 1}', {}))
    out = J.judge_pairwise(client(tmp_path), ["Q"], ["x"], ["y"])
    assert out[0] == {"verdicts": [1, 1], "outcome": "tie"}
    assert J.pairwise_outcome(1, -1) == "win" and J.pairwise_outcome(-1, 1) == "lose"
    assert J.pairwise_outcome(2, 1) == "lose" and J.pairwise_outcome(None, 1) is None


def test_retries_with_backoff_then_success(endpoint, tmp_path):
    def flaky(body, hit):
        if hit == 0:
            return 500, {"error": "boom"}, {}
        if hit == 1:
            return 429, {"error": "slow down"}, {"Retry-After": "0"}
        if hit == 2:
            return 200, b"not json", {}
        return 200, '{"Verdict": 2}', {}

    ep = endpoint(flaky)
    c = client(tmp_path, max_retries=3)
    assert c.complete([{"role": "user", "content": "x"}]) == '{"Verdict": 2}'
    assert len(ep.hits) == 4 and c.requests == 4


def test_gives_up_after_retries_and_never_shows_the_key(endpoint, tmp_path):
    ep = endpoint(lambda body, hit: (503, {"error": "down"}, {}))
    with pytest.raises(J.JudgeRequestError, match="after 3 attempts.*HTTP 503") as err:
        client(tmp_path, max_retries=2).complete([{"role": "user", "content": "x"}])
    assert len(ep.hits) == 3 and KEY not in str(err.value)


def test_client_error_is_not_retried(endpoint, tmp_path):
    ep = endpoint(lambda body, hit: (401, {"error": "invalid api key"}, {}))
    with pytest.raises(J.JudgeRequestError, match="HTTP 401") as err:
        client(tmp_path).complete([{"role": "user", "content": "x"}])
    assert len(ep.hits) == 1 and KEY not in str(err.value)


def test_unreachable_endpoint(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = J.JudgeClient(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(J.JudgeRequestError, match="cannot reach"):
        c.complete([{"role": "user", "content": "x"}])


def test_max_requests_guard(endpoint, tmp_path):
    endpoint(prefers_good)
    with pytest.raises(J.JudgeRequestError, match="max_requests=1"):
        J.judge_pairwise(client(tmp_path, max_requests=1), ["Q"], ["a"], ["b"])


def test_unparseable_answer(endpoint, tmp_path):
    ep = endpoint(lambda body, hit: (200, "I think the first one is nicer.", {}))
    with pytest.raises(J.JudgeParseError, match="first one is nicer"):
        J.judge_pairwise(client(tmp_path), ["Q"], ["a"], ["b"])
    skipped = J.judge_pairwise(client(tmp_path), ["Q"], ["a"], ["b"], on_unparseable="skip")
    assert skipped == [{"verdicts": [None, None], "outcome": None}]
    assert len(ep.hits) == 2  # the unparseable answers were cached too: the second call sent nothing


def test_parse_verdict_forms():
    allowed = J.PAIRWISE_VERDICTS
    assert J.parse_verdict('{"Explanation":"x", "Verdict":2}', allowed) == 2
    assert J.parse_verdict('```json\n{"explanation": "x", "verdict": -1}\n```', allowed) == -1
    assert J.parse_verdict('Sure! {"Explanation": "A {is} better", "Verdict": "1"} done', allowed) == 1
    assert J.parse_verdict("Explanation: ... so my verdict: 2", allowed) == 2
    assert J.parse_verdict('{"Verdict": 0}', J.GSM8K_VERDICTS) == 0
    for bad in ('{"Verdict": 3}', '{"Verdict": 1.5}', "no idea", ""):
        with pytest.raises(J.JudgeParseError):
            J.parse_verdict(bad, allowed)


def test_gsm8k_judge(endpoint, tmp_path):
    def grader(body, hit):
        user = body["messages"][1]["content"]
        return 200, json.dumps({"Explanation": "checked", "Verdict": int("#### 18" in user)}), {}

    ep = endpoint(grader)
    out = J.judge_gsm8k(client(tmp_path), ["Janet's ducks?", "Janet's ducks?"], ["9*2=18\n#### 18", "#### 17"])
    assert out == [1, 0]
    user = ep.hits[0]["body"]["messages"][1]["content"]
    assert user.startswith("Evaluate the correctness") and "Problem: Janet's ducks?" in user
    assert ep.hits[0]["body"]["messages"][0]["content"] == J.GSM8K_SYSTEM


def test_templates_match_the_paper():
    msgs = J.pairwise_messages("Hi", "ans A", "ans B")
    assert msgs[1]["content"].startswith("Consider the following conversation between a human and an assistant:\n\nHuman: Hi")
    assert "(A) ans A\n\n(B) ans B" in msgs[1]["content"]
    assert msgs[1]["content"].endswith('{"Explanation":"<YOUR EXPLANATION>", "Verdict":<OUTPUT>}')
    assert J.render_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == (
        "Human: a\n\nAssistant: b")


def test_missing_model_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SP_PRM_JUDGE_MODEL", raising=False)
    with pytest.raises(ValueError, match="SP_PRM_JUDGE_MODEL"):
        J.JudgeClient()
