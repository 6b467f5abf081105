"""A generic multi-task objective: any segmentation objective plus a classification term."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from busseg.losses.registry import create_objective, register_objective


@register_objective("multitask")
class MultiTaskObjective(nn.Module):
    """``L = w · CE(cls, label) + (1 − w) · L_seg`` (the form of ACSNet's Eq. 13, with any
    segmentation objective in place of its Eq. 12), for any model that returns both ``seg``
    and ``cls``.

    Images with an unknown class (label −1, e.g. BUSI "normal") contribute to ``L_seg`` only.

    Args:
        cls_weight: ``w`` in [0, 1].
        segmentation: options of the segmentation objective (default ``{"name":
            "segmentation", "pixel": "bce_dice"}``).
    """

    def __init__(self, cls_weight: float = 0.3, segmentation: dict | None = None) -> None:
        super().__init__()
        if not 0.0 <= cls_weight <= 1.0:
            raise ValueError(f"cls_weight must be in [0, 1], got {cls_weight}")
        self.cls_weight = cls_weight
        self.segmentation = create_objective(**(segmentation or {"name": "segmentation", "pixel": "bce_dice"}))

    def forward(self, output, batch):
        seg_loss, parts = self.segmentation(output, batch)
        label = batch["label"]
        known = label >= 0
        if output.cls is not None and known.any():
            cls_loss = F.cross_entropy(output.cls[known].float(), label[known])
        else:
            cls_loss = seg_loss.new_zeros(())
        loss = self.cls_weight * cls_loss + (1 - self.cls_weight) * seg_loss
        return loss, {**parts, "seg": seg_loss.detach(), "cls": cls_loss.detach()}
