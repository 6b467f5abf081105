"""One source of truth for the validation fraction: ``data split`` takes it from the recipes
(default or ``--recipe``), and a run whose split file carved another fraction than its recipe's
``validation.fraction`` says so."""

from __future__ import annotations

import json
import logging

from busseg.cli.main import main
from busseg.engine.recipe import DEFAULTS, apply_overrides, load_recipe
from busseg.engine.train import load_dataset, resolve_split


def _split(tmp_path, *extra) -> dict:
    out = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--k", "3", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_data_split_defaults_to_the_recipes_validation_fraction(tmp_path):
    assert _split(tmp_path)["val_fraction"] == DEFAULTS["validation"]["fraction"] == 0.2


def test_data_split_reads_the_fraction_of_a_given_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: unet\nvalidation: {fraction: 0.3}\n")
    assert _split(tmp_path, "--recipe", str(recipe))["val_fraction"] == 0.3


def test_data_split_warns_when_val_fraction_and_recipe_disagree(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="busseg"):
        split = _split(tmp_path, "--recipe", "unet", "--val-fraction", "0.1")
    assert split["val_fraction"] == 0.1  # the explicit option wins, and says so
    assert any("0.1" in r.message and "0.2" in r.message for r in caplog.records)


def test_a_run_warns_when_its_split_file_carved_another_fraction(tmp_path, caplog):
    path = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--k", "3", "--val-fraction", "0.1", "--out", str(path)]) == 0
    recipe = apply_overrides(load_recipe("unet"), ["image_size=32"])
    prepared = load_dataset("phantom", None, recipe)
    with caplog.at_level(logging.WARNING, logger="busseg"):
        split = resolve_split(str(path), prepared, recipe, "phantom")
    assert split["val_fraction"] == 0.1
    messages = [r.message for r in caplog.records if "validation" in r.message]
    assert len(messages) == 1 and "0.1" in messages[0] and "0.2" in messages[0] and str(path) in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="busseg"):
        same = apply_overrides(recipe, ["validation.fraction=0.1"])
        resolve_split(str(path), prepared, same, "phantom")
    assert not [r for r in caplog.records if "validation" in r.message]
