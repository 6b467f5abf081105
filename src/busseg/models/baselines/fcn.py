"""FCN-8s (Long, Shelhamer, Darrell, Fully Convolutional Networks for Semantic Segmentation,
CVPR 2015), on VGG-16 (``fcn``, the paper's network) and on ResNet-18 (``fcn_resnet18``, the
backbone ACSNet's comparison names for FCN, He et al. Table 3).

The paper's network (its Sec. 4.1-4.2, Fig. 3):

- the VGG-16 classifier is "convolutionalised": fc6 becomes a 7×7 convolution with 4096
  channels and fc7 a 1×1 convolution with 4096 channels (ReLU + drop-out 0.5 after each),
  initialised from the ImageNet fully connected weights;
- a 1×1 "score" convolution predicts class scores at stride 32 (after fc7), stride 16
  (pool4) and stride 8 (pool3);
- skip fusion: the stride-32 scores are up-sampled ×2 by a deconvolution and **added** to
  the pool4 scores; the sum is up-sampled ×2 and added to the pool3 scores; that sum is
  up-sampled ×8 to the input size.

Choices where the paper's Caffe network and today's usage differ (documented here):

- **Padding.** The paper pads conv1_1 by 100 pixels and crops after each up-sampling so
  that any input size works. Here fc6 is zero-padded by 3 ("same" 7×7 conv) and nothing is
  cropped, so the skip features line up exactly when the input is divisible by 32.
- **Up-sampling.** The two ×2 deconvolutions (4×4 kernel, stride 2) are initialised to
  bilinear interpolation and learned, as in the paper. The paper fixes the final ×8
  deconvolution to bilinear interpolation; it is implemented as (parameter-free) bilinear
  interpolation, the same operation up to the border handling.
- **Score initialisation.** As in the paper, the pool4/pool3 score layers start at zero, so
  training starts from FCN-32s behaviour and the skips are learned. (The paper's "at-once"
  variant additionally scales pool3/pool4 by 1e-4/1e-2; that is the staged-training
  surrogate and is not used.)
- **fc width.** ``fc_channels`` (default 4096, the paper's) can be reduced; fc6/fc7 then
  cannot take the ImageNet weights and start at random (only meant for small tests).
- **Grayscale.** With ``in_channels=1`` conv1_1's ImageNet filters are summed over RGB,
  which equals repeating the gray channel (see ``_common.grayscale_first_conv``).
- **ResNet-18 variant.** ResNet has no fc6/fc7 to convolutionalise; the FCN-8s scoring and
  fusion head sits directly on the 1/8, 1/16, 1/32 stage outputs (128, 256, 512 channels).
  The timm ResNet is randomly initialised like torchvision's (no zero-initialised last BN in
  the residual branches), so offline it starts like the smp ResNet-18 baselines.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.models.baselines._common import (
    bilinear_upsampling_kernel,
    check_in_channels,
    check_input_size,
    grayscale_first_conv,
    vgg16_parts,
)
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model
from busseg.models.weights import timm_encoder

#: Indices of pool3, pool4, pool5 in ``torchvision.models.vgg16().features``.
_VGG16_POOL3, _VGG16_POOL4, _VGG16_POOL5 = 16, 23, 30
_VGG16_FC_CHANNELS = 4096


class VGG16FCNEncoder(nn.Module):
    """VGG-16 with the convolutionalised classifier; returns (pool3, pool4, fc7) features at
    strides 8, 16, 32 (256, 512, ``fc_channels`` channels)."""

    def __init__(
        self,
        in_channels: int = 1,
        encoder_weights: str = "imagenet",
        fc_channels: int = _VGG16_FC_CHANNELS,
        fc_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        features, classifier, weights_record = vgg16_parts("vgg16", encoder_weights)
        if in_channels == 1:
            features[0] = grayscale_first_conv(features[0])
        self.to_pool3 = features[: _VGG16_POOL3 + 1]
        self.to_pool4 = features[_VGG16_POOL3 + 1 : _VGG16_POOL4 + 1]
        self.to_pool5 = features[_VGG16_POOL4 + 1 : _VGG16_POOL5 + 1]
        self.fc6 = nn.Conv2d(512, fc_channels, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.fc_dropout = nn.Dropout2d(fc_dropout)
        if classifier is not None and fc_channels == _VGG16_FC_CHANNELS:
            self._convolutionalise(classifier)
        else:
            # torchvision's initialisation of VGG's fully connected layers
            for fc in (self.fc6, self.fc7):
                nn.init.normal_(fc.weight, 0.0, 0.01)
                nn.init.zeros_(fc.bias)
            if classifier is not None:
                weights_record["detail"] = (
                    weights_record.get("detail", "")
                    + f" (fc6/fc7 with {fc_channels} channels: random init)"
                ).strip()
        self.out_channels = (256, 512, fc_channels)
        # the weight record of the backbone travels with the encoder that keeps its layers
        self.busseg_weights_info = weights_record

    @torch.no_grad()
    def _convolutionalise(self, classifier: nn.Sequential) -> None:
        fc6, fc7 = classifier[0], classifier[3]
        self.fc6.weight.copy_(fc6.weight.view(_VGG16_FC_CHANNELS, 512, 7, 7))
        self.fc6.bias.copy_(fc6.bias)
        self.fc7.weight.copy_(fc7.weight.view(_VGG16_FC_CHANNELS, _VGG16_FC_CHANNELS, 1, 1))
        self.fc7.bias.copy_(fc7.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        pool5 = self.to_pool5(pool4)
        fc6 = self.fc_dropout(F.relu(self.fc6(pool5), inplace=True))
        fc7 = self.fc_dropout(F.relu(self.fc7(fc6), inplace=True))
        return [pool3, pool4, fc7]


class ResNetFCNEncoder(nn.Module):
    """A timm ResNet returning its stride-8, 16, 32 stage outputs."""

    def __init__(self, in_channels: int = 1, encoder_weights: str = "imagenet", name: str = "resnet18") -> None:
        super().__init__()
        try:
            # zero_init_last=False: random init as torchvision's ResNet (smp's ResNet-18
            # baselines), not timm's zero-gamma residual branches
            self.backbone = timm_encoder(
                name, weights=encoder_weights, in_channels=in_channels, out_indices=(2, 3, 4),
                zero_init_last=False,
            )
        except RuntimeError as exc:  # timm: unknown model name
            raise ConfigError(f"model 'fcn_resnet18': encoder {name!r}: {exc}") from exc
        reductions = self.backbone.feature_info.reduction()
        if list(reductions) != [8, 16, 32]:
            raise ConfigError(f"model 'fcn_resnet18': encoder {name!r} has strides {reductions}, need 8/16/32")
        self.out_channels = tuple(self.backbone.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x))


class FCN8sDecoder(nn.Module):
    """Scores at strides 32/16/8, fused by learned ×2 up-sampling and addition, then ×8
    bilinear up-sampling to the input size (Long et al., Fig. 3, FCN-8s)."""

    def __init__(self, channels_s8: int, channels_s16: int, channels_s32: int, num_classes: int = 1) -> None:
        super().__init__()
        self.score_s32 = nn.Conv2d(channels_s32, num_classes, kernel_size=1)
        self.score_s16 = nn.Conv2d(channels_s16, num_classes, kernel_size=1)
        self.score_s8 = nn.Conv2d(channels_s8, num_classes, kernel_size=1)
        self.up_s32_to_s16 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        self.up_s16_to_s8 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        with torch.no_grad():
            for skip_score in (self.score_s16, self.score_s8):
                nn.init.zeros_(skip_score.weight)
                nn.init.zeros_(skip_score.bias)
            for up in (self.up_s32_to_s16, self.up_s16_to_s8):
                up.weight.copy_(bilinear_upsampling_kernel(num_classes, 4))

    def forward(self, features: list[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        feat_s8, feat_s16, feat_s32 = features
        scores = self.up_s32_to_s16(self.score_s32(feat_s32)) + self.score_s16(feat_s16)
        scores = self.up_s16_to_s8(scores) + self.score_s8(feat_s8)
        return F.interpolate(scores, size=output_size, mode="bilinear", align_corners=False)


class FCN8s(nn.Module):
    """FCN-8s: ``encoder`` (strides 8/16/32 features) + :class:`FCN8sDecoder`."""

    size_divisor = 32

    def __init__(self, encoder: nn.Module, name: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = FCN8sDecoder(*encoder.out_channels)
        self.model_name = name

    def forward(self, images: torch.Tensor) -> ModelOutput:
        check_input_size(images, self.size_divisor, self.model_name)
        return ModelOutput(seg=self.decoder(self.encoder(images), tuple(images.shape[-2:])))


@register_model(
    "fcn",
    paper="Long et al., Fully Convolutional Networks for Semantic Segmentation, CVPR 2015 (FCN-8s, VGG-16)",
    size_divisor=FCN8s.size_divisor,
)
def fcn(
    in_channels: int = 1,
    encoder_weights: str = "imagenet",
    fc_channels: int = _VGG16_FC_CHANNELS,
    fc_dropout: float = 0.5,
) -> FCN8s:
    """FCN-8s on VGG-16 with convolutionalised fc6/fc7 and pool3/pool4 skip fusion."""
    check_in_channels(in_channels, "fcn")
    if fc_channels < 1:
        raise ConfigError(f"model 'fcn': fc_channels must be positive, got {fc_channels}")
    return FCN8s(VGG16FCNEncoder(in_channels, encoder_weights, fc_channels, fc_dropout), "fcn")


@register_model(
    "fcn_resnet18",
    paper="Long et al., FCN, CVPR 2015 (FCN-8s head on ResNet-18, as compared in He et al., ACSNet, Table 3)",
    size_divisor=FCN8s.size_divisor,
)
def fcn_resnet18(in_channels: int = 1, encoder_weights: str = "imagenet", encoder: str = "resnet18") -> FCN8s:
    """FCN-8s scoring/fusion head on the 1/8, 1/16, 1/32 stages of a ResNet-18."""
    check_in_channels(in_channels, "fcn_resnet18")
    return FCN8s(ResNetFCNEncoder(in_channels, encoder_weights, encoder), "fcn_resnet18")
