"""Shared test fixtures: tiny, generated data only (no dataset files)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("BUSSEG_OFFLINE", "1")  # tests never probe the network
torch.set_num_threads(1)  # pytest-xdist runs two workers on two cores


def make_blob_batch(n: int = 4, size: int = 64, channels: int = 1, seed: int = 0):
    """Noisy images with one dark elliptical 'lesion' each, exact masks and labels.

    A minimal fixture for model tests (a few optimisation steps must lower the loss). The
    realistic phantom generator lives in ``busseg.data.phantom``.
    """
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, channels, size, size), np.float32)
    masks = np.empty((n, 1, size, size), np.float32)
    labels = np.empty(n, np.int64)
    for i in range(n):
        cy, cx = g.uniform(0.3, 0.7, 2) * size
        ry, rx = g.uniform(0.1, 0.25, 2) * size
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img = 0.6 + 0.15 * g.standard_normal((size, size))
        img[m] -= 0.35
        images[i] = img[None]
        masks[i, 0] = m
        labels[i] = int(ry > rx)  # "taller than wide" stands for malignant
    return {
        "image": torch.from_numpy(images),
        "mask": torch.from_numpy(masks),
        "label": torch.from_numpy(labels),
    }


@pytest.fixture
def blob_batch():
    return make_blob_batch()


def train_steps(model, objective, batch, optimizer, steps: int = 10) -> list[dict]:
    """Run ``steps`` optimisation steps on one fixed batch; returns, per step, the objective's
    total (``"total"``) and its logged parts as floats. Model tests use it to check that a few
    steps lower the loss."""
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss, parts = objective(model(batch["image"]), batch)
        loss.backward()
        optimizer.step()
        history.append({k: float(v) for k, v in parts.items()} | {"total": loss.item()})
    return history


#: Learning-check thresholds of the test suite (``busseg.engine.learning_check``): eval-mode
#: Dice on held-out phantoms at least ``LEARNING_FLOOR`` and at most ``LEARNING_MAX_GAP`` below
#: training-mode Dice with the same weights.
LEARNING_FLOOR = 0.5
LEARNING_MAX_GAP = 0.15


def assert_learns(model: str, config: dict) -> None:
    """Run the learning check with ``config`` (``learning_check`` keyword arguments) and fail
    with the measured figures when eval-mode Dice is low or far below training-mode Dice."""
    from busseg.engine.learning_check import learning_check

    result = learning_check(model, **config)
    assert result.passed(LEARNING_FLOOR, LEARNING_MAX_GAP), (
        f"{model}: eval-mode Dice {result.dice_eval:.3f}, training-mode Dice "
        f"{result.dice_train_mode:.3f} (floor {LEARNING_FLOOR}, max gap {LEARNING_MAX_GAP}); "
        f"loss {result.loss_first:.3f} -> {result.loss_last:.3f} in {result.steps} steps"
    )
