"""Coherence with SimCSE checkpoints pooled as SimCSE evaluates them, on tiny BERTs built in-process, and the
warning when the coherence embedder is the backbone of a guide or judge of the same run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from decoding.metrics.coherence import Embedder, coherence, model_identities, shared_backbones, simcse_pooling
from decoding.metrics.run import MetricsConfig, compute, guides_and_judges
from sp_prm.config import build

TEXTS = ["Write a poem about rain.", "Rain falls softly on the roof, a gentle tapping song."]


def tiny_bert(folder, tokenizer, pooler: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    model = BertModel(config, add_pooling_layer=pooler).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def reference_states(model, tokenizer, texts):
    """Independent: one text at a time (no padding), hidden states of the raw model."""
    out = []
    for t in texts:
        batch = tokenizer([t], return_tensors="pt")
        with torch.no_grad():
            out.append(model(**batch).last_hidden_state[0])
    return out


def test_simcse_rule_by_name():
    assert simcse_pooling("princeton-nlp/sup-simcse-bert-base-uncased") == "pooler"
    assert simcse_pooling("princeton-nlp/unsup-simcse-roberta-large") == "cls"
    assert simcse_pooling("/models/my-encoder", {"_name_or_path": "princeton-nlp/sup-simcse-roberta-base"}) == "pooler"
    assert simcse_pooling("sentence-transformers/all-MiniLM-L6-v2") is None


def test_sup_pooler_output_and_unsup_cls_by_hand(tmp_path, minilm_tokenizer):
    sup = tiny_bert(tmp_path / "sup-simcse-tiny-bert", minilm_tokenizer, seed=1)
    unsup = tiny_bert(tmp_path / "unsup-simcse-tiny-bert", minilm_tokenizer, seed=2)
    e_sup = Embedder(str(tmp_path / "sup-simcse-tiny-bert"), device="cpu")
    e_unsup = Embedder(str(tmp_path / "unsup-simcse-tiny-bert"), device="cpu")
    assert (e_sup.pooling, e_unsup.pooling) == ("pooler", "cls")
    # supervised: the pooler MLP over [CLS], tanh(W h_cls + b), computed here from the weights
    w, b = sup.pooler.dense.weight.detach(), sup.pooler.dense.bias.detach()
    want = torch.stack([torch.tanh(h[0] @ w.T + b) for h in reference_states(sup, minilm_tokenizer, TEXTS)])
    assert torch.allclose(e_sup.encode(TEXTS), want, atol=1e-5)
    # unsupervised: the [CLS] vector before the pooler
    want_u = torch.stack([h[0] for h in reference_states(unsup, minilm_tokenizer, TEXTS)])
    assert torch.allclose(e_unsup.encode(TEXTS), want_u, atol=1e-5)
    # coherence is their cosine: a . b / (|a| |b|)
    a, bb = want[0], want[1]
    assert coherence([TEXTS[0]], [TEXTS[1]], e_sup)[0] == pytest.approx(float(a @ bb / (a.norm() * bb.norm())), abs=1e-5)
    # an explicit pooling overrides the name's rule
    mean = Embedder(str(tmp_path / "sup-simcse-tiny-bert"), pooling="mean", device="cpu")
    want_m = torch.stack([h.mean(0) for h in reference_states(sup, minilm_tokenizer, TEXTS)])
    assert mean.pooling == "mean" and torch.allclose(mean.encode(TEXTS), want_m, atol=1e-5)
    assert Embedder(str(tmp_path / "unsup-simcse-tiny-bert"), pooling="pooler", device="cpu").pooling == "pooler"
    # a checkpoint without trained pooler weights is refused, not pooled by a random layer
    tiny_bert(tmp_path / "sup-simcse-nopool", minilm_tokenizer, pooler=False)
    with pytest.raises(ValueError, match="no trained pooler weights"):
        Embedder(str(tmp_path / "sup-simcse-nopool"), device="cpu")
    assert Embedder(str(tmp_path / "sup-simcse-nopool"), pooling="cls", device="cpu").pooling == "cls"


def test_metrics_warn_when_the_embedder_is_a_guide_backbone(tmp_path, minilm_tokenizer):
    embedder = tmp_path / "sup-simcse-tiny-bert"
    tiny_bert(embedder, minilm_tokenizer)
    other = tmp_path / "other-encoder"
    tiny_bert(other, minilm_tokenizer, seed=3)
    # a PRM trained by sp-prm on the embedder's checkpoint: its config records the base model
    prm = tmp_path / "prm"
    prm.mkdir()
    (prm / "config.json").write_text(json.dumps({"sp_prm": {"base_model": str(embedder)}}))
    assert str(embedder.resolve()) in model_identities(str(prm))
    run = tmp_path / "run.jsonl"
    run.write_text("".join(json.dumps({"id": str(i), "prompt": TEXTS[0], "response": TEXTS[1], "scorer": f"rm:{prm}",
                                       "policy": "builtin:smollm2-135m-instruct"}) + "\n" for i in range(2)))
    cfg = build(MetricsConfig, {"runs": [str(run)], "metrics": ["coherence"], "output_dir": str(tmp_path / "m"),
                                "coherence": {"model": str(embedder), "device": "cpu"}, "bootstrap_resamples": 50})
    assert guides_and_judges({"run": [json.loads(x) for x in run.read_text().splitlines()]}, cfg) == {
        "guide of run 'run'": str(prm)}
    with pytest.warns(UserWarning, match="backbone of"):
        res = compute(cfg)
    assert len(res["warnings"]) == 1 and str(prm) in res["warnings"][0]
    assert "Warning:" in (tmp_path / "m" / "results.md").read_text()
    # an independent embedder: no warning
    cfg.coherence.model = str(other)
    assert compute(cfg)["warnings"] == []
    # the reward metric's RM is a judge of the run, and a REAR guide is the policy itself
    assert shared_backbones(str(embedder), {"reward-metric RM": str(prm)})
    assert guides_and_judges({"r": [{"scorer": "rear", "policy": "p"}]}, cfg) == {
        "guide (rear: the policy) of run 'r'": "p"}
    assert shared_backbones("builtin:all-minilm-l6-v2", {"guide": "builtin:all-minilm-l6-v2"})
