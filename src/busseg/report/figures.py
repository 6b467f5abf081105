"""The report's figures: per-image Dice box plots, the critical-difference diagram, training
curves. (The qualitative grid is drawn by :func:`busseg.viz.save_overlay_grid`.)

Figures are drawn on private matplotlib ``Figure`` objects with the Agg canvas (no pyplot
state, no display needed) and saved as PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from busseg.report.stats import FriedmanNemenyi


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def dice_boxplot(scores: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """One box per model of its per-image Dice (in %), models in the given order; the mean is
    marked by a triangle, every image by a dot."""
    names = list(scores)
    data = [np.asarray(scores[n], dtype=float) * 100 for n in names]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 4.2))
    ax = fig.subplots()
    ax.boxplot(data, showmeans=True, widths=0.55, flierprops={"markersize": 0})
    rng = np.random.default_rng(0)  # fixed jitter: the figure is reproducible
    for i, values in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.15, 0.15, len(values)), values, ".", color="0.35", alpha=0.35, markersize=3)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("per-image Dice (%)")
    ax.set_ylim(-2, 102)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def cd_diagram(result: FriedmanNemenyi, path: str | Path, title: str = "") -> Path:
    """Critical-difference diagram (Demšar 2006, Fig. 1 in kind).

    The axis carries average ranks (1 = best, on the left); each model is joined to its rank
    by an elbow line, the better half labelled on the left and the other half on the right; the
    bar above the axis is the Nemenyi critical difference; thick bars under the axis join the
    cliques of models whose ranks differ by at most CD (no significant difference)."""
    k = len(result.models)
    order = sorted(result.models, key=lambda m: (result.average_ranks[m], m))
    ranks = [result.average_ranks[m] for m in order]
    n_left = math.ceil(k / 2)
    clique_gap, row_gap = 0.14, 0.32
    first_row = 0.35 + clique_gap * len(result.cliques)
    height_units = first_row + row_gap * max(n_left, k - n_left) + 0.2
    fig = Figure(figsize=(7.5, 1.3 + 1.3 * height_units))
    ax = fig.subplots()
    ax.set_xlim(1 - 0.45 * (k - 1) - 0.6, k + 0.45 * (k - 1) + 0.6)
    ax.set_ylim(height_units, -0.75)
    ax.set_axis_off()

    ax.plot([1, k], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, -0.08], color="black", lw=1)
        ax.text(r, -0.13, str(r), ha="center", va="bottom", fontsize=9)
    cd = result.critical_difference
    ax.plot([1, 1 + cd], [-0.5, -0.5], color="black", lw=2)
    for x in (1, 1 + cd):
        ax.plot([x, x], [-0.55, -0.45], color="black", lw=1)
    ax.text(1 + cd / 2, -0.56, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)

    for i, clique in enumerate(sorted(result.cliques, key=lambda c: result.average_ranks[c[0]])):
        lo = min(result.average_ranks[m] for m in clique)
        hi = max(result.average_ranks[m] for m in clique)
        y = 0.2 + clique_gap * i
        ax.plot([lo - 0.03, hi + 0.03], [y, y], color="black", lw=4, solid_capstyle="round")

    for i, (name, rank) in enumerate(zip(order, ranks)):
        if i < n_left:
            y, x_end, align = first_row + row_gap * i, 1 - 0.25, "right"
        else:
            y, x_end, align = first_row + row_gap * (k - 1 - i), k + 0.25, "left"
        ax.plot([rank, rank, x_end], [0, y, y], color="0.25", lw=0.9)
        label = f"{name} ({rank:.2f})"
        ax.text(x_end + (-0.05 if align == "right" else 0.05), y, label, ha=align, va="center", fontsize=9)

    heading = title or "Critical difference diagram"
    heading += f"\nFriedman p = {result.pvalue:.2g}, Nemenyi α = {result.alpha}, {result.n} images"
    ax.set_title(heading, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def read_training_log(path: str | Path) -> pd.DataFrame:
    """Lightning's ``metrics.csv`` (one row per logging call) as one row per epoch: each
    column's first logged value in that epoch."""
    frame = pd.read_csv(path)
    frame = frame[frame["epoch"].notna()]
    frame = frame.assign(epoch=frame["epoch"].astype(int))
    return frame.groupby("epoch", sort=True).first()


def training_curves(curves: Mapping[str, Sequence[pd.DataFrame]], path: str | Path, title: str = "",
                    panels: Sequence[tuple[str, str]] = (("train_loss", "training loss"),
                                                         ("val_loss", "validation loss"),
                                                         ("val_dice", "validation Dice"))) -> Path:
    """One panel per logged quantity; per model the mean over folds (thick) and each fold
    (thin) against the epoch. Quantities no model logged are left out."""
    present = [(c, label) for c, label in panels if any(c in f.columns for fs in curves.values() for f in fs)]
    fig = Figure(figsize=(4.2 * max(1, len(present)), 3.6))
    axes = fig.subplots(1, max(1, len(present)), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for ax, (column, label) in zip(axes, present):
        for color, (name, frames) in zip(colors, curves.items()):
            series = [f[column].dropna() for f in frames if column in f.columns]
            series = [s for s in series if len(s)]
            if not series:
                continue
            for s in series:
                ax.plot(s.index + 1, s.values, color=color, lw=0.6, alpha=0.35)
            mean = pd.concat(series, axis=1).mean(axis=1)
            ax.plot(mean.index + 1, mean.values, color=color, lw=2, label=name, marker="o" if len(mean) < 6 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if present:
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["cd_diagram", "dice_boxplot", "read_training_log", "training_curves"]
