"""The trainer is TRL's: RewardConfig fields with their TRL meaning, a plain TRL reward dataset as an ORM.

Runs on whichever TRL is importable; the lower bound of the supported range is checked with
``pip install --target /tmp/trl-old trl==1.0.0 --no-deps`` and
``PYTHONPATH=/tmp/trl-old:. python -m pytest tests/test_train_trl.py`` (see README, "TRL").
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

from data_prep.loaders import BUILTIN_SOURCES, split_hh_pair
from sp_prm.collator import PairCollator
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.scoring import sequence_rewards
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig, help_text
from sp_prm.trainer import SPPRMTrainer
from tests.test_train import make_config, nested_rows

PREFIX = PrefixFormat(max_prompt_tokens=48, max_response_tokens=24)


def test_config_and_trainer_are_trl_classes():
    assert issubclass(SPPRMConfig, RewardConfig) and issubclass(SPPRMTrainer, RewardTrainer)
    text = help_text()
    trl_part = text.split("trl.RewardConfig options:")[1].split("transformers.TrainingArguments options:")[0]
    for name in ("--center_rewards_coefficient", "--disable_dropout", "--model_init_kwargs", "--pad_to_multiple_of",
                 "--dataset_num_proc"):
        assert name in trl_part, name
    # our changed defaults are listed with ours, under their TRL name
    own = text.split("trl.RewardConfig options:")[0]
    assert "--max_length (default: None)" in own and "--bf16 (default: False)" in own


def _trl_rows(n: int) -> tuple[list[dict], list[dict]]:
    """Real HH rows in TRL's two conversational reward formats (implicit and explicit prompt)."""
    raw = [json.loads(line) for line in gzip.open(BUILTIN_SOURCES["builtin:hh-rlhf-sample"], "rt")]
    implicit, explicit = [], []
    for row in raw:
        try:
            prompt, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
        except ValueError:
            continue
        if not chosen or not rejected or chosen == rejected:
            continue
        implicit.append({"chosen": [*prompt, {"role": "assistant", "content": chosen}],
                         "rejected": [*prompt, {"role": "assistant", "content": rejected}]})
        explicit.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        if len(implicit) == n:
            break
    return implicit, explicit


@pytest.mark.parametrize("style", ["implicit", "explicit"])
def test_plain_trl_reward_dataset_trains_as_orm(tiny_llama_rm_dir, smollm_tokenizer, tmp_path, style):
    implicit, explicit = _trl_rows(6)
    rows = implicit if style == "implicit" else explicit
    path = tmp_path / "trl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset=str(path), loss="orm",
                         prefix=PREFIX, max_steps=2, per_device_train_batch_size=3)
    trainer = train(config)
    assert trainer.state.global_step == 2 and len(trainer.train_dataset) == 6
    # each row was rendered through the prefix format: the ids are those of encode() on the same conversation
    first = implicit[0]
    c = encode(smollm_tokenizer, first["chosen"][:-1], first["chosen"][-1]["content"], PREFIX)
    assert c.sequence(None, PREFIX.end_marker) in trainer.train_dataset["chosen_ids"]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["weight/mean"] == 1.0 for h in logged)


def test_center_rewards_coefficient_is_trls_field(tiny_llama_rm_dir, smollm_tokenizer, tmp_path):
    rows = nested_rows(smollm_tokenizer)[:4]
    coef = 0.5
    config = make_config(tmp_path, center_rewards_coefficient=coef, max_steps=1, learning_rate=0.0,
                         max_grad_norm=0.0, per_device_train_batch_size=4)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1)
    trainer = SPPRMTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                           data_collator=PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=True),
                           group_by_pair=True)
    assert trainer.center_rewards_coefficient == coef
    trainer.train()
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1)
    total = 0.0
    with torch.no_grad():
        for row in rows:  # independent: every side scored alone
            rc, rr = (sequence_rewards(fresh, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                      for ids in (row["chosen_ids"], row["rejected_ids"]))
            total += float(-row["weight"] * F.logsigmoid(rc - rr) + coef * (rc + rr) ** 2)
    assert loss == pytest.approx(total / len(rows), rel=1e-4)


def test_max_length_and_dropout_keep_trl_meaning(tiny_llama_rm_dir, tiny_bert_rm_dir, smollm_tokenizer, tmp_path):
    rows = nested_rows(smollm_tokenizer)
    longest = max(max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows)
    cut = longest - 1
    config = make_config(tmp_path, max_length=cut, max_steps=1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1)
    trainer = SPPRMTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                           data_collator=PairCollator(smollm_tokenizer.pad_token_id))
    kept = trainer.train_dataset
    expected = sum(max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= cut for r in rows)
    assert 0 < len(kept) == expected < len(rows)  # TRL drops pairs with a side longer than max_length
    # disable_dropout (TRL's default True) zeroes every dropout module; False leaves them
    for disable in (True, False):
        bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_rm_dir, num_labels=1, hidden_dropout_prob=0.2)
        before = [m.p for m in bert.modules() if isinstance(m, torch.nn.Dropout)]
        assert before and max(before) > 0
        SPPRMTrainer(model=bert, args=make_config(tmp_path, disable_dropout=disable), train_dataset=Dataset.from_list(
            rows), data_collator=PairCollator(smollm_tokenizer.pad_token_id))
        after = [m.p for m in bert.modules() if isinstance(m, torch.nn.Dropout)]
        assert after == ([0.0] * len(before) if disable else before)
    # default (ours): no filter, every pair kept
    assert len(SPPRMTrainer(model=model, args=make_config(tmp_path), train_dataset=Dataset.from_list(rows),
                            data_collator=PairCollator(smollm_tokenizer.pad_token_id)).train_dataset) == len(rows)


def test_pad_to_multiple_of_changes_no_reward(tiny_llama_rm, smollm_tokenizer):
    from sp_prm.trainer import pair_rewards

    rows = nested_rows(smollm_tokenizer)
    plain = PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=True)(rows)
    padded = PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=True, pad_to_multiple_of=16)(rows)
    assert padded["input_ids"].shape[1] % 16 == 0 and padded["input_ids"].shape[1] >= plain["input_ids"].shape[1]
    with torch.no_grad():
        a, b = pair_rewards(tiny_llama_rm.eval(), plain, True), pair_rewards(tiny_llama_rm, padded, True)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
