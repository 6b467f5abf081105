"""SegNet (Badrinarayanan, Kendall, Cipolla, SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation, IEEE TPAMI 2017), a baseline of ElaD-Net (Table 6).

The paper's network (its Sec. 3, Fig. 2-3):

- **encoder**: the 13 convolutional layers of VGG-16, each conv → batch norm → ReLU, in 5
  stages separated by 2×2 max-pooling (stride 2); the fully connected layers are dropped.
  The **max-pooling indices** (the location of each maximum in its 2×2 window) are stored;
- **decoder**: one decoder stage per encoder stage, in reverse; each up-samples its input by
  **max-unpooling with the stored indices** (a sparse map with each value put back where
  its maximum came from, zeros elsewhere) and densifies it with a bank of trainable
  convolutions, each conv → batch norm → ReLU, mirroring the encoder's channels
  (512-512-512 | 512-512-256 | 256-256-128 | 128-64 | 64-K);
- the final decoder output goes to a (soft-max) classifier; here one logit map.

Choices where the paper is silent or where busseg's contract decides:

- **Classifier.** In the authors' Caffe network the last decoder convolution (3×3, K
  outputs, no BN/ReLU) is the classifier, followed by the soft-max; here it outputs one
  logit map and the sigmoid is left to the loss / inference.
- **Weights.** The encoder starts from ImageNet VGG-16-BN (``torchvision.models.vgg16_bn``,
  through busseg's weight policy: ``"imagenet"`` / ``"none"`` / a file with the full
  ``vgg16_bn`` state dict). The decoder is initialised as the paper does (He et al.'s
  method: Kaiming normal, fan-in, ReLU gain).
- **Grayscale.** With ``in_channels=1`` the first convolution's ImageNet filters are summed
  over RGB, which equals repeating the gray channel (``_common.grayscale_first_conv``).
- **Size.** Five poolings: the input must be divisible by 32 (un-pooling is told the exact
  pre-pooling size, so no cropping is needed).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.models.baselines._common import check_in_channels, check_input_size, grayscale_first_conv, vgg16_parts
from busseg.models.layers import ConvNormAct
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model


def _split_vgg_bn_stages(features: nn.Sequential) -> list[nn.Sequential]:
    """Cut ``vgg16_bn().features`` at its max-poolings into 5 conv-BN-ReLU stages (the
    pooling layers themselves are dropped: SegNet pools with indices)."""
    stages, current = [], []
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
        else:
            current.append(layer)
    if current or len(stages) != 5:
        raise RuntimeError("unexpected VGG-16-BN layout")
    return stages


def _stage_conv_channels(stage: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in stage if isinstance(m, nn.Conv2d)]


class SegNetEncoder(nn.Module):
    """VGG-16-BN convolutions; ``forward`` returns the bottleneck feature, the pooling
    indices and the pre-pooling sizes of every stage (shallowest first)."""

    def __init__(self, in_channels: int = 1, encoder_weights: str = "imagenet") -> None:
        super().__init__()
        features, _, weights_record = vgg16_parts("vgg16_bn", encoder_weights)
        if in_channels == 1:
            features[0] = grayscale_first_conv(features[0])
        self.stages = nn.ModuleList(_split_vgg_bn_stages(features))
        self.busseg_weights_info = weights_record

    def stage_channels(self) -> list[list[tuple[int, int]]]:
        return [_stage_conv_channels(stage) for stage in self.stages]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Size]]:
        indices, sizes = [], []
        for stage in self.stages:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, where = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
            indices.append(where)
        return x, indices, sizes


class SegNetDecoderStage(nn.Module):
    """Max-unpooling with the encoder's indices, then the mirrored conv-BN-ReLU bank. The
    last convolution of the last stage is the classifier (no BN / ReLU)."""

    def __init__(self, conv_channels: list[tuple[int, int]], classifier_channels: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for position, (in_ch, out_ch) in enumerate(conv_channels):
            if classifier_channels is not None and position == len(conv_channels) - 1:
                layers.append(nn.Conv2d(in_ch, classifier_channels, kernel_size=3, padding=1))
            else:
                layers.append(ConvNormAct(in_ch, out_ch, 3, norm="bn"))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        x = F.max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=size)
        return self.convs(x)


class SegNetDecoder(nn.Module):
    def __init__(self, encoder_stage_channels: list[list[tuple[int, int]]], num_classes: int = 1) -> None:
        super().__init__()
        stages = []
        for depth, convs in reversed(list(enumerate(encoder_stage_channels))):
            mirrored = [(out_ch, in_ch) for in_ch, out_ch in reversed(convs)]
            stages.append(SegNetDecoderStage(mirrored, num_classes if depth == 0 else None))
        self.stages = nn.ModuleList(stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, indices: list[torch.Tensor], sizes: list[torch.Size]) -> torch.Tensor:
        for stage, where, size in zip(self.stages, reversed(indices), reversed(sizes)):
            x = stage(x, where, size)
        return x


class SegNet(nn.Module):
    """SegNet with a VGG-16-BN encoder and index-based max-unpooling decoder."""

    size_divisor = 32

    def __init__(self, in_channels: int = 1, encoder_weights: str = "imagenet") -> None:
        super().__init__()
        check_in_channels(in_channels, "segnet")
        self.encoder = SegNetEncoder(in_channels, encoder_weights)
        self.decoder = SegNetDecoder(self.encoder.stage_channels())

    def forward(self, images: torch.Tensor) -> ModelOutput:
        check_input_size(images, self.size_divisor, "segnet")
        bottleneck, indices, sizes = self.encoder(images)
        return ModelOutput(seg=self.decoder(bottleneck, indices, sizes))


@register_model(
    "segnet",
    paper="Badrinarayanan et al., SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation, IEEE TPAMI 2017",
    size_divisor=SegNet.size_divisor,
)
def segnet(in_channels: int = 1, encoder_weights: str = "imagenet") -> SegNet:
    """SegNet: VGG-16-BN encoder, decoder up-sampling by the stored max-pooling indices."""
    return SegNet(in_channels, encoder_weights)
