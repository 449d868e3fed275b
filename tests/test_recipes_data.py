"""Every prepare / evaluate recipe parses against its config class, so recipes cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.prepare import PrepareConfig
from sp_prm.config import load_config
from sp_prm.evaluate import EvaluateConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
KINDS = {"prepare_": PrepareConfig, "evaluate_": EvaluateConfig}
FILES = sorted(p for p in RECIPES.rglob("*.yaml") if p.name.startswith(tuple(KINDS)))


def test_there_are_recipes():
    assert len(FILES) >= 6


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses(path):
    cls = next(c for prefix, c in KINDS.items() if path.name.startswith(prefix))
    config = load_config(cls, ["--config", str(path)])
    assert config.output_dir.startswith("outputs/")
    assert not config.trust_remote_code
