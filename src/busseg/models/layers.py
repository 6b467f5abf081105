"""Building blocks shared by several model families (one place, timm style)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_norm(kind: str | None, channels: int, groups: int = 32) -> nn.Module:
    """``"bn"`` BatchNorm, ``"gn"`` GroupNorm (``groups`` clipped to a divisor of
    ``channels``), ``"in"`` InstanceNorm, ``None``/``"none"`` identity."""
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r}")


class ConvNormAct(nn.Sequential):
    """Conv2d → norm → ReLU (the "convolution unit" most papers draw)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm: str | None = "bn",
        act: bool = True,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=norm in (None, "none"),
            ),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class DoubleConv(nn.Sequential):
    """Two 3×3 convolution units (U-Net's block), optional dropout between them."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        norm: str | None = "bn",
        dropout: float = 0.0,
    ) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            ConvNormAct(in_channels, mid, 3, norm=norm),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            ConvNormAct(mid, out_channels, 3, norm=norm),
        )


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018): GAP → FC → ReLU → FC →
    sigmoid, re-weighting the channels of the input."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w), inplace=True)))
        return x * w


def resize_to(x: torch.Tensor, ref: torch.Tensor | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``x`` to the spatial size of ``ref`` (a tensor or an ``(h, w)`` pair); no-op when
    sizes already agree."""
    size = tuple(ref.shape[-2:]) if isinstance(ref, torch.Tensor) else tuple(ref)
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def repeat_to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale → ``channels`` copies (for encoders built for RGB)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot map {x.shape[1]} input channels to {channels}")
