"""SP-PRM training: loss formulas, multi-prefix equivalence, padding, split invariance, the train entry."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, TrainerCallback

from data_prep.prepare import PrepareConfig, prepare
from sp_prm.collator import GroupedShuffleSampler, PairCollator, cover
from sp_prm.formatting import PrefixFormat, encode
from sp_prm.scoring import sequence_rewards
from sp_prm.train import IncompatibleCheckpoint, train
from sp_prm.train_config import SPPRMConfig
from sp_prm.trainer import SPPRMTrainer, forward_rewards, pair_losses, pair_rewards

PREFIX = {"max_prompt_tokens": 48, "max_response_tokens": 24}


def make_config(tmp_path, **kw) -> SPPRMConfig:
    values = dict(output_dir=str(tmp_path / "out"), use_cpu=True, per_device_train_batch_size=4, learning_rate=1e-3,
                  logging_steps=1, save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0)
    values.update(kw)
    return SPPRMConfig(**values)


@pytest.fixture(scope="module")
def weighted_data(tiny_llama_rm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "weighted"
    prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=12, model_name_or_path=str(tiny_llama_rm_dir),
                          reference_model=str(tiny_llama_rm_dir), prefix=PrefixFormat(**PREFIX), output_dir=str(out),
                          weight_cap=10.0, sst_k=3))
    return out


@pytest.fixture(scope="module")
def unweighted_data(tiny_llama_rm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "unweighted"
    prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=6, model_name_or_path=str(tiny_llama_rm_dir),
                          prefix=PrefixFormat(**PREFIX), output_dir=str(out), sst_k=3))
    return out


def nested_rows(tokenizer):
    """Partial pairs of two source pairs at several cuts, complete ones included (end marker)."""
    fmt = PrefixFormat()
    rows = []
    convs = [
        ("What is the capital of France?", "The capital of France is Paris, a large city.", "I do not know, sorry."),
        ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side.", "No."),
    ]
    for k, (q, good, bad) in enumerate(convs):
        msgs = [{"role": "user", "content": q}]
        c, r = encode(tokenizer, msgs, good, fmt), encode(tokenizer, msgs, bad, fmt)
        for j, t in enumerate((2, 5, max(c.length, r.length), 3)):
            rows.append({"id": f"pair{k}", "chosen_ids": c.sequence(t), "rejected_ids": r.sequence(t),
                         "weight": 0.5 + j + k, "position": t})
    return rows


# -- formulas -------------------------------------------------------------------------------------------------
def test_pair_losses_hand_values():
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0])
    w = torch.tensor([3.0, 0.5])
    expected = [3.0 * math.log(1 + math.exp(-2.0)), 0.5 * math.log(1 + math.exp(2.0))]
    assert torch.allclose(pair_losses(chosen, rejected, w, None), torch.tensor(expected))
    unweighted = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(2.0))]
    assert torch.allclose(pair_losses(chosen, rejected, None, None), torch.tensor(unweighted))
    centred = [unweighted[0] + 0.1 * 4.0, unweighted[1] + 0.0]
    assert torch.allclose(pair_losses(chosen, rejected, None, 0.1), torch.tensor(centred))


def test_cover_nests_prefixes_and_falls_back():
    seqs, where = cover([[1, 2, 3, 4], [1, 2], [1, 5], [1, 2, 3, 4]])
    assert seqs == [[1, 2, 3, 4], [1, 5]]
    assert where == [(0, 3), (0, 1), (1, 1), (0, 3)]


def test_collator_exact_tensors():
    rows = [
        {"id": "a", "chosen_ids": [5, 6, 7], "rejected_ids": [5, 8], "weight": 2.0, "position": 1},
        {"id": "a", "chosen_ids": [5, 6], "rejected_ids": [5, 8, 9, 4], "weight": 1.0, "position": 2},
        {"id": "b", "chosen_ids": [3], "rejected_ids": [3, 1], "weight": 0.5, "position": 1},
    ]
    multi = PairCollator(pad_token_id=0, multi_prefix=True)(rows)
    # group a: [5,8,9,4] (covers [5,8]), [5,6,7] (covers [5,6]); group b: [3,1] covers [3]
    assert multi["input_ids"].tolist() == [[5, 8, 9, 4], [5, 6, 7, 0], [3, 1, 0, 0]]
    assert multi["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert multi["chosen_seq"].tolist() == [1, 1, 2] and multi["chosen_pos"].tolist() == [2, 1, 0]
    assert multi["rejected_seq"].tolist() == [0, 0, 2] and multi["rejected_pos"].tolist() == [1, 3, 1]
    assert multi["weight"].tolist() == [2.0, 1.0, 0.5]
    assert int(multi["flat_tokens"]) == 3 + 2 + 2 + 4 + 1 + 2
    flat = PairCollator(pad_token_id=0, multi_prefix=False, padding_side="left")(rows)
    assert flat["input_ids"].shape == (6, 4)
    assert flat["input_ids"][0].tolist() == [0, 5, 6, 7] and flat["chosen_pos"][0] == 3


def test_grouped_sampler_keeps_pairs_together():
    ids = ["a", "b", "a", "c", "b", "a"]
    sampler = GroupedShuffleSampler(ids, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(6))
    seen = [ids[i] for i in order]
    # each id occupies one contiguous run
    runs = [g for k, g in enumerate(seen) if k == 0 or seen[k - 1] != g]
    assert len(runs) == 3
    orders = set()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) > 1  # reshuffled per epoch
    sampler.set_epoch(0)
    assert list(GroupedShuffleSampler(ids, seed=3)) == list(sampler) == order  # deterministic


# -- multi-prefix == flat, padding safety ---------------------------------------------------------------------
def _naive_loss(model, rows, pad_id):
    """Independent reference: every prefix scored alone (batch of 1, no padding) via sp_prm.scoring."""
    total = 0.0
    for row in rows:
        rc = sequence_rewards(model, torch.tensor([row["chosen_ids"]]), torch.ones(1, len(row["chosen_ids"]), dtype=torch.long))
        rr = sequence_rewards(model, torch.tensor([row["rejected_ids"]]), torch.ones(1, len(row["rejected_ids"]), dtype=torch.long))
        total = total - row["weight"] * F.logsigmoid(rc - rr)
    return total.sum() / len(rows)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_multi_prefix_loss_and_grads_equal_flat(tiny_llama_rm, smollm_tokenizer, padding_side):
    model = tiny_llama_rm.train()
    rows = nested_rows(smollm_tokenizer)
    batch = PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=True, padding_side=padding_side)(rows)
    flat_batch = PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=False)(rows)
    assert batch["input_ids"].shape[0] < flat_batch["input_ids"].shape[0]  # prefixes really share passes
    assert int(batch["attention_mask"].sum()) < int(flat_batch["flat_tokens"])

    chosen, rejected = pair_rewards(model, batch, causal=True)
    loss = pair_losses(chosen, rejected, batch["weight"], None).mean()
    model.zero_grad()
    loss.backward()
    multi_grads = _grads(model)

    model.zero_grad()
    ref = _naive_loss(model, rows, smollm_tokenizer.pad_token_id)
    ref.backward()
    ref_grads = _grads(model)
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)
    assert multi_grads.keys() == ref_grads.keys() and len(ref_grads) > 5
    for name, g in ref_grads.items():
        assert torch.allclose(multi_grads[name], g, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_reward_read_at_last_real_token_both_padding_sides(which, tiny_llama_rm, tiny_bert_rm, smollm_tokenizer,
                                                            minilm_tokenizer):
    model, tok = (tiny_llama_rm, smollm_tokenizer) if which == "llama" else (tiny_bert_rm, minilm_tokenizer)
    msgs = [{"role": "user", "content": "Is the sky blue?"}]
    fmt = PrefixFormat()
    full = encode(tok, msgs, "Yes, on a clear day.", fmt).sequence()
    short = encode(tok, msgs, "No", fmt).sequence()
    if which == "llama":
        # End the sequence on <|im_end|> == pad id: a search for the pad id would pool too early.
        full = full[: full.index(tok.pad_token_id, len(full) - 3) + 1]
        assert full[-1] == tok.pad_token_id
    with torch.no_grad():
        alone = [float(sequence_rewards(model.eval(), torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)))
                 for s in (full, short)]
    rows = [{"id": "x", "chosen_ids": full, "rejected_ids": short, "weight": 1.0}]
    # Encoders pool the first token ([CLS]), so `sp-prm train` always right-pads them.
    for side in ("right", "left") if which == "llama" else ("right",):
        batch = PairCollator(tok.pad_token_id, multi_prefix=False, padding_side=side)(rows)
        chosen, rejected = pair_rewards(model, batch, causal=(which == "llama"))
        assert torch.allclose(torch.stack([chosen[0], rejected[0]]), torch.tensor(alone), atol=1e-5), side


# -- normalisation invariance ----------------------------------------------------------------------------------
class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step(tiny_dir, tokenizer, data, tmp_path, batch, accum, multi):
    config = make_config(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_steps=1,
                         max_grad_norm=0.0, learning_rate=0.0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    capture = GradCapture()
    trainer = SPPRMTrainer(model=model, args=config, train_dataset=data, data_collator=PairCollator(
        tokenizer.pad_token_id, multi_prefix=multi), callbacks=[capture], loss_type="weighted", group_by_pair=multi)
    trainer.train()
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
    return loss, capture.grads


@pytest.mark.parametrize("multi,splits", [(True, ((1, 5), (2, 3))), (False, ((2, 3),))])
def test_weighted_loss_split_invariant(tiny_llama_rm_dir, smollm_tokenizer, tmp_path, multi, splits):
    rows = nested_rows(smollm_tokenizer)[:5]  # 5 pairs: batch 2 x accum 3 gives unequal micro-batches (2, 2, 1)
    data = Dataset.from_list(rows)
    ref_loss, ref_grads = _one_step(tiny_llama_rm_dir, smollm_tokenizer, data, tmp_path, 5, 1, multi)
    # independent value: the weighted mean of the per-pair losses
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1)
    with torch.no_grad():
        naive = float(_naive_loss(model, rows, smollm_tokenizer.pad_token_id))
    assert ref_loss == pytest.approx(naive, rel=1e-4)
    for batch, accum in splits:
        loss, grads = _one_step(tiny_llama_rm_dir, smollm_tokenizer, data, tmp_path, batch, accum, multi)
        assert loss == pytest.approx(ref_loss, rel=1e-4), (batch, accum)
        for name, g in ref_grads.items():
            scale = float(g.abs().max()) + 1e-12  # float summation order differs between splits
            assert float((grads[name] - g).abs().max()) < 1e-5 * scale, (batch, accum, name)


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


# -- the train entry -------------------------------------------------------------------------------------------
def test_train_weighted_changes_every_parameter_and_records_prefix(tiny_llama_rm_dir, weighted_data, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset=str(weighted_data),
                         max_steps=3, eval_fraction=0.3)
    before = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1).state_dict()
    trainer = train(config)
    after = trainer.model.state_dict()
    for name, value in before.items():
        assert not torch.equal(value, after[name]), f"{name} did not change"
    logged = {k for h in trainer.state.log_history for k in h}
    for key in ("loss", "accuracy", "margin", "rewards/mean", "rewards/std", "weight/mean", "weight/max",
                "tokens_per_second", "eval_loss", "eval_accuracy", "eval_weighted_accuracy"):
        assert key in logged, key
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    card = json.loads((weighted_data / "card.json").read_text())
    assert saved["sp_prm"]["prefix"] == card["config"]["prefix"]
    assert saved["sp_prm"]["loss"] == "weighted"
    readme = (tmp_path / "out" / "README.md").read_text()
    assert str(tiny_llama_rm_dir) in readme and "Eq. 3" in readme and "eval_loss" in readme
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert torch.equal(reloaded.score.weight, trainer.model.score.weight)


def test_weighted_loss_on_unweighted_data_is_an_error(tiny_llama_rm_dir, unweighted_data, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset=str(unweighted_data))
    with pytest.raises(ValueError, match="without a reference RM.*--loss unweighted"):
        train(config)


def test_unweighted_loss_ignores_weights(tiny_llama_rm_dir, weighted_data, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset=str(weighted_data),
                         loss="unweighted", max_steps=1)
    trainer = train(config)
    assert {h.get("weight/mean") for h in trainer.state.log_history if "loss" in h} == {1.0}


def test_non_finite_loss_names_step_and_pairs(tiny_llama_rm_dir, smollm_tokenizer, tmp_path):
    rows = nested_rows(smollm_tokenizer)[:4]
    rows[2]["weight"] = float("nan")
    config = make_config(tmp_path, max_steps=1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, num_labels=1)
    trainer = SPPRMTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                           data_collator=PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=True))
    with pytest.raises(FloatingPointError, match=r"global step 0.*pair0.*weights finite: False"):
        trainer.train()


def test_orm_from_raw_source_and_resume(tiny_llama_rm_dir, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample",
                         limit=8, loss="orm", prefix=PrefixFormat(**PREFIX), max_steps=2, save_strategy="steps",
                         save_steps=2)
    first = train(config)
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    assert first.state.global_step == 2
    # restart with more steps: continues from checkpoint-2
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample",
                         limit=8, loss="orm", prefix=PrefixFormat(**PREFIX), max_steps=3, save_strategy="steps",
                         save_steps=2)
    steps = StepCounter()
    second = train(config, callbacks=[steps])
    assert second.state.global_step == 3 and steps.steps == [3]  # only the missing step ran
    # a different loss on the same output_dir is refused with a clear error
    bad = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample",
                      limit=8, loss="orm", prefix=PrefixFormat(max_prompt_tokens=32, max_response_tokens=8), max_steps=4)
    with pytest.raises(IncompatibleCheckpoint, match="prefix"):
        train(bad)


def test_orm_refuses_partial_pair_dataset(tiny_llama_rm_dir, weighted_data, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset=str(weighted_data), loss="orm")
    with pytest.raises(ValueError, match="full responses"):
        train(config)


def test_encoder_trains_on_flat_path(tiny_bert_rm_dir, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_bert_rm_dir), dataset="builtin:hh-rlhf-sample",
                         limit=6, loss="orm", prefix=PrefixFormat(template="plain", **PREFIX), max_steps=1,
                         padding_side="left")
    trainer = train(config)
    assert trainer.causal is False and trainer.data_collator.multi_prefix is False
    assert trainer.data_collator.padding_side == "right"
    with pytest.raises(ValueError, match="decoder-only"):
        train(make_config(tmp_path, model_name_or_path=str(tiny_bert_rm_dir), dataset="builtin:hh-rlhf-sample",
                          limit=6, loss="orm", prefix=PrefixFormat(template="plain", **PREFIX), multi_prefix="true",
                          resume=False))


def test_forward_rewards_matches_model_pooling(tiny_llama_rm):
    # Independent check of the score-head hook: the model's own pooled logit at the last real token.
    ids = torch.tensor([[5, 6, 7, 8]])
    per_position = forward_rewards(tiny_llama_rm, ids, torch.ones_like(ids), causal=True)
    assert torch.allclose(per_position[0, -1], tiny_llama_rm(input_ids=ids).logits[0, 0].float(), atol=1e-6)
    prefix = forward_rewards(tiny_llama_rm, ids[:, :2], torch.ones(1, 2, dtype=torch.long), causal=True)
    assert torch.allclose(per_position[0, 1], prefix[0, -1], atol=1e-5)


def test_help_lists_sp_prm_fields(capsys):
    from sp_prm.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field_name in ("--loss", "--multi_prefix", "--prefix.end_marker", "--center_rewards_coefficient", "--learning_rate"):
        assert field_name in text


def test_yaml_1_1_values_are_coerced(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 5e-6\nsave_strategy: no\nuse_cpu: true\noutput_dir: " + str(tmp_path) + "\n")
    from sp_prm.config import load_config

    config = load_config(SPPRMConfig, ["--config", str(recipe)])
    assert config.learning_rate == 5e-6 and isinstance(config.learning_rate, float)
    assert config.save_strategy.value == "no"
    with pytest.raises(ValueError, match="loss must be"):
        load_config(SPPRMConfig, ["--config", str(recipe), "--loss", "bt"])


def test_logged_metrics_hand_values(tiny_llama_rm, smollm_tokenizer, tmp_path):
    from types import SimpleNamespace

    from sp_prm.trainer import compute_pair_metrics

    trainer = SPPRMTrainer(model=tiny_llama_rm, args=make_config(tmp_path), train_dataset=Dataset.from_list(
        nested_rows(smollm_tokenizer)), data_collator=PairCollator(smollm_tokenizer.pad_token_id))
    batch = {"weight": torch.tensor([1.0, 3.0]), "attention_mask": torch.ones(3, 5, dtype=torch.long),
             "input_ids": torch.zeros(3, 5, dtype=torch.long), "flat_tokens": torch.tensor(20)}
    trainer._record(batch, torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), "train")
    trainer.log({"loss": 0.5})
    logged = trainer.state.log_history[-1]
    rewards = [2.0, 0.0, 1.0, 1.0]
    mean = sum(rewards) / 4
    assert logged["accuracy"] == 0.5 and logged["margin"] == 0.0
    assert logged["rewards/mean"] == pytest.approx(mean)
    assert logged["rewards/std"] == pytest.approx((sum((r - mean) ** 2 for r in rewards) / 4) ** 0.5)
    assert logged["weight/mean"] == 2.0 and logged["weight/max"] == 3.0
    assert logged["token_ratio_vs_flat"] == pytest.approx(15 / 20) and logged["tokens_per_second"] > 0
    preds = SimpleNamespace(predictions=[[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 2.0]],
                            label_ids=[[1.0, 5], [3.0, 7], [2.0, 40], [1.0, 300]])
    metrics = compute_pair_metrics(preds)
    assert metrics["weighted_accuracy"] == pytest.approx(3.0 / 7.0)
    assert metrics["accuracy_t1-8"] == 0.5 and metrics["accuracy_t33-128"] == 1.0
    assert metrics["accuracy_t129-max"] == 0.0 and "accuracy_t9-32" not in metrics


def test_model_trained_with_another_prefix_is_refused(tiny_llama_rm_dir, tmp_path):
    first = make_config(tmp_path, model_name_or_path=str(tiny_llama_rm_dir), dataset="builtin:hh-rlhf-sample",
                        limit=4, loss="orm", prefix=PrefixFormat(**PREFIX), max_steps=1)
    train(first)
    again = make_config(tmp_path, model_name_or_path=str(tmp_path / "out"), dataset="builtin:hh-rlhf-sample", limit=4,
                        loss="orm", prefix=PrefixFormat(end_marker=False, **PREFIX), max_steps=1,
                        output_dir=str(tmp_path / "out2"))
    with pytest.raises(IncompatibleCheckpoint, match="end_marker"):
        train(again)


def test_group_by_length_on_the_flat_path(tiny_bert_rm_dir, tmp_path):
    config = make_config(tmp_path, model_name_or_path=str(tiny_bert_rm_dir), dataset="builtin:hh-rlhf-sample",
                         limit=12, loss="orm", prefix=PrefixFormat(template="plain", **PREFIX), max_steps=2,
                         train_sampling_strategy="group_by_length")
    trainer = train(config)
    lengths = trainer.train_dataset["length"]
    ids = trainer.train_dataset
    assert lengths == [max(len(c), len(r)) for c, r in zip(ids["chosen_ids"], ids["rejected_ids"])]
    assert type(trainer._get_train_sampler()).__name__ == "LengthGroupedSampler"
