"""DC-Net's training objective (Ning et al., section III-D, Eqs. 6, 18, 26, 27).

    L = λ1 · Dice(S^f, Y) + λ2 · Dice(S^b, 1 − Y) + λ3 · (Dice(Ŷ, Y) + λ4 · L_h(Ŷ, Y))

Eq. 18 with ``L_Df = L_Db = L_d`` (the decomposition subnet is supervised by the mask and its
complement, Eq. 6) and ``L_C = L_d + λ4 L_h`` (Eq. 27); the paper's values are
λ = (0.5, 0.5, 1, 10), σ = 1e-3, γ = 5, α = 0.25 (section IV-A).

Inputs: ``output.seg`` (logits of Ŷ) and ``output.aux["saliency_fg"]``,
``output.aux["saliency_bg"]`` (logits of S^f, S^b; sigmoid applied here through the losses).
Models without saliency maps (the ``woC`` variant) get only the λ3 term.

Choices where the paper is silent:

- Dice is busseg's shared soft Dice (``dice`` pixel loss: per image, linear denominator,
  smoothing 1, averaged over the batch). The paper cites V-Net [56], whose denominator squares
  p and g; for a binary target Σg² = Σg, and the two differ only in Σp vs Σp².
- The background target is ``1 − Y`` (Eq. 6's ``φ(Y)``: the self-reversal of a {0, 1} mask
  whose maximum is 1; for a mask without lesion, ``max Y = 0`` would give an all-zero
  "background", which is wrong, so ``1 − Y`` is used for every image).
- ``saliency_target="bbox"`` reproduces the DC-Net_wSB ablation (IV-C): the saliency maps are
  supervised by the lesion's bounding box (of all lesion pixels of the image) instead of the
  mask. Setting ``lambda_fg``/``lambda_bg`` to 0 gives DC-Net_woS_f / _woS_b / _woS.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from busseg.errors import ConfigError
from busseg.losses.harmonic import HarmonicLoss
from busseg.losses.objectives import resize_target
from busseg.losses.registry import create_pixel_loss, register_objective
from busseg.models.output import ModelOutput

SALIENCY_FG = "saliency_fg"
SALIENCY_BG = "saliency_bg"


def _between_first_and_last(hit: torch.Tensor, dim: int) -> torch.Tensor:
    """True from the first to the last True along ``dim`` (inclusive)."""
    after_first = hit.cumsum(dim) > 0
    before_last = hit.flip(dim).cumsum(dim).flip(dim) > 0
    return after_first & before_last


def bounding_box_mask(mask: torch.Tensor) -> torch.Tensor:
    """The axis-aligned bounding box of the lesion pixels (> 0.5) of each ``[B, 1, H, W]``
    mask, filled with 1; an image without lesion gives an empty box."""
    lesion = mask > 0.5
    rows = lesion.any(dim=-1, keepdim=True)  # [B, 1, H, 1]
    cols = lesion.any(dim=-2, keepdim=True)  # [B, 1, 1, W]
    return (_between_first_and_last(rows, -2) & _between_first_and_last(cols, -1)).to(mask.dtype)


@register_objective("dc_net")
class DCNetObjective(nn.Module):
    """``λ1·Dice(S^f, Y) + λ2·Dice(S^b, 1−Y) + λ3·(Dice(Ŷ, Y) + λ4·L_h(Ŷ, Y))`` (Eqs. 18, 27).

    Args:
        lambda_fg, lambda_bg, lambda_seg, lambda_harmonic: λ1 … λ4 (paper 0.5, 0.5, 1, 10).
        alpha, gamma, sigma: harmonic-loss parameters (paper 0.25, 5, 1e-3); ``alpha=None``
            drops α_t.
        saliency_target: ``"mask"`` (paper) or ``"bbox"`` (the DC-Net_wSB ablation).
        smooth: Dice smoothing constant.

    ``parts``: ``saliency_fg``, ``saliency_bg`` (unweighted Dice losses, when the model has
    saliency maps), ``seg_dice``, ``seg_harmonic``.
    """

    def __init__(
        self,
        lambda_fg: float = 0.5,
        lambda_bg: float = 0.5,
        lambda_seg: float = 1.0,
        lambda_harmonic: float = 10.0,
        alpha: float | None = 0.25,
        gamma: float = 5.0,
        sigma: float = 1e-3,
        saliency_target: str = "mask",
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("lambda_fg", lambda_fg), ("lambda_bg", lambda_bg),
                            ("lambda_seg", lambda_seg), ("lambda_harmonic", lambda_harmonic)):
            if value < 0:
                raise ConfigError(f"loss dc_net: {name} must be ≥ 0, got {value}")
        if saliency_target not in ("mask", "bbox"):
            raise ConfigError(
                f"loss dc_net: saliency_target must be 'mask' or 'bbox', got {saliency_target!r}"
            )
        self.lambda_fg = float(lambda_fg)
        self.lambda_bg = float(lambda_bg)
        self.lambda_seg = float(lambda_seg)
        self.lambda_harmonic = float(lambda_harmonic)
        self.saliency_target = saliency_target
        self.dice = create_pixel_loss("dice", smooth=smooth)
        self.harmonic = HarmonicLoss(alpha=alpha, gamma=gamma, sigma=sigma)

    def forward(
        self, output: ModelOutput, batch: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["mask"].to(output.seg.dtype)
        seg_dice = self.dice(output.seg, mask)
        seg_harmonic = self.harmonic(output.seg, mask)
        loss = self.lambda_seg * (seg_dice + self.lambda_harmonic * seg_harmonic)
        parts = {"seg_dice": seg_dice.detach(), "seg_harmonic": seg_harmonic.detach()}

        if SALIENCY_FG in output.aux and SALIENCY_BG in output.aux:
            target = bounding_box_mask(mask) if self.saliency_target == "bbox" else mask
            fg_logits, bg_logits = output.aux[SALIENCY_FG], output.aux[SALIENCY_BG]
            fg = self.dice(fg_logits, resize_target(target, fg_logits.shape[-2:]))
            bg = self.dice(bg_logits, resize_target(1.0 - target, bg_logits.shape[-2:]))
            loss = loss + self.lambda_fg * fg + self.lambda_bg * bg
            parts["saliency_fg"] = fg.detach()
            parts["saliency_bg"] = bg.detach()
        return loss, parts
