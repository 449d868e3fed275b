"""push_to_hub against a fake hub on 127.0.0.1 (never the real network); wandb offline."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest

from sp_prm.errors import ServiceError
from sp_prm.formatting import PrefixFormat
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig

TOKEN = "hf_fake_token_for_tests_0123456789"


class FakeHub(BaseHTTPRequestHandler):
    """The three endpoints create_repo + upload_folder use, recording what they receive."""

    requests: list = []
    files: dict = {}
    card_metadata: str = ""

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        FakeHub.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/whoami-v2":  # sp-prm's pre-flight check, before training
            self._reply({"name": "me", "auth": {"accessToken": {"role": "write"}}})
        else:
            self._reply({"error": f"unexpected {self.path}"}, 404)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeHub.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/repos/create":
            name = json.loads(body)
            self._reply({"url": f"http://127.0.0.1/{name.get('organization') or 'me'}/{name['name']}"})
        elif self.path == "/api/validate-yaml":  # the client checks the card's metadata block first
            FakeHub.card_metadata = json.loads(body)["content"]
            self._reply({"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    FakeHub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            self._reply({"commitUrl": "http://127.0.0.1/me/tiny-prm/commit/abc", "commitOid": "abc"})
        else:
            self._reply({"error": f"unexpected {self.path}"}, 404)


@pytest.fixture()
def fake_hub(monkeypatch):
    FakeHub.requests, FakeHub.files = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # conftest sets HF_HUB_OFFLINE=1 for everything else; only this fake local server is reachable.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield FakeHub
    server.shutdown()


def test_push_to_hub_uploads_model_and_card(tiny_llama_rm_dir, tmp_path, fake_hub):
    out = tmp_path / "out"
    config = SPPRMConfig(model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample", limit=8,
                         loss="orm", prefix=PrefixFormat(max_prompt_tokens=48, max_response_tokens=24), max_steps=2,
                         save_strategy="steps", save_steps=1, eval_fraction=0.3, use_cpu=True, output_dir=str(out),
                         push_to_hub=True, hub_model_id="me/tiny-prm", per_device_train_batch_size=2)
    train(config)
    paths = [p for p, _ in fake_hub.requests]
    assert paths[:2] == ["/api/whoami-v2", "/api/repos/create"] and any("/commit/main" in p for p in paths)
    assert all(auth == f"Bearer {TOKEN}" for _, auth in fake_hub.requests)
    files = fake_hub.files
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert not any(p.startswith("checkpoint-") for p in files)  # optimizer states stay local
    card = files["README.md"].decode()
    for needle in (str(tiny_llama_rm_dir), "loss: `orm`", "eval_loss", "builtin:hh-rlhf-sample", "max_prompt_tokens"):
        assert needle in card, needle
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    for path in out.rglob("*"):  # the token is never written anywhere
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def push_config(model_dir, out, **kw) -> SPPRMConfig:
    return SPPRMConfig(model_name_or_path=str(model_dir), dataset="builtin:hh-rlhf-sample", limit=8, loss="orm",
                       prefix=PrefixFormat(max_prompt_tokens=48, max_response_tokens=24), max_steps=1,
                       save_strategy="no", use_cpu=True, output_dir=str(out), push_to_hub=True,
                       hub_model_id="me/tiny-prm", per_device_train_batch_size=2, **kw)


@pytest.fixture()
def online_no_token(monkeypatch, tmp_path):
    """Hub calls allowed (towards a closed loopback port only), and no token anywhere."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def test_push_without_token_fails_before_training(tiny_llama_rm_dir, tmp_path, online_no_token):
    with pytest.raises(ServiceError, match="no hub token is set") as err:
        train(push_config(tiny_llama_rm_dir, tmp_path / "out"))
    assert "HF_TOKEN" in str(err.value) and not (tmp_path / "out").exists()  # nothing was trained or written


def test_push_to_unreachable_hub_fails_before_training(tiny_llama_rm_dir, tmp_path, online_no_token, monkeypatch,
                                                       capsys):
    from sp_prm.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    endpoint = os.environ["HF_ENDPOINT"]
    with pytest.raises(ServiceError, match=f"cannot reach the hub at {endpoint}") as err:
        train(push_config(tiny_llama_rm_dir, tmp_path / "out"))
    assert TOKEN not in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model_name_or_path", str(tiny_llama_rm_dir), "--dataset", "builtin:hh-rlhf-sample",
              "--loss", "orm", "--use_cpu", "true", "--push_to_hub", "true", "--output_dir", str(tmp_path / "cli")])
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and "cannot reach the hub" in message and TOKEN not in message


def test_read_only_token_is_refused(fake_hub, monkeypatch):
    from sp_prm.hub import check_hub

    assert check_hub() == "me"
    monkeypatch.setattr(FakeHub, "do_GET", lambda self: self._reply(
        {"name": "me", "auth": {"accessToken": {"role": "read"}}}))
    with pytest.raises(ServiceError, match="read-only"):
        check_hub()
    monkeypatch.setattr(FakeHub, "do_GET", lambda self: self._reply({"error": "Invalid token"}, 401))
    with pytest.raises(ServiceError, match=r"refused the token \(HTTP 401\)"):
        check_hub()


def test_config_serialises_for_logging_integrations(tmp_path):
    # TensorBoardCallback logs args.to_json_string(); WandbCallback logs args.to_dict()
    config = SPPRMConfig(output_dir=str(tmp_path), use_cpu=True, prefix=PrefixFormat(max_prompt_tokens=48))
    assert json.loads(config.to_json_string())["prefix"]["max_prompt_tokens"] == 48


def test_hub_token_in_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="HF_TOKEN"):
        SPPRMConfig(output_dir=str(tmp_path), use_cpu=True, hub_token="hf_secret")


@pytest.mark.slow
def test_wandb_offline(tiny_llama_rm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = SPPRMConfig(model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample", limit=6,
                         loss="orm", prefix=PrefixFormat(max_prompt_tokens=48, max_response_tokens=24), max_steps=2,
                         logging_steps=1, save_strategy="no", use_cpu=True, output_dir=str(tmp_path / "out"),
                         report_to="wandb", run_name="sp-prm-test")
    train(config)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, list(tmp_path.rglob("*"))[:20]
    history = list(runs[0].glob("*.wandb"))
    assert history and history[0].stat().st_size > 0
