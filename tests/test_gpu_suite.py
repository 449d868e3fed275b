"""The GPU suite in --smoke mode on a CPU (so it never rots), its cap, its FLOP count; ZeRO-3 part separately."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_suite():
    if "gpu_suite" in sys.modules:
        return sys.modules["gpu_suite"]
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_suite_measures_every_part_and_writes_json_and_table(tmp_path):
    suite = load_suite()
    suite.main(["--smoke", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    table = (tmp_path / "gpu_suite.md").read_text()
    assert not list(tmp_path.glob(".*partial"))  # staged files were moved into place
    shapes = suite.SMOKE

    train = report["train"]
    for name in ("trl_partial", "sp_prm_partial", "trl_full", "sp_prm_full"):
        run = train[name]
        assert run["steps"] == shapes.timed_steps and run["pairs_per_s"] > 0 and run["tokens_per_s"] > 0, name
        assert run["mfu"] is None  # no peak on a CPU: never a made-up MFU
        assert run["checkpointing"] is False, name  # both trainers without activation checkpointing
    # pairs counted from the timed batches: TRL's are full batches of its batch size
    assert train["trl_partial"]["pairs"] == shapes.trl_batch * shapes.timed_steps
    # multi-prefix packs a pair's prefixes into its longest sequences: fewer real tokens per partial pair than TRL
    per_pair = {k: train[k]["real_tokens"] / train[k]["pairs"] for k in ("sp_prm_partial", "trl_partial")}
    assert per_pair["sp_prm_partial"] < per_pair["trl_partial"]
    assert train["ratio_partial_pairs_per_s"] == pytest.approx(
        train["sp_prm_partial"]["pairs_per_s"] / train["trl_partial"]["pairs_per_s"], rel=0.01)

    assert "skipped" in report["zero3"] and "--zero3" in report["zero3"]["skipped"]

    rows = {(r["what"], r["prompts"]): r for r in report["decode"]["rows"]}
    many = shapes.many_prompts
    for what in ("hf_greedy_dynamic", "hf_greedy_static", "args", "cbs", "bon_rm", "bon_rear", "bon_plain"):
        for n in (1, many):
            row = rows[(what, n)]
            assert row["tok_per_s"] > 0 and "x_hf_greedy" in row, (what, n)
    assert rows[("hf_greedy_dynamic", many)]["tokens"] == many * shapes.new_tokens
    assert rows[("args", 1)]["tokens"] <= shapes.new_tokens
    # Best-of-N samples N candidates per prompt; CBS W x K successors per round
    assert rows[("bon_plain", many)]["sampled_tokens"] <= many * shapes.bon_n * shapes.new_tokens
    assert rows[("bon_plain", many)]["sampled_tokens"] > rows[("bon_plain", many)]["tokens"]
    assert report["decode"]["prompt_tokens"] == shapes.prompt_tokens
    goals = report["decode"]["goals"]
    assert all(v is not None for v in goals.values()), goals

    env = report["env"]
    assert {"trl", "datasets", "deepspeed"} <= set(env["bare_machine_lacks"])
    assert env["packages"]["transformers"]["version"]
    assert "| run | batch (pairs) |" in table and "| search | prompts |" in table and "make-wheels.sh" in table


def test_part_cap_interrupts_a_part():
    suite = load_suite()
    start = time.perf_counter()
    with pytest.raises(suite.PartTimeout), suite.cap(0.2) as left:
        assert left() > 0
        time.sleep(5)
    assert time.perf_counter() - start < 2


def test_mfu_counts_non_embedding_parameters(smollm_tokenizer):
    suite = load_suite()
    model = suite.build("rm", suite.rm_config(suite.SMOKE, smollm_tokenizer), "cpu")
    h, total = model.config.hidden_size, sum(p.numel() for p in model.parameters())
    assert suite.non_embedding_params(model) == total - model.config.vocab_size * h
    clock = suite.StepClock(warm=1)
    clock.start, clock.end = 10.0, 12.0
    clock.batch_tokens, clock.batch_pairs = [999, 100, 300], [9, 4, 4]
    fig = clock.figures(2, n_params=1000, peak=1e6)
    assert fig["pairs"] == 8 and fig["real_tokens"] == 400
    assert fig["mfu"] == pytest.approx(6 * 1000 * 400 / 2.0 / 1e6, abs=1e-3)


@pytest.mark.distributed
def test_zero3_part_saves_and_reloads_equal_rewards(tmp_path):
    suite = load_suite()
    report = suite.main(["--smoke", "--parts", "zero3", "--zero3", "--out", str(tmp_path)])
    z = report["zero3"]
    assert z.get("rewards_equal") is True, z
    assert "model.safetensors" in z["saved_files"] and z["backend"] == "gloo"
