"""Generic objectives: a pixel loss with optional deep supervision, and cross-entropy.

``segmentation``   (:class:`SegmentationObjective`) for every model trained with one pixel loss
                   on its output, optionally also on its auxiliary maps;
``classification`` (:class:`ClassificationObjective`) cross-entropy on ``output.cls`` for
                   classification-only ablations.

An objective's ``forward(output, batch)`` returns ``(loss, parts)``: ``parts`` maps short names
to detached scalars for logging (the engine logs them as ``train_<name>``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses.registry import create_pixel_loss, register_objective
from busseg.models.output import ModelOutput

AUX_TARGET_RESIZE = ("area", "nearest", "upsample_logits")


def resize_target(target: torch.Tensor, size: Sequence[int], mode: str = "area") -> torch.Tensor:
    """Resize a ``[B, 1, H, W]`` float mask to ``size`` for supervising a smaller/larger map.

    ``"area"`` averages the pixels each output pixel covers when shrinking, so the target
    becomes soft (the fraction of lesion) at the boundary and a lesion smaller than the
    output stride still appears as a small positive value instead of vanishing (nearest
    sampling can miss it entirely). When enlarging, area interpolation equals nearest.
    ``"nearest"`` keeps the target binary.
    """
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    if mode == "area":
        return F.adaptive_avg_pool2d(target, size) if _shrinks(target, size) else F.interpolate(
            target, size=size, mode="nearest"
        )
    if mode == "nearest":
        return F.interpolate(target, size=size, mode="nearest")
    raise ConfigError(f"target resize mode must be one of ('area', 'nearest'), got {mode!r}")


def _shrinks(target: torch.Tensor, size: Sequence[int]) -> bool:
    return size[0] <= target.shape[-2] and size[1] <= target.shape[-1]


@register_objective("segmentation")
class SegmentationObjective(nn.Module):
    """A pixel loss on ``output.seg`` plus, optionally, on every auxiliary map (deep supervision).

    ``loss = L(seg, mask) + deep_supervision_weight * sum_k L(aux_k, mask_k)``

    where ``L`` is the pixel loss named ``pixel`` (created with ``pixel_options``) and
    ``mask_k`` the mask brought to the resolution of ``aux_k``.

    Args:
        pixel: registered pixel-loss name (``bce_dice``, ``structure``, ...).
        deep_supervision_weight: weight of EACH auxiliary term (0 ignores ``output.aux``). The
            auxiliary terms are summed, not averaged, so the weight reads per map, as most
            deep-supervision papers state it.
        aux_keys: which auxiliary maps to supervise with the mask (default: all of them).
            Maps that are not predictions of the lesion mask (an edge map, say) must be left
            out here or be supervised by a model-specific objective.
        aux_target_resize: how a lower-resolution auxiliary map meets the mask: ``"area"``
            (default; soft targets, see :func:`resize_target`), ``"nearest"`` (binary), or
            ``"upsample_logits"`` (bilinear upsampling of the map's logits to the mask's size).
        **pixel_options: options of the pixel loss (e.g. ``bce_weight``, ``smooth``).

    ``parts``: ``seg`` and, with deep supervision, ``aux_<name>`` for each map (unweighted).
    """

    def __init__(
        self,
        pixel: str = "bce_dice",
        deep_supervision_weight: float = 0.0,
        aux_keys: Sequence[str] | None = None,
        aux_target_resize: str = "area",
        **pixel_options,
    ):
        super().__init__()
        if deep_supervision_weight < 0:
            raise ConfigError(
                f"loss segmentation: deep_supervision_weight must be >= 0, got {deep_supervision_weight}"
            )
        if aux_target_resize not in AUX_TARGET_RESIZE:
            raise ConfigError(
                f"loss segmentation: aux_target_resize must be one of {AUX_TARGET_RESIZE}, "
                f"got {aux_target_resize!r}"
            )
        self.pixel_loss = create_pixel_loss(pixel, **pixel_options)
        self.deep_supervision_weight = float(deep_supervision_weight)
        self.aux_keys = None if aux_keys is None else tuple(aux_keys)
        self.aux_target_resize = aux_target_resize

    def forward(self, output: ModelOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if output.seg is None:
            raise ConfigError(
                "loss segmentation: the model produced no segmentation output (a classification-"
                "only model needs the 'classification' loss)"
            )
        mask = batch["mask"].to(output.seg.dtype)
        loss = self.pixel_loss(output.seg, mask)
        parts = {"seg": loss.detach()}
        if self.deep_supervision_weight > 0:
            for name, logits in self._supervised_aux(output).items():
                aux_loss = self._aux_loss(logits, mask)
                parts[f"aux_{name}"] = aux_loss.detach()
                loss = loss + self.deep_supervision_weight * aux_loss
        return loss, parts

    def _supervised_aux(self, output: ModelOutput) -> dict[str, torch.Tensor]:
        if self.aux_keys is None:
            return dict(output.aux)
        missing = [key for key in self.aux_keys if key not in output.aux]
        if missing:
            raise ConfigError(
                f"loss segmentation: aux_keys {missing} not produced by the model "
                f"(it produces {sorted(output.aux)})"
            )
        return {key: output.aux[key] for key in self.aux_keys}

    def _aux_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.aux_target_resize == "upsample_logits":
            if tuple(logits.shape[-2:]) != tuple(mask.shape[-2:]):
                logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            return self.pixel_loss(logits, mask)
        return self.pixel_loss(logits, resize_target(mask, logits.shape[-2:], self.aux_target_resize))


@register_objective("classification")
class ClassificationObjective(nn.Module):
    """Cross-entropy on the benign/malignant logits ``output.cls`` ``[B, 2]``.

    Images labelled -1 (normal/unknown) are ignored; a batch without any labelled image gives
    a loss of 0 that still belongs to the graph (instead of PyTorch's NaN for an empty mean).

    Args:
        class_weights: optional ``[w_benign, w_malignant]`` for imbalanced data (default
            none: plain cross-entropy).
        label_smoothing: passed to ``torch.nn.functional.cross_entropy`` (default 0).

    ``parts``: ``cls``.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if class_weights is not None:
            if len(class_weights) != 2 or any(w < 0 for w in class_weights):
                raise ConfigError(
                    f"loss classification: class_weights must be two non-negative numbers, got {class_weights}"
                )
            self.register_buffer("class_weights", torch.tensor([float(w) for w in class_weights]))
        else:
            self.class_weights = None
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss classification: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, output: ModelOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if output.cls is None:
            raise ConfigError("loss classification: the model produced no classification logits")
        labels = batch["label"].to(device=output.cls.device, dtype=torch.long)
        known = labels >= 0
        if not known.any():
            loss = output.cls.sum() * 0.0
        else:
            weight = None if self.class_weights is None else self.class_weights.to(output.cls.dtype)
            loss = F.cross_entropy(
                output.cls[known], labels[known], weight=weight, label_smoothing=self.label_smoothing
            )
        return loss, {"cls": loss.detach()}
