"""PNG figures of segmentation cases (Guo 2025, Figs. 2-3 in kind) and overlay grids.

Figures are drawn on a private matplotlib ``Figure`` with the Agg canvas (no pyplot state, safe
in worker processes and without a display). Colours follow :mod:`busseg.viz.overlay`: true
positive green, false positive red, false negative blue; a mask shown alone is amber.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from busseg.errors import DataError
from busseg.viz.overlay import (
    FN_COLOR,
    FP_COLOR,
    MASK_COLOR,
    TP_COLOR,
    as_mask,
    overlay_heatmap,
    overlay_mask,
    overlay_prediction,
    to_uint8_image,
)

PANEL_INCHES = 2.6
#: height of one line of a 9-pt panel heading, with its padding, in inches
HEADING_LINE_INCHES = 0.19


def _rgb01(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in color)  # type: ignore[return-value]


def _legend_handles(with_reference: bool) -> list[Patch]:
    if not with_reference:
        return [Patch(color=_rgb01(MASK_COLOR), label="mask")]
    return [
        Patch(color=_rgb01(MASK_COLOR), label="ground truth"),
        Patch(color=_rgb01(TP_COLOR), label="true positive"),
        Patch(color=_rgb01(FP_COLOR), label="false positive"),
        Patch(color=_rgb01(FN_COLOR), label="false negative"),
    ]


def _iou_caption(pred: np.ndarray, target: np.ndarray) -> str:
    union = np.logical_or(pred, target).sum()
    iou = 1.0 if union == 0 else np.logical_and(pred, target).sum() / union
    return f"IoU {iou:.2f}"


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise DataError(f"viz: figures are saved as PNG, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=100)
    return out


def _show(ax, rgb: np.ndarray | None, heading: str) -> None:
    ax.set_axis_off()
    ax.set_title(heading, fontsize=9)
    if rgb is None:
        ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")


def save_case_figure(
    path: str | Path,
    image: np.ndarray,
    target: np.ndarray | None,
    pred: np.ndarray,
    processed: np.ndarray | None = None,
    attention: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """One case in a row of panels: original | ground truth | predicted | processed |
    attention overlay (panels whose input is ``None`` are left out).

    ``pred`` / ``processed``: boolean masks or probabilities (thresholded at 0.5), drawn in the
    TP/FP/FN colours against ``target`` with their IoU in the panel title. ``attention``: a map
    in [0, 1] at any resolution (e.g. ``ModelOutput.extras["attention_1"][i, 0]``), resized to
    the image. Returns the written PNG path."""
    gray = to_uint8_image(image)
    shape = gray.shape[:2]
    predicted = as_mask(pred, shape, "prediction")
    reference = None if target is None else as_mask(target, shape, "ground truth")
    panels: list[tuple[str, np.ndarray]] = [("original", gray)]
    if reference is not None:
        panels.append(("ground truth", overlay_mask(gray, reference)))
    for name, mask in (("predicted", predicted), ("processed", processed)):
        if mask is None:
            continue
        mask = as_mask(mask, shape, name)
        heading = name if reference is None else f"{name} ({_iou_caption(mask, reference)})"
        panels.append((heading, overlay_prediction(gray, mask, reference)))
    if attention is not None:
        panels.append(("attention", overlay_heatmap(gray, attention)))

    fig = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + 0.7))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (heading, rgb) in zip(axes, panels):
        _show(ax, rgb, heading)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.legend(handles=_legend_handles(reference is not None), loc="lower center",
               ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.84, bottom=0.12, wspace=0.04)
    return _save(fig, path)


def _render_cell(row: Mapping[str, Any], column: str) -> np.ndarray | None:
    """A grid cell: see :func:`save_overlay_grid` for the rules."""
    if "image" not in row:
        raise DataError(f"viz: every grid row needs an 'image' entry (row keys: {sorted(row)})")
    gray = to_uint8_image(row["image"])
    if column == "image":
        return gray
    value = row.get(column)
    if value is None:
        return None
    reference = row.get("target")
    if column == "target":
        return overlay_mask(gray, value)
    array = np.asarray(value)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
        return array  # already rendered
    if np.issubdtype(array.dtype, np.floating):
        return overlay_heatmap(gray, array)
    target = None if reference is None else as_mask(reference, gray.shape[:2], "target")
    return overlay_prediction(gray, array, target)


def save_overlay_grid(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    title: str = "",
) -> Path:
    """A cases × panels grid (one row per case), e.g. to compare models on the same images.

    Each row is a mapping with ``"image"`` (required), optionally ``"target"`` (the reference
    for TP/FP/FN colouring), ``"name"`` (row label) and ``"captions"`` (``{column: text}``
    shown under the column heading), plus one entry per other column. A cell is drawn by its
    column and value:

    - column ``"image"``: the grayscale image; column ``"target"``: the ground truth (amber);
    - a boolean / integer array: a mask in TP/FP/FN colours against the row's ``"target"``
      (one colour when the row has none);
    - a float array: a heat map in [0, 1] (probabilities, attention coefficients);
    - a uint8 ``[H, W, 3]`` array: an already rendered picture;
    - missing or ``None``: an empty panel.
    """
    if not rows:
        raise DataError("viz: save_overlay_grid needs at least one row")
    if not columns:
        raise DataError("viz: save_overlay_grid needs at least one column")
    # The band above the first row holds the title and the column headings (a heading with a
    # caption takes two lines): sized from its contents so that neither overlaps the other.
    first_captions = rows[0].get("captions") or {}
    heading_lines = 2 if any(first_captions.get(c) for c in columns) else 1
    title_inches = 0.3 if title else 0.0
    top_inches = 0.08 + title_inches + heading_lines * HEADING_LINE_INCHES + 0.12
    bottom_inches = 0.45
    height = PANEL_INCHES * len(rows) + top_inches + bottom_inches
    fig = Figure(figsize=(PANEL_INCHES * len(columns), height))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    with_reference = any(row.get("target") is not None for row in rows)
    for r, row in enumerate(rows):
        captions = row.get("captions") or {}
        for c, column in enumerate(columns):
            heading = column.replace("_", " ") if r == 0 else ""
            if captions.get(column):
                heading = f"{heading}\n{captions[column]}" if heading else str(captions[column])
            _show(axes[r, c], _render_cell(row, column), heading)
        if row.get("name"):
            axes[r, 0].text(-0.04, 0.5, str(row["name"]), rotation=90, ha="right", va="center",
                            transform=axes[r, 0].transAxes, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.08 / height, va="top")
    fig.legend(handles=_legend_handles(with_reference), loc="lower center", ncol=4,
               fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.04, right=0.99, top=1.0 - top_inches / height,
                        bottom=bottom_inches / height, wspace=0.04, hspace=0.25)
    return _save(fig, path)


__all__ = ["save_case_figure", "save_overlay_grid"]
