"""BatchNorm statistics that match the weights they are used with ("precise BN").

BatchNorm keeps running means and variances as an exponential moving average (PyTorch's
momentum 0.1) of batch statistics gathered while the weights kept changing. After a short run,
or for a model whose features change scale quickly (DC-Net's DCP and CCF multiply features by
functions of themselves), those statistics describe the weights of many steps ago, and
eval-mode predictions can be far worse than the same weights give in training mode.

Precise BN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, section 3) replaces them,
before the model is scored, with an equally weighted average of the batch statistics of a number
of training batches computed with the current weights. Only training images are used, so the
re-estimated statistics are as honest as the stored ones: nothing of the validation or test
images enters the model.

Choices made here:

- Every module except the BatchNorm layers is kept in eval mode while the statistics are
  gathered: dropout is off, as it will be when the statistics are used, and no random number is
  drawn (a resumed run stays identical to an uninterrupted one).
- Batches come without augmentation (the model is scored on un-augmented images), at the
  recipe's batch size, from a fixed-seed shuffle of the training images (``drop_last`` so a
  lone image never forms a batch of one).
- The average is PyTorch's cumulative one (``momentum=None``): the mean of the batch means and
  of the unbiased batch variances, as precise BN defines it.
"""

from __future__ import annotations

from typing import Iterable

import lightning as L
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from busseg.errors import ConfigError


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module, images: Iterable[torch.Tensor], max_batches: int | None = None
) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by the average over
    the batches of ``images`` (at most ``max_batches``), computed with the current weights.
    Returns the number of batches used (0 when the model has no BatchNorm layer: nothing is
    changed). The train/eval mode of every module and the layers' momenta are restored."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"precise BatchNorm: batches must be >= 1, got {max_batches}")
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    used = 0
    try:
        for batch in images:
            if used == 0:  # reset only once a batch is there: never leave emptied statistics
                model.eval()
                for bn in layers:
                    bn.reset_running_stats()
                    bn.momentum = None  # cumulative average: every batch weighs the same
                    bn.train()
            model(batch)
            used += 1
            if max_batches is not None and used >= max_batches:
                break
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return used


class PreciseBatchNorm(L.Callback):
    """Re-estimates the BatchNorm statistics over training batches before every validation, so
    model selection and the checkpoint (saved after validation) use statistics that match the
    weights; the fold's test images are then scored with those of the selected checkpoint.

    ``loader``: yields batch dicts with an ``"image"`` tensor (training images, no
    augmentation); ``batches``: how many of them to average over (``None``: all).
    """

    def __init__(self, loader: Iterable[dict], batches: int | None = None) -> None:
        super().__init__()
        self.loader = loader
        self.batches = batches
        self.batches_used = 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        device = pl_module.device
        images = (batch["image"].to(device, non_blocking=True) for batch in self.loader)
        with trainer.precision_plugin.val_step_context():
            self.batches_used = recompute_batchnorm_statistics(pl_module.model, images, self.batches)

    def describe(self) -> dict:
        return {"batches": self.batches, "batches_used_last": self.batches_used}

