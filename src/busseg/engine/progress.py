"""What a training run prints: Lightning's bar on a terminal, one plain line per epoch otherwise.

On a terminal with the bar on, Lightning's tqdm bar shows the epoch as it runs. When the output
is a file or a pipe, or the bar is off (``--no-progress``), the bar is replaced by
:class:`EpochLines`: one line per epoch with the epoch-level losses and validation metrics,
the epoch's duration and an ETA for the remaining epochs, e.g.::

    INFO busseg: epoch 3/20: train_loss 0.4123, val_loss 0.4410, val_dice 0.6210, val_iou 0.4987 | 41 s, ETA 11 min 37 s

The ETA is the mean duration of the epochs run in this session times the epochs left
(``max_epochs``); early stopping can only make the run shorter.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from busseg.console import format_duration, is_terminal, tidy_library_logging

log = logging.getLogger("busseg")

#: Order of the metrics in an epoch line; others logged by the task follow alphabetically.
_FIRST = ("train_loss", "val_loss", "val_dice", "val_iou", "val_acc")


def _format_metrics(metrics: dict) -> str:
    values = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = float(value)
    order = [n for n in _FIRST if n in values] + sorted(n for n in values if n not in _FIRST)
    return ", ".join(f"{name} {values[name]:.4f}" for name in order)


class EpochLines(L.Callback):
    """One log line per finished training epoch (losses, validation metrics, time, ETA),
    written by the global-zero process only."""

    def __init__(self) -> None:
        self._epoch_started = 0.0
        self._durations: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        seconds = time.monotonic() - self._epoch_started
        self._durations.append(seconds)
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        line = f"epoch {epoch}/{total}: {_format_metrics(metrics)} | {format_duration(seconds)}"
        if total is not None and total > 0:
            left = max(0, total - epoch)
            line += f", ETA {format_duration(sum(self._durations) / len(self._durations) * left)}"
        log.info(line)


def training_progress(progress: bool) -> tuple[list[L.Callback], bool]:
    """``(callbacks, enable_progress_bar)`` for a Trainer: Lightning's bar only on a terminal
    with ``progress``; :class:`EpochLines` otherwise. Also tidies the libraries' log handlers
    (each Lightning message once, no advertisements)."""
    tidy_library_logging()
    if progress and is_terminal():
        return [], True
    return [EpochLines()], False


__all__ = ["EpochLines", "training_progress"]
