"""Writes that are safe under kills and concurrency: the prepare lock, staging folders removed on failure,
the staged final save of `train`, and recipes that save checkpoints. Killed and concurrent runs are real
subprocesses, each bounded in time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from data_prep.prepare import PrepareConfig, prepare
from sp_prm.errors import InputError, OutputExistsError
from sp_prm.staging import lock_path, output_lock, publish_files
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig

REPO = Path(__file__).resolve().parents[1]
PREFIX = {"max_prompt_tokens": 48, "max_response_tokens": 24}


def start(script: str, tmp_path: Path) -> subprocess.Popen:
    """A python subprocess running ``script`` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, seconds: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + seconds
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the subprocess ended early:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.1)


def prepare_script(model_dir: Path, out: Path, hook: str) -> str:
    """A `prepare` of 6 pairs in 3 chunks; ``hook`` runs at the start of every chunk (``k``: its number)."""
    return f"""
        import data_prep.prepare as P
        original, calls = P.Preparer.process, []
        def process(self, pairs):
            k = len(calls); calls.append(k)
            {hook}
            return original(self, pairs)
        P.Preparer.process = process
        P.main(["--source", "builtin:hh-rlhf-sample", "--limit", "6", "--chunk_size", "2",
                "--model_name_or_path", "{model_dir}", "--output_dir", "{out}", "--sst_k", "2",
                "--prefix", '{json.dumps(PREFIX)}'])
    """


def test_lock_is_exclusive_and_released(tmp_path):
    target = tmp_path / "out"
    with output_lock(target, "prepare"):
        assert lock_path(target).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputExistsError, match=rf"being written by another `sp-prm prepare` \(pid {os.getpid()}"):
            with output_lock(target, "prepare"):
                pass
    assert not lock_path(target).exists()
    with output_lock(target, "prepare"):  # free again
        pass


def test_concurrent_prepare_fails_at_once(tiny_llama_rm_dir, tmp_path, capsys):
    from sp_prm.cli import main

    out = tmp_path / "prep"
    first = start(prepare_script(tiny_llama_rm_dir, out, "import time; time.sleep(4 if k == 0 else 0)"), tmp_path)
    try:
        wait_for(lambda: lock_path(out).exists() and lock_path(out).read_text().strip(), 120, first)
        began = time.time()
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", "--source", "builtin:hh-rlhf-sample", "--limit", "6", "--chunk_size", "2",
                  "--model_name_or_path", str(tiny_llama_rm_dir), "--output_dir", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and time.time() - began < 10
        assert f"{out} is being written by another `sp-prm prepare` (pid {first.pid}" in err
        assert first.wait(timeout=180) == 0, first.stdout.read()
    finally:
        first.kill()
    card = json.loads((out / "card.json").read_text())  # the first run finished undisturbed
    assert card["counts"]["pairs_used"] == 6 and not lock_path(out).exists()


def test_killed_prepare_leaves_no_stale_lock_and_resumes(tiny_llama_rm_dir, tmp_path):
    out = tmp_path / "prep"
    killed = start(prepare_script(tiny_llama_rm_dir, out, "import os, signal\n"
                                  "            if k == 1: os.kill(os.getpid(), signal.SIGKILL)"), tmp_path)
    assert killed.wait(timeout=180) == -9
    assert lock_path(out).exists() and not out.exists()  # the lock file stays, its lock died with the process
    cfg = PrepareConfig(source="builtin:hh-rlhf-sample", limit=6, chunk_size=2, sst_k=2,
                        model_name_or_path=str(tiny_llama_rm_dir), output_dir=str(out), prefix=PREFIX)
    prepare(cfg)
    assert json.loads((out / "card.json").read_text())["counts"]["pairs_used"] == 6
    assert not list(tmp_path.glob(".prep.*"))  # neither staging nor lock left behind


def test_failed_prepare_removes_its_staging_folder(tiny_llama_rm_dir, tiny_llama_lm_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    with pytest.raises(InputError, match="no usable preference pairs"):
        prepare(PrepareConfig(source=str(empty), model_name_or_path=str(tiny_llama_rm_dir),
                              output_dir=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="not a trained reward model"):  # fails while loading the reference
        prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=4, model_name_or_path=str(tiny_llama_rm_dir),
                              reference_model=str(tiny_llama_lm_dir), output_dir=str(tmp_path / "b")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def train_script(model_dir: Path, out: Path, hook: str) -> str:
    return f"""
        import sp_prm.trainer as T
        def _save(self, output_dir=None, state_dict=None):
            {hook}
        T.SPPRMTrainer._save = _save
        from sp_prm.train import main
        main(["--model_name_or_path", "{model_dir}", "--dataset", "builtin:hh-rlhf-sample", "--loss", "orm",
              "--limit", "8", "--max_steps", "1", "--save_strategy", "no", "--use_cpu", "true",
              "--per_device_train_batch_size", "4", "--report_to", "none", "--dataloader_num_workers", "0",
              "--output_dir", "{out}", "--prefix", '{json.dumps(PREFIX)}'])
    """


def test_train_killed_during_final_save_leaves_no_half_model(tiny_llama_rm_dir, tmp_path):
    out = tmp_path / "orm"
    # the save writes part of the weights, then the process is killed
    hook = ("import os, signal, pathlib\n"
            "            pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
            "            (pathlib.Path(output_dir) / 'model.safetensors').write_bytes(b'half')\n"
            "            os.kill(os.getpid(), signal.SIGKILL)")
    killed = start(train_script(tiny_llama_rm_dir, out, hook), tmp_path)
    assert killed.wait(timeout=300) == -9, killed.stdout.read()
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    # a rerun publishes the whole model and removes the staging folder
    train(SPPRMConfig(model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample", loss="orm",
                      limit=8, max_steps=1, save_strategy="no", use_cpu=True, per_device_train_batch_size=4,
                      report_to="none", dataloader_num_workers=0, output_dir=str(out), prefix=PREFIX))
    assert (out / "config.json").exists() and (out / "model.safetensors").stat().st_size > 1000
    assert (out / "README.md").exists() and not (out / ".final-model.partial").exists()


def test_publish_moves_markers_last(tmp_path, monkeypatch):
    staging, target = tmp_path / "s", tmp_path / "t"
    staging.mkdir()
    target.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (staging / name).write_text("new " + name)
    (target / "config.json").write_text("old")
    (target / "checkpoint-1").mkdir()
    order = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(Path(b).name), real(a, b)))
    publish_files(staging, target)
    assert order[-1] == "config.json" and set(order) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert (target / "config.json").read_text() == "new config.json" and (target / "checkpoint-1").is_dir()
    assert not staging.exists()


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*/train_*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_train_recipes_save_checkpoints(recipe):
    values = yaml.safe_load(recipe.read_text())
    default = next(f.default for f in dataclasses.fields(SPPRMConfig) if f.name == "save_strategy")
    assert values.get("save_strategy", default) not in ("no", False)  # YAML 1.1 reads a bare no as False
