"""Small output defects of issue 15: what a figure or table shows must be readable and say what
it measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.transforms import Bbox

import busseg.report.figures as report_figures
import busseg.viz.figures as viz_figures
from busseg.engine.recipe import apply_overrides, validate_recipe
from busseg.metrics.segmentation import segmentation_metrics
from busseg.report.benchmark import measure_complexity
from busseg.report.results import read_per_image
from busseg.report.tables import complexity_table, segmentation_numbers


def _capture(monkeypatch, module) -> list:
    figures: list = []

    def keep(fig, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig).draw()
        figures.append(fig)
        return path

    monkeypatch.setattr(module, "_save", keep)
    return figures


def test_missed_lesion_is_named_missed():
    target = np.zeros((16, 16), bool)
    target[4:9, 4:9] = True
    empty = np.zeros_like(target)
    assert segmentation_metrics(empty, target)["empty_case"] == "missed"
    assert segmentation_metrics(target, empty)["empty_case"] == "false_alarm"
    assert segmentation_metrics(empty, empty)["empty_case"] == "both_empty"


def test_older_csvs_are_read_with_todays_names(tmp_path):
    path = tmp_path / "cv_per_image.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "fold": [0, 0, 0], "dice": [0.0, 0.0, 1.0],
                  "empty_case": ["pred_only", "target_only", "both"]}).to_csv(path, index=False)
    assert read_per_image(path)["empty_case"].tolist() == ["missed", "false_alarm", "both_empty"]


def test_qualitative_grid_headings_do_not_overlap_the_title(monkeypatch):
    figures = _capture(monkeypatch, viz_figures)
    image = np.random.default_rng(0).integers(0, 255, (48, 48)).astype(np.uint8)
    target = np.zeros((48, 48), bool)
    target[10:30, 12:32] = True
    models = ["elad_net", "hybrid_attention_net", "unet_resnet18"]
    rows = [{"image": image, "target": target, "name": f"{tag}: case_{i}", **{m: target for m in models},
             "captions": {m: "Dice 81.2" for m in models}} for i, tag in enumerate(["best", "median", "worst"])]
    viz_figures.save_overlay_grid("grid.png", rows, ["image", "target", *models],
                                  title="busi: best / median / worst test images by mean Dice over models")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    headings = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert headings
    for box in headings:
        assert not Bbox.intersection(title, box), f"title {title} overlaps a heading {box}"
    assert title.y1 <= fig.bbox.y1 + 0.5  # the title stays inside the picture


def test_training_curves_have_whole_epoch_ticks(monkeypatch):
    figures = _capture(monkeypatch, report_figures)
    frame = pd.DataFrame({"train_loss": [0.9, 0.7, 0.6], "val_dice": [0.2, 0.4, 0.5]}, index=[0, 1, 2])
    report_figures.training_curves({"unet": [frame]}, "curves.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_complexity_is_measured_at_256_and_at_the_trained_size():
    recipe = apply_overrides(validate_recipe({"model": "unet", "model_options": {"base_channels": 4}}),
                             ["image_size=64"])
    entry = measure_complexity(recipe)
    assert entry["image_size"] == 256 and entry["trained_image_size"] == 64
    # a fully convolutional network: FLOPs scale with the pixel count
    assert entry["gflops_trained"] == pytest.approx(entry["gflops"] / 16, rel=1e-6)
    table = complexity_table({"unet": entry}, ["unet"], "caption", [])
    row = table.rows[0]
    assert "1×64×64" in row and "1×256×256" in row
    assert f"{entry['gflops_trained']:.3f}" in row


def test_missed_count_in_the_report_tables(tmp_path):
    from busseg.report.results import ModelResults

    frame = pd.DataFrame({"id": ["a", "b"], "fold": [0, 0], "empty_case": ["missed", None],
                          **{m: [0.0, 0.5] for m in ("dice", "iou", "precision", "recall", "specificity", "accuracy",
                                                      "hd95", "asd")}})
    results = ModelResults.__new__(ModelResults)
    object.__setattr__(results, "per_image", frame)
    assert segmentation_numbers({"m": results})["m"]["missed"] == 1


def test_cv_printout_writes_a_missing_spread_the_same_way_for_every_metric():
    """One fold model has no spread across models: Dice and HD95 alike say ``± n/a``, never
    ``± nan``."""
    from busseg.cli.cv import format_cv

    nan = float("nan")
    text = format_cv({"model": "unet", "folds": [0], "n_images": 3, "aggregation": "one fold",
                      "segmentation": {"dice": {"mean": 0.64, "std": nan}, "hd95": {"mean": 99.2, "std": nan}}})
    assert "dice 64.00 ± n/a" in text and "hd95 99.20 ± n/a px" in text and "nan" not in text
