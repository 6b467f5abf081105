"""Batched augmentation applied to images and masks together, on whatever device holds them.

Geometric transforms (flips, rotation, scaling) are one affine warp per sample
(``affine_grid`` + ``grid_sample``): bilinear for images, nearest for masks, so a mask stays
binary and aligned with its image. Intensity transforms (brightness, contrast) touch images only.
Randomness comes from an explicit ``torch.Generator`` so a run is reproducible and a resumed run
draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchAugmenter:
    """Recipe-driven augmentation of a batch ``image [B,C,H,W]``, ``mask [B,1,H,W]``.

    Args (recipe ``augmentation`` keys):
        hflip, vflip: probabilities of a horizontal / vertical flip.
        rotate: probability of a rotation; its absolute angle is drawn uniformly from
            ``rotate_deg = [min, max]`` degrees with a random sign (ACSNet: 10–30°).
        scale: ``[min, max]`` isotropic zoom factor (1 = none).
        brightness: maximum additive shift (images are in [0, 1] after min–max scaling).
        contrast: maximum relative contrast change around each image's mean.
    """

    def __init__(
        self,
        hflip: float = 0.0,
        vflip: float = 0.0,
        rotate: float = 0.0,
        rotate_deg: tuple[float, float] | list[float] = (0.0, 0.0),
        scale: tuple[float, float] | list[float] = (1.0, 1.0),
        brightness: float = 0.0,
        contrast: float = 0.0,
    ) -> None:
        self.hflip = float(hflip)
        self.vflip = float(vflip)
        self.rotate = float(rotate)
        self.rotate_deg = tuple(float(v) for v in rotate_deg)
        self.scale = tuple(float(v) for v in scale)
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    @classmethod
    def from_recipe(cls, cfg: dict | None) -> "BatchAugmenter":
        return cls(**(cfg or {}))

    @property
    def geometric(self) -> bool:
        return self.rotate > 0 or self.scale != (1.0, 1.0) or self.hflip > 0 or self.vflip > 0

    @property
    def enabled(self) -> bool:
        return self.geometric or self.brightness > 0 or self.contrast > 0

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            return image, mask
        b = image.shape[0]

        # Every random number is drawn on the CPU generator in a fixed order, whatever is
        # enabled (identical on every device), then moved in one non-blocking copy.
        draws = torch.rand(8, b, generator=generator)
        if image.is_cuda:
            draws = draws.pin_memory().to(image.device, non_blocking=True)
        u_h, u_v, u_r, u_sign, u_ang, u_s, u_b, u_c = draws.unbind(0)
        if self.geometric:
            sx = torch.where(u_h < self.hflip, -1.0, 1.0)
            sy = torch.where(u_v < self.vflip, -1.0, 1.0)
            lo, hi = self.rotate_deg
            angle = torch.where(
                u_r < self.rotate,
                torch.where(u_sign < 0.5, -1.0, 1.0) * (lo + (hi - lo) * u_ang),
                torch.zeros_like(u_ang),
            ) * (math.pi / 180.0)
            zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * u_s
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta = torch.zeros(b, 2, 3, device=image.device, dtype=torch.float32)
            theta[:, 0, 0] = cos * sx
            theta[:, 0, 1] = -sin * sy
            theta[:, 1, 0] = sin * sx
            theta[:, 1, 1] = cos * sy
            grid = F.affine_grid(theta, list(image.shape), align_corners=False)
            image = F.grid_sample(
                image.float(), grid.to(image.dtype if image.is_floating_point() else torch.float32),
                mode="bilinear", padding_mode="zeros", align_corners=False,
            )
            mask = F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if self.brightness > 0:
            image = image + ((u_b * 2 - 1) * self.brightness).view(b, 1, 1, 1)
        if self.contrast > 0:
            factor = (1 + (u_c * 2 - 1) * self.contrast).view(b, 1, 1, 1)
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            image = (image - mean) * factor + mean
        return image, mask
