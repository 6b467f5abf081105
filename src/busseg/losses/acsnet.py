"""ACSNet's multi-task objective and the LossNet perceptual loss.

He et al., "Multi-task learning for segmentation and classification of breast tumors from
ultrasound images" (Comput. Biol. Med. 2024), section 3.4, Eqs. 8-13:

- ``L_cls``  (Eq. 8): binary cross-entropy of the malignant probability. The model returns two
  logits (benign, malignant) and the paper ends the branch with a Softmax; the 2-class
  cross-entropy of those logits *is* Eq. 8 with ``p = softmax(logits)[malignant]``.
- ``L_dice`` (Eq. 9): ``1 - (2*sum(P*Y) + 1) / (sum(P) + sum(Y) + 1)`` on the probability map.
- ``L_LossNet`` (Eqs. 10-11): LossNet of Zhao et al. [23]: a frozen ImageNet VGG-16 maps the
  predicted probability map and the mask (each repeated to three channels) to its feature
  blocks ending at relu1_2, relu2_2, relu3_3 and relu4_3; ``l_i`` is the L2 loss between the
  two feature maps of block i, ``L_LossNet = l_1 + l_2 + l_3 + l_4``.
- ``L_seg = L_dice + gamma * L_LossNet`` (Eq. 12), ``L_total = lambda * L_cls + (1 - lambda)
  * L_seg`` (Eq. 13), with lambda = 0.3 and gamma = 0.2 (section 4.2).

Choices where the paper is silent:

- Eq. 9 is computed per image (sums over its pixels) and averaged over the batch, so the +1
  smoothing acts per image as the per-image Dice metric does.
- Eq. 11, "Euclidean distance (L2-Loss)": the mean squared difference over all elements of a
  feature block (the L2 loss of Zhao et al.'s LossNet). The literal norm would grow with the
  image and batch size and make gamma = 0.2 meaningless across settings.
- LossNet sees the probability map and the mask in [0, 1] without ImageNet normalisation (as
  the authors' and Zhao et al.'s code do); VGG-16 stays in eval mode with frozen weights,
  gradients flow through it to the prediction only.
- LossNet needs ImageNet weights: a random VGG-16 measures nothing meaningful. When the weight
  policy (:func:`busseg.models.weights.torchvision_backbone`) falls back to random
  initialisation (offline, nothing cached) the objective warns once and uses gamma = 0, unless
  ``allow_random_lossnet=True``. The value used is ``objective.lossnet_gamma_effective``, also
  in :meth:`ACSNetObjective.describe` and in every ``parts`` dict (``lossnet_gamma``).
- Samples with label -1 (unknown) are left out of ``L_cls``; a batch without any known label
  contributes ``L_cls = 0`` (the formula is not re-weighted).
- Single-task ablation networks of Table 1: when the model returns no ``cls`` (UNet) the loss
  is ``L_seg``; when it returns no ``seg`` (ClsNet) it is ``L_cls``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses.registry import register_objective
from busseg.models.layers import repeat_to_channels
from busseg.models.output import ModelOutput
from busseg.models.weights import warn_once

log = logging.getLogger("busseg")

#: end (exclusive) of each LossNet block in ``torchvision.models.vgg16().features``:
#: relu1_2 = 3, relu2_2 = 8, relu3_3 = 15, relu4_3 = 22.
VGG16_BLOCK_ENDS = (4, 9, 16, 23)


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Eq. 9 per image, averaged over the batch. Inputs ``[B, 1, H, W]`` in [0, 1]."""
    dims = tuple(range(1, probabilities.dim()))
    intersection = (probabilities * target).sum(dims)
    total = probabilities.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


class LossNet(nn.Module):
    """Perceptual loss of Zhao et al. (MSNet, MICCAI 2021) as used by ACSNet, Eqs. 10-11.

    ``forward(prediction, target)`` takes probability maps ``[B, 1, H, W]`` (or 3 channels)
    and returns ``sum_i mean((VGG_i(prediction) - VGG_i(target))**2)`` over the VGG-16
    blocks ending at relu1_2, relu2_2, relu3_3, relu4_3. The VGG-16 is frozen and always in
    eval mode. ``weights``: ``"imagenet"`` | ``"none"`` | a local ``vgg16`` state-dict file
    (the project's weight policy); ``pretrained`` tells whether ImageNet (or file) weights
    were actually loaded. Reusable by any objective.
    """

    def __init__(self, weights: str = "imagenet") -> None:
        super().__init__()
        import torchvision
        from torchvision.models import VGG16_Weights

        from busseg.models.weights import torchvision_backbone

        vgg = torchvision_backbone(
            torchvision.models.vgg16, VGG16_Weights.IMAGENET1K_V1, weights=weights, label="vgg16-lossnet"
        )
        self.weights_info: dict = dict(getattr(vgg, "busseg_weights_info", {}))
        self.pretrained = self.weights_info.get("used") in ("imagenet", "file")
        starts = (0,) + VGG16_BLOCK_ENDS[:-1]
        # Only the convolutional blocks are kept; the 120 M-parameter classifier is dropped.
        self.blocks = nn.ModuleList(vgg.features[a:b] for a, b in zip(starts, VGG16_BLOCK_ENDS))
        for p in self.blocks.parameters():
            p.requires_grad_(False)
        self.blocks.eval()

    def train(self, mode: bool = True) -> "LossNet":
        super().train(mode)
        self.blocks.eval()  # frozen feature extractor: never in training mode
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = repeat_to_channels(x, 3)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.features(target.to(prediction.dtype))
        prediction_features = self.features(prediction)
        return sum(F.mse_loss(p, t) for p, t in zip(prediction_features, target_features))


class ACSNetObjective(nn.Module):
    """``L_total = lambda*L_cls + (1-lambda)*(L_dice + gamma*L_LossNet)`` (Eqs. 8-13).

    Args:
        cls_weight: lambda of Eq. 13 (paper: 0.3).
        lossnet_weight: gamma of Eq. 12 (paper: 0.2).
        lossnet_weights: VGG-16 weights for LossNet: ``"imagenet"`` | ``"none"`` | file.
        allow_random_lossnet: keep gamma even when VGG-16 ends up randomly initialised
            (otherwise gamma falls back to 0 with one warning).
        dice_smooth: the +1 of Eq. 9.
    """

    def __init__(
        self,
        cls_weight: float = 0.3,
        lossnet_weight: float = 0.2,
        lossnet_weights: str = "imagenet",
        allow_random_lossnet: bool = False,
        dice_smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= cls_weight <= 1.0:
            raise ConfigError(f"loss 'acsnet': cls_weight (lambda) must lie in [0, 1], got {cls_weight}")
        if lossnet_weight < 0.0:
            raise ConfigError(f"loss 'acsnet': lossnet_weight (gamma) must be >= 0, got {lossnet_weight}")
        self.cls_weight = float(cls_weight)
        self.lossnet_gamma_requested = float(lossnet_weight)
        self.dice_smooth = float(dice_smooth)
        self.lossnet: LossNet | None = None
        self.lossnet_weights_info: dict = {}
        gamma = self.lossnet_gamma_requested
        if gamma > 0:
            # A VGG-16 asked to be random and not allowed to be is never built (it costs
            # seconds and would be discarded).
            lossnet = None
            if lossnet_weights != "none" or allow_random_lossnet:
                lossnet = LossNet(lossnet_weights)
                self.lossnet_weights_info = lossnet.weights_info
            else:
                self.lossnet_weights_info = {"requested": "none", "used": "random", "detail": ""}
            if lossnet is not None and (lossnet.pretrained or allow_random_lossnet):
                self.lossnet = lossnet
            else:
                warn_once(
                    "acsnet-lossnet",
                    f"loss 'acsnet': LossNet's VGG-16 has no pretrained weights "
                    f"(requested {lossnet_weights!r}); the LossNet term is switched off "
                    f"(gamma {gamma} -> 0). Pass lossnet_weights=<vgg16 .pth> to use it, or "
                    "allow_random_lossnet=true to keep it with a random VGG-16.",
                )
                gamma = 0.0
        self.lossnet_gamma_effective = gamma

    def describe(self) -> dict:
        """Settings the engine records with the run."""
        return {
            "cls_weight_lambda": self.cls_weight,
            "lossnet_gamma_requested": self.lossnet_gamma_requested,
            "lossnet_gamma_effective": self.lossnet_gamma_effective,
            "lossnet_weights": dict(self.lossnet_weights_info),
            "dice_smooth": self.dice_smooth,
        }

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 8 over the samples with a known label (0 benign, 1 malignant)."""
        known = labels >= 0
        if not bool(known.any()):
            return logits.sum() * 0.0  # keeps the graph; no labelled sample in this batch
        return F.cross_entropy(logits[known], labels[known].long())

    def segmentation_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 12: ``L_dice + gamma * L_LossNet``; returns the loss and its parts."""
        # float32 whatever the autocast dtype: the sums of Eq. 9 run over whole images
        logits = logits.float()
        mask = mask.float()
        if mask.shape[-2:] != logits.shape[-2:]:
            mask = F.interpolate(mask, size=logits.shape[-2:], mode="nearest")
        probabilities = torch.sigmoid(logits)
        dice = soft_dice_loss(probabilities, mask, self.dice_smooth)
        parts = {"loss_dice": dice.detach()}
        if self.lossnet is None:
            return dice, parts
        if self.lossnet.blocks[0][0].weight.device != logits.device:
            self.lossnet.to(logits.device)  # the engine may move only the model
        perceptual = self.lossnet(probabilities, mask)
        parts["loss_lossnet"] = perceptual.detach()
        return dice + self.lossnet_gamma_effective * perceptual, parts

    def forward(self, output: ModelOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if output.seg is None and output.cls is None:
            raise ConfigError("loss 'acsnet': the model returned neither seg nor cls")
        parts: dict[str, torch.Tensor] = {}
        seg_loss = cls_loss = None
        if output.seg is not None:
            seg_loss, seg_parts = self.segmentation_loss(output.seg, batch["mask"])
            parts.update(seg_parts)
            parts["loss_seg"] = seg_loss.detach()
        if output.cls is not None:
            if "label" not in batch:
                raise ConfigError("loss 'acsnet': the batch has no 'label' for the classification branch")
            cls_loss = self.classification_loss(output.cls, batch["label"].to(output.cls.device))
            parts["loss_cls"] = cls_loss.detach()
        if seg_loss is None:
            total = cls_loss
        elif cls_loss is None:
            total = seg_loss
        else:
            total = self.cls_weight * cls_loss + (1.0 - self.cls_weight) * seg_loss
        parts["lossnet_gamma"] = torch.tensor(self.lossnet_gamma_effective, device=total.device)
        return total, parts


@register_objective("acsnet")
def acsnet_objective(**options) -> ACSNetObjective:
    """ACSNet's multi-task loss (Eqs. 8-13); options as :class:`ACSNetObjective`."""
    return ACSNetObjective(**options)
