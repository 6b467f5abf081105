"""Boundary-weighted BCE and IoU: the "structure" loss (F3Net, Wei et al., AAAI 2020).

ElaD-Net (Xu et al., IJCAI 2025, Section 3.4) supervises its body map and its output with
``L_wBCE + L_wIoU`` (Eqs. 24-25) without defining the weighting; the weighted BCE and weighted
IoU it cites are those of F3Net (also used by PraNet), implemented here. For each image,
with ``p = sigmoid(logits)``, mask ``g`` and pixel weights ``w``:

    w     = 1 + lambda * | avgpool_k(g) - g |                     (boundary-aware weight)
    wBCE  = sum(w * bce(p, g)) / sum(w)                           (weighted mean of the BCE)
    wIoU  = 1 - (sum(w p g) + s) / (sum(w (p + g)) - sum(w p g) + s)

with ``k = 31`` (a stride-1 average pool, "same" padding), ``lambda = 5`` and ``s = 1``. The
weight is 1 far from the lesion boundary and rises towards ``1 + lambda`` close to it (about
``1 + lambda/2`` on a straight boundary): both terms concentrate on the hard pixels there. Each term is computed per image and
averaged over the batch.

Choice where the sources are silent: at the image border the average pool counts only the
pixels inside the image (``count_include_pad=False``), so a lesion cut by the image border
(frequent in BUSI) is not given a spurious boundary along the border. F3Net's public
formulation zero-pads (``count_include_pad=True``); set ``count_include_pad=True`` to
reproduce it. The weights are computed from the target and carry no gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses.registry import register_pixel_loss


def boundary_weight(
    target: torch.Tensor,
    kernel_size: int = 31,
    boundary_factor: float = 5.0,
    count_include_pad: bool = False,
) -> torch.Tensor:
    """``1 + boundary_factor * |avgpool_kernel_size(target) - target|``, same shape as target."""
    local_mean = F.avg_pool2d(
        target,
        kernel_size=kernel_size,
        stride=1,
        padding=kernel_size // 2,
        count_include_pad=count_include_pad,
    )
    return 1 + boundary_factor * (local_mean - target).abs()


class _BoundaryWeighted(nn.Module):
    def __init__(self, kernel_size: int, boundary_factor: float, count_include_pad: bool):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"structure loss: kernel_size must be odd and >= 1, got {kernel_size}")
        if boundary_factor < 0:
            raise ConfigError(f"structure loss: boundary_factor must be >= 0, got {boundary_factor}")
        self.kernel_size = int(kernel_size)
        self.boundary_factor = float(boundary_factor)
        self.count_include_pad = bool(count_include_pad)

    def weights(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape"
            )
        target = target.to(logits.dtype)
        with torch.no_grad():
            weight = boundary_weight(
                target, self.kernel_size, self.boundary_factor, self.count_include_pad
            )
        return target, weight


@register_pixel_loss("wbce")
class WeightedBCELoss(_BoundaryWeighted):
    """Boundary-weighted BCE: ``mean_b [sum(w bce(p, g)) / sum(w)]`` (module docstring)."""

    def __init__(self, kernel_size: int = 31, boundary_factor: float = 5.0, count_include_pad: bool = False):
        super().__init__(kernel_size, boundary_factor, count_include_pad)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, weight = self.weights(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_image = (weight * bce).flatten(1).sum(1) / weight.flatten(1).sum(1)
        return per_image.mean()


@register_pixel_loss("wiou")
class WeightedIoULoss(_BoundaryWeighted):
    """Boundary-weighted soft IoU loss: ``mean_b [1 - (I + s) / (U - I + s)]`` with
    ``I = sum(w p g)``, ``U = sum(w (p + g))`` and ``s = smooth`` (default 1)."""

    def __init__(
        self,
        kernel_size: int = 31,
        boundary_factor: float = 5.0,
        count_include_pad: bool = False,
        smooth: float = 1.0,
    ):
        super().__init__(kernel_size, boundary_factor, count_include_pad)
        if smooth < 0:
            raise ConfigError(f"structure loss: smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, weight = self.weights(logits, target)
        probs = torch.sigmoid(logits)
        intersection = (weight * probs * target).flatten(1).sum(1)
        total = (weight * (probs + target)).flatten(1).sum(1)
        iou = (intersection + self.smooth) / (total - intersection + self.smooth)
        return (1 - iou).mean()


@register_pixel_loss("structure")
class StructureLoss(nn.Module):
    """``wBCE + wIoU`` (ElaD-Net Eqs. 24-25; F3Net's structure loss), equal weights.

    Options are shared by both terms: ``kernel_size`` (31), ``boundary_factor`` (5),
    ``count_include_pad`` (False, see the module docstring), ``smooth`` (1, wIoU only).
    """

    def __init__(
        self,
        kernel_size: int = 31,
        boundary_factor: float = 5.0,
        count_include_pad: bool = False,
        smooth: float = 1.0,
    ):
        super().__init__()
        self.wbce = WeightedBCELoss(kernel_size, boundary_factor, count_include_pad)
        self.wiou = WeightedIoULoss(kernel_size, boundary_factor, count_include_pad, smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.wbce(logits, target) + self.wiou(logits, target)
