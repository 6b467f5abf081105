"""`busseg evaluate`: scores in each image's own geometry, what the figures and the printout
show, and the leaky in-domain ensemble refused."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import busseg
from busseg.cli.main import main as cli_main
from busseg.data.imageio import read_mask
from busseg.data.phantom import make_phantoms
from busseg.data.preprocess import resize_mask
from busseg.engine.data import load_dataset
from busseg.engine.evaluate import evaluate_run, score
from busseg.errors import ConfigError
from busseg.metrics.segmentation import segmentation_metrics
from test_engine import QUIET, tiny_recipe

#: image sizes of the folder dataset: none at the network's 32 px, most not square.
SIZES = [(40, 56), (52, 44), (36, 60), (48, 48), (60, 42), (44, 52), (56, 40), (38, 58), (50, 46), (46, 54),
         (42, 62), (58, 38)] * 2


def read_rows(path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder dataset of phantoms resized to other, non-square sizes, with BUSI-like ids
    (spaces and parentheses) and labels."""
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    phantoms = make_phantoms(len(SIZES), image_size=64, seed=4)
    lines = ["id,label"]
    for i, (h, w) in enumerate(SIZES):
        label = phantoms.labels[i]
        sid = f"{label} ({i + 1})"
        Image.fromarray(phantoms.images[i]).resize((w, h), Image.BILINEAR).save(root / "images" / f"{sid}.png")
        Image.fromarray(phantoms.masks[i].astype(np.uint8) * 255).resize((w, h), Image.NEAREST).save(
            root / "masks" / f"{sid}_mask.png")
        lines.append(f"{sid},{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def cv_run(dataset, tmp_path_factory):
    from busseg.engine.train import cross_validate

    out = tmp_path_factory.mktemp("cv") / "cv"
    # a narrow U-Net that learns these phantoms in a few seconds (Dice about 0.5-0.8), so that
    # the masks scored and drawn are not trivially empty
    recipe = tiny_recipe(model="unet", model_options={"base_channels": 8}, epochs=12,
                         validation={"fraction": 0.2, "monitor": "val_loss", "mode": "min"})
    cross_validate(recipe, out, dataset="folder", root=dataset, **QUIET)
    return out


def test_scores_are_in_each_images_own_geometry_by_default(dataset, cv_run, tmp_path):
    result = evaluate_run(cv_run, tmp_path / "eval", dataset="folder", root=dataset)
    assert result["geometry"] == "original" and result["subset"] == "test" and result["n_images"] == len(SIZES)
    assert json.loads((tmp_path / "eval" / "fold_0" / "summary.json").read_text())["geometry"] == "original"
    # the training's own test scores used the same geometry and agree with evaluate
    cv = json.loads((cv_run / "cv_summary.json").read_text())
    assert cv["geometry"] == "original"
    assert result["segmentation"]["dice"]["mean"] == pytest.approx(cv["segmentation"]["dice"]["mean"], abs=1e-9)

    rows = read_rows(tmp_path / "eval" / "per_image.csv")
    sizes = {f"{label} ({i + 1})": size for i, (size, label) in
             enumerate(zip(SIZES, make_phantoms(len(SIZES), image_size=64, seed=4).labels))}
    checked = 0
    for fold in (0, 1):
        model = busseg.load(cv_run / f"fold_{fold}")
        for sid, row in rows.items():
            if int(row["fold"]) != fold:
                continue
            assert (int(row["height"]), int(row["width"])) == sizes[sid]
            # independently: the predictor's mask at the image's size against the stored mask
            mask = model(dataset / "images" / f"{sid}.png").mask
            expected = segmentation_metrics(mask, read_mask([dataset / "masks" / f"{sid}_mask.png"]))
            for metric in ("dice", "iou", "hd95", "asd"):
                assert float(row[metric]) == pytest.approx(expected[metric], abs=1e-9), (sid, metric)
            checked += 1
    assert checked == len(SIZES)


def test_network_geometry_is_kept_as_an_option(dataset, cv_run, tmp_path):
    result = evaluate_run(cv_run / "fold_0", tmp_path / "net", dataset="folder", root=dataset, geometry="network")
    assert result["geometry"] == "network"
    rows = read_rows(tmp_path / "net" / "per_image.csv")
    model = busseg.load(cv_run / "fold_0")
    prepared = load_dataset("folder", dataset, model.recipe)
    for sid, row in rows.items():
        assert (int(row["height"]), int(row["width"])) == (32, 32)
        i = prepared.index_of(sid)
        prob, _ = model.probabilities(model.preprocess(prepared.images[i])[None])
        reference = resize_mask(read_mask([dataset / "masks" / f"{sid}_mask.png"]), 32)
        assert float(row["dice"]) == pytest.approx(segmentation_metrics(prob[0] > 0.5, reference)["dice"], abs=1e-9)
    with pytest.raises(ConfigError, match="geometry 'square' unknown"):
        evaluate_run(cv_run / "fold_0", tmp_path / "x", dataset="folder", root=dataset, geometry="square")


def test_a_missed_lesion_counts_the_images_own_diagonal_in_pixels_and_mm(dataset):
    prepared = load_dataset("folder", dataset, tiny_recipe())
    assert sorted(prepared.original_sizes) == sorted(SIZES)
    spacing = (0.1, 0.25)
    prepared.records[:] = [replace(r, pixel_spacing_mm=spacing) for r in prepared.records]
    nothing = np.zeros((len(prepared), 32, 32), np.float32)  # every lesion missed
    for geometry in ("original", "network"):
        for row, (h, w) in zip(score(prepared, nothing, None, geometry=geometry), prepared.original_sizes):
            assert row["empty_case"] == "missed"
            if geometry == "original":
                assert row["hd95"] == pytest.approx(math.hypot(h, w))
            else:
                assert row["hd95"] == pytest.approx(math.hypot(32, 32))  # 45.25 px whatever the image
            # millimetres are physical in both: the image's own extent
            assert row["hd95_mm"] == pytest.approx(math.hypot(h * spacing[0], w * spacing[1]))


def test_ensemble_on_the_training_data_is_refused_as_leaky(dataset, cv_run, tmp_path):
    with pytest.raises(ConfigError, match="leaky"):
        evaluate_run(cv_run, tmp_path / "e", dataset="folder", root=dataset, ensemble=True)
    with pytest.raises(ConfigError, match="leaky"):
        evaluate_run(cv_run, tmp_path / "e", dataset="folder", root=dataset, subset="all", ensemble=True)
    import shutil

    copy = shutil.copytree(dataset, tmp_path / "same_images_elsewhere")  # the training images by another path
    with pytest.raises(ConfigError, match="leaky"):
        evaluate_run(cv_run, tmp_path / "e", dataset="folder", root=copy, ensemble=True)
    # another dataset: the ensemble is the point of cross-dataset evaluation
    other = evaluate_run(cv_run, tmp_path / "cross", dataset="phantom", data_options={"n": 6, "seed": 7},
                         ensemble=True)
    assert other["subset"] == "all" and other["ensemble"]["n_images"] == 6 and other["ensemble"]["n_models"] == 2
    # another hospital's scans in the same generic folder layout
    hospital = tmp_path / "hospital_b"
    for sub in ("images", "masks"):
        (hospital / sub).mkdir(parents=True)
    for k, path in enumerate(sorted((dataset / "images").glob("*.png"))[:5]):
        shutil.copy(path, hospital / "images" / f"b{k}.png")
        shutil.copy(dataset / "masks" / f"{path.stem}_mask.png", hospital / "masks" / f"b{k}.png")
    cross = evaluate_run(cv_run, tmp_path / "b", dataset="folder", root=hospital, ensemble=True)
    assert cross["subset"] == "all" and cross["ensemble"]["n_images"] == 5


def test_case_figures_show_what_the_csv_scored(dataset, cv_run, tmp_path, monkeypatch):
    import busseg.viz.figures as figures

    drawn = []
    real = figures.save_case_figure

    def spy(path, image, target, pred, processed=None, attention=None, title=""):
        drawn.append((path, image, target, pred, processed, title))
        return real(path, image, target, pred, processed, attention, title)

    monkeypatch.setattr(figures, "save_case_figure", spy)
    postprocess = {"keep_largest": 1, "fill_holes": True}
    evaluate_run(cv_run / "fold_1", tmp_path / "fig", dataset="folder", root=dataset, tta=True,
                 postprocess=postprocess, figures=3)
    rows = read_rows(tmp_path / "fig" / "fold_1" / "per_image.csv")
    assert len(drawn) == 3

    def iou(a, b):
        union = np.logical_or(a, b).sum()
        return 1.0 if union == 0 else np.logical_and(a, b).sum() / union

    for path, image, target, pred, processed, title in drawn:
        sid = re.search(r" — (.+) \((?:best|median|worst|rank [^)]+)\);", title)[1]
        row = rows[sid]
        assert image.shape == target.shape == pred.shape == (int(row["height"]), int(row["width"]))
        assert iou(pred, target) == pytest.approx(float(row["iou"]), abs=1e-9)  # with TTA, as the CSV
        assert iou(processed, target) == pytest.approx(float(row["pp_iou"]), abs=1e-9)
        assert "flip TTA" in title and f"Dice {float(row['dice']):.3f}" in title
        assert re.fullmatch(r"[A-Za-z0-9_-]+\.png", path.name), path.name  # no spaces or parentheses
        assert path.is_file()
    assert {p.name.split("_")[0] for p, *_ in drawn} >= {"best", "worst"}


def test_cli_prints_the_image_count_and_labels_the_ensemble_spread(dataset, cv_run, tmp_path, capsys):
    assert cli_main(["evaluate", str(cv_run), "--dataset", "folder", "--root", str(dataset),
                     "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert f"2 folds, {len(SIZES)} test images (each fold model on its own test fold" in printed
    assert "original geometry" in printed
    assert cli_main(["evaluate", str(cv_run), "--dataset", "phantom", "--n-phantoms", "6", "--ensemble",
                     "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "2 folds, 6 test images (every image of phantom scored by each model" in printed
    assert "ensemble of 2 models (one score, ± is the std over images)" in printed
    assert cli_main(["evaluate", str(cv_run), "--dataset", "folder", "--root", str(dataset), "--ensemble",
                     "--out", str(tmp_path / "c")]) == 2
    assert "leaky" in capsys.readouterr().err


# ------------------------------------------------------------ the robustness benchmark's images


def test_robustness_clean_rows_are_the_masks_evaluate_scores(dataset, cv_run, tmp_path):
    """One rule chooses each fold model's images and one predictor makes the masks: the robustness
    benchmark's clean rows are evaluate's rows (same images per fold, same Dice), with TTA too."""
    from busseg.engine.robustness import evaluate_corruptions

    for tta in (False, True):
        evaluate_run(cv_run, tmp_path / f"eval_{tta}", dataset="folder", root=dataset, tta=tta)
        scored = {(r["fold"], sid): float(r["dice"]) for sid, r in
                  ((r["id"], r) for r in csv.DictReader(open(tmp_path / f"eval_{tta}" / "per_image.csv")))}
        summary = evaluate_corruptions(cv_run, tmp_path / f"robust_{tta}", dataset="folder", root=dataset,
                                       corruptions=["gain"], severities=[1], tta=tta, progress=False)
        with open(tmp_path / f"robust_{tta}" / "per_image.csv", newline="") as fh:
            clean = {(r["fold"], r["id"]): float(r["dice"]) for r in csv.DictReader(fh) if r["corruption"] == "none"}
        assert summary["subset"] == "test" and summary["tta"] is tta
        assert clean.keys() == scored.keys() and len(clean) == len(SIZES)
        for key, dice in scored.items():
            assert clean[key] == pytest.approx(dice, abs=1e-9), key


def test_robustness_on_another_folder_scores_every_image_with_every_fold_model(dataset, cv_run, tmp_path):
    # the old rule ("test" whenever the dataset's name matched run.json) read the run's split
    # against another folder of the same layout and failed; evaluate treats it as cross-dataset
    from busseg.engine.robustness import evaluate_corruptions

    other = tmp_path / "other_site"
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    phantoms = make_phantoms(5, image_size=48, seed=11)
    for i in range(5):
        Image.fromarray(phantoms.images[i]).save(other / "images" / f"site2_{i}.png")
        Image.fromarray(phantoms.masks[i].astype(np.uint8) * 255).save(other / "masks" / f"site2_{i}.png")
    summary = evaluate_corruptions(cv_run, tmp_path / "robust", dataset="folder", root=other,
                                   corruptions=["annotations"], severities=[5], progress=False)
    assert summary["subset"] == "all" and summary["n_models"] == 2 and summary["n_images"] == 2 * 5
    with open(tmp_path / "robust" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["fold"], r["id"]) for r in rows} == {(str(f), f"site2_{i}") for f in (0, 1) for i in range(5)}
