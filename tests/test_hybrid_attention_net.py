"""Hybrid Attention Network (Aslam et al. 2025): model, Table 2 variants, TAM and SFEB."""

from __future__ import annotations

import logging

import pytest
import torch

from busseg.engine.recipe import load_recipe
from busseg.errors import ConfigError
from busseg.losses import create_objective
from busseg.models import count_parameters, create_model, model_info
from busseg.models.hybrid_attention_net import (
    VARIANTS,
    DenseNet121Encoder,
    GlobalSpatialAttention,
    SpatialFeatureEnhancementBlock,
    TransformerSelfAttention,
)
from busseg.models.output import ModelOutput
from busseg.models.weights import collect_weights_info
from conftest import make_blob_batch, train_steps

#: Table 2 of the paper (Keras trainable parameters, 3-channel input).
PAPER_PARAMETERS = {
    "baseline": 10_498_945,
    "conv_block": 11_089_537,
    "sfeb": 15_339_329,
    "full": 15_427_713,
}


def build(variant: str = "full", seed: int = 0, **options):
    torch.manual_seed(seed)
    return create_model("hybrid_attention_net", variant=variant, **options)


@pytest.fixture(scope="module")
def full_model():
    return build("full").eval()


# ----------------------------------------------------------------------------- registry, recipe
def test_registered_with_recipe_and_objective():
    info = model_info("hybrid_attention_net")
    assert info.size_divisor == 32 and not info.multitask and "Aslam" in info.paper
    recipe = load_recipe(info.recipe)
    assert recipe["model"] == "hybrid_attention_net"
    assert recipe["model_options"]["variant"] == "full"
    assert recipe["batch_size"] == 10 and recipe["optimizer"]["lr"] == 0.001
    assert recipe["scheduler"]["factor"] == 0.25 and recipe["scheduler"]["patience"] == 4
    assert all(v in (0, 0.0, [0, 0], [1.0, 1.0]) for v in recipe["augmentation"].values())
    objective = create_objective(**recipe["loss"])
    assert type(objective.pixel_loss).__name__ == "BCEJaccardLoss"


def test_recipe_selects_reduces_and_stops_on_validation_dice():
    # The paper (4.2) reduces the rate "if no improvement was observed on the validation set"
    # without naming the quantity; validation loss tracks Dice poorly, so busseg watches Dice.
    recipe = load_recipe("hybrid_attention_net")
    for part in (recipe["validation"], recipe["scheduler"], recipe["early_stopping"]):
        assert (part["monitor"], part["mode"]) == ("val_dice", "max"), part
    notes = " ".join(recipe["notes"].split())
    assert "validation Dice" in notes and "validation loss" not in notes.replace("not the validation loss", "")


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="variant"):
        create_model("hybrid_attention_net", variant="bl+tam")
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("hybrid_attention_net", in_channels=2)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 64), (80, 80)])
def test_output_shapes(full_model, size):
    images = torch.randn(2, 1, *size)
    with torch.no_grad():
        out = full_model(images)
    assert isinstance(out, ModelOutput)
    assert out.seg.shape == (2, 1, *size)
    assert out.cls is None and out.aux == {}
    assert torch.isfinite(out.seg).all()


def test_attention_maps_have_documented_shapes(full_model):
    images = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        extras = full_model(images).extras
    hw = (64 // 32) * (96 // 32)
    channel = extras["tam_channel_attention"]
    spatial = extras["tam_spatial_attention"]
    assert channel.shape == (2, 256, 256)  # c x c (Eq. 4)
    assert spatial.shape == (2, hw, hw)  # (h*w) x (h*w) (Eq. 5)
    for attention in (channel, spatial):
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    for level, channels in enumerate((64, 128, 256, 512), start=1):
        stride = 2**level
        assert extras[f"sfeb{level}_pooled"].shape == (2, 2 * channels, 1, 1)  # global max + mean
        gate = extras[f"sfeb{level}_channel_gate"]
        assert gate.shape == (2, channels, 1, 1)
        assert ((gate > 0) & (gate < 1)).all()


# ----------------------------------------------------------------------------- variants
def test_variants_build_and_match_paper_parameter_counts():
    counts = {}
    for variant in VARIANTS:
        model = build(variant, in_channels=3)
        counts[variant] = count_parameters(model)
        assert abs(counts[variant] / PAPER_PARAMETERS[variant] - 1) < 0.05, (variant, counts)
        has = {name: getattr(model, name) is not None for name in ("conv_block", "sfebs", "tam")}
        expected = VARIANTS[variant]
        assert has == {"conv_block": expected["conv_block"], "sfebs": expected["sfeb"], "tam": expected["tam"]}
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, 64, 64))
        assert out.seg.shape == (1, 1, 64, 64)
        assert ("tam_channel_attention" in out.extras) == expected["tam"]
        assert ("sfeb1_pooled" in out.extras) == expected["sfeb"]
    # The ConvBlock is one 3x3 256->256 conv + BN: the paper's increment minus Keras' conv bias.
    assert counts["conv_block"] - counts["baseline"] == 590_592 - 256
    # Four SFEBs with the paper's global pooling: Table 2's increment within 2 %.
    paper_sfeb = PAPER_PARAMETERS["sfeb"] - PAPER_PARAMETERS["conv_block"]
    assert abs((counts["sfeb"] - counts["conv_block"]) / paper_sfeb - 1) < 0.02
    assert abs(counts["baseline"] - PAPER_PARAMETERS["baseline"]) / PAPER_PARAMETERS["baseline"] < 0.015
    channel = count_parameters(build("full", in_channels=3, sfeb_pooling="channel"))
    assert abs(channel - PAPER_PARAMETERS["full"]) / PAPER_PARAMETERS["full"] < 0.01


def test_decoder_feeds_the_head_a_64_channel_full_resolution_feature(full_model):
    # 16 channels in front of the 1x1 head kept the background logit near zero (module
    # docstring, "Decoder widths"); the full-resolution stage is 64 wide.
    assert full_model.decoder.out_channels == 64 and full_model.head.in_channels == 64
    assert [s[-1][0].out_channels for s in full_model.decoder.stages] == [256, 128, 64, 32, 64]


# ----------------------------------------------------------------------------- modules
def test_sfeb_follows_eqs_6_to_15_and_varies_over_space():
    torch.manual_seed(0)
    block = SpatialFeatureEnhancementBlock(8, pooling="channel").eval()
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 12, 12)
    x[:, :, 3:6, 3:6] += 3.0  # a local bright structure
    with torch.no_grad():
        out, pooled, gate = block(x)
        i1 = block.features(x)  # Eq. 7
        expected_pooled = torch.cat([i1.amax(1, keepdim=True), i1.mean(1, keepdim=True)], 1)
        expected_gate = block.channel_gate(x.mean(dim=(2, 3), keepdim=True))  # Eqs. 12-13
        expected = block.spatial(expected_pooled) * expected_gate + x  # Eqs. 11, 14, 15
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(gate, expected_gate)
    torch.testing.assert_close(out, expected)
    enhancement = out - x
    # channel-axis pooling: the added term differs between positions (not a per-channel bias)
    assert enhancement.flatten(2).std(dim=-1).min() > 1e-3


def test_gsa_is_equivariant_to_permuting_positions_and_tsa_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    perm = torch.randperm(16)

    def permute(t):
        return t.flatten(2)[:, :, perm].view_as(t)

    gsa = GlobalSpatialAttention(16)
    with torch.no_grad():
        out, attention = gsa(x)
        out_perm, _ = gsa(permute(x))
    assert gsa.affinity.out_channels == 8  # c' = c / 2
    torch.testing.assert_close(out_perm, permute(out))
    # query and key share F^cc, so the scores S are symmetric: with L = log softmax(S) = S - c_i,
    # L - L^T = c_j - c_i, i.e. M[i, j] = M[i, 0] + M[0, j]
    log_attention = attention.double().log()
    m = log_attention - log_attention.transpose(1, 2)
    torch.testing.assert_close(m, m[:, :, :1] + m[:, :1, :], rtol=0, atol=1e-5)

    tsa = TransformerSelfAttention(16, position_grid=4)
    with torch.no_grad():
        tsa.position.normal_()
        out, attention = tsa(x)
        out_perm, _ = tsa(permute(x))
    assert attention.shape == (2, 16, 16)
    # the learnable position map breaks permutation equivariance
    assert (out_perm - permute(out)).abs().max() > 1e-3


def test_tsa_position_map_is_resized_to_the_feature_grid():
    torch.manual_seed(0)
    tsa = TransformerSelfAttention(8, position_grid=8)
    for size in ((2, 2), (3, 5), (16, 16)):
        out, attention = tsa(torch.randn(1, 8, *size))
        assert out.shape == (1, 8, *size) and attention.shape == (1, 8, 8)


def test_grey_stem_equals_rgb_stem_on_repeated_grey_image():
    x = torch.rand(1, 1, 64, 64)
    torch.manual_seed(0)
    rgb = DenseNet121Encoder(3).eval()
    torch.manual_seed(0)
    grey = DenseNet121Encoder(1).eval()
    with torch.no_grad():
        skips_rgb, deep_rgb = rgb(x.expand(-1, 3, -1, -1))
        skips_grey, deep_grey = grey(x)
    assert [s.shape[1] for s in skips_grey] == [64, 128, 256, 512]
    assert [s.shape[-1] for s in skips_grey] == [32, 16, 8, 4] and deep_grey.shape == (1, 1024, 2, 2)
    for a, b in zip(skips_rgb + [deep_rgb], skips_grey + [deep_grey]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_offline_imagenet_request_falls_back_and_is_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="busseg"):
        model = create_model("hybrid_attention_net", variant="baseline", encoder_weights="imagenet")
    info = collect_weights_info(model)
    assert info["encoder"]["requested"] == "imagenet"
    assert info["encoder"]["used"] in ("random", "imagenet")


def test_sfeb_gate_is_per_image_and_a_batch_of_one_trains():
    """Eq. 13's BN on a 1x1 map would normalise each channel over the batch: an image's gate
    would depend on its batch-mates and a training batch of one could not be normalised."""
    torch.manual_seed(0)
    block = SpatialFeatureEnhancementBlock(8).train()
    x = torch.randn(4, 8, 12, 12)
    others = torch.randn(3, 8, 12, 12) * 3 + 1
    with torch.no_grad():
        _, _, gate_a = block(x)
        _, _, gate_b = block(torch.cat([x[:1], others]))
        _, _, gate_eval = block.eval()(x)
    torch.testing.assert_close(gate_a[:1], gate_b[:1])
    torch.testing.assert_close(gate_a, gate_eval)  # training and eval mode agree
    block.train()
    out, _, _ = block(x[:1])  # no BatchNorm error for one image
    out.sum().backward()


def test_literal_sfeb_batchnorm_stays_selectable_with_a_clear_error_for_one_image():
    torch.manual_seed(0)
    block = SpatialFeatureEnhancementBlock(8, vector_norm="batch").train()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in block.channel_gate.modules())
    block(torch.randn(2, 8, 6, 6))
    with pytest.raises(ValueError, match="at least 2 images"):
        block(torch.randn(1, 8, 6, 6))
    block.eval()(torch.randn(1, 8, 6, 6))  # eval mode uses running statistics
    with pytest.raises(ConfigError, match="sfeb_vector_norm"):
        create_model("hybrid_attention_net", sfeb_vector_norm="layer")


def test_sfeb_global_pooling_follows_eqs_8_to_11_as_written():
    torch.manual_seed(0)
    block = SpatialFeatureEnhancementBlock(8, pooling="global").eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        out, pooled, gate = block(x)
        i1 = block.features(x)  # Eq. 7
        expected_pooled = torch.cat([i1.amax((2, 3), keepdim=True), i1.mean((2, 3), keepdim=True)], 1)
        expected = block.spatial(expected_pooled) * gate + x  # Eqs. 11, 14, 15
    assert pooled.shape == (2, 16, 1, 1)  # P_o: global max and average of every channel
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(out, expected)
    enhancement = out - x
    # global pooling: the block adds one value per channel and image (constant over space)
    torch.testing.assert_close(enhancement, enhancement[:, :, :1, :1].expand_as(enhancement))
    with pytest.raises(ConfigError, match="sfeb_pooling"):
        create_model("hybrid_attention_net", sfeb_pooling="spatial")


# ----------------------------------------------------------------------------- training
def test_gradients_reach_every_parameter():
    model = build("full").train()
    batch = make_blob_batch(2, 64)
    objective = create_objective("segmentation", pixel="bce_jaccard")
    loss, _ = objective(model(batch["image"]), batch)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_training_steps_on_phantom_batch_lower_the_loss():
    model = build("full", seed=1).train()
    batch = make_blob_batch(2, 64, seed=3)
    objective = create_objective(**load_recipe("hybrid_attention_net")["loss"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = train_steps(model, objective, batch, optimizer, steps=10)
    losses = [step["total"] for step in history]
    assert set(history[-1]) >= {"seg"}
    assert losses[-1] < 0.85 * losses[0], losses
