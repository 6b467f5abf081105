"""Encoder-decoder baselines from segmentation-models-pytorch (smp), with ResNet encoders.

ACSNet (He et al., Table 3 and Sec. 5.2) compares against "six recent single-task
segmentation methods", all of them (except TransUNet) on a **ResNet-18** backbone:
U-Net, FCN, DeepLabV3+, FPN and UNet++. ElaD-Net (Xu et al., Table 6) lists U-Net, U-Net++
and SegNet without naming backbones. The defaults here therefore use ``resnet18``; the
``encoder`` option takes any smp encoder name (``resnet34``, ``resnet50``...).

Registered models (one wrapper, :class:`SmpBaseline`):

- ``unet_resnet18``  U-Net decoder (Ronneberger et al. 2015) on a ResNet-18 encoder;
- ``unetplusplus``   UNet++ (Zhou et al., DLMIA 2018): nested dense skip pathways;
- ``fpn``            Feature Pyramid Network (Lin et al., CVPR 2017) as a segmentation head;
- ``deeplabv3plus``  DeepLabV3+ (Chen et al., ECCV 2018): ASPP at output stride 16 and a
  light decoder fusing the 1/4 feature.

Every decoder is smp's default configuration for that architecture (e.g. U-Net decoder
channels 256-128-64-32-16, FPN pyramid 256 / segmentation 128 channels, DeepLabV3+ 256
channels, atrous rates 12-24-36, output stride 16). Extra keyword options go to the smp
constructor unchanged (``decoder_channels=...``); unknown ones raise a ``ConfigError``.

Choices where the comparison papers are silent:

- **Grayscale input.** With ``in_channels=1`` the ImageNet first-layer filters are summed
  over R, G, B (smp's own adaptation), which equals repeating the grayscale channel three
  times. ``in_channels=3`` expects the grayscale image repeated by the data pipeline.
- **UNet++ deep supervision.** Zhou et al. optionally supervise every nested output; the
  comparison papers use the single final output, and so does smp's UNet++ (no deep
  supervision here).
- **Weights.** busseg's policy (``busseg.models.weights``): ``"imagenet"`` downloads smp's
  ImageNet encoder only when the network is reachable (else one warning, random init),
  ``"none"`` is random init, a file path is loaded into the encoder with a strict key check.
  What was used is recorded in ``model.net.encoder.busseg_weights_info``.
"""

from __future__ import annotations

import inspect

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from busseg.errors import ConfigError
from busseg.models.baselines._common import (
    check_in_channels,
    check_input_size,
    load_encoder_weights_file,
)
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model
from busseg.models.weights import (
    attach_weights_info,
    host_reachable,
    warn_once,
    offline,
    validate_weights_spec,
)

#: smp (>= 0.5) hosts its ImageNet encoder weights on the Hugging Face hub.
SMP_WEIGHTS_HOST = "huggingface.co"


class SmpBaseline(nn.Module):
    """An smp segmentation model under busseg's forward contract.

    ``net`` keeps smp's own parts (``net.encoder``, ``net.decoder``,
    ``net.segmentation_head``); ``forward`` checks the input size and returns
    :class:`ModelOutput` with the single logit map.
    """

    def __init__(self, net: nn.Module, name: str, size_divisor: int) -> None:
        super().__init__()
        self.net = net
        self.model_name = name
        self.size_divisor = size_divisor

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, images: torch.Tensor) -> ModelOutput:
        check_input_size(images, self.size_divisor, self.model_name)
        return ModelOutput(seg=self.net(images))


#: Constructor arguments busseg sets itself (one logit map, no activation, no smp classifier).
_FIXED_SMP_ARGUMENTS = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params")


def _check_smp_options(architecture: type[nn.Module], name: str, options: dict) -> None:
    # smp constructors accept **kwargs and silently drop unknown ones for its own encoders:
    # a misspelt option must not vanish without a word.
    params = inspect.signature(architecture.__init__).parameters
    allowed = sorted(
        p for p, spec in params.items()
        if p != "self" and spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL)
        and p not in _FIXED_SMP_ARGUMENTS
    )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model {name!r}: unknown option(s) {unknown}; options: in_channels, "
            f"encoder_weights, encoder, {', '.join(allowed)}"
        )


def build_smp_model(
    architecture: type[nn.Module],
    name: str,
    *,
    encoder: str,
    encoder_weights: str,
    in_channels: int,
    size_divisor: int,
    **smp_options,
) -> SmpBaseline:
    """Build ``architecture`` (an smp class) following busseg's encoder-weight policy."""
    check_in_channels(in_channels, name)
    _check_smp_options(architecture, name, smp_options)
    spec = validate_weights_spec(encoder_weights)
    label = f"{name}:{encoder}"

    def construct(smp_weights: str | None) -> nn.Module:
        try:
            return architecture(
                encoder_name=encoder,
                encoder_weights=smp_weights,
                in_channels=in_channels,
                classes=1,
                activation=None,
                **smp_options,
            )
        except KeyError as exc:  # smp's message lists the valid encoder names
            raise ConfigError(f"model {name!r}: {str(exc)[:400]}") from exc

    if spec == "none":
        net = construct(None)
        attach_weights_info(net.encoder, spec, "random")
    elif spec == "imagenet":
        net = None
        reason = "no network (or BUSSEG_OFFLINE set) and no cached weights"
        if not offline() and host_reachable(SMP_WEIGHTS_HOST):
            try:
                net = construct("imagenet")
                attach_weights_info(net.encoder, spec, "imagenet", f"smp:{encoder}")
            except ConfigError:
                raise
            except Exception as exc:  # hub error: fall back to random init below
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                net = None
        if net is None:
            net = construct(None)  # a wrong encoder name fails here, before any warning
            warn_once(
                f"smp:{encoder}",
                f"ImageNet weights for encoder {encoder!r} ({name}) are not available "
                f"({reason}); training it from random initialisation. Pass "
                "--encoder-weights FILE to use a local copy.",
            )
            attach_weights_info(net.encoder, spec, "random", reason)
    else:
        net = construct(None)
        detail = load_encoder_weights_file(net.encoder, spec, label)
        attach_weights_info(net.encoder, spec, "file", detail)
    return SmpBaseline(net, name, size_divisor)


_ENCODER_NOTE = "ResNet-18 encoder as in ACSNet's comparison (He et al., Table 3)"


@register_model(
    "unet_resnet18",
    paper="Ronneberger et al., U-Net, MICCAI 2015 (ResNet-18 encoder, as compared in He et al., ACSNet, Table 3)",
    size_divisor=32,
)
def unet_resnet18(
    in_channels: int = 1, encoder_weights: str = "imagenet", encoder: str = "resnet18", **smp_options
) -> SmpBaseline:
    """U-Net decoder on an ImageNet ResNet-18 encoder (segmentation-models-pytorch)."""
    return build_smp_model(
        smp.Unet, "unet_resnet18", encoder=encoder, encoder_weights=encoder_weights,
        in_channels=in_channels, size_divisor=32, **smp_options,
    )


@register_model(
    "unetplusplus",
    paper="Zhou et al., UNet++: A Nested U-Net Architecture for Medical Image Segmentation, DLMIA 2018",
    size_divisor=32,
)
def unetplusplus(
    in_channels: int = 1, encoder_weights: str = "imagenet", encoder: str = "resnet18", **smp_options
) -> SmpBaseline:
    """UNet++ (nested dense skips, no deep supervision) on a ResNet-18 encoder."""
    return build_smp_model(
        smp.UnetPlusPlus, "unetplusplus", encoder=encoder, encoder_weights=encoder_weights,
        in_channels=in_channels, size_divisor=32, **smp_options,
    )


@register_model(
    "fpn",
    paper="Lin et al., Feature Pyramid Networks for Object Detection, CVPR 2017 (segmentation head of smp)",
    size_divisor=32,
)
def fpn(
    in_channels: int = 1, encoder_weights: str = "imagenet", encoder: str = "resnet18", **smp_options
) -> SmpBaseline:
    """Feature Pyramid Network segmentation model on a ResNet-18 encoder."""
    return build_smp_model(
        smp.FPN, "fpn", encoder=encoder, encoder_weights=encoder_weights,
        in_channels=in_channels, size_divisor=32, **smp_options,
    )


@register_model(
    "deeplabv3plus",
    paper="Chen et al., Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation (DeepLabV3+), ECCV 2018",
    size_divisor=16,
)
def deeplabv3plus(
    in_channels: int = 1, encoder_weights: str = "imagenet", encoder: str = "resnet18", **smp_options
) -> SmpBaseline:
    """DeepLabV3+ (ASPP at output stride 16 + 1/4 decoder) on a ResNet-18 encoder."""
    return build_smp_model(
        smp.DeepLabV3Plus, "deeplabv3plus", encoder=encoder, encoder_weights=encoder_weights,
        in_channels=in_channels, size_divisor=16, **smp_options,
    )
