"""Batched augmentation (kornia) on [0, 1] images before normalisation: presets, ultrasound
transforms, reproducibility, masks following images."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from busseg.data.augment import (
    ROBUST_PRESET,
    BatchAugmenter,
    build_depth_gain,
    build_dynamic_range,
    build_elastic,
    build_signed_rotation_scale,
    build_speckle,
    resolve_augmentation,
)
from busseg.data.phantom import make_phantoms
from busseg.data.preprocess import PreparedData, model_input
from busseg.engine.data import InMemoryTensors
from busseg.errors import ConfigError


def _batch(n=4, size=48):
    data = make_phantoms(n, image_size=size, seed=1)
    image = torch.as_tensor(data.images, dtype=torch.float32)[:, None] / 255
    mask = torch.as_tensor(data.masks, dtype=torch.float32)[:, None]
    return image, mask


def _prepared(n, size):
    data = make_phantoms(n, image_size=size, seed=0)
    return PreparedData(ids=[f"p{i}" for i in range(n)], images=data.images, masks=data.masks,
                        labels=np.zeros(n, np.int64), original_sizes=[(size, size)] * n, records=[],
                        image_size=size)


def _apply(aug, image):
    """Run one kornia transform with its parameters drawn as in a pipeline."""
    params = aug.forward_parameters(image.shape)
    return aug.apply_transform(image, params, aug.flags), params


def test_robust_preset_is_reproducible_from_the_seed_alone_and_keeps_masks_binary():
    image, mask = _batch()
    aug = BatchAugmenter({"preset": "robust"})
    assert aug.enabled
    torch.manual_seed(123)
    a_img, a_mask = aug(image, mask, seed=7)
    torch.manual_seed(999)  # another global state: same draws
    b_img, b_mask = aug(image, mask, seed=7)
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    c_img, _ = aug(image, mask, seed=8)
    assert not torch.equal(a_img, c_img)
    assert a_img.min() >= 0 and a_img.max() <= 1 and a_img.shape == image.shape
    assert set(a_mask.unique().tolist()) <= {0.0, 1.0}


def test_augmentation_leaves_the_global_random_stream_alone():
    image, mask = _batch()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    BatchAugmenter({"preset": "robust"})(image, mask, seed=1)
    assert torch.equal(torch.rand(3), expected)  # dropout draws do not depend on augmentation


def test_geometric_transforms_move_mask_and_image_together():
    _, mask = _batch(8, 64)
    image = mask.clone()  # an image equal to its mask: geometry must keep them equal
    geometric = {k: {**v, "p": 1.0} for k, v in ROBUST_PRESET.items() if k in ("fov_crop", "affine", "elastic")}
    out_img, out_mask = BatchAugmenter({**geometric, "hflip": 0.5})(image, mask, seed=3)
    agreement = ((out_img > 0.5) == (out_mask > 0.5)).float().mean()
    assert agreement > 0.98
    assert not torch.equal(out_mask, mask)


def test_rotation_pads_with_black_before_normalisation():
    # the defect of the hand-written augmenter: it rotated normalised images and padded with 0,
    # which is mean grey after z-scoring; now padding is black, the darkest value after it
    image = torch.full((2, 1, 32, 32), 0.6)
    image[:, :, 8:24, 8:24] = 0.9
    mask = torch.zeros(2, 1, 32, 32)
    out, _ = BatchAugmenter({"rotate": 1.0, "rotate_deg": [40, 45]})(image, mask, seed=0)
    assert out[:, :, 0, 0].max() == 0.0  # corners rotated in from outside the image
    x = model_input(out, "zscore")
    assert torch.allclose(x[:, :, 0, 0], x.amin(dim=(1, 2, 3))[:, None])


def test_in_memory_batches_hold_pixels_in_unit_range_and_images_are_normalised():
    data = _prepared(4, 32)
    tensors = InMemoryTensors(data, "zscore", in_channels=3)
    batch = tensors.gather([0, 1])
    assert batch["image"].shape == (2, 1, 32, 32)
    assert torch.allclose(batch["image"] * 255, torch.as_tensor(data.images[:2], dtype=torch.float32)[:, None])
    assert tensors.images.shape == (4, 3, 32, 32)
    torch.testing.assert_close(model_input(batch["image"], "zscore", 3), tensors.images[:2], atol=1e-5, rtol=0)


def test_training_task_augments_then_normalises():
    from busseg.engine.recipe import validate_recipe
    from busseg.engine.task import SegmentationTask

    recipe = validate_recipe({"model": "unet", "model_options": {"base_channels": 4}, "image_size": 32,
                              "normalization": "zscore", "augmentation": {"preset": "robust"}}, "test")
    task = SegmentationTask(recipe)
    batch = InMemoryTensors(_prepared(4, 32), "zscore").gather([0, 1, 2, 3])
    pixels = batch["image"].clone()
    task.trainer = SimpleNamespace(training=True, current_epoch=0)
    out = task.on_after_batch_transfer(dict(batch), 0)
    assert not torch.allclose(out["image"], model_input(pixels, "zscore"))  # augmented
    torch.testing.assert_close(out["image"].mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["image"].std(dim=(1, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    task.trainer = SimpleNamespace(training=False, current_epoch=0)  # validation: normalised, not augmented
    out = task.on_after_batch_transfer(dict(batch), 0)
    torch.testing.assert_close(out["image"], model_input(pixels, "zscore"))


def test_depth_gain_adds_gain_over_dynamic_range_and_keeps_black():
    aug = build_depth_gain(max_db=6.0, knots=3, p=1.0)
    image = torch.full((1, 1, 50, 50), 0.5)
    image[..., :20] = 0.0  # outside the field of view
    params = {"knots_db": torch.tensor([[[6.0, 0.0, -6.0]]])}
    out = aug.apply_transform(image, params, aug.flags)
    assert torch.allclose(out[0, 0, 0, 30:], torch.tensor(0.6))  # +6 dB over 60 dB at the skin line
    assert torch.allclose(out[0, 0, -1, 30:], torch.tensor(0.4))  # -6 dB at the deepest row
    assert (out[..., :12] == 0).all()  # black away from the echoes stays black


def test_dynamic_range_remaps_around_the_brightest_echo():
    aug = build_dynamic_range([0.5, 2.0], p=1.0)
    image = torch.tensor([0.0, 0.5, 0.8, 1.0]).view(1, 1, 1, 4)
    out = aug.apply_transform(image, {"ratio": torch.tensor([2.0])}, aug.flags)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.0, 0.6, 1.0]))
    drawn = aug.generate_parameters((4000, 1, 2, 2))["ratio"]
    assert 0.5 <= drawn.min() and drawn.max() <= 2.0
    assert abs(float(torch.log(drawn).mean())) < 0.05  # log-uniform: symmetric in log


def test_speckle_is_multiplicative_and_grainy():
    torch.manual_seed(0)
    aug = build_speckle([0.3, 0.3], [1.5, 1.5], p=1.0)
    image = torch.full((1, 1, 64, 64), 0.2)
    image[..., 32:] = 0.6
    out, _ = _apply(aug, image)
    dark, bright = out[..., :, 4:28], out[..., :, 36:60]
    ratio = float(bright.std() / dark.std())
    assert 2.3 < ratio < 3.7  # noise proportional to the echo amplitude (0.6 / 0.2 = 3)
    assert abs(float(dark.mean()) - 0.2) < 0.02
    d = out[0, 0, :, 4:28] - 0.2
    neighbour = float((d[:, 1:] * d[:, :-1]).mean() / (d * d).mean())
    assert neighbour > 0.5  # spatially correlated: one grain spans several pixels


def test_elastic_displacement_has_the_requested_size():
    torch.manual_seed(0)
    size = 96
    aug = build_elastic(spacing=0.25, magnitude=0.02, p=1.0)
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(16, 1, size, size).contiguous()
    out, _ = _apply(aug, ramp)
    inner = (slice(None), 0, slice(16, -16), slice(16, -16))
    shift = (out[inner] - ramp[inner]) * (size - 1) / size  # in image sides
    assert 0.01 < float(shift.std()) < 0.03


def test_paper_rotation_draws_an_angle_magnitude_in_range_with_both_signs():
    aug = build_signed_rotation_scale(1.0, [10.0, 30.0], [1.0, 1.0])
    angle = aug.generate_parameters((200, 1, 8, 8))["angle"]
    assert (angle.abs() >= 10).all() and (angle.abs() <= 30).all()
    assert (angle > 0).any() and (angle < 0).any()


def test_preset_values_can_be_overridden_and_switched_off():
    cfg = resolve_augmentation({"preset": "robust", "hflip": 0.0, "speckle": {"p": 0.0}})
    assert cfg["hflip"] == 0.0 and cfg["speckle"]["p"] == 0.0
    assert cfg["speckle"]["sigma"] == ROBUST_PRESET["speckle"]["sigma"]
    assert cfg["depth_gain"] == ROBUST_PRESET["depth_gain"]
    assert not BatchAugmenter({"hflip": 0.0, "contrast": 0.0}).enabled


@pytest.mark.parametrize("cfg, match", [
    ({"preset": "strong"}, r"augmentation.preset must be one of robust; got 'strong'"),
    ({"jitter": 0.2}, r"unknown option\(s\) \['jitter'\] in augmentation; known: affine, brightness"),
    ({"speckle": {"p": 1.5, "sigma": [0.1, 0.2], "grain": [1, 2]}}, r"augmentation.speckle.p must be in \[0, 1\]"),
    ({"speckle": {"p": 0.5, "sigma": [0.2, 0.1], "grain": [1, 2]}},
     r"augmentation.speckle.sigma must be \[min, max\] with min <= max"),
    ({"speckle": {"p": 0.5, "sigma": [0.1, 0.2], "grain": [0, 2]}}, r"augmentation.speckle.grain element 0"),
    ({"speckle": {"p": 0.5, "size": 3, "sigma": [0.1, 0.2], "grain": [1, 2]}},
     r"unknown option\(s\) \['size'\] in augmentation.speckle"),
    ({"speckle": {"p": 0.5}}, r"augmentation.speckle misses parameter\(s\) \['sigma', 'grain'\]"),
    ({"elastic": {"spacing": 0, "magnitude": 0.01}}, r"augmentation.elastic.spacing must be in \(0, 1\]"),
    ({"depth_gain": {"max_db": 6, "knots": 2.5}}, r"augmentation.depth_gain.knots must be an integer"),
    ({"gamma": 0.3}, "augmentation.gamma must be a mapping"),
    ({"hflip": 2}, r"augmentation.hflip must be in \[0, 1\], got 2"),
    ({"preset": "robust", "contrast": 1.0}, r"augmentation.contrast must be in \[0, 1\)"),
])
def test_bad_augmentation_sections_name_the_file_and_key(cfg, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve_augmentation(cfg, "my.yaml")
    assert str(info.value).startswith("my.yaml:")


def test_recipes_switch_the_robust_preset_on_and_keep_its_name():
    from busseg.engine.recipe import apply_overrides, load_recipe

    paper = load_recipe("elad_net")
    assert "preset" not in paper["augmentation"]  # paper recipes keep their paper's augmentation
    robust = apply_overrides(paper, ["augmentation={preset: robust}"])
    assert robust["augmentation"]["preset"] == "robust"
    assert robust["augmentation"]["speckle"] == {**ROBUST_PRESET["speckle"]}
    assert apply_overrides(robust, []) == robust  # expanding twice changes nothing (resume check)


def test_augmentation_keeps_images_in_range_for_every_paper_recipe():
    from busseg.engine.recipe import list_recipes, load_recipe

    image, mask = _batch(2, 32)
    for name in list_recipes():
        aug = BatchAugmenter(load_recipe(name)["augmentation"])
        out, out_mask = aug(image, mask, seed=1)
        assert out.min() >= 0 and out.max() <= 1 and math.isfinite(float(out.sum())), name
        assert np.isin(out_mask.numpy(), [0, 1]).all(), name


@pytest.mark.parametrize("n", [3, 4, 8])
def test_transforming_only_the_drawn_samples_changes_nothing(monkeypatch, n):
    # on the CPU each transform computes only the samples drawn for it; kornia's own path
    # (every sample, then a blend) must give the same batch
    import busseg.data.augment as augment

    image, mask = _batch(n, 40)
    cfg = {"preset": "robust", "vflip": 0.5, "rotate": 0.5, "rotate_deg": [10, 30], "brightness": 0.1}
    fast = [BatchAugmenter(cfg)(image, mask, seed) for seed in range(4)]

    def every_sample(self, input, params, flags, transform=None):
        return super(augment.SelectedSamplesOnly, self).apply_transform(input, params, flags, transform)

    monkeypatch.setattr(augment.SelectedSamplesOnly, "apply_transform", every_sample)
    for seed, (img, msk) in enumerate(fast):
        ref_img, ref_msk = BatchAugmenter(cfg)(image, mask, seed)
        torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
        assert torch.equal(msk, ref_msk)


def test_an_augmentation_section_is_described_by_its_preset_and_changes():
    from busseg.data.augment import describe_augmentation

    assert describe_augmentation({"preset": "robust"}) == "robust"
    # as a validated recipe holds it: the preset's name and its expanded values
    assert describe_augmentation({"preset": "robust", **resolve_augmentation({"preset": "robust"})}) == "robust"
    assert describe_augmentation({"preset": "robust", "hflip": 0.0, "gamma": {"p": 0.5}}) == \
        "robust (changed: gamma, hflip)"
    assert describe_augmentation({"hflip": 0.5, "vflip": 0.0, "scale": [0.9, 1.1], "rotate_deg": [0, 15]}) == \
        "paper: hflip, scale"
    assert describe_augmentation({"hflip": 0.0, "scale": [1.0, 1.0]}) == "none"
