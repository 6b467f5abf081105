"""Hybrid Attention Network (Aslam, Naveed & Ahmed, 2025).

"Hybrid Attention Network for Accurate Breast Tumor Segmentation in Ultrasound Images",
section 3 (architecture), Table 2 (ablation). No public code exists; everything below is
written from the paper text, and every point the text leaves open is listed here.

Architecture (input ``[B, C, H, W]``, widths for a 256x256 input)::

    DenseNet-121 encoder (section 3, Fig. 1: four dense blocks, three transition layers)
      stem  conv0-norm0-relu0 ............ 64 ch @ 1/2   -> skip 1
      DB1 + TL1 conv (before its pooling) . 128 ch @ 1/4   -> skip 2
      DB2 + TL2 conv ...................... 256 ch @ 1/8   -> skip 3
      DB3 + TL3 conv ...................... 512 ch @ 1/16  -> skip 4
      DB4 + norm5 + ReLU ................. 1024 ch @ 1/32  -> bottleneck
    Bottleneck: 1x1 conv-BN-ReLU 1024 -> 256 ("working width"),
                [ConvBlock: 3x3 conv-BN-ReLU 256 -> 256], [TAM, section 3.1]
    Decoder (section 3): 5 stages of bilinear x2 up-sampling, concatenation with the
      [SFEB-enhanced, section 3.2] skip, two 3x3 conv-BN-ReLU; widths 256/128/64/32/64;
      the last stage (full resolution) has no skip.
    Head: 1x1 conv -> segmentation logits (the paper's sigmoid is left to the loss).

Ablation variants (Table 2), option ``variant``:

============  =============================  ====================  =====================
variant       modules                        paper parameters      this implementation
============  =============================  ====================  =====================
baseline      encoder + decoder              10,498,945            10,601,025 (+1.0 %)
conv_block    + bottleneck ConvBlock         11,089,537            11,191,361 (+0.9 %)
sfeb          + SFEB on the four skips       15,339,329            15,373,121 (+0.2 %)
full          + TAM at the bottleneck        15,427,713            16,079,297 (+4.2 %)
============  =============================  ====================  =====================

(counts for ``in_channels=3``, as the paper's Keras ImageNet encoder requires; with
``in_channels=1`` the stem has 6,272 fewer.) The paper's counts are Keras' trainable
parameters: the ConvBlock increment, 590,592 = 3*3*256*256 + 256 (bias) + 2*256 (BN gamma and
beta), is exactly one 3x3 256->256 convolution with BN, which is how the ConvBlock and the
256-channel working width of the bottleneck were identified. The SFEB increment supports the
global-pooling reading of Eqs. 8-11 (below): four SFEBs with global pooling have 4,181,760
parameters (paper 4,249,792, -1.6 %), with channel-axis pooling 3,503,680 (-17.6 %). The
TAM cannot be matched from the text: 0.71 M here, 0.09 M in the paper (a TAM whose Q/K/V
projections act on 256 channels, as Eqs. 1-3 and 5 describe, cannot have fewer than
~0.29 M); it alone puts ``full`` 4.2 % above the paper. All four variants are within 5 %;
with ``sfeb_pooling="channel"`` the ``sfeb`` row is -4.2 % and ``full`` -0.2 %.

Choices where the paper is silent or ambiguous (by section/equation):

* Encoder skips (section 3, Fig. 1). The skips at 1/4, 1/8 and 1/16 are the outputs of the
  transition layers' 1x1 convolutions (DenseNet-BC compression, half of the dense block's
  channels) taken before their 2x2 average pooling, i.e. at the dense block's resolution. The
  uncompressed dense-block outputs (256/512/1024 channels) would put about 13.8 M parameters
  into the four SFEBs alone, far above the paper's 15.4 M for the whole network.
* Bottleneck reduction. The paper's decoder is "lightweight ... with a reduced number of
  parameters"; the 1024-channel DenseNet output is reduced to the 256-channel working width by
  a 1x1 conv-BN-ReLU (part of the baseline), which the ConvBlock increment above implies.
* Decoder (section 3): "bilinear upsampling followed by lightweight convolutional layers";
  two 3x3 conv-BN-ReLU per stage (U-Net's block) with halving widths 256..16. Up-sampling
  resizes to the skip's size, so sizes that are not multiples of 32 also work.
* TSA, position encoding (section 3.1): the text says positional information is integrated
  "by concatenating input features with positional embeddings" (in the spirit of ref. 19). A
  learnable position map of ``c`` channels on an 8x8 grid (the 1/32 grid of a 256 input) is
  concatenated to F, so W_q, W_k, W_v (Eqs. 1-3, 1x1 convolutions with bias) map 2c -> c. For
  other input sizes the grid is resized bilinearly (as ViT position embeddings are).
* TSA attention (Eq. 4): the paper's map is A in R^{c x c} (channel-by-channel), so Q and K
  are flattened to c x (h*w) and d_k is h*w, the length of the vectors whose dot product is
  taken. The text names "multi-head attention" but gives no head count and a single c x c
  map; one head is used. The softmax normalises each row (over source channels).
* GSA (Eq. 5): F is embedded by 1x1 convolutions into F^c (c channels, the values) and F^cc
  (c' = c/2). The text reshapes *the same* F^cc into F1^cc and F2^cc, so query and key share
  one embedding (a symmetric affinity before the row softmax). The text calls it a scaled dot
  product while Eq. 5 shows no scale: it is scaled by 1/sqrt(c'). F_out = F^c re-weighted by
  the (h*w) x (h*w) map.
* TAM output (section 3.1.2): concat(TSA, GSA, F) (3c channels) is brought back to c by a
  1x1 conv-BN-ReLU, since F_out is stated to have c channels.
* SFEB pooling (Eqs. 8-11, option ``sfeb_pooling``). The text applies "global max-pooling
  and global average-pooling" to I1; taken as written (``"global"``, the default) P_o is a
  2C-vector per image, Eq. 11's 3x3 convolution acts on a 1x1 map (so only its centre tap
  ever sees data: implemented as the 1x1 convolution 2C -> C it reduces to) and the block
  adds an image-conditioned value to every channel of the skip (F_em is constant over
  space). ``"channel"`` pools over the channel axis at every position instead (CBAM-style,
  two 1-channel maps, Eq. 11 a 3x3 convolution 2 -> C on that map), so the enhancement varies
  over space. Two measurements decide for the text: the parameter count (above: the global
  reading matches Table 2's SFEB increment within 1.6 %, the channel reading is 18 % short)
  and learning, which does not separate them (``busseg.engine.learning_check``, recipe
  settings, decoder 256/128/64/32/64, 64² phantoms, 40 training / 16 held-out, 60 steps,
  eval-mode Dice, seeds 0 / 1: global 0.917 / 0.926, channel 0.884 / 0.911).
* SFEB normalisation of per-image vectors (option ``sfeb_vector_norm``). Eq. 13's μ (and
  Eq. 11's with global pooling) is a BatchNorm of a 1x1 map: in training it normalises each
  channel over the images of the batch, so one image's gate depends on which images share its
  batch (measured on a random SFEB: gates shift by up to 0.43 when the batch-mates change)
  and differs between training and eval mode, and PyTorch cannot normalise a training batch
  of one image. Default ``"none"``: no normalisation there (the convolution gets a bias), so
  every image's gate is its own, identical in both modes, for any batch size.
  ``"batch"`` keeps the literal BN (training batches need at least two images; a clear error
  says so).
* Decoder widths (section 3: "lightweight", no numbers). Halving widths 256/128/64/32/16
  (a common Keras U-Net decoder) leave a 16-channel BN-ReLU feature in front of the 1x1 head.
  With the earlier SFEB (channel pooling, batch-normalised gates) that model kept the
  background logit near zero for many steps (issue 13 measured -0.06 at step 10 and -0.23 at
  step 30 while lesion logits reached +5...+7) and did not segment. The full-resolution
  stage that feeds the head is 64 wide instead: 256/128/64/32/64 (+48 k parameters).
  Measured with ``busseg.engine.learning_check`` (recipe settings, 64² phantoms, 40 training
  / 16 held-out, batch 10, one thread; eval-mode / training-mode Dice, seeds 0 / 1 / 2):

  ==============================================  =====================================
  network                                         eval / train-mode Dice (loss)
  ==============================================  =====================================
  before issue 13 (16 at the end), 20 steps        0.15/0.15 (1.52), 0.45/0.83 (1.42),
                                                  0.72/0.81 (1.28)
  current SFEB, 16 at the end, 20 steps           0.61/0.80 (1.34), 0.70/0.83 (1.34),
                                                  0.55/0.78 (1.37)
  current SFEB, 64 at the end (default), 20 steps 0.63/0.86 (1.08), 0.64/0.88 (1.16),
                                                  0.78/0.83 (1.24)
  current SFEB, 16 at the end, 60 steps           0.88/0.85 (1.24), 0.93/0.91 (1.26),
                                                  0.90/0.85 (1.23)
  current SFEB, 64 at the end (default), 60 steps 0.92/0.89 (0.81), 0.93/0.92 (0.88),
                                                  0.91/0.86 (0.95)
  ==============================================  =====================================

  With the per-image SFEB gates the 16-wide end learns too, more slowly (higher loss at the
  same step); with the earlier SFEB, widening alone (64/64 for the last two stages) lifted
  seed 0 from 0.15 to 0.80 at 20 steps. Eval-mode Dice below training-mode Dice at 20 steps
  is BatchNorm's running statistics lagging the weights early in training.
  ``decoder_channels`` is an option.
* Convolutions followed by BN have no bias (the paper's Keras layers would carry one; this
  changes counts by < 0.1 %).
* Input channels: the paper feeds 3-channel images to the ImageNet encoder (recipe uses 3).
  With ``in_channels=1`` the stem's pretrained filters are summed over RGB, which gives the
  same response to a grey image as the RGB filters give to its 3-channel copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from busseg.errors import ConfigError
from busseg.models.layers import ConvNormAct, DoubleConv, resize_to
from busseg.models.output import ModelOutput
from busseg.models.registry import register_model
from busseg.models.weights import torchvision_backbone

__all__ = [
    "VARIANTS",
    "DenseNet121Encoder",
    "TransformerSelfAttention",
    "GlobalSpatialAttention",
    "TransformerAttentionModule",
    "SpatialFeatureEnhancementBlock",
    "HybridAttentionDecoder",
    "HybridAttentionNet",
    "hybrid_attention_net",
]

#: Table 2 rows: which modules each ablation variant adds on top of the baseline.
VARIANTS: dict[str, dict[str, bool]] = {
    "baseline": dict(conv_block=False, sfeb=False, tam=False),
    "conv_block": dict(conv_block=True, sfeb=False, tam=False),
    "sfeb": dict(conv_block=True, sfeb=True, tam=False),
    "full": dict(conv_block=True, sfeb=True, tam=True),
}
SFEB_POOLING = ("global", "channel")
#: Decoder stage widths, deepest first; the last (full-resolution, skip-less) stage feeds the
#: head and is 64 wide (see the module docstring, "Decoder").
DECODER_CHANNELS = (256, 128, 64, 32, 64)
SFEB_VECTOR_NORMS = ("none", "batch")


class DenseNet121Encoder(nn.Module):
    """DenseNet-121 (Huang et al. 2017) returning four skips and the bottleneck feature.

    Skips: the stem output (64 ch, 1/2) and the three transition-layer convolution outputs
    before pooling (128/256/512 ch at 1/4, 1/8, 1/16); bottleneck: ReLU(norm5) after dense
    block 4 (1024 ch, 1/32). See the module docstring for why transition outputs are used.
    """

    skip_channels: tuple[int, ...] = (64, 128, 256, 512)
    out_channels: int = 1024

    def __init__(self, in_channels: int = 3, weights: str = "none") -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(
                f"hybrid_attention_net: in_channels must be 1 or 3, got {in_channels!r}"
            )
        backbone = torchvision_backbone(
            torchvision.models.densenet121,
            torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
            weights=weights,
            label="densenet121",
        )
        features = backbone.features
        if in_channels == 1:
            rgb = features.conv0
            grey = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding, bias=False)
            with torch.no_grad():
                grey.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
            features.conv0 = grey
        self.stem = nn.Sequential(features.conv0, features.norm0, features.relu0)
        self.stem_pool = features.pool0
        self.dense_blocks = nn.ModuleList(
            [features.denseblock1, features.denseblock2, features.denseblock3, features.denseblock4]
        )
        self.transitions = nn.ModuleList(
            [features.transition1, features.transition2, features.transition3]
        )
        self.final_norm = features.norm5
        # The weight policy's record (requested/used weights) travels with the kept modules.
        self.busseg_weights_info = backbone.busseg_weights_info

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        x = self.stem_pool(x)
        for block, transition in zip(self.dense_blocks[:3], self.transitions):
            x = block(x)
            x = transition.conv(transition.relu(transition.norm(x)))
            skips.append(x)
            x = transition.pool(x)
        x = F.relu(self.final_norm(self.dense_blocks[3](x)))
        return skips, x


class TransformerSelfAttention(nn.Module):
    """Transformer Self-Attention (section 3.1.1, Eqs. 1-4): channel-by-channel attention.

    ``[F ; P]`` (features concatenated with a learnable position map) is projected by 1x1
    convolutions to Q, K, V (Eqs. 1-3, c channels each); ``A = softmax(Q K^T / sqrt(h*w))`` is
    ``c x c`` (Eq. 4) and the output is ``A V`` reshaped to ``[B, c, h, w]``.
    """

    def __init__(self, channels: int, position_grid: int = 8) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, channels, position_grid, position_grid))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.query = nn.Conv2d(2 * channels, channels, 1)
        self.key = nn.Conv2d(2 * channels, channels, 1)
        self.value = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        position = F.interpolate(self.position, size=(h, w), mode="bilinear", align_corners=False)
        x_pos = torch.cat([x, position.expand(b, -1, -1, -1)], dim=1)
        q = self.query(x_pos).flatten(2)  # [B, c, hw]
        k = self.key(x_pos).flatten(2)
        v = self.value(x_pos).flatten(2)
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(h * w), dim=-1)  # [B, c, c]
        return (attention @ v).view(b, c, h, w), attention


class GlobalSpatialAttention(nn.Module):
    """Global Spatial Attention (section 3.1.2, Eq. 5): position-by-position attention.

    ``F^cc`` (c/2 channels) serves as both F1^cc and F2^cc; ``A = softmax(F1 F2 / sqrt(c'))`` is
    ``(h*w) x (h*w)`` and re-weights the value embedding ``F^c`` (c channels).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduced_channels = channels // 2
        self.value = nn.Conv2d(channels, channels, 1)  # F^c
        self.affinity = nn.Conv2d(channels, self.reduced_channels, 1)  # F^cc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        embedded = self.affinity(x).flatten(2)  # [B, c', hw]
        scores = embedded.transpose(1, 2) @ embedded / math.sqrt(self.reduced_channels)
        attention = torch.softmax(scores, dim=-1)  # [B, hw, hw]; row i: weights over positions
        values = self.value(x).flatten(2)  # [B, c, hw]
        return (values @ attention.transpose(1, 2)).view(b, c, h, w), attention


class TransformerAttentionModule(nn.Module):
    """TAM (section 3.1): ``F_out = conv1x1(concat(TSA(F), GSA(F), F))`` with c channels."""

    def __init__(self, channels: int, position_grid: int = 8) -> None:
        super().__init__()
        self.tsa = TransformerSelfAttention(channels, position_grid)
        self.gsa = GlobalSpatialAttention(channels)
        self.fuse = ConvNormAct(3 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tsa, channel_attention = self.tsa(x)
        gsa, spatial_attention = self.gsa(x)
        out = self.fuse(torch.cat([tsa, gsa, x], dim=1))
        return out, {"tam_channel_attention": channel_attention, "tam_spatial_attention": spatial_attention}


class SpatialFeatureEnhancementBlock(nn.Module):
    """SFEB (section 3.2, Eqs. 6-15) on one skip connection.

    ``I1 = ReLU(BN(conv3x3(I)))`` (Eq. 7); max and mean of ``I1`` (Eqs. 8-9) concatenated to
    ``P_o`` (Eq. 10); ``F_c = ReLU(N(conv(P_o)))`` (Eq. 11); ``F_cc = sigmoid(N(conv1x1(GAP(I))))``
    (Eqs. 12-13); ``F = F_c * F_cc + I`` (Eqs. 14-15).

    Args:
        channels: C of the skip (Eq. 7 keeps it; Eq. 11 maps to C so that Eq. 15 can add I).
        pooling: ``"global"`` — Eqs. 8-9 as written: global max and average pooling over
            space, ``P_o`` is ``[B, 2C, 1, 1]`` and Eq. 11's convolution acts on a 1x1 map, so
            it is a 1x1 convolution 2C -> C (a 3x3 'same' convolution on a 1x1 map only ever
            uses its centre tap) and F_em is one value per channel: the block adds an
            image-conditioned bias to every channel of the skip. ``"channel"`` — max and
            mean over the channel axis at every position (CBAM-style, two 1-channel maps),
            Eq. 11 a 3x3 convolution 2 -> C on that spatial map, F_em varies over space.
        vector_norm: the normalisation μ of the per-image vectors (1x1 maps): Eq. 13's (and,
            with ``pooling="global"``, Eq. 11's). ``"batch"`` is the paper's BN literally: on a
            1x1 map it normalises each channel over the images of the batch, so one image's
            gate depends on the rest of its batch (and on the running statistics in eval
            mode), and a training batch of one image has nothing to normalise.
            ``"none"`` drops it (the convolution gets a bias): every image's gate is its own.
    """

    def __init__(self, channels: int, pooling: str = "global", vector_norm: str = "none") -> None:
        super().__init__()
        if pooling not in SFEB_POOLING:
            raise ConfigError(
                f"hybrid_attention_net: sfeb_pooling must be one of {SFEB_POOLING}, got {pooling!r}"
            )
        if vector_norm not in SFEB_VECTOR_NORMS:
            raise ConfigError(
                "hybrid_attention_net: sfeb_vector_norm must be one of "
                f"{SFEB_VECTOR_NORMS}, got {vector_norm!r}"
            )
        self.pooling = pooling
        self.vector_norm = vector_norm
        norm = "bn" if vector_norm == "batch" else None
        self.features = ConvNormAct(channels, channels, 3)  # Eq. 7
        if pooling == "channel":
            self.spatial = ConvNormAct(2, channels, 3)  # Eq. 11 on a spatial map
        else:
            self.spatial = ConvNormAct(2 * channels, channels, 1, norm=norm)  # Eq. 11 on 1x1
        self.channel_gate = nn.Sequential(  # Eq. 13 (GAP of Eq. 12 in forward)
            ConvNormAct(channels, channels, 1, norm=norm, act=False), nn.Sigmoid()
        )

    def pool(self, i1: torch.Tensor) -> torch.Tensor:
        """``P_o`` of Eqs. 8-10: ``[B, 2, H, W]`` (channel) or ``[B, 2C, 1, 1]`` (global)."""
        axes = (1,) if self.pooling == "channel" else (2, 3)
        return torch.cat([i1.amax(dim=axes, keepdim=True), i1.mean(dim=axes, keepdim=True)], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.vector_norm == "batch" and self.training and x.shape[0] < 2:
            raise ValueError(
                "hybrid_attention_net: SFEB with sfeb_vector_norm='batch' normalises per-image "
                "1x1 vectors over the batch (Eq. 13's BN); training needs at least 2 images per "
                "batch (use sfeb_vector_norm='none' for batches of one)"
            )
        pooled = self.pool(self.features(x))  # Eqs. 7-10
        enhancement = self.spatial(pooled)  # Eq. 11
        gate = self.channel_gate(F.adaptive_avg_pool2d(x, 1))  # Eqs. 12-13
        return enhancement * gate + x, pooled, gate  # Eqs. 14-15


class HybridAttentionDecoder(nn.Module):
    """Lightweight U-Net-like decoder (section 3): bilinear x2, concat skip, two 3x3 convs.

    ``skip_channels`` are ordered shallow to deep; stage ``i`` (deep to shallow) fuses the
    matching skip; a final stage up-samples to the input resolution without a skip.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: tuple[int, ...],
        widths: tuple[int, ...] = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        if len(widths) != len(skip_channels) + 1:
            raise ConfigError(
                f"hybrid_attention_net: decoder needs {len(skip_channels) + 1} widths, got {widths}"
            )
        skips_deep_first = tuple(reversed(skip_channels)) + (0,)
        stages, channels = [], in_channels
        for skip, width in zip(skips_deep_first, widths):
            stages.append(DoubleConv(channels + skip, width))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], output_size: tuple[int, int]
    ) -> torch.Tensor:
        for stage, skip in zip(self.stages, list(reversed(skips)) + [None]):
            if skip is None:
                x = resize_to(x, output_size)
            else:
                x = torch.cat([resize_to(x, skip), skip], dim=1)
            x = stage(x)
        return x


class HybridAttentionNet(nn.Module):
    """Hybrid Attention Network: DenseNet-121 encoder, bottleneck [ConvBlock][TAM],
    [SFEB] skips, lightweight decoder, 1x1 head. See the module docstring."""

    def __init__(
        self,
        in_channels: int = 3,
        encoder_weights: str = "none",
        variant: str = "full",
        working_channels: int = 256,
        decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
        position_grid: int = 8,
        sfeb_pooling: str = "global",
        sfeb_vector_norm: str = "none",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(
                f"hybrid_attention_net: unknown variant {variant!r}; choose one of "
                f"{', '.join(VARIANTS)}"
            )
        parts = VARIANTS[variant]
        self.variant = variant
        self.encoder = DenseNet121Encoder(in_channels, encoder_weights)
        self.reduce = ConvNormAct(self.encoder.out_channels, working_channels, 1)
        self.conv_block = (
            ConvNormAct(working_channels, working_channels, 3) if parts["conv_block"] else None
        )
        self.tam = (
            TransformerAttentionModule(working_channels, position_grid) if parts["tam"] else None
        )
        skip_channels = self.encoder.skip_channels
        self.sfebs = (
            nn.ModuleList(
                SpatialFeatureEnhancementBlock(c, sfeb_pooling, sfeb_vector_norm)
                for c in skip_channels
            )
            if parts["sfeb"]
            else None
        )
        self.decoder = HybridAttentionDecoder(working_channels, skip_channels, tuple(decoder_channels))
        self.head = nn.Conv2d(self.decoder.out_channels, 1, 1)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        extras: dict[str, torch.Tensor] = {}
        skips, x = self.encoder(images)
        x = self.reduce(x)
        if self.conv_block is not None:
            x = self.conv_block(x)
        if self.tam is not None:
            x, maps = self.tam(x)
            extras.update(maps)
        if self.sfebs is not None:
            enhanced = []
            for level, (sfeb, skip) in enumerate(zip(self.sfebs, skips), start=1):
                out, pooled, gate = sfeb(skip)
                enhanced.append(out)
                extras[f"sfeb{level}_pooled"] = pooled
                extras[f"sfeb{level}_channel_gate"] = gate
            skips = enhanced
        x = self.decoder(x, skips, tuple(images.shape[-2:]))
        return ModelOutput(seg=self.head(x), extras=extras)


@register_model(
    "hybrid_attention_net",
    paper="Aslam, Naveed, Ahmed, Hybrid Attention Network for Accurate Breast Tumor "
    "Segmentation in Ultrasound Images, 2025",
    recipe="hybrid_attention_net",
    size_divisor=32,
)
def hybrid_attention_net(
    in_channels: int = 1,
    encoder_weights: str = "none",
    variant: str = "full",
    **options,
) -> HybridAttentionNet:
    """Hybrid Attention Network (DenseNet-121 + TAM + SFEB); ``variant`` selects a Table 2 row:
    ``baseline``, ``conv_block``, ``sfeb`` or ``full``."""
    return HybridAttentionNet(
        in_channels=in_channels, encoder_weights=encoder_weights, variant=variant, **options
    )
