"""Crop/zoom/shift duplicates: the audit clusters a cropped, rescaled, re-encoded copy of a
phantom (which the global DCT hash misses), keeps unrelated phantoms apart even when they share
an overlay, and split files record how their groups were found."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from busseg.data import audit_dataset, fold_ids, load_records, load_split, make_phantoms, make_split, save_split
from busseg.data.crop_duplicates import CropSearch, confirm_pair, extract_features
from busseg.data.splits import LEGACY_GROUPING, grouping_description
from busseg.errors import ConfigError

CROP = (40, 30, 216, 206)  # left, top, right, bottom of the crop in the 256-px phantom
ZOOM = 1.3


def _crop_zoom_jpeg(image: np.ndarray) -> np.ndarray:
    """The phantom cropped to ``CROP``, enlarged by ``ZOOM`` and saved as JPEG (quality 80)."""
    left, top, right, bottom = CROP
    crop = Image.fromarray(image).crop(CROP)
    zoomed = crop.resize((round((right - left) * ZOOM), round((bottom - top) * ZOOM)), Image.BICUBIC)
    buffer = io.BytesIO()
    zoomed.save(buffer, format="JPEG", quality=80)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def _stamp_overlay(image: np.ndarray, places=((4, 200),)) -> np.ndarray:
    """Scanner-like overlay at fixed places: blocks of white text on black, and a logo box."""
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    for x, y in places:
        draw.rectangle((x - 2, y - 2, x + 100, y + 52), fill=0)
        for k, line in enumerate(("RT AXILLA 10:00", "LOGIQ E9  L12", "GN 45  D 4.0cm", "FR 23  DR 66")):
            draw.text((x, y + 13 * k), line, fill=255)
    draw.rectangle((2, 2, 22, 22), outline=255)
    draw.text((7, 7), "Q", fill=255)
    return np.asarray(canvas)


def _stamp_labels(image: np.ndarray) -> np.ndarray:
    """Short two-line labels at five places spread over the image (about 20 % of it)."""
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    for x, y in ((4, 230), (150, 4), (4, 4), (150, 230), (80, 120)):
        draw.rectangle((x - 2, y - 2, x + 92, y + 24), fill=0)
        for k, line in enumerate(("RT AXILLA 10:00", "GN 45  D 4.0cm")):
            draw.text((x, y + 11 * k), line, fill=255)
    return np.asarray(canvas)


@pytest.fixture(scope="module")
def crop_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crops")
    ps = make_phantoms(8, image_size=256, seed=11)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rows = []
    for i in range(8):
        name = f"scan_{i}"
        Image.fromarray(ps.images[i]).save(root / "images" / f"{name}.png")
        Image.fromarray(ps.masks[i] * 255).save(root / "masks" / f"{name}.png")
        rows.append((name, ps.labels[i]))
    copy = _crop_zoom_jpeg(ps.images[2])
    Image.fromarray(copy).save(root / "images" / "zoomed_2.png")
    mask = Image.fromarray(ps.masks[2] * 255).crop(CROP).resize(copy.shape[::-1], Image.NEAREST)
    mask.save(root / "masks" / "zoomed_2.png")
    rows.append(("zoomed_2", ps.labels[2]))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "label"), *rows])
    return root


def test_audit_clusters_a_cropped_zoomed_reencoded_copy(crop_dataset):
    records = load_records("folder", crop_dataset)
    report = audit_dataset(records)
    # the global hash does not see it ...
    assert not any("zoomed_2" in c for c in report.hash_clusters)
    # ... the crop search does, with the transform that made it
    assert ["scan_2", "zoomed_2"] in report.clusters
    assert [(m.a, m.b) for m in report.crop_pairs] == [("scan_2", "zoomed_2")]
    match = report.crop_pairs[0]
    left, top = CROP[:2]
    assert match.scale == pytest.approx(ZOOM, rel=0.02)
    assert abs(match.rotation_deg) < 1.0
    assert match.shift == pytest.approx((-ZOOM * left, -ZOOM * top), abs=3.0)
    assert match.kind.startswith("same pixels")
    # unrelated phantoms stay apart
    assert all(len(c) == 2 for c in report.clusters if "scan_2" in c)
    groups = report.group_map()
    assert groups["scan_2"] == groups["zoomed_2"]
    assert len({groups[f"scan_{i}"] for i in range(8)}) == 8
    split = make_split(records, k=3, seed=0, val_fraction=0.0, groups=groups,
                       grouping_method=report.grouping_method())
    test_fold = {i: f for f in range(3) for i in fold_ids(split, f)[2]}
    assert test_fold["scan_2"] == test_fold["zoomed_2"]
    text = report.to_text()
    assert "scan_2 ~ zoomed_2: scale 1.30" in text
    pairs = json.loads(report.to_json())["crop_pairs"]
    assert pairs[0]["a"] == "scan_2" and pairs[0]["inliers"] >= 20


def test_shared_overlay_alone_is_not_a_duplicate():
    # Unrelated phantoms carrying the same overlay at the same place: the overlay matches under
    # the identity (dozens of inliers), the tissue does not, so the pair is rejected.
    settings = CropSearch()
    ps = make_phantoms(2, image_size=256, seed=3)
    features = [extract_features(_stamp_overlay(image), settings) for image in ps.images]
    compact = confirm_pair(*features, settings, ("a", "b"))
    assert not compact.confirmed and compact.inliers >= settings.min_inliers  # reached the checks
    assert "cell" in compact.reason  # a text block is compact: the spread check rejects it
    spread = confirm_pair(*(extract_features(_stamp_labels(image), settings) for image in ps.images),
                          settings, ("a", "b"))
    assert not spread.confirmed and spread.cells >= settings.min_cells  # labels all over the image ...
    assert "disagree locally" in spread.reason  # ... but the tissue between them does not agree
    # the same overlay on a copy of the same scan cropped by 9 px: confirmed, with the tissue's shift
    cropped = np.ascontiguousarray(ps.images[0][:, 9:])
    same = confirm_pair(features[0], extract_features(_stamp_overlay(cropped), settings), settings, ("a", "a_crop"))
    assert same.confirmed, same.describe()
    assert same.shift[0] == pytest.approx(-9, abs=1.5)


def test_audit_without_crop_search_and_bad_settings(crop_dataset):
    records = load_records("folder", crop_dataset)
    report = audit_dataset(records, read_masks=False, crop_search=None)
    assert report.crop_pairs == [] and report.crop_search is None
    assert not any("zoomed_2" in c for c in report.clusters)
    assert report.grouping_method()["crop_duplicates"] is None
    assert "not searched" in report.to_text()
    for bad in ({"min_inliers": 2}, {"min_cells": 17}, {"ratio": 1.5}, {"working_size": 8}, {"min_agreement": 2}):
        with pytest.raises(ConfigError):
            CropSearch(**bad)


def test_split_files_record_their_grouping_and_old_files_still_load(crop_dataset, tmp_path):
    records = load_records("folder", crop_dataset)
    report = audit_dataset(records, read_masks=False)
    split = make_split(records, k=3, seed=0, groups=report.group_map(), grouping_method=report.grouping_method())
    save_split(split, tmp_path / "new.json")
    loaded = load_split(tmp_path / "new.json", records)
    assert loaded["grouping_method"]["crop_duplicates"]["min_inliers"] == CropSearch().min_inliers
    assert "crop/zoom/shift duplicates" in grouping_description(loaded)
    # a split file written before the grouping method was recorded
    old = {k: v for k, v in split.items() if k != "grouping_method"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert grouping_description(load_split(tmp_path / "old.json", records)) == LEGACY_GROUPING
    assert "leaky" in grouping_description({"grouping": "none", "grouping_method": "none"}) or \
        grouping_description({"grouping": "none"}).startswith("none")


def test_a_run_keeps_the_split_it_started_with(crop_dataset, tmp_path):
    from busseg.data.preprocess import prepare
    from busseg.engine.recipe import load_recipe
    from busseg.engine.train import run_split

    records = load_records("folder", crop_dataset)
    prepared = prepare(records, image_size=32, progress=False)
    recipe = load_recipe("unet")
    recipe["cv_folds"] = 3
    # a run started with an older grouping (hash clusters only, another seed)
    old = make_split(records, k=3, seed=5, groups=audit_dataset(records, crop_search=None).group_map())
    save_split(old, tmp_path / "split.json")
    assert run_split(tmp_path, None, prepared, recipe, "folder")["folds"] == old["folds"]
    other = make_split(records, k=3, seed=6)
    with pytest.raises(ConfigError, match="another split"):
        run_split(tmp_path, other, prepared, recipe, "folder")
    recipe["cv_folds"] = 4
    with pytest.raises(ConfigError, match="folds"):
        run_split(tmp_path, None, prepared, recipe, "folder")


def test_leakage_gap_is_stratified_by_duplicates_in_training(tmp_path):
    # per-image Dice under both splits, written as the engine writes cv_per_image.csv
    import pandas as pd
    from scipy import stats

    from busseg.report.leakage import compare, gap_table

    rng = np.random.default_rng(0)
    ids = [f"img{i:02d}" for i in range(20)]
    leaked, crop_only = ids[:6], ids[4:6]
    grouped = rng.uniform(0.5, 0.8, 20)
    random = grouped + np.where(np.isin(ids, leaked), 0.15, 0.0) + rng.normal(0, 0.01, 20)
    for name, dice in (("random", random), ("grouped", grouped)):
        (tmp_path / name).mkdir()
        frame = pd.DataFrame({"id": ids, "fold": [i % 2 for i in range(20)], "dice": dice, "iou": dice,
                              "precision": dice, "recall": dice, "hd95": 1.0})
        frame.to_csv(tmp_path / name / "cv_per_image.csv", index=False)
    result = compare(tmp_path, leaked, crop_only)
    assert [result[k]["n"] for k in ("all_images", "leaking_images", "crop_only_leaking_images",
                                     "non_leaking_images")] == [20, 6, 2, 14]
    leak = result["leaking_images"]
    assert leak["gap"] == pytest.approx(np.mean(random[:6] - grouped[:6]))
    assert leak["random_dice"] == pytest.approx(np.mean(random[:6]))
    half = stats.t.ppf(0.975, 5) * np.std(random[:6] - grouped[:6], ddof=1) / np.sqrt(6)
    assert leak["gap_ci95"] == pytest.approx([leak["gap"] - half, leak["gap"] + half])
    assert abs(result["non_leaking_images"]["gap"]) < 0.02 < leak["gap"]
    table = gap_table({"models": {"unet": result}})
    assert len(table.rows) == 4 and table.rows[0][2] == "6" and table.rows[0][5].startswith("+15.")


def test_cli_audit_lists_pairs_and_draws_them(crop_dataset, tmp_path, capsys):
    from busseg.cli.main import main

    figure = tmp_path / "pairs.png"
    assert main(["data", "audit", "folder", "--root", str(crop_dataset), "--figure", str(figure),
                 "--out", str(tmp_path / "audit.json")]) == 0
    printed = capsys.readouterr().out
    assert "scan_2 ~ zoomed_2: scale 1.30" in printed and f"pair figure written to {figure}" in printed
    with Image.open(figure) as png:
        assert png.format == "PNG" and png.width > 400
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["crop_pairs"][0]["b"] == "zoomed_2" and saved["crop_search"]["n_verified"] >= 1
    assert main(["data", "audit", "folder", "--root", str(crop_dataset), "--figure-pairs", "0"]) == 2


def test_audit_counts_what_a_random_split_would_leak(crop_dataset):
    from busseg.data import random_split
    from busseg.data.audit import _random_split_leakage

    records = load_records("folder", crop_dataset)
    report = audit_dataset(records, read_masks=False)
    leak = _random_split_leakage(records, report, k=3, seed=1)
    split = random_split(records, k=3, seed=1, val_fraction=0.1)
    test_fold = {i: f for f in range(3) for i in fold_ids(split, f)[2]}
    assert test_fold["scan_2"] != test_fold["zoomed_2"]  # seed 1 separates them: each sees the other in training
    assert leak["test_images"] == leak["only_through_crop_pairs"] == 2
    assert report.hash_group_map()["zoomed_2"] == "zoomed_2"  # no hash link
