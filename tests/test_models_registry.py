"""Model registry, complexity helpers and ``busseg models``."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import torch.nn as nn
import yaml

from busseg.cli.main import main
from busseg.errors import ConfigError
from busseg.models import create_model, list_models, model_info
from busseg.models.complexity import count_flops, count_macs, count_parameters, macs, measure_inference_ms

BASELINES = ["deeplabv3plus", "fcn", "fcn_resnet18", "fpn", "segnet", "unet", "unet_resnet18", "unetplusplus"]


def test_baselines_are_registered_with_their_papers():
    names = list_models()
    for name in BASELINES:
        assert name in names
        info = model_info(name)
        assert info.paper and not info.multitask and info.segments
        assert info.size_divisor in (16, 32)


def test_unknown_model_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'unet3000'.*unet_resnet18"):
        create_model("unet3000")


def test_unknown_option_names_the_model_and_the_option():
    with pytest.raises(ConfigError, match=r"model 'unet'.*'depth_of_field'"):
        create_model("unet", depth_of_field=3)


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_recipe_exists_and_builds(name):
    path = resources.files("busseg").joinpath("recipes", f"{model_info(name).recipe}.yaml")
    recipe = yaml.safe_load(path.read_text())
    assert recipe["model"] == name
    assert recipe["image_size"] % model_info(name).size_divisor == 0
    assert recipe["cv_folds"] == 5 and "not a paper's recipe" in recipe["notes"]
    with torch.device("meta"):  # shapes only: the options must be accepted
        create_model(name, in_channels=recipe["in_channels"], encoder_weights="none", **recipe["model_options"])


# --- complexity ------------------------------------------------------------------------------

def test_flops_of_one_convolution_match_the_hand_count():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    expected_macs = 8 * 16 * 16 * 3 * 3 * 3  # outputs x (in_channels x k x k)
    assert count_flops(conv, image_size=16, in_channels=3) == 2 * expected_macs
    assert count_macs(conv, image_size=16, in_channels=3) == expected_macs
    assert macs(1000.0) == 500.0
    assert count_parameters(conv) == 8 * 3 * 3 * 3


def test_count_flops_restores_training_mode_and_needs_no_grad():
    model = create_model("unet", base_channels=4).train()
    flops = count_flops(model, image_size=32)
    assert flops > 0 and model.training
    assert all(p.grad is None for p in model.parameters())


def test_measure_inference_ms_is_positive_and_restores_mode():
    model = create_model("unet", base_channels=4).train()
    ms = measure_inference_ms(model, image_size=32, batch=2, warmup=1, repeats=2)
    assert ms > 0 and model.training
    with pytest.raises(ConfigError):
        measure_inference_ms(model, image_size=32, repeats=0)


# --- busseg models ---------------------------------------------------------------------------

def test_busseg_models_lists_every_registered_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert listed == set(list_models())


def test_busseg_models_json_with_flops(capsys):
    assert main(["models", "unet", "fcn", "--flops", "--json", "--image-size", "64"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"unet", "fcn"}
    assert rows["fcn"]["parameters"] == 134_264_291  # FCN-8s VGG-16, 1-channel input, one class
    assert rows["unet"]["parameters"] == count_parameters(create_model("unet"))
    assert rows["unet"]["gflops"] == pytest.approx(count_flops(create_model("unet"), image_size=64) / 1e9)
    assert rows["unet"]["gmacs"] == pytest.approx(rows["unet"]["gflops"] / 2)
    assert rows["unet"]["multitask"] is False and rows["unet"]["recipe"] == "unet"


def test_busseg_models_reports_unknown_names(capsys):
    assert main(["models", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
