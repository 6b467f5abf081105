"""ACSNet: multi-task breast-tumour segmentation and benign/malignant classification.

He, Yang, Su & Wang, "Multi-task learning for segmentation and classification of breast
tumors from ultrasound images", Computers in Biology and Medicine (2024), section 3.

Layout (paper section 3.1, Fig. 2)
----------------------------------
- **Encoder, stages 1-5**: ResNet-18 (the backbone of every model in the paper's Table 3):
  stem 64 ch @1/2, layer1 64 @1/4, layer2 128 @1/8, layer3 256 @1/16, layer4 512 @1/32.
  ImageNet weights through :func:`busseg.models.weights.timm_encoder`.
- **Gate units** (section 3.2, Eqs. 1-3) on every skip connection and on the bottleneck.
- **Decoder, stages 6-9** at 1/16, 1/8, 1/4, 1/2: the incoming feature is reduced by a 1x1
  convolution to the skip's width and upsampled x2 (bilinear), concatenated with the gated
  skip, and refined by two convolutions (3x3 + 3x3 in stages 6-8, 1x1 + 3x3 in stage 9, as in
  the authors' code; ``last_stage_kernels=(3, 3)`` gives stage 9 two 3x3 convolutions too);
  every decoder convolution is followed by GroupNorm and ReLU (section 3.1). A **DSAModule** (section 3.3, Eqs. 4-7) follows the
  convolutions of stages 6 and 7.
- **Segmentation head**: the stage-9 feature is upsampled x2 to the input size, refined by one
  3x3 convolution unit and projected by a 1x1 convolution to one logit channel (no sigmoid:
  the busseg contract returns logits; the loss and inference apply it).
- **Classification branch** (section 3.1, last paragraph; section 5.2): features of stage 4
  (encoder, 256 @1/16), stage 5 (encoder, 512 @1/32, upsampled x2) and stage 6 (decoder,
  512 @1/16), each re-weighted by channel attention, concatenated (multi-scale fusion),
  global-average-pooled and classified by two fully connected layers (1280 -> 640 -> 2).
  The paper's final Softmax is left to the loss/inference: ``cls`` holds the two logits
  (benign, malignant).

Ablation networks of Table 1 (``variant`` option / separate registered names)
-----------------------------------------------------------------------------
=================  ==========  ====================================================
busseg             paper       what it is
=================  ==========  ====================================================
``acsnet_unet``    UNet        segmentation only (no gate, no DSA, no classifier)
``acsnet_clsnet``  ClsNet      classification only: encoder -> GAP -> FC -> FC
``cunet``          CUNet       UNet + single-scale classifier on stage 5
``cu_g``           CU_G Net    CUNet + gate units
``c_a_unet``       C_A UNet    CUNet + channel attention in the single-scale classifier
``cu_a``           CU_A Net    CUNet + DSAModules
``cu_ga``          CU_GA Net   CUNet + gate units + DSAModules
``c_ms_unet``      C_MS UNet   UNet + multi-scale classifier (stages 4, 5, 6), no CA
``c_ams_unet``     C_AMS UNet  UNet + multi-scale classifier with CA
``acsnet``         ACSNet      everything (default)
=================  ==========  ====================================================

The segmentation-only UNet and the classification-only ClsNet are registered under their own
names (``acsnet_unet``: ``multitask=False``; ``acsnet_clsnet``: ``segments=False``, its
``seg`` is ``None``) so the engine can tell from the registry what each model predicts; the
eight multi-task networks are ``create_model("acsnet", variant=...)``.

Choices where the paper is silent (all settled, where possible, by the authors' public code)
--------------------------------------------------------------------------------------------
- Eqs. 1-2, "Conv": the two gate maps come from conv3x3 (C -> max(C/8, 8)) + GN + ReLU +
  conv3x3 (-> 2); one map is average-pooled (G1), the other max-pooled (G2), giving two
  per-image scalars. Eq. 3, "Conv": the 3x3 convolution of Fig. 3, followed by GN + ReLU.
- A gate also sits on the bottleneck (stage 5) before it enters stage 6, as in the authors'
  code ("each skip connection" in the text; the bottleneck is the deepest one).
- Eqs. 4 and 7, "DConv": modulated (DCNv2) deformable 3x3 convolution: a plain 3x3
  convolution predicts 2*9 offsets and 9 modulation scalars per position; it is zero-
  initialised, so training starts from a regular convolution with modulation 0.5 (DCNv2's
  initialisation). Each deformable convolution is followed by GN + ReLU (section 3.1: "each
  convolution operation is followed by GN and ReLU"). Eqs. 5-6 use two separate 3x3
  convolutions (1 -> 1 channel) for the average and the max map.
- DSAModules are used in decoder stages 6 and 7 (the two deepest, as in the authors' code;
  the paper says "at different stages of the decoder").
- Channel attention (CA): the paper cites squeeze-and-excitation [50]; the default is SE
  (GAP -> FC C/16 -> ReLU -> FC -> sigmoid). The authors' code concatenates an average- and a
  max-pooled descriptor before the MLP (FC 2C -> C/16 -> C): ``channel_attention="avg_max"``
  (:class:`AvgMaxChannelAttention`). It is also the form that reproduces Table 5's parameter
  count exactly (see "Size" below).
- Stage 9 (the last decoder stage, section 3.1 does not describe its convolutions): a 1x1
  then a 3x3 convolution, as the authors' code (which has ReLU only after its 1x1; section
  3.1's "each convolution ... followed by GN and ReLU" is kept).
- The classification branch reads the raw (ungated) encoder features of stages 4 and 5 and
  the output of stage 6 (after its DSAModule). The first FC layer halves the width
  (1280 -> 640, or 512 -> 256 for the single-scale branches of CUNet/ClsNet). No dropout.
- GroupNorm uses 32 groups (clipped to a divisor of the width); the paper gives no number.
- The decoder's 1x1 "up" reductions are followed by GN + ReLU as well (the authors' code
  has ReLU only).

Size (Table 5: 30.96 GFLOPs, 42.99 M parameters) and the counting convention behind it
----------------------------------------------------------------------------------------
At 256x256 with one input channel this implementation has 31.78 M parameters (encoder
11.17 M, gate units 3.57 M, DSAModules 9.41 M, classification branch 0.90 M) and costs
23.6 G multiply-adds = 47.2 GFLOPs (``FlopCounterMode`` convention, 1 MAC = 2 FLOPs; the
deformable convolutions, 3.6 G MACs, counted as the dense convolutions they replace through
the formula registered below); with three input channels and ``channel_attention="avg_max"``
(the authors' form) 31.82 M and 23.7 G MACs.

Table 5's figures follow from how the authors' model is laid out and counted, not from a
different network: their module keeps the whole torchvision ResNet-18 (including its unused
1000-class FC layer) as one attribute and registers its stages again as ``layer0..layer4``.
``thop.profile`` (0.1.1) sums parameters and operations along every registration path, so
the encoder's 11.7 M parameters and its multiply-adds are counted twice, and it reports MACs,
which Table 5 calls FLOPs. Counting this implementation with thop on that layout
(``python benchmarks/acsnet_table5_count.py``, needs thop) gives 42.99 M / 30.86 G for ACSNet
with the authors' avg+max channel attention (42.95 M with SE) and 29.08 M / 25.58 G for the
ResNet-18 U-Net (Table 5: 42.99 M / 30.96 G and 29.38 M / 25.69 G). Unique parameters are
the figures above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import flop_counter
from torchvision.ops import DeformConv2d

from busseg.errors import ConfigError
from busseg.models.layers import ConvNormAct, SqueezeExcitation, make_norm, resize_to
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model
from busseg.models.weights import timm_encoder

PAPER = (
    "He et al., Multi-task learning for segmentation and classification of breast tumors "
    "from ultrasound images (Comput. Biol. Med. 2024), section 3"
)


def _deform_conv2d_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``torchvision::deform_conv2d`` for ``FlopCounterMode``, which otherwise counts
    it as 0: the multiply-adds of the dense convolution it replaces (x2, the counter's
    convention); the bilinear sampling is not counted."""
    out_channels, in_per_group, kh, kw = weight_shape
    return 2 * input_shape[0] * out_channels * in_per_group * kh * kw * out_shape[-2] * out_shape[-1]


if torch.ops.torchvision.deform_conv2d not in flop_counter.flop_registry:  # once per process
    flop_counter.register_flop_formula(torch.ops.torchvision.deform_conv2d)(_deform_conv2d_flops)


# --------------------------------------------------------------------------------------
# Paper modules
# --------------------------------------------------------------------------------------
class GateUnit(nn.Module):
    """Gate unit of section 3.2 (Fig. 3), Eqs. 1-3.

    ``F1, F2 = Conv(X)`` (two single-channel maps), ``G1 = GAP(sigmoid(F1))`` (Eq. 1),
    ``G2 = GMP(sigmoid(F2))`` (Eq. 2), ``Y = Conv(X*G1 + X*G2)`` (Eq. 3). G1 and G2 are one
    scalar per image each, so the unit decides how much of a whole skip feature reaches the
    decoder. The map-producing "Conv" of Eqs. 1-2 is a conv3x3-GN-ReLU-conv3x3 bottleneck and
    the output "Conv" of Eq. 3 a 3x3 convolution with GN + ReLU (see the module docstring).
    """

    def __init__(self, channels: int, norm: str = "gn") -> None:
        super().__init__()
        hidden = max(channels // 8, 8)
        self.gate_maps = nn.Sequential(
            ConvNormAct(channels, hidden, 3, norm=norm),
            nn.Conv2d(hidden, 2, 3, padding=1),
        )
        self.output_conv = ConvNormAct(channels, channels, 3, norm=norm)

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 2]``: (G1, G2) of Eqs. 1-2, each in [0, 1]."""
        maps = torch.sigmoid(self.gate_maps(x))
        g_avg = maps[:, 0].mean(dim=(1, 2))
        g_max = maps[:, 1].amax(dim=(1, 2))
        return torch.stack([g_avg, g_max], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.gate_values(x)
        g_sum = (gates[:, 0] + gates[:, 1]).view(-1, 1, 1, 1)
        # X*G1 + X*G2 == X*(G1+G2): one multiply instead of two (same Eq. 3).
        return self.output_conv(x * g_sum), gates


class ModulatedDeformConvUnit(nn.Module):
    """"DConv" of Eqs. 4 and 7: modulated deformable 3x3 convolution (DCNv2) + GN + ReLU.

    A plain 3x3 convolution predicts, per output position, 2*k*k sampling offsets and k*k
    modulation scalars (sigmoid); ``torchvision.ops.DeformConv2d`` samples the input there.
    The offset/modulation predictor starts at zero (regular grid, modulation 0.5).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "gn") -> None:
        super().__init__()
        self.kernel_points = kernel_size * kernel_size
        padding = kernel_size // 2
        self.offset_mask = nn.Conv2d(in_channels, 3 * self.kernel_points, kernel_size, padding=padding)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.deform = DeformConv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.norm = make_norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predicted = self.offset_mask(x)
        offset = predicted[:, : 2 * self.kernel_points]
        modulation = torch.sigmoid(predicted[:, 2 * self.kernel_points :])
        return self.act(self.norm(self.deform(x, offset, modulation)))


class DSAModule(nn.Module):
    """Deformable spatial attention module of section 3.3 (Fig. 4), Eqs. 4-7.

    ``X' = DConv(X)`` (Eq. 4); ``S1 = sigmoid(Conv3x3(mean_c X'))`` (Eq. 5);
    ``S2 = sigmoid(Conv3x3(max_c X'))`` (Eq. 6); ``Y = DConv(Cat(X'*S1, X'*S2))`` (Eq. 7),
    the second deformable convolution mapping 2C channels back to C.
    """

    def __init__(self, channels: int, norm: str = "gn") -> None:
        super().__init__()
        self.deform_in = ModulatedDeformConvUnit(channels, channels, norm=norm)
        self.avg_attention = nn.Conv2d(1, 1, 3, padding=1)
        self.max_attention = nn.Conv2d(1, 1, 3, padding=1)
        self.deform_out = ModulatedDeformConvUnit(2 * channels, channels, norm=norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        deformed = self.deform_in(x)
        s_avg = torch.sigmoid(self.avg_attention(deformed.mean(dim=1, keepdim=True)))
        s_max = torch.sigmoid(self.max_attention(deformed.amax(dim=1, keepdim=True)))
        fused = self.deform_out(torch.cat([deformed * s_avg, deformed * s_max], dim=1))
        return fused, torch.cat([s_avg, s_max], dim=1)


# --------------------------------------------------------------------------------------
# Encoder / decoder / heads
# --------------------------------------------------------------------------------------
class ResNetEncoder(nn.Module):
    """Encoder stages 1-5: a timm ResNet (default ResNet-18) returning all five strides."""

    def __init__(self, name: str = "resnet18", in_channels: int = 1, weights: str = "none") -> None:
        super().__init__()
        self.backbone = timm_encoder(name, weights=weights, in_channels=in_channels, out_indices=(0, 1, 2, 3, 4))
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        reductions = list(self.backbone.feature_info.reduction())
        if reductions != [2, 4, 8, 16, 32]:
            raise ConfigError(f"ACSNet encoder {name!r}: needs strides 2..32, got {reductions}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)


class DecoderStage(nn.Module):
    """One decoder stage (6-9): reduce + upsample the deeper feature, concatenate the (gated)
    skip, two convolution units (``kernels``: 3x3 + 3x3, or 1x1 + 3x3 in stage 9), optional
    DSAModule."""

    def __init__(
        self,
        deep_channels: int,
        skip_channels: int,
        use_dsa: bool,
        norm: str = "gn",
        kernels: tuple[int, int] = (3, 3),
    ) -> None:
        super().__init__()
        width = 2 * skip_channels
        self.reduce = ConvNormAct(deep_channels, skip_channels, 1, norm=norm)
        self.convs = nn.Sequential(*(ConvNormAct(width, width, k, norm=norm) for k in kernels))
        self.dsa = DSAModule(width, norm=norm) if use_dsa else None
        self.out_channels = width

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        up = resize_to(self.reduce(deep), skip)
        x = self.convs(torch.cat([skip, up], dim=1))
        if self.dsa is None:
            return x, None
        return self.dsa(x)


class ACSNetDecoder(nn.Module):
    """Gate units on the five encoder outputs and decoder stages 6-9."""

    def __init__(
        self,
        encoder_channels: list[int],
        use_gates: bool,
        dsa_stages: tuple[int, ...],
        norm: str = "gn",
        last_stage_kernels: tuple[int, int] = (1, 3),
    ) -> None:
        super().__init__()
        self.gates = (
            nn.ModuleList(GateUnit(c, norm=norm) for c in encoder_channels) if use_gates else None
        )
        stages = []
        deep = encoder_channels[4]
        for stage_number, skip_channels in zip((6, 7, 8, 9), encoder_channels[3::-1]):
            kernels = last_stage_kernels if stage_number == 9 else (3, 3)
            stage = DecoderStage(deep, skip_channels, stage_number in dsa_stages, norm, kernels)
            stages.append(stage)
            deep = stage.out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = deep
        self.stage6_channels = stages[0].out_channels

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Returns the outputs of stages 6..9 and the inspection tensors (gate values,
        DSA spatial attention maps)."""
        extras: dict[str, torch.Tensor] = {}
        if self.gates is not None:
            gated = []
            for level, (gate, feature) in enumerate(zip(self.gates, features), start=1):
                out, values = gate(feature)
                gated.append(out)
                extras[f"gate_stage{level}"] = values.detach()
            features = gated
        deep = features[4]
        outputs = []
        for stage_number, stage, skip in zip((6, 7, 8, 9), self.stages, features[3::-1]):
            deep, attention = stage(deep, skip)
            if attention is not None:
                extras[f"dsa_attention_stage{stage_number}"] = attention.detach()
            outputs.append(deep)
        return outputs, extras


class SegmentationHead(nn.Module):
    """Stage-9 feature -> input resolution -> 3x3 conv unit -> 1x1 conv (one logit map)."""

    def __init__(self, channels: int, norm: str = "gn") -> None:
        super().__init__()
        self.refine = ConvNormAct(channels, channels, 3, norm=norm)
        self.project = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.project(self.refine(resize_to(x, size)))


class AvgMaxChannelAttention(nn.Module):
    """Channel attention with an average- and a max-pooled descriptor (the authors' code).

    ``w = sigmoid(FC2(ReLU(FC1([GAP(X); GMP(X)]))))``, ``Y = X * w``: one MLP on the 2C-long
    concatenation of both descriptors (hidden width C/16), unlike CBAM's shared MLP whose two
    outputs are summed. The paper cites squeeze-and-excitation [50] (average only); this is the
    form of the authors' public code, selectable with ``channel_attention="avg_max"``.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 2) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(descriptor))))
        return x * weights[:, :, None, None]


class ClassificationHead(nn.Module):
    """Classification branch (section 3.1; Table 1 "CA" and "Multi-scale" columns).

    ``multi_scale=True``: features of stages 4, 5 (upsampled to stage 4's size) and 6;
    ``False``: stage 5 only (CUNet / ClsNet). With ``channel_attention`` (``"se"`` or
    ``"avg_max"``, see :class:`AvgMaxChannelAttention`) each input is re-weighted before fusion. Fusion = concatenation + GAP, then
    FC (C -> C/2) -> ReLU -> FC (-> 2 logits).
    """

    def __init__(
        self, in_channels: list[int], channel_attention: str | None, reduction: int = 16
    ) -> None:
        super().__init__()
        self.attention = None
        if channel_attention == "se":
            self.attention = nn.ModuleList(SqueezeExcitation(c, reduction) for c in in_channels)
        elif channel_attention == "avg_max":
            self.attention = nn.ModuleList(AvgMaxChannelAttention(c, reduction) for c in in_channels)
        total = sum(in_channels)
        self.classifier = nn.Sequential(
            nn.Linear(total, total // 2), nn.ReLU(inplace=True), nn.Linear(total // 2, 2)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.attention is not None:
            features = [att(f) for att, f in zip(self.attention, features)]
        reference = features[0]
        fused = torch.cat([resize_to(f, reference) for f in features], dim=1)
        return self.classifier(F.adaptive_avg_pool2d(fused, 1).flatten(1))


# --------------------------------------------------------------------------------------
# The network and its Table-1 variants
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ACSNetVariant:
    """Which Table-1 components a network has."""

    paper_name: str
    segment: bool = True
    classifier: str = "multi"  # "none" | "single" (stage 5) | "multi" (stages 4, 5, 6)
    channel_attention: bool = False
    gates: bool = False
    dsa: bool = False


VARIANTS: dict[str, ACSNetVariant] = {
    "unet": ACSNetVariant("UNet", classifier="none"),
    "clsnet": ACSNetVariant("ClsNet", segment=False, classifier="single"),
    "cunet": ACSNetVariant("CUNet", classifier="single"),
    "cu_g": ACSNetVariant("CU_G Net", classifier="single", gates=True),
    "c_a_unet": ACSNetVariant("C_A UNet", classifier="single", channel_attention=True),
    "cu_a": ACSNetVariant("CU_A Net", classifier="single", dsa=True),
    "cu_ga": ACSNetVariant("CU_GA Net", classifier="single", gates=True, dsa=True),
    "c_ms_unet": ACSNetVariant("C_MS UNet", classifier="multi"),
    "c_ams_unet": ACSNetVariant("C_AMS UNet", classifier="multi", channel_attention=True),
    "acsnet": ACSNetVariant("ACSNet", classifier="multi", channel_attention=True, gates=True, dsa=True),
}
CHANNEL_ATTENTION = ("se", "avg_max")
MULTITASK_VARIANTS = tuple(k for k, v in VARIANTS.items() if v.segment and v.classifier != "none")


class ACSNet(nn.Module):
    """ACSNet and its ablation networks (Table 1). ``forward`` returns
    ``ModelOutput(seg=[B,1,H,W] logits or None, cls=[B,2] logits or None, extras=...)``."""

    def __init__(
        self,
        variant: str = "acsnet",
        in_channels: int = 1,
        encoder_weights: str = "none",
        encoder: str = "resnet18",
        dsa_stages: tuple[int, ...] = (6, 7),
        norm: str = "gn",
        channel_attention: str = "se",
        last_stage_kernels: tuple[int, int] = (1, 3),
    ) -> None:
        super().__init__()
        if channel_attention not in CHANNEL_ATTENTION:
            raise ConfigError(
                f"ACSNet: channel_attention must be one of {CHANNEL_ATTENTION}, got {channel_attention!r}"
            )
        last_stage_kernels = tuple(last_stage_kernels)
        if last_stage_kernels not in ((1, 3), (3, 3)):
            raise ConfigError(
                f"ACSNet: last_stage_kernels must be (1, 3) (authors' code) or (3, 3), got {last_stage_kernels}"
            )
        if variant not in VARIANTS:
            raise ConfigError(f"ACSNet variant {variant!r} unknown; choose from {', '.join(VARIANTS)}")
        if in_channels not in (1, 3):
            raise ConfigError(f"ACSNet: in_channels must be 1 or 3, got {in_channels}")
        bad_stages = set(dsa_stages) - {6, 7, 8, 9}
        if bad_stages:
            raise ConfigError(f"ACSNet: dsa_stages must be decoder stages 6-9, got {sorted(bad_stages)}")
        self.variant = variant
        self.config = VARIANTS[variant]
        cfg = self.config
        self.encoder = ResNetEncoder(encoder, in_channels=in_channels, weights=encoder_weights)
        channels = self.encoder.channels
        self.decoder: ACSNetDecoder | None = None
        self.segmentation_head: SegmentationHead | None = None
        if cfg.segment:
            self.decoder = ACSNetDecoder(
                channels, cfg.gates, tuple(dsa_stages) if cfg.dsa else (), norm, last_stage_kernels
            )
            self.segmentation_head = SegmentationHead(self.decoder.out_channels, norm=norm)
        self.classification_head: ClassificationHead | None = None
        attention = channel_attention if cfg.channel_attention else None
        if cfg.classifier == "single":
            self.classification_head = ClassificationHead([channels[4]], attention)
        elif cfg.classifier == "multi":
            assert self.decoder is not None
            self.classification_head = ClassificationHead(
                [channels[3], channels[4], self.decoder.stage6_channels], attention
            )

    def forward(self, images: torch.Tensor) -> ModelOutput:
        features = self.encoder(images)
        seg = None
        extras: dict[str, torch.Tensor] = {}
        decoded: list[torch.Tensor] = []
        if self.decoder is not None and self.segmentation_head is not None:
            decoded, extras = self.decoder(features)
            seg = self.segmentation_head(decoded[-1], tuple(images.shape[-2:]))
        cls = None
        if self.classification_head is not None:
            if self.config.classifier == "multi":
                cls = self.classification_head([features[3], features[4], decoded[0]])
            else:
                cls = self.classification_head([features[4]])
        return ModelOutput(seg=seg, cls=cls, extras=extras)


@register_model("acsnet", paper=PAPER, recipe="acsnet", size_divisor=32, multitask=True)
def acsnet(in_channels: int = 1, encoder_weights: str = "none", variant: str = "acsnet", **options) -> ACSNet:
    """ACSNet (gate units, DSAModules, multi-scale CA classifier) on a ResNet-18 U-Net;
    ``variant`` selects a multi-task ablation network of Table 1."""
    if variant not in MULTITASK_VARIANTS:
        hint = {"unet": "acsnet_unet", "clsnet": "acsnet_clsnet"}.get(variant)
        where = f"; use the model {hint!r}" if hint else f"; choose from {', '.join(MULTITASK_VARIANTS)}"
        raise ConfigError(f"model 'acsnet': variant {variant!r} is not a multi-task network{where}")
    return ACSNet(variant, in_channels=in_channels, encoder_weights=encoder_weights, **options)


@register_model("acsnet_unet", paper=PAPER + " (Table 1, UNet)", recipe="acsnet", size_divisor=32)
def acsnet_unet(in_channels: int = 1, encoder_weights: str = "none", **options) -> ACSNet:
    """ACSNet's segmentation-only baseline "UNet" (Table 1): ResNet-18 U-Net, GN decoder."""
    return ACSNet("unet", in_channels=in_channels, encoder_weights=encoder_weights, **options)


@register_model(
    "acsnet_clsnet", paper=PAPER + " (Table 1, ClsNet)", recipe="acsnet", size_divisor=32,
    multitask=True, segments=False,
)
def acsnet_clsnet(in_channels: int = 1, encoder_weights: str = "none", **options) -> ACSNet:
    """ACSNet's classification-only baseline "ClsNet" (Table 1): encoder, GAP, two FC layers;
    returns ``seg=None``."""
    return ACSNet("clsnet", in_channels=in_channels, encoder_weights=encoder_weights, **options)
