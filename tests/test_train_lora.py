"""LoRA training (score head trained and saved via modules_to_save) and `sp-prm merge`."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForSequenceClassification

from sp_prm.collator import PairCollator
from sp_prm.formatting import PrefixFormat
from sp_prm.merge import main as merge_main
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig
from sp_prm.trainer import pair_rewards


def test_lora_train_then_merge_gives_the_same_rewards(tiny_llama_rm_dir, smollm_tokenizer, tmp_path):
    out = tmp_path / "lora"
    config = SPPRMConfig(model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample", limit=6,
                         loss="orm", prefix=PrefixFormat(max_prompt_tokens=48, max_response_tokens=24), use_peft=True,
                         lora_r=4, lora_alpha=8, lora_dropout=0.0, max_steps=2, learning_rate=5e-2, use_cpu=True,
                         output_dir=str(out), save_strategy="no", per_device_train_batch_size=3)
    trainer = train(config)
    peft_model = trainer.model.eval()
    assert (out / "adapter_config.json").exists()
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert "score" in adapter_cfg["modules_to_save"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1)
    trained_head = peft_model.base_model.model.score.modules_to_save["default"].weight
    assert not torch.equal(trained_head, base.score.weight)  # the head was trained, not frozen

    merge_main(["--adapter", str(out), "--output_dir", str(tmp_path / "merged")])
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.config.sp_prm["loss"] == "orm"
    rows = [{"id": "a", "chosen_ids": [1, 2, 3, 4, 5, 6], "rejected_ids": [1, 2, 9, 9], "weight": 1.0},
            {"id": "b", "chosen_ids": [7, 8, 9, 10], "rejected_ids": [7, 11], "weight": 1.0}]
    batch = PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=False)(rows)
    with torch.no_grad():
        want = torch.cat(pair_rewards(peft_model, batch, causal=True))
        got = torch.cat(pair_rewards(merged, batch, causal=True))
        before = torch.cat(pair_rewards(base.eval(), batch, causal=True))
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert not torch.allclose(before, want, atol=1e-3)  # training changed the rewards
