"""Planning a benchmark: the dry run checks every model's resolved recipe exactly as the run
does (the model, its objective, its optimiser and schedule are built), per-model overrides
(a model-scoped ``--set`` or a partial recipe), and a results folder never mixes two recipes of
one model. Nothing here trains: every error comes before the first epoch."""

from __future__ import annotations

import re

import pytest
import yaml

from busseg.cli.main import main
from busseg.engine.recipe import load_recipe, save_recipe
from busseg.errors import ConfigError
from busseg.report.benchmark import plan_benchmark, resolve_protocol, run_benchmark, split_overrides


def test_dry_run_rejects_an_option_one_of_the_models_does_not_take(tmp_path, capsys):
    # unet takes base_channels, the smp-based unet_resnet18 does not: the run used to fail on
    # unet_resnet18 after unet had trained, while the dry run said everything was fine.
    code = main(["benchmark", "run", "--dry-run", "--out", str(tmp_path / "b"), "--dataset", "phantom", "--quick",
                 "--models", "unet", "unet_resnet18", "--set", "model_options.base_channels=8"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unet_resnet18" in err and "base_channels" in err
    assert not (tmp_path / "b").exists()


def test_run_checks_every_model_before_training_the_first(tmp_path):
    with pytest.raises(ConfigError, match="unet_resnet18.*base_channels"):
        run_benchmark(tmp_path / "b", ["unet", "unet_resnet18"], dataset="phantom", protocol="quick",
                      overrides=["model_options.base_channels=8"], progress=False, accelerator="cpu")
    assert not (tmp_path / "b").exists()  # nothing trained, nothing written


def test_dry_run_rejects_a_bad_optimiser_option(tmp_path, capsys):
    # an optimiser keyword only fails when Lightning calls configure_optimizers
    code = main(["benchmark", "run", "--dry-run", "--out", str(tmp_path / "b"), "--dataset", "phantom", "--quick",
                 "--models", "unet", "--set", "optimizer.momentum_typo=0.9"])
    assert code == 2
    assert "unet" in capsys.readouterr().err


def test_model_scoped_set_changes_one_model_only(tmp_path, capsys):
    code = main(["benchmark", "run", "--dry-run", "--out", str(tmp_path / "b"), "--dataset", "phantom", "--quick",
                 "--models", "unet", "unet_resnet18", "--set", "unet:model_options.base_channels=8",
                 "--set", "epochs=2", "--set", "unet_resnet18:optimizer.lr=0.01"])
    assert code == 0, capsys.readouterr().err
    common, per_model = split_overrides(["unet:model_options.base_channels=8", "epochs=2",
                                         "unet_resnet18:optimizer.lr=0.01"], ["unet", "unet_resnet18"])
    assert common == ["epochs=2"]
    planned = plan_benchmark(["unet", "unet_resnet18"], resolve_protocol("quick", common), model_overrides=per_model)
    assert planned["unet"]["model_options"]["base_channels"] == 8 and planned["unet"]["epochs"] == 2
    assert "base_channels" not in planned["unet_resnet18"]["model_options"]
    assert planned["unet_resnet18"]["optimizer"]["lr"] == 0.01 and planned["unet"]["optimizer"]["lr"] == 1e-4


def test_model_scoped_set_for_a_model_not_in_the_run_is_an_error():
    with pytest.raises(ConfigError, match="fpn.*not in the run"):
        split_overrides(["fpn:epochs=2"], ["unet"])


def test_partial_recipe_is_merged_onto_the_models_own_recipe(tmp_path):
    partial = tmp_path / "small_unet.yaml"
    partial.write_text("model_options: {base_channels: 8}\nepochs: 7\n")
    planned = plan_benchmark(["unet"], resolve_protocol("paper"), recipes={"unet": str(partial)})
    paper = load_recipe("unet")
    recipe = planned["unet"]
    assert recipe["model_options"] == {**paper["model_options"], "base_channels": 8}
    assert recipe["epochs"] == 7
    # everything the partial file leaves out is the model's own recipe, not the global defaults
    assert recipe["optimizer"] == paper["optimizer"] and recipe["scheduler"] == paper["scheduler"]
    assert recipe["normalization"] == paper["normalization"] == "zscore"


def test_partial_recipe_with_an_unknown_field_names_the_file(tmp_path):
    partial = tmp_path / "typo.yaml"
    partial.write_text("epoch: 7\n")
    with pytest.raises(ConfigError, match="typo.yaml.*epoch"):
        plan_benchmark(["unet"], resolve_protocol("paper"), recipes={"unet": str(partial)})


def test_a_results_folder_never_mixes_two_recipes_of_one_model(tmp_path, capsys):
    out = tmp_path / "b"
    planned = plan_benchmark(["unet"], resolve_protocol("quick"))
    trained = dict(planned["unet"], epochs=planned["unet"]["epochs"] + 1)
    save_recipe(trained, out / "phantom" / "unet" / "fold_0" / "recipe.yaml")
    args = ["benchmark", "run", "--out", str(out), "--dataset", "phantom", "--quick", "--models", "unet"]
    assert main(args + ["--dry-run"]) == 2
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="phantom/unet.*another recipe.*epochs"):
        run_benchmark(out, ["unet"], dataset="phantom", protocol="quick", progress=False, accelerator="cpu")
    assert yaml.safe_load((out / "phantom" / "unet" / "fold_0" / "recipe.yaml").read_text()) == trained


def test_dry_run_shows_and_checks_each_models_augmentation(tmp_path, capsys):
    # the robust preset for one model under the paper protocol, a change of it for another
    # under the quick protocol; a bad preset or a bad corruption name fails before anything trains
    code = main(["benchmark", "run", "--dry-run", "--out", str(tmp_path / "b"), "--dataset", "phantom",
                 "--models", "unet", "elad_net", "--set", "elad_net:augmentation.preset=robust"])
    out = capsys.readouterr().out
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  unet ") or "elad_net " in line}
    assert "/ paper: hflip /" in lines["unet"] and "/ robust / new" in lines["elad_net"]
    planned = plan_benchmark(["elad_net"], resolve_protocol("paper"),
                             model_overrides={"elad_net": ["augmentation.preset=robust"]})
    assert planned["elad_net"]["augmentation"]["hflip"] == 0.5  # the preset's, not the paper's 0.0

    code = main(["benchmark", "run", "--dry-run", "--out", str(tmp_path / "b"), "--dataset", "phantom", "--quick",
                 "--models", "unet", "--set", "unet:augmentation.speckle.p=0"])
    assert code == 0 and "/ robust (changed: speckle) /" in capsys.readouterr().out
    for bad, message in ((["--set", "unet:augmentation.preset=strong"], "augmentation.preset must be one of robust"),
                         (["--corruptions", "gain,fog"], r"unknown corruption\(s\) \['fog'\]")):
        code = main(["benchmark", "run", "--dry-run", "--out", str(tmp_path / "b"), "--dataset", "phantom",
                     "--quick", "--models", "unet", *bad])
        assert code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "b").exists()
