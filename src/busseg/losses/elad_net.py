"""ElaD-Net's objective (Xu et al., IJCAI 2025, section 3.4, Eqs. 23-25).

    L_E = Dice(p_e, l_e)                                   (Eq. 23)
    L_B = wBCE(p_b, l_b) + wIoU(p_b, l_b)                  (Eq. 24)
    L_O = wBCE(p_o, l_o) + wIoU(p_o, l_o)                  (Eq. 25)
    L   = α L_O + β L_E + μ L_B,   α, β, μ = 0.4, 0.3, 0.3 (section 4.1, Table 3)

``p_o`` is ``output.seg``, ``p_e`` / ``p_b`` are ``output.aux["edge"]`` / ``output.aux["body"]``
(logits); Dice is the registered pixel loss ``dice`` and wBCE + wIoU the pixel loss
``structure`` (boundary-weighted, F3Net's formulation; see ``busseg.losses.structure``).

Choices where the paper is silent
---------------------------------
- Ground truths (Eqs. 23-25 name l_e, l_b, l_o without defining them): l_o is the lesion mask.
  The edge and body targets follow the model's own decomposition (Eq. 17: body = 5×5 mean,
  edge = feature − body): the pixels where a 5×5 mean of the mask is strictly between 0 and 1
  form the edge band, i.e. l_e = dilate(m) − erode(m) with a ``edge_width``×``edge_width``
  (default 5) square structuring element (a band of 2 px on each side of the contour), and the
  body is the rest of the lesion, l_b = m − l_e·m = erode(m). Erosion treats the outside of the
  image as "unknown" (max pooling pads with −∞), so a lesion cut by the image border keeps its
  body there and has no edge along the border. The mask is binarised at 0.5 first.
- A map at another resolution than the mask is supervised by targets built from the mask
  resized to that map (nearest), so the band keeps its width in that map's pixels.
- Ablations without an edge or body branch (``variant="no_edge"``, ``"no_body"``,
  ``"no_ssr"``, ``"unet_decoder"``) simply drop the missing term; the remaining weights are not
  renormalised (the paper does not say; this keeps L_O's weight identical across Table 5).

``parts``: unweighted ``output``, ``edge`` and ``body`` terms (those present).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses.registry import create_pixel_loss, register_objective
from busseg.models.output import ModelOutput


def edge_body_targets(mask: torch.Tensor, edge_width: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge band and body of a ``[B, 1, H, W]`` mask (module docstring): returns
    ``(dilate(m) - erode(m), erode(m))`` with a square ``edge_width`` structuring element."""
    binary = (mask > 0.5).to(mask.dtype)
    pad = edge_width // 2
    dilated = F.max_pool2d(binary, edge_width, stride=1, padding=pad)
    eroded = -F.max_pool2d(-binary, edge_width, stride=1, padding=pad)
    return dilated - eroded, eroded


@register_objective("elad_net")
class ElaDNetObjective(nn.Module):
    """``α L_O + β L_E + μ L_B`` (Eqs. 23-25); see the module docstring.

    Args:
        output_weight: α (0.4). edge_weight: β (0.3). body_weight: μ (0.3).
        edge_width: side of the square structuring element making l_e and l_b (5, odd).
    """

    def __init__(
        self,
        output_weight: float = 0.4,
        edge_weight: float = 0.3,
        body_weight: float = 0.3,
        edge_width: int = 5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("output_weight", output_weight),
            ("edge_weight", edge_weight),
            ("body_weight", body_weight),
        ):
            if value < 0:
                raise ConfigError(f"loss elad_net: {name} must be >= 0, got {value}")
        if edge_width < 3 or edge_width % 2 == 0:
            raise ConfigError(f"loss elad_net: edge_width must be odd and >= 3, got {edge_width}")
        self.weights = {"output": float(output_weight), "edge": float(edge_weight), "body": float(body_weight)}
        self.edge_width = int(edge_width)
        self.structure = create_pixel_loss("structure")
        self.dice = create_pixel_loss("dice")

    def _targets(self, mask: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mask.shape[-2:] != like.shape[-2:]:
            mask = F.interpolate(mask, size=like.shape[-2:], mode="nearest")
        return edge_body_targets(mask, self.edge_width)

    def forward(self, output: ModelOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["mask"].to(output.seg.dtype)
        parts = {"output": self.structure(output.seg, mask)}  # Eq. 25
        if "edge" in output.aux:
            edge_target, _ = self._targets(mask, output.aux["edge"])
            parts["edge"] = self.dice(output.aux["edge"], edge_target)  # Eq. 23
        if "body" in output.aux:
            _, body_target = self._targets(mask, output.aux["body"])
            parts["body"] = self.structure(output.aux["body"], body_target)  # Eq. 24
        loss = sum(self.weights[name] * value for name, value in parts.items())
        return loss, {name: value.detach() for name, value in parts.items()}
