"""Scanner-like corruptions and the robustness benchmark (evaluate --corruptions)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from busseg.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt, parse_corruptions
from busseg.data.phantom import make_phantoms
from busseg.errors import ConfigError


@pytest.fixture(scope="module")
def scan():
    """A phantom B-mode frame on a wider-than-tall canvas, with a black band at the bottom
    (outside the field of view), as exported scans have."""
    data = make_phantoms(1, image_size=96, seed=4)
    image = np.zeros((110, 140), np.uint8)
    image[:96, 20:116] = data.images[0]
    mask = np.zeros(image.shape, bool)
    mask[:96, 20:116] = data.masks[0].astype(bool)
    return image, mask


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_deterministic_and_keeps_the_geometry(scan, name):
    image, mask = scan
    for severity in SEVERITIES:
        a, am = corrupt(image, mask, name, severity, key="case-1")
        b, bm = corrupt(image, mask, name, severity, key="case-1")
        assert np.array_equal(a, b) and np.array_equal(am, bm)
        assert a.dtype == np.uint8 and a.shape == image.shape and am.shape == mask.shape and am.dtype == bool
        assert not np.array_equal(a, image), f"{name} at severity {severity} changed nothing"
    assert np.array_equal(image, scan[0]) and np.array_equal(mask, scan[1])  # inputs untouched


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in ("zoom",)])
def test_photometric_corruptions_grow_with_severity_and_leave_the_mask(scan, name):
    image, mask = scan
    changes = []
    for severity in SEVERITIES:
        out, out_mask = corrupt(image, mask, name, severity, key="case-2")
        assert np.array_equal(out_mask, mask)
        changes.append(float(np.abs(out.astype(float) - image).mean()))
    assert changes[-1] > changes[0]
    assert all(b >= a * 0.9 for a, b in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("name", ["gain", "tgc", "contrast"])
def test_gain_changes_leave_the_black_outside_the_field_of_view(scan, name):
    image, mask = scan
    out, _ = corrupt(image, mask, name, 5, key="case-3")
    assert (out[106:, :] == 0).all() and (out[:, :10] == 0).all()  # beyond the 4 % margin


def test_zoom_moves_the_mask_with_the_image(scan):
    image, mask = scan
    zoomed = [corrupt(image, mask, "zoom", s, key=f"k{i}") for s in (3, 5) for i in range(6)]
    assert any(not np.array_equal(m, mask) for _, m in zoomed)
    for out, out_mask in zoomed:
        # the lesion is darker than its surroundings wherever the mask went
        if out_mask.sum() > 30 and (~out_mask & (out > 0)).sum() > 30:
            assert out[out_mask].mean() < out[~out_mask & (out > 0)].mean()


def test_different_images_and_seeds_get_different_draws(scan):
    image, mask = scan
    a, _ = corrupt(image, mask, "speckle", 3, key="a")
    b, _ = corrupt(image, mask, "speckle", 3, key="b")
    c, _ = corrupt(image, mask, "speckle", 3, key="a", seed=1)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_annotations_put_calipers_on_the_lesion_border(scan):
    image, mask = scan
    out, _ = corrupt(image, mask, "annotations", 2, key="x")
    changed = np.abs(out.astype(int) - image) > 40
    ys, xs = np.nonzero(mask)
    lesion_rows = slice(ys.min() - 4, ys.max() + 5)
    lesion_cols = slice(xs.min() - 4, xs.max() + 5)
    assert changed[lesion_rows, lesion_cols].sum() > 10  # calipers at the lesion
    assert changed[:20, :].sum() > 10  # a text line at the top


def test_bad_requests_are_clear_errors(scan):
    image, mask = scan
    with pytest.raises(ConfigError, match="unknown corruption 'fog'"):
        corrupt(image, mask, "fog", 1, key="k")
    with pytest.raises(ConfigError, match="severity must be one of"):
        corrupt(image, mask, "gain", 6, key="k")
    with pytest.raises(ConfigError, match="mask shape"):
        corrupt(image, mask[:10], "gain", 1, key="k")
    with pytest.raises(ConfigError, match="unknown corruption"):
        parse_corruptions("gain,fog")
    assert parse_corruptions("all") == list(CORRUPTIONS)


def test_evaluate_corruptions_on_a_trained_run(tmp_path):
    from busseg.engine.recipe import validate_recipe
    from busseg.engine.train import train_fold
    from busseg.engine.robustness import evaluate_corruptions

    recipe = validate_recipe({"model": "unet", "model_options": {"base_channels": 4}, "image_size": 32, "epochs": 1,
                              "batch_size": 4, "cv_folds": 2, "seed": 0}, "test")
    run = tmp_path / "run"
    train_fold(recipe, run, data_options={"n": 16}, progress=False, accelerator="cpu", evaluate_test=False)
    out = tmp_path / "robust"
    summary = evaluate_corruptions(run, out, data_options={"n": 16}, corruptions=["gain", "zoom"],
                                   severities=[1, 5], progress=False)
    with open(out / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = summary["n_images"]
    assert n == len([r for r in rows if r["corruption"] == "none"]) > 0
    assert len(rows) == n * (1 + 2 * 2)
    assert {(r["corruption"], r["severity"]) for r in rows} == {("none", "0"), ("gain", "1"), ("gain", "5"),
                                                                ("zoom", "1"), ("zoom", "5")}
    dice = [float(r["dice"]) for r in rows if r["corruption"] != "none"]
    assert summary["mean_corruption_dice"] == pytest.approx(np.mean(dice))
    assert summary["relative_robustness"] == pytest.approx(summary["mean_corruption_dice"] / summary["clean_dice"])
    assert set(summary["by_corruption"]) == {"gain", "zoom"}
    # a rerun reuses the finished parts; other settings into the same folder are refused
    again = evaluate_corruptions(run, out, data_options={"n": 16}, corruptions=["gain", "zoom"],
                                 severities=[1, 5], progress=False)
    assert again["mean_corruption_dice"] == summary["mean_corruption_dice"]
    with pytest.raises(ConfigError, match="other settings"):
        evaluate_corruptions(run, out, data_options={"n": 16}, corruptions=["gain"], severities=[1, 5],
                             progress=False)
    assert json.loads((out / "settings.json").read_text())["corruptions"] == ["gain", "zoom"]


@pytest.mark.parametrize("options, message", [
    (["--corruptions", "gain,fog"], r"unknown corruption\(s\) \['fog'\]"),
    (["--corruptions", "--severities", "1,7"], r"severities must be among \[1, 2, 3, 4, 5\], got \[1, 7\]"),
    (["--corruptions", "--severities", "1,x"], "--severities: expected comma-separated integers"),
])
def test_evaluate_checks_the_corruption_options_before_evaluating(tmp_path, capsys, options, message):
    import re

    from busseg.cli.main import main

    # the run does not exist: the options are refused before the evaluation would find out
    code = main(["evaluate", str(tmp_path / "no_run"), "--out", str(tmp_path / "eval"), *options])
    assert code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "eval").exists()
