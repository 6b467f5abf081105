"""Attention U-Net family: the Oktay et al. (2018) baseline and Guo's deeper variant (2025).

Two registered configurations share every module below (one attention-gate implementation):

- ``attention_unet`` — Oktay, Schlemper, Le Folgoc et al., *Attention U-Net: Learning Where to
  Look for the Pancreas* (MIDL 2018), 2-D form: four down-samplings (five resolution levels,
  64…1024 channels), conv-BN-ReLU blocks, an additive attention gate on every skip whose gating
  signal is the coarser decoder feature (their Eqs. 1-2, Fig. 2).
- ``attention_unet_plus`` — Guo, *An Improved U-Net Model for Ultrasound Image Segmentation of
  Breast Cancer* (ICSEML 2025), section 4: the same gates on every skip, a network "depth
  increased" by one level (five down-samplings, six resolution levels), encoder levels of two
  3×3 conv + ReLU with dropout, normal weight initialisation, a 1×1 output conv (+ sigmoid,
  applied by the loss / inference, never in ``forward``), binary cross-entropy, Adam, mean IoU.

The paper's text has no numbered equations; section 4 paragraphs are cited by their topic
("§4 encoder", "§4 decoder", "§4 AG", "§4 output"). Oktay et al.'s equations are cited as
"Oktay Eq. n".

Attention gate (Oktay Eqs. 1-2, Fig. 2; Guo §4 AG)::

    q = ψᵀ ReLU(W_xᵀ x + W_gᵀ g + b_g) + b_ψ,    α = sigmoid(q),    x̂ = α · x

``x`` is the skip feature (``H×W``), ``g`` the gating feature from the next coarser decoder
level (``H/2×W/2``). α is computed on the coarse grid and resampled to ``H×W`` with bilinear
interpolation ("grid resampling of attention coefficients", Oktay §2; Guo's "up-sampling").

Choices where the papers are silent or ambiguous (each is an option of :class:`AttentionUNet`):

- W_x must bring ``x`` to the gating grid (Oktay Fig. 2 shows the shape change but calls it a
  "1×1×1 convolution"): a 2×2 convolution with stride 2, so that every skip pixel contributes
  (a 1×1 stride-2 conv would ignore three pixels out of four). W_g and ψ are 1×1 convs.
- Guo §4 AG mentions "batch normalization" inside the gate; Oktay Eq. 1 has none. The gate's
  ``norm`` option puts BatchNorm on the two projections W_xᵀx and W_gᵀg before their sum:
  ``None`` for the baseline, ``"bn"`` for ``attention_unet_plus``. F_int (the gate's inner
  width, not fixed by either paper) is half the skip's channel count.
- Guo §4 encoder says "four-level progressive structure" and, in the abstract / introduction,
  that "the network depth is increased" relative to U-Net. We read the four levels as the
  classic U-Net's down-sampling steps and add one: ``depth=5`` max-poolings, i.e. six
  resolution levels (``base_channels`` · 2^l, l = 0…5: 32…1024 by default, which keeps the
  parameter count close to the 64…1024 baseline). ``depth`` is an option.
- Guo's encoder convolutions are "3×3 + ReLU"; batch normalisation is mentioned only in the
  gate, so ``attention_unet_plus`` has no normalisation in its conv blocks (``block_norm=None``);
  the Oktay baseline uses conv-BN-ReLU (``block_norm="bn"``).
- Dropout (Guo §4 encoder: "All convolutional layers utilize ReLU activation functions, and
  Dropout regularization is introduced to improve generalization capability"). The text says
  the encoder has dropout, not where, how often or at what rate. Default
  (``dropout_levels="bottleneck"``): one element-wise dropout, rate 0.3, at the end of the
  contracting path (between the two convolutions of the bottleneck level), where U-Net [2],
  the model Guo builds on, puts its dropout. ``dropout_levels="encoder"`` is the other
  reading: a dropout between the two convolutions of every encoder level and of the
  bottleneck, rates 0.1, 0.1, 0.2, 0.2, 0.3, 0.3 (our choice; the paper gives none). That
  reading does not learn a usable model here: in conv blocks without normalisation (Guo
  normalises only inside the gates) and on min-max inputs, five levels of dropout shift the
  activations between training and eval mode, and eval-mode predictions collapse to
  background. Measured with ``busseg.engine.learning_check`` (recipe settings: min-max
  inputs, BCE, Adam 1e-4, batch 8; 64² phantoms, 48 training and 16 held-out, paper width,
  one CPU thread), eval-mode / training-mode Dice on the held-out phantoms:

  ====================================  ==============  ==================================
  dropout                               40 steps, s. 0  120 steps, seeds 0 / 1 / 2
  ====================================  ==============  ==================================
  every level (``"encoder"``)           0.00 / 0.51     0.00 / 0.81, 0.16 / 0.77, 0.00 / 0.84
  bottleneck only, 0.3 (default)        0.61 / 0.65     0.83 / 0.83, 0.87 / 0.85, 0.85 / 0.89
  bottleneck only, 0.5                  0.67 / 0.79
  none                                  0.73 / 0.73
  BN in the blocks + every level        0.30 / 0.24
  BN in the blocks + bottleneck 0.3     0.29 / 0.29
  ====================================  ==============  ==================================

  A normalised block (``block_norm="bn"``) removes the train/eval gap too but learns more
  slowly at this learning rate, and the text normalises only the gates, so it stays an
  option, not the default. Decoder blocks have no dropout.
- "Normal initialization" (Guo §4 encoder): every conv / transposed-conv weight is drawn from
  N(0, std²) with He's std = sqrt(2 / fan_in), fan_in = k·k·C_in (``init_std=None``), or from
  N(0, init_std²) when a number is given; biases start at 0, BatchNorm at (γ=1, β=0). The
  baseline keeps PyTorch's default (Kaiming-uniform) initialisation.
- Up-sampling (Guo §4 decoder: "an up-sampling operation"): bilinear ×2 of the coarser decoder
  feature (no extra parameters), concatenated with the gated skip, then two 3×3 convs to the
  skip's width; the baseline uses the same decoder.
- Oktay's deep supervision is not part of either configuration (Guo has a single output).

Attention coefficients of every gate are returned in ``ModelOutput.extras["attention_<l>"]``,
``[B, 1, h_l, w_l]`` in [0, 1] at the skip's spatial size; level ``l`` = 1 is the full-resolution
skip, level ``l`` has stride 2^(l-1).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.models.layers import ConvNormAct, make_norm, resize_to
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model

#: ``dropout_levels="encoder"`` (the literal reading): Guo §4 gives no rates; these rise with
#: depth (levels 1..6: five encoder levels + bottleneck).
DEFAULT_PLUS_DROPOUT = (0.1, 0.1, 0.2, 0.2, 0.3, 0.3)
#: ``dropout_levels="bottleneck"`` (the default): one rate at the end of the contracting path.
DEFAULT_BOTTLENECK_DROPOUT = 0.3


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay Eqs. 1-2; Guo §4 AG): ``x̂ = sigmoid(q(x, g)) · x``.

    Args:
        skip_channels: channels F_l of the skip feature ``x``.
        gating_channels: channels F_g of the gating feature ``g`` (coarser decoder level).
        inter_channels: inner width F_int of the additive attention.
        norm: ``None`` (Oktay Eq. 1) or ``"bn"`` (Guo §4 AG): normalisation of the two
            projections W_xᵀx and W_gᵀg before their sum.

    ``forward(x, g)`` returns ``(x̂, α)`` with α ``[B, 1, H, W]`` at the skip's size.
    """

    def __init__(
        self,
        skip_channels: int,
        gating_channels: int,
        inter_channels: int,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        with_bias = norm in (None, "none")
        # W_x: to the gating grid (see module docstring); no bias, b_g is carried by W_g.
        self.theta_x = nn.Sequential(
            nn.Conv2d(skip_channels, inter_channels, kernel_size=2, stride=2, bias=False),
            make_norm(norm, inter_channels),
        )
        self.phi_g = nn.Sequential(
            nn.Conv2d(gating_channels, inter_channels, kernel_size=1, bias=with_bias),
            make_norm(norm, inter_channels),
        )
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """α = sigmoid(q) (Oktay Eqs. 1-2), resampled to the spatial size of ``x``."""
        projected_x = self.theta_x(x)
        # Odd sizes: the strided conv and the encoder's max-pool may differ by one pixel.
        projected_g = resize_to(self.phi_g(g), projected_x)
        q = self.psi(F.relu(projected_x + projected_g))
        return resize_to(torch.sigmoid(q), x)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.coefficients(x, g)
        return x * alpha, alpha


class EncoderLevel(nn.Sequential):
    """Two 3×3 conv (+ norm) + ReLU, dropout between them (Guo §4 encoder)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str | None, dropout: float
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm=norm),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            ConvNormAct(out_channels, out_channels, 3, norm=norm),
        )


class AttentionUNetEncoder(nn.Module):
    """``depth`` max-pooled levels plus a bottleneck; returns all ``depth + 1`` features,
    finest first (the first ``depth`` are the skips)."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        norm: str | None,
        dropout: Sequence[float],
    ) -> None:
        super().__init__()
        self.channels = tuple(channels)
        widths_in = (in_channels, *channels[:-1])
        self.levels = nn.ModuleList(
            EncoderLevel(c_in, c_out, norm, p) for c_in, c_out, p in zip(widths_in, channels, dropout)
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, level in enumerate(self.levels):
            if index > 0:
                x = self.pool(x)
            x = level(x)
            features.append(x)
        return features


class DecoderLevel(nn.Module):
    """Gate the skip with the coarser feature, up-sample, concatenate, two 3×3 convs
    (Guo §4 decoder and AG)."""

    def __init__(
        self,
        skip_channels: int,
        coarse_channels: int,
        block_norm: str | None,
        gate_norm: str | None,
    ) -> None:
        super().__init__()
        self.gate = AttentionGate(
            skip_channels, coarse_channels, max(1, skip_channels // 2), norm=gate_norm
        )
        self.block = nn.Sequential(
            ConvNormAct(skip_channels + coarse_channels, skip_channels, 3, norm=block_norm),
            ConvNormAct(skip_channels, skip_channels, 3, norm=block_norm),
        )

    def forward(
        self, skip: torch.Tensor, coarse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gated_skip, alpha = self.gate(skip, coarse)
        upsampled = resize_to(coarse, skip, mode="bilinear")
        return self.block(torch.cat([gated_skip, upsampled], dim=1)), alpha


class AttentionUNetDecoder(nn.Module):
    """Decoder levels from coarse to fine; returns the finest feature and the attention maps
    keyed ``attention_<level>``."""

    def __init__(
        self, channels: Sequence[int], block_norm: str | None, gate_norm: str | None
    ) -> None:
        super().__init__()
        # Built finest first, so ``levels[i]`` handles the skip of encoder level i + 1.
        self.levels = nn.ModuleList(
            DecoderLevel(channels[i], channels[i + 1], block_norm, gate_norm)
            for i in range(len(channels) - 1)
        )

    def forward(
        self, features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = features[-1]
        attention = {}
        for index in reversed(range(len(self.levels))):
            x, alpha = self.levels[index](features[index], x)
            attention[f"attention_{index + 1}"] = alpha
        return x, dict(reversed(attention.items()))  # finest level first


class AttentionUNet(nn.Module):
    """Attention U-Net (encoder, gated decoder, 1×1 head) shared by both configurations.

    Args:
        in_channels: 1 (grayscale) or 3.
        depth: number of max-pooling steps (4 for Oktay, 5 for Guo).
        base_channels: width of the first level; level l has ``base_channels · 2^l``.
        block_norm: normalisation in the conv blocks (``"bn"`` or ``None``).
        gate_norm: normalisation inside the attention gates (``"bn"`` or ``None``).
        dropout: one rate for every encoder level, or ``depth + 1`` rates (finest first,
            bottleneck last).
        init: ``"default"`` (PyTorch) or ``"normal"`` (see ``init_std``).
        init_std: ``None`` for He's std sqrt(2/fan_in), or a fixed standard deviation.
    """

    def __init__(
        self,
        in_channels: int = 1,
        depth: int = 4,
        base_channels: int = 64,
        block_norm: str | None = "bn",
        gate_norm: str | None = None,
        dropout: float | Sequence[float] = 0.0,
        init: str = "default",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"attention U-Net: in_channels must be 1 or 3, got {in_channels}")
        if depth < 1:
            raise ConfigError(f"attention U-Net: depth must be >= 1, got {depth}")
        if base_channels < 2:
            raise ConfigError(f"attention U-Net: base_channels must be >= 2, got {base_channels}")
        rates = _dropout_rates(dropout, depth + 1)
        channels = [base_channels * 2**level for level in range(depth + 1)]
        self.in_channels = in_channels
        self.depth = depth
        self.encoder = AttentionUNetEncoder(in_channels, channels, block_norm, rates)
        self.decoder = AttentionUNetDecoder(channels, block_norm, gate_norm)
        self.head = nn.Conv2d(channels[0], 1, kernel_size=1)
        if init == "normal":
            normal_init_(self, init_std)
        elif init != "default":
            raise ConfigError(f"attention U-Net: init must be 'default' or 'normal', got {init!r}")

    def forward(self, images: torch.Tensor) -> ModelOutput:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}"
            )
        features = self.encoder(images)
        decoded, attention = self.decoder(features)
        return ModelOutput(seg=self.head(decoded), extras=attention)


def _dropout_rates(dropout: float | Sequence[float], count: int) -> tuple[float, ...]:
    rates = (float(dropout),) * count if isinstance(dropout, (int, float)) else tuple(dropout)
    if len(rates) != count:
        raise ConfigError(
            f"attention U-Net: dropout needs one rate or {count} rates (levels + bottleneck), "
            f"got {len(rates)}"
        )
    if any(not 0.0 <= p < 1.0 for p in rates):
        raise ConfigError(f"attention U-Net: dropout rates must lie in [0, 1), got {rates}")
    return tuple(float(p) for p in rates)


def normal_init_(module: nn.Module, std: float | None = None) -> None:
    """Normal initialisation (Guo §4 encoder): conv weights ~ N(0, std²) with
    std = sqrt(2 / fan_in) (He et al. 2015) when ``std`` is None; biases 0; norm layers
    γ = 1, β = 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            if std is None:
                fan_in = layer.weight[0].numel() if isinstance(layer, nn.Conv2d) else (
                    layer.weight.shape[1] * layer.weight[0, 0].numel()
                )
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_in))
            else:
                nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


_OKTAY = (
    "Oktay et al., Attention U-Net: Learning Where to Look for the Pancreas (MIDL 2018), "
    "section 2, Eqs. 1-2, Fig. 2 (2-D form)"
)
_GUO = (
    "Guo, An Improved U-Net Model for Ultrasound Image Segmentation of Breast Cancer "
    "(ICSEML 2025), section 4"
)


@register_model("attention_unet", paper=_OKTAY, size_divisor=16)
def attention_unet(
    in_channels: int = 1,
    encoder_weights: str = "none",
    *,
    depth: int = 4,
    base_channels: int = 64,
    gate_norm: str | None = None,
    dropout: float | Sequence[float] = 0.0,
) -> AttentionUNet:
    """Attention U-Net (Oktay et al. 2018): 4 down-samplings, conv-BN-ReLU, additive gates."""
    _require_no_pretrained("attention_unet", encoder_weights)
    return AttentionUNet(
        in_channels=in_channels,
        depth=depth,
        base_channels=base_channels,
        block_norm="bn",
        gate_norm=gate_norm,
        dropout=dropout,
        init="default",
    )


@register_model("attention_unet_plus", paper=_GUO, size_divisor=32)
def attention_unet_plus(
    in_channels: int = 1,
    encoder_weights: str = "none",
    *,
    depth: int = 5,
    base_channels: int = 32,
    block_norm: str | None = None,
    gate_norm: str | None = "bn",
    dropout_levels: str = "bottleneck",
    dropout: float | Sequence[float] | None = None,
    init_std: float | None = None,
) -> AttentionUNet:
    """Improved deeper Attention U-Net (Guo 2025): 5 down-samplings, dropout, normal init.

    ``dropout_levels``: ``"bottleneck"`` (default) puts one dropout at the end of the
    contracting path (rate :data:`DEFAULT_BOTTLENECK_DROPOUT`, or ``dropout``);
    ``"encoder"`` puts one between the two convolutions of every encoder level and of the
    bottleneck (rates :data:`DEFAULT_PLUS_DROPOUT`, resampled to ``depth + 1`` levels, or
    ``dropout``: one rate or ``depth + 1`` rates). See the module docstring for why."""
    _require_no_pretrained("attention_unet_plus", encoder_weights)
    if dropout_levels == "bottleneck":
        if dropout is not None and not isinstance(dropout, (int, float)):
            raise ConfigError(
                "attention_unet_plus: dropout_levels='bottleneck' takes one dropout rate; "
                "per-level rates need dropout_levels='encoder'"
            )
        rate = DEFAULT_BOTTLENECK_DROPOUT if dropout is None else float(dropout)
        dropout = (0.0,) * depth + (rate,)
    elif dropout_levels == "encoder":
        if dropout is None:
            dropout = _stretch_rates(DEFAULT_PLUS_DROPOUT, depth + 1)
    else:
        raise ConfigError(
            "attention_unet_plus: dropout_levels must be 'bottleneck' or 'encoder', "
            f"got {dropout_levels!r}"
        )
    return AttentionUNet(
        in_channels=in_channels,
        depth=depth,
        base_channels=base_channels,
        block_norm=block_norm,
        gate_norm=gate_norm,
        dropout=dropout,
        init="normal",
        init_std=init_std,
    )


def _stretch_rates(rates: Sequence[float], count: int) -> tuple[float, ...]:
    """Default rates for another depth: the same rising profile, sampled at ``count`` levels."""
    if count == 1:
        return (rates[-1],)
    return tuple(rates[round(i * (len(rates) - 1) / (count - 1))] for i in range(count))


def _require_no_pretrained(name: str, encoder_weights: str) -> None:
    # Both papers train from scratch; there is no pretrained encoder to load.
    if encoder_weights not in ("none", None):
        raise ConfigError(
            f"model {name!r} has no pretrained encoder (trained from scratch in the paper); "
            f"use encoder_weights='none', got {encoder_weights!r}"
        )
