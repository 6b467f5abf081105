"""Pixel losses: ``forward(logits, target) -> scalar`` on ``[B, 1, H, W]`` tensors.

``logits`` are the model's raw outputs (``p = sigmoid(logits)``); ``target`` holds the mask as
floats. Targets may also be soft (in [0, 1], e.g. a mask area-downsampled for deep
supervision): every formula below is written for real-valued targets.

Conventions shared by all classes:

- region losses (Dice, Jaccard) are computed PER IMAGE and then averaged over the batch, so
  a small lesion weighs as much as a large one; sums run over the ``H x W`` pixels of one
  image;
- the cross-entropy terms are averaged over every pixel of the batch (PyTorch's
  ``binary_cross_entropy_with_logits``, which is numerically stable for large logits);
- the smoothing constant ``smooth`` is added to numerator and denominator of the region
  ratios: it makes an empty mask predicted empty score a loss of 0, not 0/0.

Registered names: ``dice``, ``bce``, ``bce_dice``, ``jaccard``, ``bce_jaccard``, ``focal``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses.registry import register_pixel_loss


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape"
        )
    return target.to(logits.dtype)


def _spatial_sum(x: torch.Tensor) -> torch.Tensor:
    """Per-image sum over every dimension but the batch: ``[B, ...] -> [B]``."""
    return x.flatten(1).sum(dim=1)


def soft_dice_per_image(probs: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """Soft Dice coefficient of each image: ``(2 sum(p g) + s) / (sum(p) + sum(g) + s)``."""
    intersection = _spatial_sum(probs * target)
    return (2 * intersection + smooth) / (_spatial_sum(probs) + _spatial_sum(target) + smooth)


def soft_jaccard_per_image(
    probs: torch.Tensor, target: torch.Tensor, smooth: float, eps: float = 1e-7
) -> torch.Tensor:
    """Soft IoU of each image: ``(sum(p g) + s) / (sum(p + g - p g) + s)``.

    ``eps`` only guards the 0/0 of ``smooth = 0`` with an empty mask and empty prediction.
    """
    intersection = _spatial_sum(probs * target)
    union = _spatial_sum(probs + target - probs * target)
    return (intersection + smooth) / (union + smooth + eps)


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ConfigError(f"pixel loss option {name} must be >= 0, got {value}")


@register_pixel_loss("dice")
class DiceLoss(nn.Module):
    """Soft Dice loss (Milletari et al., 2016, with a linear denominator).

    ``L = mean_b [1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)]`` with ``p = sigmoid(logits)``,
    sums over the pixels of image ``b``, smoothing ``s = smooth`` (default 1).
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        _check_non_negative(smooth=smooth)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _check_pair(logits, target)
        return (1 - soft_dice_per_image(torch.sigmoid(logits), target, self.smooth)).mean()


@register_pixel_loss("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy with logits, averaged over all pixels of the batch.

    ``L = -mean[g log p + (1 - g) log(1 - p)]``, ``p = sigmoid(logits)``. ``pos_weight``
    (default 1) multiplies the foreground term, as in ``torch.nn.BCEWithLogitsLoss``.
    """

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        _check_non_negative(pos_weight=pos_weight)
        self.pos_weight = float(pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _check_pair(logits, target)
        pos_weight = None
        if self.pos_weight != 1.0:
            pos_weight = torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


@register_pixel_loss("bce_dice")
class BCEDiceLoss(nn.Module):
    """``L = bce_weight * BCE + dice_weight * Dice`` (defaults 1 : 1; see :class:`BCELoss`,
    :class:`DiceLoss`)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        _check_non_negative(bce_weight=bce_weight, dice_weight=dice_weight)
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)
        self.bce = BCELoss()
        self.dice = DiceLoss(smooth=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(
            logits, target
        )


@register_pixel_loss("jaccard")
class JaccardLoss(nn.Module):
    """Soft Jaccard (IoU) loss, per image then averaged over the batch.

    ``L = mean_b [1 - (sum(p g) + s) / (sum(p + g - p g) + s)]``, ``p = sigmoid(logits)``,
    smoothing ``s = smooth`` (default 1, as :class:`DiceLoss`).
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        _check_non_negative(smooth=smooth)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _check_pair(logits, target)
        return (1 - soft_jaccard_per_image(torch.sigmoid(logits), target, self.smooth)).mean()


@register_pixel_loss("bce_jaccard")
class BCEJaccardLoss(nn.Module):
    """Hybrid Attention Network's combined loss (Aslam et al., Section 3.3, Eqs. 16-18).

    ``Loss_combined = Loss_bce + Loss_jaccard`` (Eq. 18) with

    - Eq. 16, ``Loss_bce = -sum_i [y_i log y^_i + (1 - y_i) log(1 - y^_i)]``;
    - Eq. 17, ``Loss_jaccard = 1 - sum_i P_i G_i / sum_i (P_i + G_i - P_i G_i)``.

    Choices where the paper is silent:

    - Eq. 16 is written as a SUM over the N pixels; it is taken as the MEAN over pixels
      (Keras' ``binary_crossentropy``, which papers of this kind train with). A literal sum
      would be ~H*W times the Jaccard term (65 536 x at 256 px) and Eq. 18's equal weighting
      would reduce the loss to BCE alone.
    - Eq. 17 has no smoothing term: ``smooth`` defaults to 0 (a 1e-7 guard only avoids 0/0).
      Consequence: on an image with an EMPTY mask the Jaccard term is the constant 1 with no
      gradient (its numerator is 0 whatever the prediction), so only the BCE term learns from
      normal images; set ``smooth: 1`` to make an empty prediction score 0 there instead.
    - Eq. 17's sums run over "two images", i.e. one image: the Jaccard term is computed per
      image and averaged over the batch.
    - ``bce_weight`` and ``jaccard_weight`` (default 1 and 1, Eq. 18) are exposed for
      ablations.
    """

    def __init__(self, bce_weight: float = 1.0, jaccard_weight: float = 1.0, smooth: float = 0.0):
        super().__init__()
        _check_non_negative(bce_weight=bce_weight, jaccard_weight=jaccard_weight)
        self.bce_weight, self.jaccard_weight = float(bce_weight), float(jaccard_weight)
        self.bce = BCELoss()
        self.jaccard = JaccardLoss(smooth=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, target) + self.jaccard_weight * self.jaccard(
            logits, target
        )


@register_pixel_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 5).

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``, with ``p_t = p`` and ``alpha_t = alpha`` on
    foreground, ``p_t = 1 - p`` and ``alpha_t = 1 - alpha`` on background (for soft targets
    ``g``: ``p_t = p g + (1 - p)(1 - g)``, ``alpha_t = alpha g + (1 - alpha)(1 - g)``).
    Defaults ``alpha = 0.25, gamma = 2`` (the paper's best pair); ``alpha = None`` disables
    the class weighting. Reduction: mean over all pixels of the batch (Lin et al. normalise
    by the number of foreground anchors, which has no analogue for a dense mask). With
    ``gamma = 0`` it is the alpha-weighted BCE.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0):
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"focal loss: alpha must be in [0, 1] or null, got {alpha}")
        _check_non_negative(gamma=gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _check_pair(logits, target)
        # -log(p_t), computed from the logits for numerical stability.
        cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        probs = torch.sigmoid(logits)
        p_t = probs * target + (1 - probs) * (1 - target)
        loss = (1 - p_t).pow(self.gamma) * cross_entropy
        if self.alpha is not None:
            loss = (self.alpha * target + (1 - self.alpha) * (1 - target)) * loss
        return loss.mean()
