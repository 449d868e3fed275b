"""The CPU recipes on the real pretrained backbones (slow: they load the models shipped in PyPI wheels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.prepare import PrepareConfig, prepare
from sp_prm.config import load_config
from sp_prm.formatting import PrefixFormat
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "hh-rlhf"


@pytest.mark.slow
def test_minilm_orm_recipe_then_sp_prm(tmp_path):
    orm = load_config(SPPRMConfig, ["--config", str(RECIPES / "train_orm_minilm.yaml"), "--limit", "24",
                                    "--max_steps", "2", "--eval_fraction", "0.2", "--output_dir", str(tmp_path / "orm")])
    trainer = train(orm)
    assert trainer.causal is False and (tmp_path / "orm" / "model.safetensors").exists()
    data = tmp_path / "sst"
    prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=12, model_name_or_path="builtin:all-minilm-l6-v2",
                          reference_model=str(tmp_path / "orm"), output_dir=str(data),
                          prefix=PrefixFormat(template="plain", max_prompt_tokens=192, max_response_tokens=64)))
    sp = load_config(SPPRMConfig, ["--config", str(RECIPES / "train_sst_minilm.yaml"), "--dataset", str(data),
                                   "--max_steps", "2", "--logging_steps", "1", "--eval_fraction", "0",
                                   "--output_dir", str(tmp_path / "prm")])
    trainer = train(sp)
    assert trainer.state.global_step == 2
    assert any("weight/mean" in h for h in trainer.state.log_history)


@pytest.mark.slow
def test_smollm2_recipe_uses_multi_prefix(tmp_path):
    data = tmp_path / "sst"
    prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=6, model_name_or_path="builtin:smollm2-135m-instruct",
                          reference_model="builtin:smollm2-135m-instruct", allow_untrained_head=True, output_dir=str(data),
                          weight_cap=100.0,
                          prefix=PrefixFormat(template="plain", max_prompt_tokens=96, max_response_tokens=48)))
    config = load_config(SPPRMConfig, ["--config", str(RECIPES / "train_sst_smollm2.yaml"), "--dataset", str(data),
                                       "--max_steps", "2", "--logging_steps", "1", "--eval_fraction", "0",
                                       "--output_dir", str(tmp_path / "prm")])
    trainer = train(config)
    assert trainer.causal and trainer.data_collator.multi_prefix
    ratios = [h["token_ratio_vs_flat"] for h in trainer.state.log_history if "token_ratio_vs_flat" in h]
    assert ratios and min(ratios) < 1.0  # prefixes shared forward passes
