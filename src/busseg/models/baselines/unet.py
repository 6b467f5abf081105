"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), the baseline of every paper here.

The network of the paper's Fig. 1:

- contracting path: at each of 5 levels two 3×3 convolutions + ReLU; between levels a 2×2
  max-pooling (stride 2) that halves the resolution while the next level doubles the
  channels: 64, 128, 256, 512, 1024 (4 down-samplings);
- expansive path: at each level a 2×2 "up-convolution" halving the channels, concatenation
  with the encoder feature of the same level (the skip connection), two 3×3 convolutions;
- a final 1×1 convolution to the class scores (one logit map here).

Choices where today's usage departs from the 2015 paper (all documented, all switchable):

- **Padding.** The paper uses unpadded ("valid") convolutions and crops the skip features
  (572² in → 388² out). Here every 3×3 convolution is zero-padded so the output has the
  input's size, as in essentially every re-implementation used for BUSI comparisons; the
  input must then be divisible by 16.
- **Normalisation.** The paper predates batch normalisation; ``norm="bn"`` (default) adds
  BatchNorm after every 3×3 convolution (conv → BN → ReLU), which is how U-Net baselines
  are trained today. ``norm="none"`` gives the original conv → ReLU units (with biases),
  ``norm="gn"`` GroupNorm.
- **Up-sampling.** The paper's "up-convolution" is a learned 2×2 transposed convolution,
  stride 2; that is used here (rather than bilinear up-sampling + 1×1 conv).
- **Drop-out.** The paper places drop-out "at the end of the contracting path" without
  giving a rate; ``bottleneck_dropout`` (default 0.0, i.e. off, as usual with BN) applies
  2-D drop-out to the deepest feature when set.
- **Initialisation.** The paper draws weights from N(0, sqrt(2/N)) with N the fan-in
  (He initialisation); the convolutions here are initialised the same way (Kaiming normal,
  fan-in, ReLU gain).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from busseg.errors import ConfigError
from busseg.models.baselines._common import check_in_channels, check_input_size
from busseg.models.layers import DoubleConv
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model

#: Number of 2×2 max-poolings; the input must be divisible by ``2 ** DOWNSAMPLINGS``.
DOWNSAMPLINGS = 4


class UNetEncoder(nn.Module):
    """Contracting path: returns the 5 level features, full resolution first."""

    def __init__(self, in_channels: int, widths: list[int], norm: str | None, bottleneck_dropout: float) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, widths[0], norm=norm)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2, stride=2), DoubleConv(widths[i], widths[i + 1], norm=norm))
            for i in range(len(widths) - 1)
        )
        self.bottleneck_dropout = nn.Dropout2d(bottleneck_dropout) if bottleneck_dropout > 0 else nn.Identity()
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for level in self.levels:
            features.append(level(features[-1]))
        features[-1] = self.bottleneck_dropout(features[-1])
        return features


class UNetUpBlock(nn.Module):
    """2×2 up-convolution (halving the channels), concatenation with the skip, two 3×3 convs."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str | None) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.fuse = DoubleConv(in_channels // 2 + skip_channels, out_channels, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([skip, self.up(x)], dim=1))


class UNetDecoder(nn.Module):
    """Expansive path, from the bottleneck back to full resolution."""

    def __init__(self, widths: list[int], norm: str | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            UNetUpBlock(widths[i + 1], widths[i], widths[i], norm)
            for i in reversed(range(len(widths) - 1))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
        return x


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net; ``forward`` returns :class:`ModelOutput` with ``seg`` logits."""

    size_divisor = 2**DOWNSAMPLINGS

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        norm: str | None = "bn",
        bottleneck_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_in_channels(in_channels, "unet")
        if base_channels < 2 or base_channels % 2:
            raise ConfigError(f"model 'unet': base_channels must be an even number >= 2, got {base_channels}")
        if norm not in ("bn", "gn", "in", "none", None):
            raise ConfigError(f"model 'unet': norm must be 'bn', 'gn', 'in' or 'none', got {norm!r}")
        if not 0.0 <= bottleneck_dropout < 1.0:
            raise ConfigError(f"model 'unet': bottleneck_dropout must be in [0, 1), got {bottleneck_dropout}")
        widths = [base_channels * 2**i for i in range(DOWNSAMPLINGS + 1)]
        self.encoder = UNetEncoder(in_channels, widths, norm, bottleneck_dropout)
        self.decoder = UNetDecoder(widths, norm)
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        check_input_size(images, self.size_divisor, "unet")
        return ModelOutput(seg=self.head(self.decoder(self.encoder(images))))


@register_model(
    "unet",
    paper="Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015",
    size_divisor=UNet.size_divisor,
)
def unet(
    in_channels: int = 1,
    encoder_weights: str = "none",
    base_channels: int = 64,
    norm: str | None = "bn",
    bottleneck_dropout: float = 0.0,
) -> UNet:
    """U-Net (64→1024 channels, 4 poolings, transposed-conv up-sampling, BN), trained from scratch."""
    if encoder_weights != "none":
        raise ConfigError(
            f"model 'unet' has no pretrained encoder: encoder_weights must be 'none', got "
            f"{encoder_weights!r} (use 'unet_resnet18' for an ImageNet encoder)"
        )
    return UNet(in_channels, base_channels, norm, bottleneck_dropout)
