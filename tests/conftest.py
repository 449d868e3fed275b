"""Shared fixtures: tiny deterministic models built in-process on real tokenizers; real data paths.

Nothing here touches the network (HF_HUB_OFFLINE=1). Real pretrained models are only
loaded by tests marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when this checkout has no shared folder."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available here: {path} (a user's clone has no ../shared)", allow_module_level=True)
    return path


def smollm_tokenizer_():
    tok = AutoTokenizer.from_pretrained(FIXTURES / "smollm2_tokenizer")
    tok.model_max_length = 8192
    return tok


def minilm_tokenizer_():
    return AutoTokenizer.from_pretrained(FIXTURES / "minilm_tokenizer")


def tiny_llama_config(tokenizer, **overrides) -> LlamaConfig:
    values = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True, num_labels=1,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama_rm_(tokenizer, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer)).eval()
    with torch.no_grad():  # a visible head: default init is tiny and makes rewards near-equal
        model.score.weight.normal_(0, 1.0)
    return model


def tiny_llama_lm_(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tokenizer)).eval()


def tiny_bert_rm_(tokenizer, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=512, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    return model


@pytest.fixture(scope="session")
def smollm_tokenizer():
    return smollm_tokenizer_()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return minilm_tokenizer_()


@pytest.fixture()
def tiny_llama_rm(smollm_tokenizer):
    return tiny_llama_rm_(smollm_tokenizer)


@pytest.fixture()
def tiny_llama_lm(smollm_tokenizer):
    return tiny_llama_lm_(smollm_tokenizer)


@pytest.fixture()
def policy(tiny_llama_lm, smollm_tokenizer):
    """The HF policy over the tiny random Llama (a test file that needs another policy defines its own)."""
    from decoding.policy import Policy

    return Policy(tiny_llama_lm, smollm_tokenizer)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and immune to oversubscription when the CPU is shared.

    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_bert_rm(minilm_tokenizer):
    return tiny_bert_rm_(minilm_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_rm_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """A saved tiny decoder RM + tokenizer folder, loadable by path like any checkpoint."""
    path = tmp_path_factory.mktemp("tiny_llama_rm")
    tiny_llama_rm_(smollm_tokenizer).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_lm_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny_llama_lm")
    tiny_llama_lm_(smollm_tokenizer).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_rm_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny_bert_rm")
    tiny_bert_rm_(minilm_tokenizer).save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return path
