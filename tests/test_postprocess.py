"""Post-processing of predicted masks, each step on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busseg.errors import ConfigError, DataError
from busseg.postprocess import (
    PAPER_DEFAULT,
    PostprocessConfig,
    postprocess_batch,
    postprocess_mask,
)


def disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def test_default_config_only_thresholds():
    prob = np.array([[0.2, 0.5], [0.51, 0.9]], np.float32)
    out = postprocess_mask(prob, PostprocessConfig())
    assert out.dtype == bool
    assert out.tolist() == [[False, False], [True, True]]  # exactly 0.5 is background
    assert postprocess_mask(prob, PostprocessConfig(threshold=0.3)).sum() == 3


def test_small_blob_removed_and_lesion_kept():
    mask = disc((48, 48), (20, 20), 8)
    mask[40:42, 40:43] = True  # 6-px speck
    out = postprocess_mask(mask, PostprocessConfig(min_component_px=10))
    assert not out[40:42, 40:43].any()
    assert np.array_equal(out, disc((48, 48), (20, 20), 8))
    # a component of exactly min_component_px pixels survives
    assert postprocess_mask(mask, PostprocessConfig(min_component_px=6))[40, 40]


def test_diagonal_neighbours_form_one_component_with_8_connectivity():
    mask = np.zeros((10, 10), bool)
    mask[[2, 3, 4], [2, 3, 4]] = True  # a 3-px diagonal line
    assert postprocess_mask(mask, PostprocessConfig(min_component_px=3)).sum() == 3
    four = PostprocessConfig(min_component_px=3, connectivity=1)
    assert postprocess_mask(mask, four).sum() == 0


def test_hole_filled_but_open_bay_not():
    mask = disc((40, 40), (20, 20), 12)
    mask[18:23, 18:23] = False  # enclosed hole
    mask[19:21, 30:40] = False  # notch open to the outside (reaches the ring's edge)
    out = postprocess_mask(mask, PostprocessConfig(fill_holes=True))
    assert out[18:23, 18:23].all()
    assert not out[19:21, 33:40].any()
    assert not postprocess_mask(mask, PostprocessConfig())[20, 20]


def test_largest_component_kept_and_k_largest():
    mask = disc((64, 64), (16, 16), 10) | disc((64, 64), (48, 48), 6) | disc((64, 64), (16, 50), 3)
    largest = postprocess_mask(mask, PostprocessConfig(keep_largest=1))
    assert np.array_equal(largest, disc((64, 64), (16, 16), 10))
    two = postprocess_mask(mask, PostprocessConfig(keep_largest=2))
    assert two[48, 48] and two[16, 16] and not two[16, 50]
    assert postprocess_mask(mask, PostprocessConfig(keep_largest=5)).sum() == mask.sum()


def test_smoothing_removes_spur_and_narrows_notch():
    lesion = disc((40, 40), (20, 20), 10)
    ragged = lesion.copy()
    ragged[19:21, 30:37] = True  # thin spur sticking out
    ragged[10:16, 20] = False  # one-pixel-wide notch, 6 px deep
    out = postprocess_mask(ragged, PostprocessConfig(smooth_radius=2))
    assert not out[19:21, 31:37].any()
    assert out[14:16, 20].all()  # notch 6 -> 3 px deep (the opening first widens its mouth)
    assert out[14:28, 13:28].all()  # the body itself survives

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(out, lesion) > iou(ragged, lesion)


def test_smoothing_does_not_erode_lesions_touching_the_border():
    mask = np.zeros((30, 30), bool)
    mask[:, :12] = True  # lesion cut by the left and top/bottom edges
    out = postprocess_mask(mask, PostprocessConfig(smooth_radius=3))
    assert np.array_equal(out, mask)


def test_paper_default_cleans_a_noisy_prediction():
    truth = disc((64, 64), (30, 30), 14)
    noisy = truth.copy()
    noisy[28:31, 28:31] = False  # hole
    noisy[5:7, 55:57] = True  # speck
    out = postprocess_mask(noisy.astype(np.float32) * 0.9, PAPER_DEFAULT)
    assert not out[5:7, 55:57].any()
    assert out[28:31, 28:31].all()
    iou = (out & truth).sum() / (out | truth).sum()
    assert iou > 0.97


def test_disabled_config_and_inputs_untouched():
    mask = np.zeros((20, 20), bool)
    mask[2, 2] = True
    copy = mask.copy()
    config = PostprocessConfig(min_component_px=5, enabled=False)
    assert postprocess_mask(mask, config)[2, 2]
    assert postprocess_mask(mask, PostprocessConfig(min_component_px=5)).sum() == 0
    assert np.array_equal(mask, copy)
    empty = np.zeros((8, 8), np.float32)
    assert postprocess_mask(empty, PAPER_DEFAULT).sum() == 0


def test_batch_and_channel_first_inputs():
    probs = torch.zeros(3, 1, 16, 16)
    probs[1, 0, 4:12, 4:12] = 0.8
    out = postprocess_batch(probs.numpy(), PostprocessConfig(fill_holes=True))
    assert out.shape == (3, 16, 16) and out.dtype == bool
    assert out[1].sum() == 64 and out[0].sum() == 0
    assert postprocess_mask(probs[1].numpy()).shape == (16, 16)


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="logits"):
        postprocess_mask(np.array([[-2.0, 3.0]]))
    with pytest.raises(DataError, match="0/255"):
        postprocess_mask(np.array([[0, 255]], np.uint8))
    with pytest.raises(DataError, match="2-D"):
        postprocess_mask(np.zeros((2, 3, 4)))


def test_config_round_trip_presets_and_validation():
    config = PostprocessConfig(threshold=0.4, keep_largest=2, fill_holes=True)
    assert PostprocessConfig.from_dict(config.to_dict()) == config
    assert PostprocessConfig.from_dict(None) == PostprocessConfig()
    paper = PostprocessConfig.from_dict({"preset": "paper", "smooth_radius": 1})
    assert paper.fill_holes and paper.min_component_px == PAPER_DEFAULT.min_component_px
    assert paper.smooth_radius == 1
    assert "fill holes" in PAPER_DEFAULT.describe()
    assert PostprocessConfig().is_identity and not PAPER_DEFAULT.is_identity
    with pytest.raises(ConfigError, match="smoth_radius"):
        PostprocessConfig.from_dict({"smoth_radius": 2})
    with pytest.raises(ConfigError, match="preset"):
        PostprocessConfig.from_dict({"preset": "best"})
    for bad in ({"threshold": 1.0}, {"keep_largest": 0}, {"min_component_px": -1},
                {"fill_holes": "yes"}, {"connectivity": 3}, {"smooth_radius": 1.5}):
        with pytest.raises(ConfigError):
            PostprocessConfig.from_dict(bad)


def test_reference_size_scales_the_preset_to_the_mask_resolution():
    assert PAPER_DEFAULT.pixel_sizes((256, 256)) == (100, 2)
    assert PAPER_DEFAULT.pixel_sizes((64, 64)) == (6, 1)
    assert PAPER_DEFAULT.pixel_sizes((512, 512)) == (400, 4)
    assert PostprocessConfig(min_component_px=7, smooth_radius=3).pixel_sizes((64, 64)) == (7, 3)
    # a 5x5 lesion (25 px) survives the preset at 64x64 (threshold 6 px) but not 100 px
    mask = np.zeros((64, 64), bool)
    mask[20:25, 20:25] = True
    assert postprocess_mask(mask, PAPER_DEFAULT).sum() > 0
    unscaled = PostprocessConfig.from_dict({**PAPER_DEFAULT.to_dict(), "reference_size": None})
    assert postprocess_mask(mask, unscaled).sum() == 0
    with pytest.raises(ConfigError, match="reference_size"):
        PostprocessConfig(reference_size=0)
