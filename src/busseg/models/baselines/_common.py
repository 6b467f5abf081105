"""Helpers shared by the baseline families: input-size check, grayscale adaptation of RGB
first layers, strict loading of an encoder weights file, bilinear kernels."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from busseg.errors import ConfigError
from busseg.models.weights import _file_digest, load_state_dict_file

#: Key prefixes of ImageNet classification heads that segmentation encoders drop. A weights
#: file may carry them (e.g. torchvision's ``resnet18`` state dict with ``fc.*``); they are
#: ignored, every other key must match exactly.
CLASSIFIER_KEY_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")


def check_input_size(images: torch.Tensor, divisor: int, model_name: str) -> None:
    """Raise a :class:`ConfigError` when the spatial size is not a multiple of ``divisor``.

    Encoder-decoder networks with ``log2(divisor)`` poolings cannot restore other sizes
    exactly; a clear message beats a shape error deep inside the decoder.
    """
    if images.ndim != 4:
        raise ConfigError(
            f"model {model_name!r}: expected an image batch [B, C, H, W], got shape "
            f"{tuple(images.shape)}"
        )
    height, width = images.shape[-2:]
    if height % divisor or width % divisor:
        raise ConfigError(
            f"model {model_name!r}: input size {height}x{width} is not divisible by "
            f"{divisor}; choose an image_size that is a multiple of {divisor}"
        )


def check_in_channels(in_channels: int, model_name: str) -> None:
    if in_channels not in (1, 3):
        raise ConfigError(f"model {model_name!r}: in_channels must be 1 or 3, got {in_channels}")


def grayscale_first_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-channel copy of an RGB first convolution whose filter is the sum over R, G, B.

    Because convolution is linear, ``conv(x, sum_c W_c) == conv(repeat(x, 3), W)``: summing
    the pretrained filters is exactly equivalent to repeating a grayscale image three
    times, at a third of the first layer's cost (timm and segmentation-models-pytorch adapt
    ``in_chans=1`` the same way).
    """
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(f"expected an ungrouped 3-channel convolution, got {conv}")
    single = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        single.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            single.bias.copy_(conv.bias)
    return single


def load_encoder_weights_file(encoder: nn.Module, path: str | Path, label: str) -> str:
    """Load a state dict file into ``encoder`` with a strict key and shape check.

    - RGB first-layer filters ``[O, 3, k, k]`` going into a 1-channel encoder ``[O, 1, k, k]``
      are summed over the colour axis (see :func:`grayscale_first_conv`).
    - Keys of an ImageNet classification head (:data:`CLASSIFIER_KEY_PREFIXES`) that the
      encoder does not have are ignored.
    - Any other missing, unexpected or mis-shaped key is a :class:`ConfigError` naming the
      file and the first offending keys.

    Returns a detail string (file and digest) for ``busseg_weights_info``.
    """
    state = load_state_dict_file(path)
    own = encoder.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = own.get(key)
        if (
            target is not None
            and value.ndim == 4
            and target.ndim == 4
            and value.shape[1] == 3
            and target.shape[1] == 1
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
        ):
            value = value.sum(dim=1, keepdim=True)
        if target is None and key.startswith(CLASSIFIER_KEY_PREFIXES):
            continue
        adapted[key] = value
    missing = sorted(set(own) - set(adapted))
    unexpected = sorted(set(adapted) - set(own))
    mismatched = [
        f"{k} {tuple(adapted[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(adapted))
        if tuple(adapted[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"weights file {path}: does not fit the {label} encoder "
            f"({len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(mismatched)} shape mismatches {mismatched[:3]})"
        )
    encoder.load_state_dict(adapted, strict=True)
    return f"{path} sha256:{_file_digest(path)}"


def bilinear_upsampling_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights ``[C, C, k, k]`` that make a ``ConvTranspose2d`` (stride ``k // 2``) a
    per-channel bilinear up-sampler (Long et al.'s initialisation of FCN's deconvolutions)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    coords = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (coords - center).abs() / factor
    kernel2d = profile[:, None] * profile[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for c in range(channels):
        weight[c, c] = kernel2d
    return weight


_VGG16_BUILDERS = {
    "vgg16": ("vgg16", "VGG16_Weights", False),
    "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights", True),
}


def vgg16_parts(variant: str, encoder_weights: str) -> tuple[nn.Sequential, nn.Sequential | None, dict]:
    """VGG-16 convolutional ``features`` (torchvision layout and key names), its ImageNet
    ``classifier`` (or ``None`` for random init) and the weight record.

    ``"imagenet"`` and weight files go through :func:`busseg.models.weights.torchvision_backbone`.
    For ``"none"`` only the convolutional part is built, with torchvision's own VGG
    initialisation (Kaiming normal, fan-out; BN weight 1, bias 0): building the 120 M-parameter
    classifier just to throw it away costs seconds.
    """
    import torchvision

    from busseg.models.weights import torchvision_backbone, validate_weights_spec

    builder_name, weights_enum, batch_norm = _VGG16_BUILDERS[variant]
    if validate_weights_spec(encoder_weights) != "none":
        vgg = torchvision_backbone(
            getattr(torchvision.models, builder_name),
            getattr(torchvision.models, weights_enum).IMAGENET1K_V1,
            weights=encoder_weights,
            label=variant,
        )
        return vgg.features, vgg.classifier, dict(vgg.busseg_weights_info)
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=batch_norm)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return features, None, {"requested": "none", "used": "random", "detail": ""}
