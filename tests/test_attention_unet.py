"""Attention U-Net (Oktay 2018) and the deeper improved variant (Guo 2025)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from busseg.errors import ConfigError
from busseg.models import count_parameters, create_model, list_models, model_info
from busseg.models.attention_unet import AttentionGate, AttentionUNet
from busseg.models.output import ModelOutput
from conftest import make_blob_batch, train_steps

RECIPES = Path(__file__).resolve().parents[1] / "src" / "busseg" / "recipes"
TINY = {"attention_unet": dict(base_channels=4), "attention_unet_plus": dict(base_channels=4)}
DEPTH = {"attention_unet": 4, "attention_unet_plus": 5}


def tiny(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**TINY[name], **options})


@pytest.mark.parametrize("name", ["attention_unet", "attention_unet_plus"])
def test_registered_with_recipe(name):
    assert name in list_models()
    assert model_info(name).size_divisor == 2 ** DEPTH[name]
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    assert recipe["model"] == name
    model = create_model(
        name,
        in_channels=recipe["in_channels"],
        encoder_weights=recipe["encoder_weights"],
        **recipe["model_options"],
    )
    assert model.depth == DEPTH[name]


@pytest.mark.parametrize("name", ["attention_unet", "attention_unet_plus"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_and_attention_maps(name, channels):
    model = tiny(name, in_channels=channels).eval()
    images = torch.randn(2, channels, 64, 64)
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, ModelOutput)
    assert out.seg.shape == (2, 1, 64, 64)
    assert out.cls is None and out.aux == {}
    depth = DEPTH[name]
    assert sorted(out.extras) == sorted(f"attention_{level}" for level in range(1, depth + 1))
    features = model.encoder(images)
    for level in range(1, depth + 1):
        alpha = out.extras[f"attention_{level}"]
        skip = features[level - 1]
        assert alpha.shape == (2, 1, *skip.shape[-2:])
        assert alpha.shape[-1] == 64 // 2 ** (level - 1)
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    # logits, not probabilities: a sigmoid output could never leave [0, 1]
    assert out.seg.dtype == torch.float32 and torch.isfinite(out.seg).all()


def test_sizes_not_divisible_by_the_pooling_factor_still_work():
    model = tiny("attention_unet_plus").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 40, 56))
    assert out.seg.shape == (1, 1, 40, 56)
    assert out.extras["attention_2"].shape == (1, 1, 20, 28)


def _dropout_rates_per_level(model):
    return [
        [m.p for m in level.modules() if isinstance(m, nn.Dropout)] for level in model.encoder.levels
    ]


def test_improved_model_is_one_level_deeper_and_has_encoder_dropout_only():
    baseline, improved = tiny("attention_unet"), tiny("attention_unet_plus")
    assert improved.depth == baseline.depth + 1
    assert len(improved.encoder.levels) == len(baseline.encoder.levels) + 1
    # default: one dropout, at the end of the contracting path (the bottleneck level)
    assert _dropout_rates_per_level(improved) == [[], [], [], [], [], [0.3]]
    # the literal reading: dropout between the two convolutions of every level
    literal = tiny("attention_unet_plus", dropout_levels="encoder")
    assert _dropout_rates_per_level(literal) == [[0.1], [0.1], [0.2], [0.2], [0.3], [0.3]]
    assert _dropout_rates_per_level(tiny("attention_unet_plus", dropout=0.5)) == [[]] * 5 + [[0.5]]
    assert not any(isinstance(m, nn.Dropout) for m in improved.decoder.modules())
    assert not any(isinstance(m, nn.Dropout) for m in baseline.modules())
    # Guo: no normalisation in the conv blocks, BatchNorm inside the gates; Oktay: the reverse.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in improved.encoder.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in improved.decoder.levels[0].gate.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in baseline.decoder.levels[0].gate.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in baseline.encoder.modules())


def test_dropout_is_active_in_training_only():
    model = tiny("attention_unet_plus")
    images = torch.randn(2, 1, 64, 64)
    model.train()
    assert not torch.allclose(model(images).seg, model(images).seg)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images).seg, model(images).seg)


def test_normal_initialisation_std():
    torch.manual_seed(0)
    model = create_model("attention_unet_plus", base_channels=16)
    conv = model.encoder.levels[4][2][0]  # second conv of level 5: 256 -> 256, fan_in 2304
    fan_in = conv.weight[0].numel()
    assert conv.weight.mean().abs() < 0.01 * math.sqrt(2.0 / fan_in) * 10
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0
    fixed = create_model("attention_unet_plus", base_channels=16, init_std=0.02)
    assert fixed.encoder.levels[4][2][0].weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_attention_gate_reweights_the_skip_with_its_coefficients():
    torch.manual_seed(0)
    gate = AttentionGate(skip_channels=6, gating_channels=12, inter_channels=3)
    x, g = torch.randn(2, 6, 16, 16), torch.randn(2, 12, 8, 8)
    gated, alpha = gate(x, g)
    assert alpha.shape == (2, 1, 16, 16)
    assert torch.allclose(gated, x * alpha)
    # Oktay Eq. 1-2 with W = 0: q = b_psi everywhere, alpha = sigmoid(b_psi)
    for layer in gate.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.zeros_(layer.weight)
    nn.init.constant_(gate.psi.bias, 2.0)
    _, alpha = gate(x, g)
    assert torch.allclose(alpha, torch.full_like(alpha, torch.sigmoid(torch.tensor(2.0)).item()))


def test_attention_depends_on_the_gating_signal():
    torch.manual_seed(0)
    gate = AttentionGate(4, 8, 2).eval()
    x = torch.randn(1, 4, 8, 8)
    _, alpha_a = gate(x, torch.randn(1, 8, 4, 4))
    _, alpha_b = gate(x, torch.randn(1, 8, 4, 4))
    assert not torch.allclose(alpha_a, alpha_b)


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="dropout"):
        create_model("attention_unet_plus", dropout=[0.1, 0.2])
    with pytest.raises(ConfigError, match="6 rates"):
        create_model("attention_unet_plus", dropout_levels="encoder", dropout=[0.1, 0.2])
    with pytest.raises(ConfigError, match="dropout_levels"):
        create_model("attention_unet_plus", dropout_levels="decoder")
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("attention_unet", in_channels=2)
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("attention_unet_plus", encoder_weights="imagenet")
    with pytest.raises(ConfigError, match="init"):
        AttentionUNet(init="xavier")


def test_default_sizes_are_comparable():
    # Guo's model trades width (32..1024) for depth: same order of parameters as Oktay 64..1024.
    baseline = count_parameters(create_model("attention_unet"))
    improved = count_parameters(create_model("attention_unet_plus"))
    assert 25e6 < baseline < 40e6 and 25e6 < improved < 40e6


@pytest.mark.parametrize("name", ["attention_unet", "attention_unet_plus"])
def test_a_few_training_steps_lower_the_recipe_objective(name):
    from busseg.losses import create_objective

    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    loss_options = dict(recipe["loss"])
    objective = create_objective(loss_options.pop("name"), **loss_options)
    model = tiny(name, base_channels=8)
    model.train()
    batch = make_blob_batch(n=2, size=32, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [step["total"] for step in train_steps(model, objective, batch, optimizer, steps=10)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_improved_recipe_trains_on_all_780_busi_images_and_its_notes_match_its_monitor():
    from busseg.engine.recipe import load_recipe

    recipe = load_recipe("attention_unet_plus")
    notes = " ".join(recipe["notes"].split())
    # Guo section 3: 780 images after preprocessing, normal / benign / malignant
    assert recipe["include_normal"] is True and "780" in notes
    # the schedule and the kept checkpoint watch the paper's main metric, and the notes say so
    assert recipe["validation"]["monitor"] == "val_iou"
    assert recipe["scheduler"].get("monitor", recipe["validation"]["monitor"]) == "val_iou"
    assert "val Dice" not in notes and "validation Dice" not in notes
    assert "validation mean IoU" in notes
