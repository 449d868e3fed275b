"""Every training recipe and accelerate config parses against the code, so recipes cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sp_prm.config import load_config
from sp_prm.train_config import SPPRMConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TRAIN = sorted(RECIPES.glob("*/train_*.yaml"))
ACCELERATE = sorted((RECIPES / "accelerate").glob("*.yaml"))

# Appendix C.4 (Tables 10-12): lr, epochs, gradient accumulation, global batch (None: not stated).
PAPER = {
    "hh-rlhf/train_sst_rm_gemma_2b.yaml": (5e-6, 1, 16, 32),
    "harmless-redteam/train_sst_rm_gemma_2b.yaml": (5e-6, 1, 16, 32),
    "tldr/train_sst_deberta_v3_large.yaml": (1e-6, 1, 16, 64),
    "pairwise-math/train_sst_llama_3.2_3b.yaml": (5e-6, 1, 16, None),
}
# How many GPUs each paper recipe is written for (stated in its header).
GPUS = {"hh-rlhf/train_sst_rm_gemma_2b.yaml": 2, "harmless-redteam/train_sst_rm_gemma_2b.yaml": 2,
        "tldr/train_sst_deberta_v3_large.yaml": 4, "pairwise-math/train_sst_llama_3.2_3b.yaml": 2}


def test_there_are_recipes():
    names = {p.relative_to(RECIPES).as_posix() for p in TRAIN}
    assert set(PAPER) <= names
    assert {"hh-rlhf/train_orm_minilm.yaml", "hh-rlhf/train_sst_minilm.yaml", "hh-rlhf/train_sst_smollm2.yaml"} <= names
    assert {p.name for p in ACCELERATE} >= {"single.yaml", "ddp.yaml", "zero3.yaml"}


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_train_recipe_parses(path):
    # use_cpu only so that bf16 recipes can be built on a machine without a GPU.
    config = load_config(SPPRMConfig, ["--config", str(path), "--use_cpu", "true"])
    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():
        if key != "prefix" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            got = getattr(config, key)
            got = getattr(got, "value", got)  # enums such as save_strategy
            assert got == value or str(got) == str(value) or (isinstance(got, list) and value in got), key
    assert (path.parent / "README.md").exists(), f"{path.parent.name} has no README"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_hyperparameters(name):
    config = load_config(SPPRMConfig, ["--config", str(RECIPES / name), "--use_cpu", "true"])
    lr, epochs, accum, batch = PAPER[name]
    assert config.learning_rate == lr and config.num_train_epochs == epochs
    assert config.gradient_accumulation_steps == accum
    if batch is not None:
        assert config.per_device_train_batch_size * accum * GPUS[name] == batch
    assert config.loss == "weighted" and config.bf16 and config.lr_scheduler_type.value == "linear"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    if path.name == "zero3.yaml":
        assert config.distributed_type.value == "DEEPSPEED"
        ds = config.deepspeed_config
        assert ds["zero_stage"] == 3 and ds["zero3_save_16bit_model"] is True and ds["zero3_init_flag"] is True
    elif path.name == "ddp.yaml":
        assert config.distributed_type.value == "MULTI_GPU"
    elif path.name == "single.yaml":
        assert config.distributed_type.value == "NO" and config.num_processes == 1


def test_checkpointing_key_under_either_transformers_name(tmp_path):
    """transformers 5.20 renamed gradient_checkpointing -> activation_checkpointing; the vLLM extra pins <5.20."""
    import dataclasses

    from transformers import TrainingArguments

    from sp_prm.train_config import renamed_keys

    new_release = {"activation_checkpointing", "activation_checkpointing_kwargs", "learning_rate"}
    old_release = {"gradient_checkpointing", "gradient_checkpointing_kwargs", "learning_rate"}
    assert renamed_keys(new_release) == {"gradient_checkpointing": "activation_checkpointing",
                                         "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}
    assert renamed_keys(old_release) == {"activation_checkpointing": "gradient_checkpointing",
                                         "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs"}
    installed = {f.name for f in dataclasses.fields(TrainingArguments)}
    attr = "activation_checkpointing" if "activation_checkpointing" in installed else "gradient_checkpointing"
    for key in ("gradient_checkpointing", "activation_checkpointing"):
        recipe = tmp_path / f"{key}.yaml"
        recipe.write_text(yaml.safe_dump({key: True, "use_cpu": True, "output_dir": str(tmp_path / "o")}))
        assert getattr(load_config(SPPRMConfig, ["--config", str(recipe)]), attr) is True


DECODE = sorted((RECIPES / "decode").glob("*.yaml"))


@pytest.mark.parametrize("path", DECODE, ids=lambda p: p.name)
def test_decode_recipe_parses_in_the_registry_shape(path):
    """Every decode recipe parses; its search block is {method, max_new_tokens, <method>: {...}} (an old flat key
    such as search.args_k is refused by the parser, naming its new place)."""
    from decoding.decode import DecodeConfig
    from decoding.search import SEARCHES

    config = load_config(DecodeConfig, ["--config", str(path)])
    search = yaml.safe_load(path.read_text()).get("search", {})
    assert set(search) <= {"method", "max_new_tokens", *SEARCHES}, sorted(search)
    method = search.get("method", "best_of_n")
    assert set(search) - {"method", "max_new_tokens"} <= {method}, "a params block for a method the recipe does not run"
    for key, value in search.get(method, {}).items():
        assert getattr(config.search.params, key) == value


# gold_hh.yaml is parsed by its own staged config in tests/test_gold.py (experiments.gold has no RunOptions class).
EXPERIMENTS = sorted(p for p in (RECIPES / "experiments").glob("*.yaml") if p.name != "gold_hh.yaml")


def experiment_config(path: Path) -> type:
    """The config class of the experiment a recipe belongs to (the module its name starts with)."""
    import importlib
    import pkgutil

    import experiments
    from experiments.common import RunOptions

    names = [m.name for m in pkgutil.iter_modules(experiments.__path__) if path.stem.startswith(m.name)]
    assert names, f"{path.name}: no experiments module its name starts with"
    module = importlib.import_module(f"experiments.{max(names, key=len)}")
    (cls,) = [v for v in vars(module).values()
              if isinstance(v, type) and issubclass(v, RunOptions) and v is not RunOptions]
    return cls


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_recipe_parses(path):
    """Every experiment recipe parses against its experiment's config (a retired flat key is refused)."""
    config = load_config(experiment_config(path), ["--config", str(path)])
    raw = yaml.safe_load(path.read_text())
    for key, value in raw.items():
        got = getattr(config, key)
        if isinstance(value, dict) and hasattr(got, "__dataclass_fields__"):
            for sub, v in value.items():
                assert getattr(got, sub) == v, f"{key}.{sub}"


def test_experiments_are_not_installed_by_the_wheel():
    import tomllib

    find = tomllib.loads((RECIPES.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(p.startswith("experiments") for p in find["include"]) and "experiments*" in find["exclude"]
    assert (RECIPES.parent / "experiments" / "__init__.py").exists()
