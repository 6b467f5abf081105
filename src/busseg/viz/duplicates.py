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
    fig = Figure(figsize=(2 * PANEL_INCHES * 1.3, PANEL_INCHES * 1.25 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for r, row in enumerate(rows):
        for c, side in enumerate(("a", "b")):
            if f"image_{side}" not in row:
                raise DataError(f"viz: pair row {r} has no 'image_{side}' (keys: {sorted(row)})")
            ax = axes[r, c]
            _show(ax, to_uint8_image(np.asarray(row[f"image_{side}"])), str(row.get(f"name_{side}", side)))
            outline = row.get(f"outline_in_{side}")
            if outline is not None:
                ax.add_patch(Polygon(np.asarray(outline, float), closed=True, fill=False, edgecolor=OUTLINE_COLOR,
                                     linewidth=1.2, linestyle="--"))
                h, w = np.asarray(row[f"image_{side}"]).shape[:2]
                ax.set_xlim(-0.5, w - 0.5)  # keep the image's own frame when the outline leaves it
                ax.set_ylim(h - 0.5, -0.5)
        if row.get("caption"):
            axes[r, 0].text(1.02, -0.04, str(row["caption"]), ha="center", va="top", fontsize=7,
                            transform=axes[r, 0].transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=1.0 - 0.45 / fig.get_figheight(), bottom=0.02, wspace=0.04,
                        hspace=0.3)
    return _save(fig, path)


__all__ = ["OUTLINE_COLOR", "save_pair_figure"]
