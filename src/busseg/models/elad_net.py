"""ElaD-Net: Xu, Wang, Yu, Tong, Li and Zhao, *ElaD-Net: An Elastic Semantic Decoupling Network
for Lesion Segmentation in Breast Ultrasound Images* (IJCAI 2025), section 3.

Architecture (equation numbers are the paper's)::

    encoder  EfficientNet-B2 (Table 1)   e0 1408@1/32, e1 88@1/16, e2 48@1/8, e3 24@1/4, e4 16@1/2
    decoder  stage i = 1..4               x_i = [Up2(x̃_{i-1} or e0) : e_i]            (Eq. 1)
                                          x̃_i = ESD(x_i)                          (Eqs. 2-16)
             SSR beside every stage       s_body = AvgPool5(x̃_i), s_edge = x̃_i - s_body (Eq. 17)
                                          ŝ'' = Up2(ŝ''_{i-1} + SE(s))      (Eqs. 18-21)
    head     at input resolution          p_o = Conv1x1(ŝ''edge + ŝ''body + Up2(x̃_4))   (Eq. 22)
                                          p_e = Conv1x1(ŝ''edge), p_b = Conv1x1(ŝ''body)

ESD (Elastic Semantic Decoupling) = multi-scale extraction (Eq. 2), self-calibrating elastic
decoupling SCED (Eqs. 3-9) and correlation feature fusion CFF (Eqs. 10-16); SSR = spatial
semantic reconstruction (Eqs. 17-22). The forward returns logits (``seg`` = p_o, ``aux`` =
``{"edge": p_e, "body": p_b}``), all at the input resolution; sigmoids are applied by the loss.

Choices where the paper is silent or ambiguous
----------------------------------------------
- Table 1 / Eq. 1: the five encoder stages are read off timm's ``efficientnet_b2``: stage 1 =
  stem + block group 1 (16 ch), 2 = group 2 (24), 3 = group 3 (48), 4 = group 4 (88 ch, 1/16),
  5 = groups 5-7 + the 1×1 head convolution with BN-SiLU (1408 ch, 1/32). Table 1 calls the stem
  "7×7 conv"; EfficientNet-B2's stem is a 3×3 stride-2 conv and is kept as such. The ImageNet
  classifier is removed. Eq. 1 numbers the deepest feature e_0 and the skips e_1 (1/16) … e_4
  (1/2); that numbering is used here.
- Eq. 1: ``Up_u`` is "upsampling by a factor of u through a transpose convolution"; it is used
  for every ``Up`` of the paper (Eqs. 1, 15, 19, 21 and the final upsampling): a
  ``ConvTranspose2d`` with kernel = stride = u. In Eq. 1 it also maps the previous width to the
  stage width. Decoder widths are not given: ``decoder_channels=(256, 128, 64, 32)``; the final
  ×2 upsampling and the SSR carry keep 32 channels at the input resolution.
- Eq. 2: kernel k and down-sampling s are paired in order, (k, s) ∈ {(3, 1), (5, 2), (7, 4)};
  Down_s is s×s average pooling; Conv2D_k is conv-BN-ReLU from the stage input to the stage
  width (C_k = C, so that the three scales can be summed in Eq. 16). When a stage's side is not
  a multiple of s (e.g. 6×8 at 1/16 of a 96×128 input), the last partial pooling cell is kept
  (``ceil_mode``) and the output of Up_s is cropped back to the stage size.
- Eqs. 3-5: the text says L+1 Gaussian levels but lists L variances and sums over L levels in
  Eq. 7. We take G_0 = x (variance 0, the "starting" representation) and G_1..G_L with the
  increasing standard deviations ``pyramid_sigmas=(1, 2, 4)`` (L = 3); the L+1 pyramid levels
  are LP_l = G_{l-1} - G_l (l = 1..L) and LP_{L+1} = G_L, which sum exactly back to x (the
  defining property of a Laplacian pyramid). Each Gaussian is applied to x directly (Eq. 3, not
  cascaded), at the same resolution (no decimation), as a fixed depthwise separable kernel of
  radius ceil(3σ) normalised to sum 1 (Eq. 4's prefactor is the 1-D one; normalising keeps the
  mean of every Gaussian level), with replicate padding (works on maps smaller than the kernel).
- Eq. 7 averages over all L+1 levels. Eq. 9: one FC1-ReLU-FC2 (1×1 conv) pair is shared by the
  three pooling types (no p index on FC1/FC2), a separate pair per scale and stage; reduction
  ``r=16`` with at least 4 hidden units. FC layers carry biases.
- Eqs. 10-11: Conv2D_1 maps C channels to one spatial attention map a = σ(Conv1x1(x̂)); the
  foreground leaf is a·x̂ and the surroundings leaf (1 - a)·x̂ (Eq. 11 literally reads
  (1 - F)·x̂ with F the foreground feature; the attention complement is what the text describes:
  "attention maps for both foreground and surroundings").
- Eqs. 12-13: the SE text says the first conv reduces "from C to r"; we read it as C/r, as in
  Eq. 9 and in Hu et al. (``SqueezeExcitation`` of ``busseg.models.layers``, r = 16, ≥ 4
  hidden units). The two leaves have their own SE. Eq. 14's Conv2D_3 is conv-BN-ReLU.
- Eq. 16: the scale weights W_s are three learnable scalars per stage, initialised to 1/3.
- Eq. 17: the 5×5 average pooling excludes the zero padding from its count
  (``count_include_pad=False``), so that a constant feature has no "edge" at the image border.
- Eqs. 19 and 21: ŝ''_0 = 0 at the first stage; Up2 also maps the width C_i to C_{i+1}. After
  the fourth stage Up2 lands at the input resolution, where Eq. 22 fuses the carried edge and
  body components with the final ×2 upsampling of x̃_4 (the paper's "final upsampling"). The
  main path x̃_i → Eq. 1 of the next stage is ESD's output, SSR is a side path.

Ablations (``variant``, the paper's Tables 4 and 5)
-------------------------------------------------
- ``"full"``: ElaD-Net.
- ``"unet_decoder"``: EfficientNet-B2 encoder with a plain U-Net decoder (Table 4, second row):
  every stage is two conv-BN-ReLU 3×3 convolutions, no SSR, no aux outputs.
- ``"no_esd"``: the stage block is that U-Net double convolution, SSR kept.
- ``"no_ssr"``: ESD decoder, p_o = Conv1x1(Up2(x̃_4)), no aux outputs (Table 4, third row).
- ``"no_edge"`` / ``"no_body"``: SSR with only the body / only the edge branch (Table 5);
  ``aux`` holds the remaining map only.

Size at 256×256, 1 input channel (``torch.utils.flop_counter.FlopCounterMode``, which counts
one multiply-add as 2 FLOPs): ElaD-Net has 23.67 M parameters (EfficientNet-B2 without its
classifier: 7.70 M) and costs 8.47 GFLOPs = 4.24 GMACs per image; the ablations are listed in
:data:`MEASURED_SIZE`. The paper reports neither.

Note on Eqs. 20-21: the edge component x̃ - AvgPool5(x̃) has (nearly) zero spatial mean, so the
global average pooling of its SE sees an almost constant input and acts close to a learned
per-channel scale. This follows from the paper's design and is kept as written.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.models.layers import ConvNormAct, DoubleConv, SqueezeExcitation
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model
from busseg.models.weights import timm_encoder

#: Parameters (millions) and cost at 256×256, 1 input channel, batch 1, measured with
#: ``FlopCounterMode`` (GFLOPs = 2 × GMACs; the fixed Gaussian filters are included, pooling is
#: not counted). With ``in_channels=3`` the stem adds 576 parameters.
MEASURED_SIZE = {
    "full": {"params_M": 23.67, "GFLOPs": 8.47, "GMACs": 4.24},
    "unet_decoder": {"params_M": 11.16, "GFLOPs": 5.12, "GMACs": 2.56},
    "no_esd": {"params_M": 11.54, "GFLOPs": 5.80, "GMACs": 2.90},
    "no_ssr": {"params_M": 23.30, "GFLOPs": 7.79, "GMACs": 3.90},
    "no_edge": {"params_M": 23.48, "GFLOPs": 8.13, "GMACs": 4.07},
    "no_body": {"params_M": 23.48, "GFLOPs": 8.13, "GMACs": 4.07},
}

VARIANTS = ("full", "unet_decoder", "no_esd", "no_ssr", "no_edge", "no_body")


# --------------------------------------------------------------------------------------------
# Encoder (section 3.1, Table 1)
# --------------------------------------------------------------------------------------------
class EfficientNetB2Encoder(nn.Module):
    """EfficientNet-B2 cut into the five stages of Table 1 (strides 2, 4, 8, 16, 32).

    ``forward`` returns ``[e_4, e_3, e_2, e_1, e_0]``, i.e. shallow to deep: 16@1/2, 24@1/4,
    48@1/8, 88@1/16, 1408@1/32.
    """

    def __init__(self, in_channels: int = 1, weights: str = "none") -> None:
        super().__init__()
        # The whole classification network is built (not timm's features_only extractor) so
        # that the pretrained 1×1 head conv (352→1408, stage 5 of Table 1) is kept.
        self.backbone = timm_encoder(
            "efficientnet_b2",
            weights=weights,
            in_channels=in_channels,
            feature_cfg=dict(feature_cls="getter", prune=False),
        )
        net = self.net
        net.reset_classifier(0)
        self.out_channels = (
            net.blocks[0][-1].conv_pw.out_channels,
            net.blocks[1][-1].conv_pwl.out_channels,
            net.blocks[2][-1].conv_pwl.out_channels,
            net.blocks[3][-1].conv_pwl.out_channels,
            net.conv_head.out_channels,
        )

    @property
    def net(self) -> nn.Module:
        """The timm ``EfficientNet`` (stem, seven block groups, head conv; no classifier)."""
        return self.backbone.model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = net.bn1(net.conv_stem(x))
        features = []
        for stage in range(4):
            x = net.blocks[stage](x)
            features.append(x)
        for stage in range(4, len(net.blocks)):
            x = net.blocks[stage](x)
        features.append(net.bn2(net.conv_head(x)))
        return features


def transposed_up(in_channels: int, out_channels: int, factor: int) -> nn.Module:
    """``Up_u`` of Eq. 1: upsampling by ``factor`` with a transposed convolution."""
    if factor == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=factor, stride=factor)


# --------------------------------------------------------------------------------------------
# Elastic Semantic Decoupling (section 3.2)
# --------------------------------------------------------------------------------------------
class GaussianBlur(nn.Module):
    """Fixed Gaussian filter G(·; σ) of Eq. 4, applied per channel (depthwise, separable)."""

    def __init__(self, sigma: float, truncate: float = 3.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"ElaD-Net pyramid sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.radius = max(1, math.ceil(truncate * sigma))
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2 * self.sigma**2))
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        k = self.kernel.to(x.dtype)
        r = self.radius
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


class LaplacianPyramid(nn.Module):
    """Difference-of-Gaussians pyramid of Eqs. 3-5 (see the module docstring for L).

    Returns L+1 maps of the input's size: ``x - G_1 x, G_1 x - G_2 x, …, G_L x`` (high to low
    frequency); they sum to ``x``.
    """

    def __init__(self, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)) -> None:
        super().__init__()
        if list(sigmas) != sorted(sigmas) or len(set(sigmas)) != len(sigmas):
            raise ConfigError(f"ElaD-Net pyramid sigmas must increase strictly, got {sigmas}")
        self.blurs = nn.ModuleList(GaussianBlur(s) for s in sigmas)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        gaussians = [x] + [blur(x) for blur in self.blurs]
        levels = [gaussians[l] - gaussians[l + 1] for l in range(len(self.blurs))]
        levels.append(gaussians[-1])
        return levels


class SelfCalibratingDecoupling(nn.Module):
    """SCED, Eqs. 3-9: channel weights M from the avg/max/min pooled pyramid levels.

    ``forward`` returns ``(x ⊗ M, M)`` with ``M`` of shape ``[B, C, 1, 1]``.
    """

    def __init__(
        self, channels: int, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0), reduction: int = 16
    ) -> None:
        super().__init__()
        self.pyramid = LaplacianPyramid(sigmas)
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = torch.stack(self.pyramid(x), dim=0)  # [L+1, B, C, H, W]
        pooled = {  # Eq. 6 per level, then Eq. 7: mean over levels
            "avg": levels.mean(dim=(-2, -1)).mean(0),
            "max": levels.amax(dim=(-2, -1)).mean(0),
            "min": levels.amin(dim=(-2, -1)).mean(0),
        }
        logits = sum(
            self.fc2(F.relu(self.fc1(z[:, :, None, None]))) for z in pooled.values()
        )  # Eq. 9
        weights = torch.sigmoid(logits)
        return x * weights, weights  # Eq. 8


class CorrelationFeatureFusionLeaves(nn.Module):
    """CFF for one scale, Eqs. 10-14: foreground / surroundings leaves, SE on each, 3×3 conv.

    ``forward`` returns ``(x̄, a)``: the fused map (Eq. 14) and the foreground attention
    ``a = σ(Conv1x1(x̂))`` of shape ``[B, 1, H, W]``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, 1, 1)
        self.se_foreground = SqueezeExcitation(channels, reduction)
        self.se_surroundings = SqueezeExcitation(channels, reduction)
        self.fuse = ConvNormAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = torch.sigmoid(self.attention(x))
        foreground = attention * x  # Eq. 10
        surroundings = (1.0 - attention) * x  # Eq. 11 (attention complement)
        fused = self.fuse(self.se_foreground(foreground) + self.se_surroundings(surroundings))
        return fused, attention  # Eqs. 12-14


class ESDScaleBranch(nn.Module):
    """One scale of ESD: Down_s → Conv_k (Eq. 2) → SCED (Eqs. 3-9) → CFF (Eqs. 10-14) →
    Up_s (Eq. 15)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        scale: int,
        sigmas: tuple[float, ...],
        reduction: int,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.extract = ConvNormAct(in_channels, channels, kernel_size)
        self.calibrate = SelfCalibratingDecoupling(channels, sigmas, reduction)
        self.fuse = CorrelationFeatureFusionLeaves(channels, reduction)
        self.up = transposed_up(channels, channels, scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2:]
        if self.scale > 1:
            # ceil_mode: a map whose side is not a multiple of s keeps its last partial cells
            # (averaged over their valid pixels); Up_s then overshoots and is cropped back.
            x = F.avg_pool2d(x, self.scale, ceil_mode=True)
        x = self.extract(x)
        x, _ = self.calibrate(x)
        x, attention = self.fuse(x)
        return self.up(x)[..., :height, :width], attention


class ElasticSemanticDecoupling(nn.Module):
    """ESD, Eqs. 2-16: three scale branches summed with learnable weights W_s (Eq. 16).

    ``forward`` returns ``(x̃, a)`` with ``a`` the full-resolution branch's foreground attention.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        scales: tuple[int, ...] = (1, 2, 4),
        sigmas: tuple[float, ...] = (1.0, 2.0, 4.0),
        reduction: int = 16,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) != len(scales):
            raise ConfigError(
                f"ElaD-Net: esd_kernel_sizes {kernel_sizes} and esd_scales {scales} must pair up"
            )
        self.branches = nn.ModuleList(
            ESDScaleBranch(in_channels, channels, k, s, sigmas, reduction)
            for k, s in zip(kernel_sizes, scales)
        )
        self.scale_weights = nn.Parameter(torch.full((len(scales),), 1.0 / len(scales)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, attention = 0, None
        for weight, branch in zip(self.scale_weights, self.branches):
            y, a = branch(x)
            out = out + weight * y
            attention = a if attention is None else attention
        return out, attention


# --------------------------------------------------------------------------------------------
# Spatial Semantic Reconstruction (section 3.3)
# --------------------------------------------------------------------------------------------
class SpatialSemanticReconstruction(nn.Module):
    """SSR at one decoder stage, Eqs. 17-21.

    ``forward(x̃_i, carried)`` decomposes x̃_i into body and edge (Eq. 17), excites each (SE,
    Eqs. 18 and 20) and returns ``{name: Up2(carried[name] + SE(s_name))}`` (Eqs. 19 and 21) for
    the enabled branches, at twice the resolution and with ``out_channels`` channels.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        branches: tuple[str, ...] = ("edge", "body"),
        reduction: int = 16,
        pool_size: int = 5,
    ) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.branches = tuple(branches)
        self.se = nn.ModuleDict({b: SqueezeExcitation(channels, reduction) for b in branches})
        self.up = nn.ModuleDict({b: transposed_up(channels, out_channels, 2) for b in branches})

    def decompose(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 17: body = 5×5 mean (stride 1, padding 2), edge = x - body."""
        body = F.avg_pool2d(
            x, self.pool_size, stride=1, padding=self.pool_size // 2, count_include_pad=False
        )
        return {"body": body, "edge": x - body}

    def forward(
        self, x: torch.Tensor, carried: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        parts = self.decompose(x)
        out = {}
        for name in self.branches:
            excited = self.se[name](parts[name])
            if carried:
                excited = excited + carried[name]
            out[name] = self.up[name](excited)
        return out


# --------------------------------------------------------------------------------------------
# Decoder and model
# --------------------------------------------------------------------------------------------
class ElaDDecoder(nn.Module):
    """Four decoder stages (Eq. 1) with ESD blocks (or U-Net double convs for the ablations),
    SSR side paths and the final ×2 upsampling to the input resolution."""

    def __init__(
        self,
        encoder_channels: tuple[int, ...],
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32),
        esd: bool = True,
        ssr_branches: tuple[str, ...] = ("edge", "body"),
        esd_kernel_sizes: tuple[int, ...] = (3, 5, 7),
        esd_scales: tuple[int, ...] = (1, 2, 4),
        pyramid_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0),
        reduction: int = 16,
    ) -> None:
        super().__init__()
        skips = list(encoder_channels[-2::-1])  # e_1 (1/16) … e_4 (1/2)
        if len(decoder_channels) != len(skips):
            raise ConfigError(
                f"ElaD-Net: decoder_channels needs {len(skips)} widths, got {decoder_channels}"
            )
        self.ssr_branches = tuple(ssr_branches)
        previous = encoder_channels[-1]
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.ssr = nn.ModuleList()
        for i, (skip, width) in enumerate(zip(skips, decoder_channels)):
            self.ups.append(transposed_up(previous, width, 2))  # Eq. 1
            if esd:
                block = ElasticSemanticDecoupling(
                    width + skip, width, esd_kernel_sizes, esd_scales, pyramid_sigmas, reduction
                )
            else:
                block = DoubleConv(width + skip, width)
            self.blocks.append(block)
            if self.ssr_branches:
                next_width = decoder_channels[min(i + 1, len(decoder_channels) - 1)]
                self.ssr.append(
                    SpatialSemanticReconstruction(width, next_width, self.ssr_branches, reduction)
                )
            previous = width
        self.final_up = transposed_up(previous, previous, 2)
        self.out_channels = previous

    def forward(
        self, features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Returns the fused full-resolution map ``ŝ''edge + ŝ''body + Up2(x̃_4)`` (the
        argument of Eq. 22's Conv1x1), the carried SSR components and the attention maps."""
        x = features[-1]
        skips = features[-2::-1]
        carried: dict[str, torch.Tensor] = {}
        attentions = {}
        for i, (up, block, skip) in enumerate(zip(self.ups, self.blocks, skips), start=1):
            x = torch.cat([up(x), skip], dim=1)  # Eq. 1
            if isinstance(block, ElasticSemanticDecoupling):
                x, attention = block(x)
                attentions[f"foreground_attention_{i}"] = attention
            else:
                x = block(x)
            if self.ssr_branches:
                carried = self.ssr[i - 1](x, carried)  # Eqs. 17-21
        fused = self.final_up(x)
        for component in carried.values():
            fused = fused + component  # Eq. 22
        return fused, carried, attentions


class ElaDNet(nn.Module):
    """ElaD-Net (Xu et al., IJCAI 2025): EfficientNet-B2 encoder, ESD + SSR decoder."""

    def __init__(
        self,
        in_channels: int = 1,
        encoder_weights: str = "none",
        variant: str = "full",
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32),
        esd_kernel_sizes: tuple[int, ...] = (3, 5, 7),
        esd_scales: tuple[int, ...] = (1, 2, 4),
        pyramid_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0),
        reduction: int = 16,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"ElaD-Net: unknown variant {variant!r}; choose one of {VARIANTS}")
        if in_channels not in (1, 3):
            raise ConfigError(f"ElaD-Net: in_channels must be 1 or 3, got {in_channels}")
        self.variant = variant
        esd = variant not in ("unet_decoder", "no_esd")
        branches = {
            "full": ("edge", "body"),
            "no_esd": ("edge", "body"),
            "no_edge": ("body",),
            "no_body": ("edge",),
        }.get(variant, ())
        self.encoder = EfficientNetB2Encoder(in_channels, encoder_weights)
        self.decoder = ElaDDecoder(
            self.encoder.out_channels,
            tuple(decoder_channels),
            esd=esd,
            ssr_branches=branches,
            esd_kernel_sizes=tuple(esd_kernel_sizes),
            esd_scales=tuple(esd_scales),
            pyramid_sigmas=tuple(pyramid_sigmas),
            reduction=reduction,
        )
        width = self.decoder.out_channels
        self.head = nn.Conv2d(width, 1, 1)  # Eq. 22
        self.aux_heads = nn.ModuleDict({b: nn.Conv2d(width, 1, 1) for b in branches})

    def forward(self, images: torch.Tensor) -> ModelOutput:
        h, w = images.shape[-2:]
        if h % 32 or w % 32 or min(h, w) < 32:
            raise ConfigError(
                f"ElaD-Net: input size {h}×{w} must be a positive multiple of 32 on each side"
            )
        fused, carried, attentions = self.decoder(self.encoder(images))
        aux = {name: self.aux_heads[name](component) for name, component in carried.items()}
        return ModelOutput(seg=self.head(fused), aux=aux, extras=attentions)


@register_model(
    "elad_net",
    paper="Xu et al., ElaD-Net, IJCAI 2025",
    size_divisor=32,
    description="ElaD-Net: EfficientNet-B2 encoder, elastic semantic decoupling (ESD) and "
    "spatial semantic reconstruction (SSR) decoder with edge/body outputs",
)
def elad_net(in_channels: int = 1, encoder_weights: str = "none", **options) -> nn.Module:
    """ElaD-Net; ``variant`` selects the paper's ablations (Tables 4 and 5)."""
    return ElaDNet(in_channels=in_channels, encoder_weights=encoder_weights, **options)
