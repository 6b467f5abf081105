"""Side-by-side figure of duplicate pairs, so that a person can confirm them by eye.

Each row shows image ``a`` and image ``b`` of one pair at the same height; the outline of the
other image's field of view, mapped through the transform that was found, is drawn on each
(cyan), so a crop shows as a rectangle inside the larger image and a shift as an offset frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from busseg.errors import DataError
from busseg.viz.figures import PANEL_INCHES, _save, _show
from busseg.viz.overlay import to_uint8_image

OUTLINE_COLOR = "#00e5ff"


def save_pair_figure(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str = "") -> Path:
    """A pairs x 2 grid. Each row: ``image_a``, ``image_b`` (2-D arrays), ``name_a``, ``name_b``
    (panel titles), optionally ``outline_in_a`` / ``outline_in_b`` (``[K, 2]`` polygons of the
    other image's frame, ``(x, y)`` pixels) and ``caption`` (text under the row)."""
    if not rows:
        raise DataError("viz: save_pair_figure needs at least one pair")
    panel = PANEL_INCHES * 1.5
    heading = 0.45 if title else 0.0
    fig = Figure(figsize=(2 * panel, (panel + 0.6) * len(rows) + heading))
    # a heading strip, then one sub-figure per pair: each caption sits under its own two panels
    ratios = ([heading] if title else []) + [panel + 0.6] * len(rows)
    subfigures = list(fig.subfigures(len(ratios), 1, height_ratios=ratios, squeeze=False)[:, 0])
    if title:
        subfigures.pop(0).text(0.5, 0.5, title, ha="center", va="center", fontsize=10)
    for r, (sub, row) in enumerate(zip(subfigures, rows)):
        axes = sub.subplots(1, 2)
        for ax, side in zip(axes, ("a", "b")):
            if f"image_{side}" not in row:
                raise DataError(f"viz: pair row {r} has no 'image_{side}' (keys: {sorted(row)})")
            image = np.asarray(row[f"image_{side}"])
            _show(ax, to_uint8_image(image), str(row.get(f"name_{side}", side)))
            outline = row.get(f"outline_in_{side}")
            if outline is not None:
                ax.add_patch(Polygon(np.asarray(outline, float), closed=True, fill=False, edgecolor=OUTLINE_COLOR,
                                     linewidth=1.2, linestyle="--"))
                ax.set_xlim(-0.5, image.shape[1] - 0.5)  # keep the image's own frame when the outline leaves it
                ax.set_ylim(image.shape[0] - 0.5, -0.5)
        if row.get("caption"):
            sub.text(0.5, 0.01, str(row["caption"]), ha="center", va="bottom", fontsize=7)
        sub.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.08, wspace=0.04)
    return _save(fig, path)


__all__ = ["OUTLINE_COLOR", "save_pair_figure"]
