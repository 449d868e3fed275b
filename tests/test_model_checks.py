"""Refuse the silent wrong: a checkpoint without a trained one-output score head is not used as a reward
model (decode's rm: scorer, evaluate-rm, prepare's reference), a model without config.sp_prm is scored with
the default prefix format only after a warning, and the rm: scorer has its own trust_remote_code."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForSequenceClassification

from decoding.decode import DecodeConfig, build_scorer
from decoding.types import Meter
from sp_prm import models
from sp_prm.cli import main
from sp_prm.config import build
from sp_prm.errors import MissingPathError, ModelError
from sp_prm.formatting import PrefixFormat
from tests.conftest import tiny_llama_config


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    return exit_info.value.code, err


@pytest.fixture(scope="module")
def three_label_dir(tmp_path_factory, smollm_tokenizer):
    path = tmp_path_factory.mktemp("three_labels")
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_llama_config(smollm_tokenizer, num_labels=3)).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


def test_causal_lm_is_refused_as_a_reward_model(tiny_llama_lm_dir):
    with pytest.raises(ModelError, match=rf"{tiny_llama_lm_dir} is not a trained reward model \(LlamaForCausalLM\)"
                                         r".*score.weight would be newly initialised"):
        models.load_reward_model(str(tiny_llama_lm_dir), device="cpu")


def test_untrained_head_allowed_on_purpose_with_a_warning(tiny_llama_lm_dir):
    with pytest.warns(UserWarning, match="newly initialised"):
        model = models.load_reward_model(str(tiny_llama_lm_dir), device="cpu", allow_untrained_head=True)
    assert model.config.num_labels == 1


def test_trained_reward_model_loads_silently(tiny_llama_rm_dir, recwarn):
    model = models.load_reward_model(str(tiny_llama_rm_dir), device="cpu")
    assert model.score.weight.shape[0] == 1
    assert not [w for w in recwarn if "newly initialised" in str(w.message)]


def test_head_with_other_output_count_is_refused(three_label_dir):
    with pytest.raises(ModelError, match=r"score head has 3 outputs"):
        models.load_reward_model(str(three_label_dir), device="cpu")


def test_missing_model_folder_says_so(tmp_path):
    with pytest.raises(MissingPathError, match="no such model folder"):
        models.load_reward_model(str(tmp_path / "nothing" / "here"))
    with pytest.raises(MissingPathError, match="no such model folder"):
        models.load_tokenizer("./no-such-model")


def test_decode_refuses_a_causal_lm_as_rm_scorer(tiny_llama_lm_dir, tmp_path, capsys):
    code, err = run_cli(capsys, "decode", "--policy.model", str(tiny_llama_lm_dir), "--scorer.name",
                        f"rm:{tiny_llama_lm_dir}", "--output", str(tmp_path / "o.jsonl"), "--data.limit", "1",
                        "--search.best_of_n.n", "2", "--search.max_new_tokens", "2", "--progress", "false")
    assert code == 2 and str(tiny_llama_lm_dir) in err and "not a trained reward model" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists() or not (tmp_path / "o.jsonl").read_text().strip()


def test_evaluate_rm_refuses_a_causal_lm(tiny_llama_lm_dir, tmp_path, capsys):
    code, err = run_cli(capsys, "evaluate-rm", "--models", f"[{tiny_llama_lm_dir}]", "--tokenizer",
                        str(tiny_llama_lm_dir), "--limit", "10", "--subset", "all", "--output_dir", str(tmp_path / "e"))
    assert code == 2 and str(tiny_llama_lm_dir) in err and "not a trained reward model" in err


def scorer_config(path, **scorer) -> DecodeConfig:
    return build(DecodeConfig, {"policy": {"model": str(path), "trust_remote_code": True},
                                "scorer": {"name": f"rm:{path}", **scorer}})


def test_model_without_sp_prm_record_warns_about_the_default_format(tiny_llama_rm_dir):
    with pytest.warns(UserWarning, match="no config.sp_prm.*default prefix format"):
        scorer = build_scorer(scorer_config(tiny_llama_rm_dir), SimpleNamespace(device="cpu"), Meter())
    assert scorer.format == PrefixFormat()


def test_explicit_prefix_needs_no_warning(tiny_llama_rm_dir, recwarn):
    fmt = PrefixFormat(template="plain")
    scorer = build_scorer(scorer_config(tiny_llama_rm_dir, prefix=fmt.to_dict()), SimpleNamespace(device="cpu"),
                          Meter())
    assert scorer.format == fmt and not [w for w in recwarn if "config.sp_prm" in str(w.message)]


def test_scorer_has_its_own_trust_remote_code(tiny_llama_rm_dir, monkeypatch):
    seen = []
    real_tok, real_rm = models.load_tokenizer, models.load_reward_model

    def tok(path, trust_remote_code=False):
        seen.append(("tokenizer", trust_remote_code))
        return real_tok(path)

    def rm(path, *args, trust_remote_code=False, **kw):
        seen.append(("model", trust_remote_code))
        return real_rm(path, *args, **kw)

    monkeypatch.setattr(models, "load_tokenizer", tok)
    monkeypatch.setattr(models, "load_reward_model", rm)
    cfg = scorer_config(tiny_llama_rm_dir, prefix=PrefixFormat().to_dict())  # the policy allows remote code
    build_scorer(cfg, SimpleNamespace(device="cpu"), Meter())
    assert seen == [("tokenizer", False), ("model", False)]
    seen.clear()
    build_scorer(scorer_config(tiny_llama_rm_dir, prefix=PrefixFormat().to_dict(), trust_remote_code=True),
                 SimpleNamespace(device="cpu"), Meter())
    assert seen == [("tokenizer", True), ("model", True)]
