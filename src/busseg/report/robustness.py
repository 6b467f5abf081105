"""The report's robustness section: a table (clean Dice, mean corruption Dice, relative
robustness, Dice per corruption), Dice against severity (one line per model) and an example grid
of the corruptions, from each model's ``robustness/summary.json`` (written by
:func:`busseg.engine.robustness.evaluate_corruptions` during ``benchmark run --corruptions``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from busseg.data.corruptions import CORRUPTIONS, corrupt
from busseg.report.html import Cell, Table

#: What the robustness benchmark measures and what it does not, shown under the table.
SCOPE = ("Robustness: each fold model on its own test images under scanner-like corruptions (gain and TGC "
         "shifts, speckle, resolution loss, contrast, gamma, zoom/crop, JPEG, burned-in text and calipers) at "
         "five severities, applied in each image's own geometry before the model's preprocessing, deterministic "
         "(busseg.data.corruptions); masks scored at the image's own size. Mean corruption Dice: mean over "
         "corruptions of the mean over severities; relative robustness: mean corruption Dice / clean Dice. A "
         "reproducible proxy for acquisition shifts, not a second site: another hospital also changes the "
         "population, lesion mix, scanners' processing and annotators — test on another dataset for that.")


def robustness_numbers(directories: Mapping[str, Path]) -> dict[str, dict]:
    """model -> its robustness summary, for the models whose ``<dir>/robustness/summary.json``
    exists."""
    out = {}
    for name, directory in directories.items():
        path = Path(directory) / "robustness" / "summary.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def robustness_table(numbers: Mapping[str, dict], caption: str, source: list | None = None) -> Table:
    corruptions = list(dict.fromkeys(c for s in numbers.values() for c in s["corruptions"]))
    best = {key: max((s[key] for s in numbers.values() if s.get(key) is not None), default=None)
            for key in ("clean_dice", "mean_corruption_dice", "relative_robustness")}
    rows = []
    for name, s in numbers.items():
        row = [name, str(s.get("augmentation", "")), str(s["n_images"])]
        for key in ("clean_dice", "mean_corruption_dice", "relative_robustness"):
            row.append(Cell(_pct(s.get(key)), bold=s.get(key) is not None and s.get(key) == best[key]))
        row += [_pct(s["by_corruption"].get(c, {}).get("mean_dice")) for c in corruptions]
        rows.append(row)
    header = ["Model", "Augmentation", "Images", "Clean Dice (%)", "Mean corruption Dice (%)",
              "Relative robustness (%)", *corruptions]
    return Table(header, rows, caption, source or [])


def dice_vs_severity(numbers: Mapping[str, dict], path: str | Path, title: str = "") -> Path:
    """Mean Dice over the corruptions at each severity, severity 0 = clean; one line per model."""
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.subplots()
    for name, s in numbers.items():
        severities = [int(k) for k in s["dice_by_severity"]]
        values = [s["clean_dice"], *(s["dice_by_severity"][str(k)] for k in severities)]
        # the preset's name in the legend (a paper recipe's own keys are the model's default)
        augmentation = s.get("augmentation") or ""
        label = name if augmentation in ("", "paper recipe", "none") or augmentation.startswith("paper:") \
            else f"{name} ({augmentation})"
        ax.plot([0, *severities], np.asarray(values, float) * 100, marker="o", label=label)
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("mean Dice over corruptions (%)")
    ax.set_xticks(range(0, 6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def corruption_grid(image: np.ndarray, mask: np.ndarray, key: str, path: str | Path,
                    corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 3, 5),
                    seed: int = 0, width: int = 240) -> Path:
    """One image under every corruption: a row per corruption, the clean image then the given
    severities, each tile ``width`` pixels wide (the image's aspect kept), labelled; written as
    PNG. The tiles are the exact inputs the benchmark feeds the models (same ``key`` and
    ``seed``), shrunk for display."""
    from PIL import Image, ImageDraw, ImageFont

    corruptions = list(corruptions or CORRUPTIONS)
    height = max(1, round(width * image.shape[0] / image.shape[1]))
    font = ImageFont.load_default(size=max(10, width // 18))
    label_w = width // 2 + 20
    canvas = Image.new("L", (label_w + (1 + len(severities)) * (width + 4), len(corruptions) * (height + 4) + 24), 255)
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["clean", *(f"severity {s}" for s in severities)]):
        draw.text((label_w + j * (width + 4) + 4, 4), title, fill=0, font=font)
    for i, name in enumerate(corruptions):
        y = 24 + i * (height + 4)
        draw.text((4, y + height // 2 - 8), name, fill=0, font=font)
        tiles = [image] + [corrupt(image, mask, name, s, key=key, seed=seed)[0] for s in severities]
        for j, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile).resize((width, height), Image.BILINEAR),
                         (label_w + j * (width + 4), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
