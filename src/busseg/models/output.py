"""The one forward contract every busseg model follows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """What ``model(images)`` returns, for every registered model.

    Attributes:
        seg: segmentation logits ``[B, 1, H, W]`` at the input resolution (apply a sigmoid for
            probabilities). ``None`` only for classification-only models (ACSNet's ClsNet).
        aux: auxiliary logits by name, each ``[B, 1, h, w]`` at any resolution (deep
            supervision ``"ds1"``…, ElaD-Net ``"edge"``/``"body"``, DC-Net
            ``"saliency_fg"``/``"saliency_bg"``). Objectives resize the target as needed.
        cls: classification logits ``[B, 2]`` (benign, malignant) for multi-task models.
        extras: non-loss tensors kept for inspection (attention coefficients, …).
    """

    seg: torch.Tensor | None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    cls: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
