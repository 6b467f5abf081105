"""Overlays (one colour convention) and PNG figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from busseg.errors import DataError
from busseg.models import create_model
from busseg.postprocess import PAPER_DEFAULT, postprocess_mask
from busseg.viz import (
    FN_COLOR,
    FP_COLOR,
    MASK_COLOR,
    TP_COLOR,
    overlay_heatmap,
    overlay_prediction,
    save_case_figure,
    save_overlay_grid,
    to_uint8_image,
)


def square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


@pytest.fixture
def case():
    image = np.full((32, 32), 100, np.uint8)
    target = square((32, 32), 4, 4, 12)
    pred = square((32, 32), 8, 8, 12)
    return image, target, pred


def test_tp_fp_fn_colours_at_full_alpha(case):
    image, target, pred = case
    rgb = overlay_prediction(image, pred, target, alpha=1.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert tuple(rgb[12, 12]) == TP_COLOR  # inside both
    assert tuple(rgb[18, 18]) == FP_COLOR  # predicted only
    assert tuple(rgb[6, 6]) == FN_COLOR  # annotated only
    assert tuple(rgb[28, 28]) == (100, 100, 100)  # background untouched


def test_blend_keeps_image_visible_and_inputs_untouched(case):
    image, target, pred = case
    before = image.copy()
    rgb = overlay_prediction(image, pred, target, alpha=0.5)
    expected = np.round(0.5 * 100 + 0.5 * np.array(TP_COLOR)).astype(np.uint8)
    assert tuple(rgb[12, 12]) == tuple(expected)
    assert np.array_equal(image, before)


def test_prediction_without_target_uses_one_colour(case):
    image, _, pred = case
    rgb = overlay_prediction(image, pred, alpha=1.0)
    colours = {tuple(c) for c in rgb[pred]}
    assert colours == {MASK_COLOR}
    assert tuple(rgb[0, 0]) == (100, 100, 100)


def test_probabilities_are_thresholded_and_shapes_checked(case):
    image, target, pred = case
    prob = pred.astype(np.float32) * 0.8
    assert np.array_equal(
        overlay_prediction(image, prob, target), overlay_prediction(image, pred, target)
    )
    with pytest.raises(DataError, match="shape"):
        overlay_prediction(image, pred[:16], target)


def test_heatmap_resized_and_coloured():
    image = np.zeros((32, 32), np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0
    rgb = overlay_heatmap(image, heat, alpha=1.0)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert rgb[16, 2, 2] > rgb[16, 2, 0]  # jet: low = blue
    assert rgb[16, 30, 0] > rgb[16, 30, 2]  # high = red
    with pytest.raises(DataError, match="NaN"):
        overlay_heatmap(image, np.full((8, 8), np.nan))


def test_to_uint8_image_scales_floats():
    assert to_uint8_image(np.array([[0.0, 1.0]])).tolist() == [[0, 255]]
    assert to_uint8_image(np.array([[-1.0, 3.0]])).tolist() == [[0, 255]]
    assert to_uint8_image(np.zeros((1, 4, 4), np.float32)).shape == (4, 4)


def test_case_figure_from_a_real_model_output(tmp_path):
    torch.manual_seed(0)
    model = create_model("attention_unet_plus", base_channels=4).eval()
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        out = model(image)
    prob = torch.sigmoid(out.seg)[0, 0].numpy()
    target = square((64, 64), 20, 20, 20)
    path = save_case_figure(
        tmp_path / "figs" / "case.png",
        image[0, 0].numpy(),
        target,
        prob > 0.5,
        processed=postprocess_mask(prob, PAPER_DEFAULT),
        attention=out.extras["attention_2"][0, 0].numpy(),
        title="phantom",
    )
    assert path.exists() and path.stat().st_size > 5_000
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
        pixels = np.asarray(png.convert("RGB"))
    assert width > 3.5 * height  # five panels side by side (plus title and legend rows)
    assert pixels.std() > 10  # not a blank canvas


def test_overlay_grid_written(tmp_path, case):
    image, target, pred = case
    rows = [
        {"image": image, "target": target, "name": "case 1", "model_a": pred,
         "attention": np.random.default_rng(0).random((8, 8)), "captions": {"model_a": "IoU 0.39"}},
        {"image": image, "target": None, "name": "case 2", "model_a": pred},
    ]
    path = save_overlay_grid(tmp_path / "grid.png", rows, ["image", "target", "model_a", "attention"])
    assert path.stat().st_size > 3_000
    with Image.open(path) as png:
        width, height = png.size
    assert width > height  # 4 columns, 2 rows
    with pytest.raises(DataError, match="image"):
        save_overlay_grid(tmp_path / "bad.png", [{"target": target}], ["target"])
    with pytest.raises(DataError, match="PNG"):
        save_overlay_grid(tmp_path / "grid.jpg", rows, ["image"])


def test_gray_uint8_fast_path_equals_the_rgb_path():
    """The uint8 grayscale fast path of overlay_mask (used by ``busseg predict``) gives exactly
    the pixels of the general float path, for lesions inside the image, touching its border,
    ragged, empty and covering everything."""
    from busseg.viz.overlay import overlay_mask

    def disk(h, w, cy, cx, r):
        yy, xx = np.mgrid[0:h, 0:w]
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    g = np.random.default_rng(4)
    image = g.integers(0, 256, (45, 61), dtype=np.uint8)
    rgb = np.repeat(image[..., None], 3, axis=-1)  # 3 channels: the general path
    ragged = disk(45, 61, 20, 30, 12) & (g.random((45, 61)) > 0.2)
    for mask in (disk(45, 61, 22, 30, 10), disk(45, 61, 2, 58, 9), ragged, np.zeros((45, 61), bool),
                 np.ones((45, 61), bool), g.random((45, 61)) > 0.5):
        got = overlay_mask(image, mask)
        assert got.dtype == np.uint8 and got.shape == (45, 61, 3)
        np.testing.assert_array_equal(got, overlay_mask(rgb, mask))
