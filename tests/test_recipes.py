"""The recipes in `tasks/`: every one loads and validates, and every one runs end to end for two steps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import hfpipes
from hfpipes.registry import get_spec
from hfpipes.training import FinetuneConfig, load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "tasks").glob("*.yaml"))
AREAS = {"image-classification": "vision", "sentiment": "language", "translation": "language",
         "text-generation": "language", "speech-recognition": "speech", "image-generation": "creative"}  # fmt: skip


def test_there_is_a_recipe_per_application_area():
    areas = {AREAS[get_spec(load_recipe(path)["task"]).name] for path in RECIPES}
    assert areas == {"vision", "language", "speech", "creative"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_valid(path):
    recipe = load_recipe(path)
    get_spec(recipe.pop("task"))
    recipe.pop("train")
    recipe.pop("eval", None)
    recipe.pop("model", None)
    config = FinetuneConfig.from_dict(recipe)
    assert dataclasses.asdict(config)


# Recipes whose base model is a Hub id (unreachable here) run on a tiny model of the same architecture instead.
HUB_MODEL_STAND_INS = {"stabilityai/sd-turbo": "tiny_stable_diffusion"}


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_for_two_steps(path, tmp_path, request):
    recipe = load_recipe(path, ["max_steps=2", "max_train_samples=16", "max_eval_samples=4", "batch_size=2",
                                "eval_every=2", f"output_dir={tmp_path / 'out'}"])  # fmt: skip
    if recipe.get("model") in HUB_MODEL_STAND_INS:
        recipe["model"] = request.getfixturevalue(HUB_MODEL_STAND_INS[recipe["model"]])
    task, train = recipe.pop("task"), recipe.pop("train")
    result = hfpipes.finetune(task, train, **recipe)
    assert result.metrics["step"] == 2
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["step"] == 2
    assert (tmp_path / "out" / "README.md").is_file()
