"""DC-Net: decomposing and coupling saliency maps for ultrasound lesion segmentation.

Ning, Mao, Feng, Zhong & Zhang, "Decomposing and Coupling Saliency Map for Lesion Segmentation
in Ultrasound Images" (arXiv 2023), section III. Equation numbers below are the paper's.

Layout (Fig. 2a), as named parts of :class:`DCNet`:

- ``decomposition`` (:class:`DecompositionSubnet`, III-B): a 3×3 convolution unit, five
  attention blocks (Eq. 4) in a small 4×4-pooled U shape, and the saliency decomposition module
  (Eq. 5) giving foreground and background saliency logits ``S^f``, ``S^b``.
- ``coupling`` (:class:`CouplingSubnet`, III-C): an encoder of five blocks (3×3 unit + DCP,
  Eqs. 7–11), a decoder of four blocks (3×3 unit + CCF, Eqs. 13–15) and a 1×1 head, and the
  coupler: an auxiliary background stream (a plain U-Net on ``I ⊕ S^b``) and nine aggregation
  units with the DaR module (Eqs. 16–17).

``forward`` returns :class:`~busseg.models.output.ModelOutput` with ``seg`` = logits of ``Ŷ``,
``aux = {"saliency_fg": logits of S^f, "saliency_bg": logits of S^b}`` (the objective ``dc_net``
applies the sigmoid and compares ``S^b`` with ``1 − Y``, Eq. 6) and
``extras = {"dar_attention_<j>": ψ(F̃^f Kᵀ) of aggregation unit j}`` (the maps of Fig. 8).

Choices where the paper is silent or ambiguous (each tied to its equation):

- Convolution unit ``f_{a×a}`` = conv (no bias) + BatchNorm + ReLU (footnote 1).
- Eq. 4: the stem ``B_0`` has 32 channels (the first width of ``B_1``); "32/64" is read as
  (1×1 unit width)/(3×3 unit width); the linear layer maps c → c; the 4×4 up-sampling is
  bilinear. ``B_4``'s input is ``up(B_3) ⊕ B_2`` and ``B_5``'s is ``up(B_4) ⊕ B_1``.
- Eq. 5: ``max{B^{f,k}}`` is the spatial maximum of channel k of each image; the foreground and
  background 1×1 convolutions are two separate layers (Fig. 2c draws two).
- Coupling widths are not given: ``widths = (32, 64, 128, 256, 512)`` for the five encoder
  levels (the decomposition subnet's first width, doubled per level). The aggregation output
  ``A_j`` has ``2c`` channels (Eq. 17's ``F + (F^f ⊕ F̃^b)``), so ``E_{j+1}^f`` maps 2c_j → c_{j+1}.
- Encoder: ``E_j^f`` (the DCP output) feeds ``A_j``; the decoder's skip feature ``X_E`` is the
  3×3 unit's output *before* DCP (it is the only feature at the up-sampled resolution: the
  four DCPs divide by 16, the four CCFs multiply by 16).
- Eqs. 7–11 (DCP): window r = 2; ``Δ_Z`` is ONE map ``[h, w]`` shared by all channels (Eq. 8
  uses the same ``Δ̄`` for every ``Z^k``), produced by a 2×2 convolution C → 1 with "same"
  padding (one zero row/column at the bottom/right) and used raw, without softmax (as the
  authors' code). The band matrix H of Eq. 10 with τ = 1 is read as the paper's own example
  says ("tridiagonal … associates eight neighbourhoods"): window q is in the band of window p
  when their grid rows and grid columns each differ by at most τ (a (2τ+1)² neighbourhood of
  windows). At the border the grid of windows is reflect-padded, as in the authors' code, so
  every row of H counts (2τ+1)² windows and the smooth factor ``m / ΣH`` of Eq. 11 is the
  constant ``1/(2τ+1)²`` (the paper's own value for every interior window): every window has
  the same gain, and ``Δ̄ ≡ 1/r²`` gives exactly average pooling for any τ.
  ``pooling_context=0`` gives the paper's DCP-bar (no context). Feature sizes must be even.
- Eqs. 13–15 (CCF): ``X̂_D`` is bilinearly up-sampled; ``M`` is divided by ``h·w`` (a mean
  instead of a sum over pixels; the authors' code sums. The same function up to a rescaling of
  ρ's weights, but it keeps ω of order one whatever the resolution, so the he_normal start is
  sensible and Adam's step on ρ does not grow with h·w). The mapping ρ of Eq. 14, "a vertical
  convolution with the kernel size of c×1", is, as in the authors' code, a
  ``Conv1d(c, c, kernel_size=c)`` with bias for each side: the c rows of M (for ω_D, of Mᵀ) are
  its input channels and the kernel spans the whole row, so ω = ρ(M) is a DENSE map of all c²
  correlations to c weights (c³ + c parameters per side, 33.6 M for the two of the first CCF
  at c = 256) — not one c-tap kernel shared by the rows. ω is used raw in the paper's
  equations; see the stabilising options below for the recipe's choice.
- Auxiliary stream (III-C3): ``E_j^b`` = 3×3 unit + 2×2 max-pooling (none in ``E_5^b``);
  ``D_j^b`` = 3×3 unit, bilinear ×2 up-sampling, concatenation with the pre-pooling feature of
  ``E_{5-j}^b`` and a 3×3 unit (a plain U-Net decoder: CCF replaced by concatenation).
- Aggregation units: "two convolutional units f1×1 and f3×3 … respectively" is read as f1×1 for
  the foreground embedding and f3×3 for the background one, both of width c.
- Eqs. 16–17 (DaR): the "1×1 convolutional layer" after global average pooling is a plain
  convolution with bias (no norm: it acts on a 1×1 map); no 1/√c scaling inside ψ (none is
  written); the final ``f_{1×1}`` is a convolution unit c → 2c.
- DaR placement (``dar_layout``): the text (III-C3) feeds every one of the nine aggregation
  units to a DaR module (``"all"``); the authors' code uses the full DaR at the bottleneck unit
  ``A_5`` only and a lighter one without attention at the other eight (``"bottleneck"``,
  :class:`LightReinforcement`: the residual ``F^f ⊕ φ(F^b)`` of Eq. 17's output, our reading of
  "no attention"). Text and Table V cannot both hold: the text's layout with the dense ρ has
  83.10 M parameters. The default is ``"bottleneck"``, the layout of the authors' code and the
  one closer to the reported size (see Parameters).
- Initialisation "he_normal" (IV-A) as Keras defines it: truncated normal (±2σ) with
  σ = √(2 / fan_in) / 0.8796 so the truncated law has variance 2 / fan_in; biases zero.

Parameters (one input channel, ``widths=(32, 64, 128, 256, 512)``; the count does not depend
on the input size): 72.29 M with the default ``dar_layout="bottleneck"``, 83.10 M with the
text's ``"all"``; the paper reports 54.4 M (Table V) and the notes on the authors' code 54.41 M
at these widths. Break-down of the default: decomposition subnet 0.78 M, coupling encoder
3.14 M, decoder 43.04 M (of which 38.34 M are the four dense ρ pairs, 34.74 M the first CCF),
auxiliary stream 4.70 M, aggregation units 20.63 M (18.89 M of them the bottleneck unit with the
full DaR: its six dilated 3×3 units cost 54c² = 14.2 M at c = 512). The dense ρ matches the
authors' code (≈ 35 M in the first CCF), so the 17.9 M still above 54.41 M lie elsewhere —
presumably in a bottleneck DaR that is narrower or lighter in the authors' code than the text
describes (the text's DaR at c = 512 alone costs 16.3 M); the notes do not say, and we do not
guess. Compute at 256×256, one image (``torch.utils.flop_counter``): 59.1 GFLOPs with the
default layout, 96.7 with ``"all"``; Tables III/V's "FLOPs (M) 108.9" is twice the parameter
count and cannot be the FLOPs of a 256² forward pass.

Numerics: DCP is quadratic in its input (the kernel Δ_Z is computed from Z) and CCF cubic (ω
comes from X_Eᵀ X_D). In training mode every following BatchNorm renormalises, so nothing
grows; but a FRESHLY INITIALISED model in eval mode uses BatchNorm's initial running statistics
(mean 0, variance 1), magnitudes then compound over the four DCPs and four CCFs and the output
overflows to inf/NaN. Worse, even with trained statistics, a per-image change of feature scale
by a factor s becomes about s^16 after the encoder's DCPs and s^81 after the decoder's CCFs,
so the literal form is fragile in eval mode; see the stabilising options below.

Stabilising options (NOT in the paper; the model's defaults are the paper's equations):
``dcp_kernel="softmax"`` normalises each window's kernel Δ̄_Z over its r² entries (so Eq. 7 is
the "convex combination of local neuron activations" the paper describes, and a constant kernel
gives exactly its average-pooling special case) and ``ccf_weights="sigmoid"`` squashes ω of
Eq. 14 into (0, 1) gates. Measured with the dense ρ, the reflect-padded DCP and the plain
he_normal head with zero bias (``benchmarks/dc_net_options.py --grid stabilisers --set
head_norm=false --set head_prior=0.5``: widths 16…256, 64² phantoms, Adam 3e-4, batch 4, 80
steps, then 40 new phantoms; seeds 0 and 1; eval-mode Dice): literal equations — 0.88 / 0.83
but eval logits up to 4.6e21 (3.4e24 with re-estimated BatchNorm statistics): numerically
unsafe; softmax DCP only — 0.92 / 0.81, |logit| ≤ 14; sigmoid CCF only — 0.90 / 0.84, |logit| ≤ 13;
both — 0.91 / 0.84, |logit| ≤ 13 (train-mode Dice 0.85–0.92 throughout). The CCF gate alone
keeps eval mode bounded, so the recipe uses ``ccf_weights="sigmoid"`` only and keeps the
authors' raw DCP kernel (``dcp_kernel="none"``).

Start (``head_norm``, ``head_prior``; not in the paper, which only says "he_normal"): the head
``D_5`` reads ``A_9``, whose channels are non-negative (ReLU outputs and the self-reversed
background φ(F^b) ≥ 0, mean ≈ 2.3), so a zero-bias he_normal 1×1 convolution starts at a
logit offset that is a random sum of them: −4.9, +2.7, +7.2, −3.1 for seeds 0–3 (widths
16…256), and with the harmonic term (λ4 = 10) the first loss ranged from 2 to 55 units and
the phantom Dice after 80 steps from 0.90 down to 0.70 with the seed. With ``head_norm`` the
head batch-normalises its input before the 1×1 convolution (in eval mode the two fold into a
single 1×1 convolution, the paper's layer), so its starting logit is its bias for every seed;
the bias is ``logit(head_prior)``, a class prior as for focal-type losses (Lin et al. 2017,
RetinaNet, section 4.1). Measured (``benchmarks/dc_net_options.py --grid head``, seeds 0–2,
train-mode / eval-mode Dice after 80 steps): prior 0.5 (p = 0.5 everywhere, the harmonic term
is 10 of 11 loss units at step 1) 0.43/0.50, 0.32/0.40, 0.32/0.34 — the start is neutral but
the background-dominated harmonic term stalls learning; prior 0.1: 0.90/0.86, 0.89/0.87,
0.85/0.82; prior 0.01: 0.91/0.89, 0.92/0.89, 0.88/0.87. Default: ``head_norm=True``,
``head_prior=0.01``; ``head_norm=False`` keeps the plain head (its bias still starts at
``logit(head_prior)``).

Variants (section IV-C, IV-D, IV-E):

- ``variant="full"`` (DC-Net), ``"woB"`` (no coupler, coupling input ``I ⊕ S^f``), ``"woF"``
  (no coupler, input ``I ⊕ S^b``), ``"woC"`` (no decomposition subnet and no coupler, input
  ``I``; no saliency outputs), ``"woD"`` (coupler kept, DaR replaced by concatenation of the
  two embeddings).
- ``pooling="dcp" | "max" | "avg" | "strided_conv"`` (a 2×2 stride-2 convolution) and
  ``pooling_context`` (τ; 0 = DCP-bar).
- ``fusion="ccf" | "concat" | "add" | "none"`` for the decoder (``"none"`` = the paper's
  "Baseline" without skip features).
- ``dcp_kernel="none" | "softmax"``, ``ccf_weights="none" | "sigmoid"`` (see above).
- ``dar_layout="bottleneck" | "all"`` (see DaR placement), ``head_norm``, ``head_prior`` (see
  Start).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.models.layers import ConvNormAct, resize_to
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model

VARIANTS = ("full", "woB", "woF", "woC", "woD")
POOLINGS = ("dcp", "max", "avg", "strided_conv")
KERNEL_ACTIVATIONS = ("none", "softmax")  # on DCP's pooling kernel Δ_Z
WEIGHT_ACTIVATIONS = ("none", "sigmoid")  # on CCF's channel weights ω
FUSIONS = ("ccf", "concat", "add", "none")
#: where the full DaR sits: the bottleneck only, light units elsewhere (authors' code), or all
#: nine aggregation units (the paper's text)
DAR_LAYOUTS = ("bottleneck", "all")
BOTTLENECK_UNIT = 4  # A_5, 0-based

#: (1×1 unit width, 3×3 unit width) of the attention blocks B_1 … B_5 (section III-B1).
DECOMPOSITION_WIDTHS = ((32, 64), (64, 128), (128, 256), (256, 64), (64, 32))
COUPLING_WIDTHS = (32, 64, 128, 256, 512)
#: Four 2×2 pooling steps in the coupling subnet and two 4×4 steps in the decomposition subnet.
SIZE_DIVISOR = 16
#: Foreground probability the segmentation head starts at (``head_prior``; see the docstring).
HEAD_PRIOR = 0.01


def self_reversal(features: torch.Tensor) -> torch.Tensor:
    """Self-reversal activation φ (Eq. 5): ``max(F^k) − F^k`` per image and channel k, the
    maximum taken over the spatial positions of that channel."""
    return features.amax(dim=(-2, -1), keepdim=True) - features


@torch.no_grad()
def _truncated_normal_(weight: torch.Tensor, std: float) -> None:
    """Normal(0, std) with every draw outside ±2·std drawn again (as TensorFlow's
    ``truncated_normal`` does); much faster than inverse-CDF sampling on tens of millions of
    weights."""
    if weight.is_meta:  # built on the meta device to count parameters: nothing to draw
        return
    flat = weight.view(-1)
    flat.normal_(0.0, std)
    redraw = torch.nonzero(flat.abs() > 2 * std).squeeze(1)
    while redraw.numel():
        values = torch.randn(redraw.numel(), dtype=flat.dtype) * std
        flat[redraw] = values
        redraw = redraw[values.abs() > 2 * std]


def he_normal_init_(module: nn.Module) -> None:
    """Keras' ``he_normal`` on every convolution / linear layer (section IV-A): truncated
    normal at ±2σ, σ = √(2/fan_in)/0.87962566 (the truncation's std correction); zero biases;
    norm layers at weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
            _truncated_normal_(m.weight, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# Decomposition subnet (section III-B)
# --------------------------------------------------------------------------------------------


class AttentionBlock(nn.Module):
    """Attention block ``B_j`` (Eq. 4): ``B_j = f3×3(ω_j ⊙ B̃_j)`` with ``B̃_j = f1×1(B_{j−1})``
    and ``ω_j = softmax(Linear(GAP(B̃_j)))`` over the channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = ConvNormAct(in_channels, mid_channels, 1)
        self.channel_fc = nn.Linear(mid_channels, mid_channels)
        self.merge = ConvNormAct(mid_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        weights = torch.softmax(self.channel_fc(reduced.mean(dim=(-2, -1))), dim=1)
        return self.merge(reduced * weights[:, :, None, None])


class SaliencyDecomposition(nn.Module):
    """Saliency decomposition module (Fig. 2c, Eq. 5): ``B^b = φ(B^f)``; two 1×1 convolutions
    give the foreground and background saliency LOGITS (the sigmoid ψ is applied outside)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.foreground = nn.Conv2d(channels, 1, 1)
        self.background = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.foreground(features), self.background(self_reversal(features))


class DecompositionSubnet(nn.Module):
    """Attention backbone (stem + B_1…B_5, 4×4 max-pooling after B_1 and B_2, 4×4 up-sampling
    and skip concatenation before B_4 and B_5) and the saliency decomposition module.
    Returns ``(S^f logits, S^b logits)`` at the input resolution."""

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[Sequence[int]] = DECOMPOSITION_WIDTHS,
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ConfigError(f"DC-Net: decomposition_widths needs 5 (mid, out) pairs, got {widths!r}")
        (m1, o1), (m2, o2), (m3, o3), (m4, o4), (m5, o5) = widths
        stem = stem_channels or m1
        self.stem = ConvNormAct(in_channels, stem, 3)
        self.block1 = AttentionBlock(stem, m1, o1)
        self.block2 = AttentionBlock(o1, m2, o2)
        self.block3 = AttentionBlock(o2, m3, o3)
        self.block4 = AttentionBlock(o3 + o2, m4, o4)
        self.block5 = AttentionBlock(o4 + o1, m5, o5)
        self.decompose = SaliencyDecomposition(o5)

    @staticmethod
    def _up4(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b1 = self.block1(self.stem(image))
        b2 = self.block2(F.max_pool2d(b1, 4))
        b3 = self.block3(F.max_pool2d(b2, 4))
        b4 = self.block4(torch.cat([self._up4(b3), b2], dim=1))
        b5 = self.block5(torch.cat([self._up4(b4), b1], dim=1))
        return self.decompose(b5)


# --------------------------------------------------------------------------------------------
# Coupling subnet: pooling (DCP, Eqs. 7–11) and fusion (CCF, Eqs. 13–15)
# --------------------------------------------------------------------------------------------


class DifferentiableContextPooling(nn.Module):
    """Differentiable context pooling, DCP (Eqs. 7–11), with window r = ``window``.

    For each channel k, ``Ū^k = (m/ΣH) · (H ⊙ (Z̄^k Δ̄_Zᵀ)) 1`` (Eq. 11): row p of
    ``Z̄^k Δ̄_Zᵀ`` holds window p's features weighted by the kernel of every window q, and H keeps
    the q in p's neighbourhood. Summing over q first, this equals
    ``Ū^k_p = (m/ΣH) · Σ_ν Z̄^k_{p,ν} · Σ_{q ∈ N(p)} Δ̄_{q,ν}``, which is computed here with
    ``pixel_unshuffle`` (the window flattening of Fig. 2d) and a (2τ+1)² box mean over the grid
    of windows: no m×m matrix and no loop.

    Border: the grid of window kernels is reflect-padded by τ before the box mean (as the
    authors' code does), so every window, corner and edge included, has (2τ+1)² neighbours,
    ΣH = m·(2τ+1)² and the smooth factor m/ΣH is the constant 1/(2τ+1)²: a kernel that is the
    same in every window gives every window the same gain. (With H cut at the border and the
    global factor, corner/edge/interior windows had gains 0.53/0.79/1.19 on an 8×8 grid.) A grid
    axis of at most τ windows, too short to reflect, is replicate-padded instead.
    """

    def __init__(
        self, channels: int, window: int = 2, context: int = 1, kernel_activation: str = "none"
    ) -> None:
        super().__init__()
        if context < 0:
            raise ConfigError(f"DC-Net: pooling_context (τ) must be ≥ 0, got {context}")
        if kernel_activation not in KERNEL_ACTIVATIONS:
            raise ConfigError(
                f"DC-Net: dcp_kernel must be one of {KERNEL_ACTIVATIONS}, got {kernel_activation!r}"
            )
        self.window = window
        self.context = context
        self.kernel_activation = kernel_activation
        self.kernel = nn.Conv2d(channels, 1, window)  # Δ_Z, Eq. 11

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        r = self.window
        if h % r or w % r:
            raise ConfigError(f"DC-Net: DCP needs feature sizes divisible by {r}, got {h}×{w}")
        gh, gw = h // r, w // r
        kernel_map = self.kernel(F.pad(z, (0, r - 1, 0, r - 1)))  # [b, 1, h, w]: Δ_Z
        kernel_windows = F.pixel_unshuffle(kernel_map, r)  # [b, r², gh, gw]: Δ̄_Z
        if self.kernel_activation == "softmax":  # each window's kernel: a convex combination
            kernel_windows = torch.softmax(kernel_windows, dim=1)
        if self.context > 0:
            kernel_windows = self._neighbourhood_mean(kernel_windows)
        feature_windows = F.pixel_unshuffle(z, r).view(b, c, r * r, gh, gw)  # Z̄^k
        return (feature_windows * kernel_windows.unsqueeze(1)).sum(dim=2)

    def _neighbourhood_mean(self, kernel_windows: torch.Tensor) -> torch.Tensor:
        """(m/ΣH) · Σ_{q ∈ N(p)} Δ̄_q over the reflect-padded grid of windows."""
        t = self.context
        gh, gw = kernel_windows.shape[-2:]
        mode = "reflect" if min(gh, gw) > t else "replicate"
        padded = F.pad(kernel_windows, (t, t, t, t), mode=mode)
        return F.avg_pool2d(padded, 2 * t + 1, stride=1)


def make_pooling(
    kind: str, channels: int, context: int = 1, kernel_activation: str = "none"
) -> nn.Module:
    """The encoder's 2×2 down-sampling: DCP or one of the ablation's replacements (IV-D)."""
    if kind == "dcp":
        return DifferentiableContextPooling(channels, 2, context, kernel_activation)
    if kind == "max":
        return nn.MaxPool2d(2)
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "strided_conv":
        return nn.Conv2d(channels, channels, 2, stride=2)
    raise ConfigError(f"DC-Net: unknown pooling {kind!r}; choose one of {POOLINGS}")


class CrossCorrelationFusion(nn.Module):
    """Cross-correlation fusion, CCF (Eqs. 13–15).

    ``M = X̃_Eᵀ X̃_D / (h·w)`` (c×c); ω_E = ρ_E(M) and ω_D = ρ_D(Mᵀ) (Eq. 14), each ρ a
    ``Conv1d(c, c, kernel_size=c)`` as in the authors' code: the c rows (for ω_D the c columns)
    of M enter as the input channels and the kernel spans the whole row, so each ρ is a dense
    map of the c² correlations to c channel weights (c³ + c parameters); then
    ``f3×3(ω_E ⊙ X_E ⊕ ω_D ⊙ up(X_D))`` (Eq. 15).
    """

    def __init__(self, channels: int, weight_activation: str = "none") -> None:
        super().__init__()
        if weight_activation not in WEIGHT_ACTIVATIONS:
            raise ConfigError(
                f"DC-Net: ccf_weights must be one of {WEIGHT_ACTIVATIONS}, got {weight_activation!r}"
            )
        self.weight_activation = weight_activation
        self.relation_encoder = nn.Conv1d(channels, channels, channels)  # ρ_E on the rows of M
        self.relation_decoder = nn.Conv1d(channels, channels, channels)  # ρ_D on its columns
        self.merge = ConvNormAct(2 * channels, channels, 3)

    def forward(self, x_enc: torch.Tensor, x_dec: torch.Tensor) -> torch.Tensor:
        x_dec = resize_to(x_dec, x_enc)
        b, c, h, w = x_enc.shape
        relation = torch.einsum("bphw,bqhw->bpq", x_enc, x_dec) / (h * w)  # Eq. 13
        w_enc = self.relation_encoder(relation).view(b, c, 1, 1)  # Eq. 14
        w_dec = self.relation_decoder(relation.transpose(1, 2)).view(b, c, 1, 1)
        if self.weight_activation == "sigmoid":
            w_enc, w_dec = torch.sigmoid(w_enc), torch.sigmoid(w_dec)
        return self.merge(torch.cat([w_enc * x_enc, w_dec * x_dec], dim=1))  # Eq. 15


class ConcatFusion(nn.Module):
    """Skip fusion by channel concatenation (U-Net; the "Concat" ablation of IV-E)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.merge = ConvNormAct(2 * channels, channels, 3)

    def forward(self, x_enc: torch.Tensor, x_dec: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([x_enc, resize_to(x_dec, x_enc)], dim=1))


class AddFusion(nn.Module):
    """Skip fusion by pixel-wise addition (the "Add" ablation of IV-E)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.merge = ConvNormAct(channels, channels, 3)

    def forward(self, x_enc: torch.Tensor, x_dec: torch.Tensor) -> torch.Tensor:
        return self.merge(x_enc + resize_to(x_dec, x_enc))


class NoSkipFusion(nn.Module):
    """No skip feature at all, only up-sampling (the "Baseline" of IV-E)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.merge = ConvNormAct(channels, channels, 3)

    def forward(self, x_enc: torch.Tensor, x_dec: torch.Tensor) -> torch.Tensor:
        return self.merge(resize_to(x_dec, x_enc))


def make_fusion(kind: str, channels: int, ccf_weights: str = "none") -> nn.Module:
    fusions = {"ccf": CrossCorrelationFusion, "concat": ConcatFusion, "add": AddFusion,
               "none": NoSkipFusion}
    if kind not in fusions:
        raise ConfigError(f"DC-Net: unknown fusion {kind!r}; choose one of {FUSIONS}")
    if kind == "ccf":
        return CrossCorrelationFusion(channels, ccf_weights)
    return fusions[kind](channels)


class EncoderBlock(nn.Module):
    """``E_j``: a 3×3 convolution unit and a down-sampling (none in ``E_5``). Returns the
    pre-pooling feature (the decoder's skip ``X_E``) and the pooled ``E_j``."""

    def __init__(self, in_channels: int, out_channels: int, pooling: nn.Module | None) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3)
        self.pool = pooling if pooling is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        return features, self.pool(features)


class DecoderBlock(nn.Module):
    """``D_j`` (j ≤ 4): a 3×3 unit on the incoming feature (``D̃_j``), then the skip fusion with
    the encoder feature, which also up-samples it to the skip's resolution."""

    def __init__(self, in_channels: int, out_channels: int, fusion: nn.Module) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3)
        self.fusion = fusion

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fusion(skip, self.conv(x))


# --------------------------------------------------------------------------------------------
# Coupler: auxiliary stream and aggregation units with DaR (Eqs. 16–17)
# --------------------------------------------------------------------------------------------


class DependencyAwareReinforcement(nn.Module):
    """Dependency-aware reinforcement, DaR (Eqs. 16–17).

    ``F̃^b = φ(F^b)``; two pyramidal branches of 3×3 units (dilation 1, 3, 5, width c) →
    concatenation → GAP → 1×1 conv give the prototypes K, V (1×c); ``F̃ = ψ(F̃^f Kᵀ) V``
    (Eq. 17); output ``f1×1(F̃) + (F^f ⊕ F̃^b)`` with 2c channels. Also returns the attention
    map ``ψ(F̃^f Kᵀ)`` as ``[B, 1, h, w]``.
    """

    DILATIONS = (1, 3, 5)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.key_branch = nn.ModuleList(
            ConvNormAct(channels, channels, 3, dilation=d) for d in self.DILATIONS
        )
        self.value_branch = nn.ModuleList(
            ConvNormAct(channels, channels, 3, dilation=d) for d in self.DILATIONS
        )
        self.key_proj = nn.Conv2d(3 * channels, channels, 1)
        self.value_proj = nn.Conv2d(3 * channels, channels, 1)
        self.expand = ConvNormAct(channels, 2 * channels, 1)

    @staticmethod
    def _prototype(branch: nn.ModuleList, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        multi_scale = torch.cat([unit(x) for unit in branch], dim=1)  # Eq. 16
        return proj(F.adaptive_avg_pool2d(multi_scale, 1)).flatten(1)  # [B, c]

    def forward(
        self, fg: torch.Tensor, bg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = fg.shape
        bg_reversed = self_reversal(bg)
        key = self._prototype(self.key_branch, self.key_proj, bg_reversed)
        value = self._prototype(self.value_branch, self.value_proj, bg_reversed)
        fg_flat = fg.flatten(2).transpose(1, 2)  # F̃^f: [B, hw, c]
        attention = torch.sigmoid(torch.bmm(fg_flat, key.unsqueeze(2)))  # [B, hw, 1]
        complement = torch.bmm(attention, value.unsqueeze(1))  # F̃: [B, hw, c], Eq. 17
        complement = complement.transpose(1, 2).reshape(b, c, h, w)
        out = self.expand(complement) + torch.cat([fg, bg_reversed], dim=1)
        return out, attention.transpose(1, 2).reshape(b, 1, h, w)


class LightReinforcement(nn.Module):
    """The lighter DaR of the authors' code at the eight non-bottleneck aggregation units: no
    prototypes and no attention, only the residual path of Eq. 17's output,
    ``F^f ⊕ φ(F^b)`` (2c channels, no parameters). The notes on the authors' code say only
    "no attention"; keeping the residual path and dropping the whole reinforcement term F is
    our reading."""

    def forward(self, fg: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.cat([fg, self_reversal(bg)], dim=1), None


class AggregationUnit(nn.Module):
    """``A_j``: foreground embedding f1×1, background embedding f3×3, then DaR
    (``reinforcement="full"``), the light DaR (``"light"``) or, for the ``woD`` ablation, plain
    concatenation of the two embeddings (``"none"``). Output has 2c channels."""

    def __init__(self, fg_channels: int, bg_channels: int, channels: int, reinforcement: str = "full"):
        super().__init__()
        self.embed_fg = ConvNormAct(fg_channels, channels, 1)
        self.embed_bg = ConvNormAct(bg_channels, channels, 3)
        self.dar = {
            "full": lambda: DependencyAwareReinforcement(channels),
            "light": LightReinforcement,
            "none": lambda: None,
        }[reinforcement]()

    def forward(
        self, fg: torch.Tensor, bg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        fg, bg = self.embed_fg(fg), self.embed_bg(bg)
        if self.dar is None:
            return torch.cat([fg, bg], dim=1), None
        return self.dar(fg, bg)


class AuxiliaryStream(nn.Module):
    """Background stream of the coupler: a plain U-Net on ``I ⊕ S^b`` with 2×2 max-pooling and
    up-sampling + concatenation. Returns the five contracting outputs ``E_j^b`` (after pooling)
    and the four expanding outputs ``D_j^b``."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.encoder = nn.ModuleList(
            EncoderBlock(chans[j], chans[j + 1], nn.MaxPool2d(2) if j < 4 else None)
            for j in range(5)
        )
        self.decoder = nn.ModuleList(
            DecoderBlock(widths[4 - j], widths[3 - j], ConcatFusion(widths[3 - j]))
            for j in range(4)
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        skips, encoded = [], []
        for block in self.encoder:
            skip, x = block(x)
            skips.append(skip)
            encoded.append(x)
        decoded = []
        for j, block in enumerate(self.decoder):
            x = block(x, skips[3 - j])
            decoded.append(x)
        return encoded, decoded


class SegmentationHead(nn.Module):
    """``D_5``'s 1×1 convolution to one logit map. With ``norm`` its input is batch-normalised
    first (a BatchNorm with affine parameters, then the convolution): at eval time the two fold
    into one 1×1 convolution, the paper's layer, but during training the convolution reads
    centred features, so its starting logit is its bias whatever the seed (see the module
    docstring). ``start_at(prior)`` sets that bias to ``logit(prior)``."""

    def __init__(self, channels: int, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels) if norm else nn.Identity()
        self.conv = nn.Conv2d(channels, 1, 1)

    def start_at(self, prior: float) -> None:
        if not 0.0 < prior < 1.0:
            raise ConfigError(f"DC-Net: head_prior must be in (0, 1), got {prior!r}")
        nn.init.constant_(self.conv.bias, math.log(prior / (1.0 - prior)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class CouplingSubnet(nn.Module):
    """Encoder (DCP), decoder (CCF), head and — when ``coupler`` — the auxiliary stream and
    the nine aggregation units. ``forward(fg_input, bg_input)`` returns the segmentation
    logits and the DaR attention maps."""

    def __init__(
        self,
        fg_in_channels: int,
        bg_in_channels: int,
        widths: Sequence[int] = COUPLING_WIDTHS,
        pooling: str = "dcp",
        pooling_context: int = 1,
        fusion: str = "ccf",
        dcp_kernel: str = "none",
        ccf_weights: str = "none",
        coupler: bool = True,
        use_dar: bool = True,
        dar_layout: str = "bottleneck",
        head_norm: bool = True,
    ) -> None:
        super().__init__()
        if dar_layout not in DAR_LAYOUTS:
            raise ConfigError(f"DC-Net: dar_layout must be one of {DAR_LAYOUTS}, got {dar_layout!r}")
        if len(widths) != 5:
            raise ConfigError(f"DC-Net: widths needs 5 encoder widths, got {widths!r}")
        self.coupler = coupler
        agg = [2 * w if coupler else w for w in widths]  # channels of A_j (or E_j / D_j)
        enc_in = [fg_in_channels, *agg[:4]]
        self.encoder = nn.ModuleList(
            EncoderBlock(
                enc_in[j],
                widths[j],
                make_pooling(pooling, widths[j], pooling_context, dcp_kernel) if j < 4 else None,
            )
            for j in range(5)
        )
        self.decoder = nn.ModuleList(
            DecoderBlock(
                agg[4 - j], widths[3 - j], make_fusion(fusion, widths[3 - j], ccf_weights)
            )
            for j in range(4)
        )
        self.head = SegmentationHead(agg[0], head_norm)  # D_5 (+ ψ outside the model)
        if coupler:
            self.auxiliary = AuxiliaryStream(bg_in_channels, widths)
            level_widths = [*widths, *(widths[3 - j] for j in range(4))]
            def reinforcement(j: int) -> str:
                if not use_dar:
                    return "none"
                return "full" if dar_layout == "all" or j == BOTTLENECK_UNIT else "light"

            self.aggregation = nn.ModuleList(
                AggregationUnit(w, w, w, reinforcement(j)) for j, w in enumerate(level_widths)
            )

    def forward(
        self, fg_input: torch.Tensor, bg_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        attention: dict[str, torch.Tensor] = {}
        if self.coupler:
            bg_encoded, bg_decoded = self.auxiliary(bg_input)
            bg_features = [*bg_encoded, *bg_decoded]

        def aggregate(j: int, fg: torch.Tensor) -> torch.Tensor:
            if not self.coupler:
                return fg
            out, att = self.aggregation[j](fg, bg_features[j])
            if att is not None:
                attention[f"dar_attention_{j + 1}"] = att
            return out

        x, skips = fg_input, []
        for j, block in enumerate(self.encoder):
            skip, encoded = block(x)
            skips.append(skip)
            x = aggregate(j, encoded)
        for j, block in enumerate(self.decoder):
            x = aggregate(5 + j, block(x, skips[3 - j]))
        return self.head(x), attention


# --------------------------------------------------------------------------------------------
# DC-Net
# --------------------------------------------------------------------------------------------


class DCNet(nn.Module):
    """DC-Net (Fig. 2a): decomposition subnet → ``S^f, S^b`` → coupling subnet on
    ``I ⊕ S^f`` (encoder/decoder) and ``I ⊕ S^b`` (auxiliary stream). See the module docstring
    for the variants and every choice the paper leaves open."""

    def __init__(
        self,
        in_channels: int = 1,
        variant: str = "full",
        widths: Sequence[int] = COUPLING_WIDTHS,
        decomposition_widths: Sequence[Sequence[int]] = DECOMPOSITION_WIDTHS,
        pooling: str = "dcp",
        pooling_context: int = 1,
        fusion: str = "ccf",
        dcp_kernel: str = "none",
        ccf_weights: str = "none",
        dar_layout: str = "bottleneck",
        head_norm: bool = True,
        head_prior: float = HEAD_PRIOR,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"DC-Net: unknown variant {variant!r}; choose one of {VARIANTS}")
        if in_channels not in (1, 3):
            raise ConfigError(f"DC-Net: in_channels must be 1 or 3, got {in_channels}")
        self.variant = variant
        self.in_channels = in_channels
        self.decomposition = (
            DecompositionSubnet(in_channels, decomposition_widths) if variant != "woC" else None
        )
        saliency_channels = 0 if variant == "woC" else 1
        self.coupling = CouplingSubnet(
            fg_in_channels=in_channels + saliency_channels,
            bg_in_channels=in_channels + 1,
            widths=tuple(widths),
            pooling=pooling,
            pooling_context=pooling_context,
            fusion=fusion,
            dcp_kernel=dcp_kernel,
            ccf_weights=ccf_weights,
            coupler=variant in ("full", "woD"),
            use_dar=variant == "full",
            dar_layout=dar_layout,
            head_norm=head_norm,
        )
        he_normal_init_(self)
        self.coupling.head.start_at(head_prior)

    def forward(self, image: torch.Tensor) -> ModelOutput:
        h, w = image.shape[-2:]
        if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
            raise ConfigError(
                f"DC-Net: input size {h}×{w} is not divisible by {SIZE_DIVISOR} "
                "(two 4×4 poolings in the decomposition subnet, four 2×2 in the coupling subnet)"
            )
        if self.decomposition is None:
            logits, attention = self.coupling(image, None)
            return ModelOutput(seg=logits, extras=attention)
        fg_logits, bg_logits = self.decomposition(image)
        fg_map, bg_map = torch.sigmoid(fg_logits), torch.sigmoid(bg_logits)
        fg_input = torch.cat([image, bg_map if self.variant == "woF" else fg_map], dim=1)
        bg_input = torch.cat([image, bg_map], dim=1)
        logits, attention = self.coupling(fg_input, bg_input)
        return ModelOutput(
            seg=logits,
            aux={"saliency_fg": fg_logits, "saliency_bg": bg_logits},
            extras=attention,
        )


@register_model(
    "dc_net",
    paper="Ning et al., Decomposing and Coupling Saliency Map for Lesion Segmentation in "
    "Ultrasound Images (DC-Net, arXiv 2023), section III",
    recipe="dc_net",
    size_divisor=SIZE_DIVISOR,
)
def dc_net(in_channels: int = 1, encoder_weights: str = "none", **options) -> DCNet:
    """DC-Net: saliency decomposition + coupling with DCP, CCF and DaR (Ning et al.).

    Options: ``variant`` (full | woB | woF | woC | woD), ``pooling`` (dcp | max | avg |
    strided_conv), ``pooling_context`` (τ of DCP, 0 = DCP-bar), ``fusion`` (ccf | concat |
    add | none), ``dcp_kernel`` (none | softmax), ``ccf_weights`` (none | sigmoid),
    ``dar_layout`` (bottleneck | all), ``head_norm`` (bool), ``head_prior`` (starting
    foreground probability), ``widths`` (five coupling widths), ``decomposition_widths``.
    """
    if encoder_weights != "none":
        raise ConfigError(
            f"dc_net: encoder_weights={encoder_weights!r} is not available: DC-Net has no "
            "pretrained encoder (the paper trains it from he_normal initialisation); use 'none'"
        )
    return DCNet(in_channels=in_channels, **options)
