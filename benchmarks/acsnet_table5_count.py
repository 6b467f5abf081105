"""Where ACSNet's Table 5 size (42.99 M parameters, 30.96 G "FLOPs") comes from.

    pip install thop==0.1.1.post2209072238   # a measuring tool only; not a busseg dependency
    python benchmarks/acsnet_table5_count.py

The authors' public model keeps a whole torchvision ResNet-18 (with its unused 1000-class FC
layer) as one attribute and registers its stages a second time as ``layer0..layer4``.
``thop.profile`` sums parameters and multiply-adds along every registration path of a module,
so that encoder is counted twice, and it returns MACs, which Table 5 reports as FLOPs. This
script builds busseg's ACSNet (and its ResNet-18 U-Net) on that module layout, counts it with
thop at 3x256x256 (the deformable convolutions counted as the dense convolutions the authors'
implementation runs), and prints both conventions next to the paper's figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("BUSSEG_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision  # noqa: E402
from torchvision.ops import DeformConv2d  # noqa: E402

from busseg.models import count_parameters, create_model  # noqa: E402

#: Table 5 of He et al. (2024): (parameters in M, "FLOPs" in G).
PAPER = {"acsnet": (42.99, 30.96), "acsnet_unet": (29.38, 25.69)}


class AuthorsModuleLayout(nn.Module):
    """busseg's decoder and heads on a torchvision ResNet-18 registered twice (whole, as
    ``base_model``, and stage by stage), the module layout of the authors' model."""

    def __init__(self, name: str, **options) -> None:
        super().__init__()
        inner = create_model(name, in_channels=3, **options)
        self.base_model = torchvision.models.resnet18()
        children = list(self.base_model.children())
        self.layer0 = nn.Sequential(*children[:3])
        self.layer1 = nn.Sequential(*children[3:5])
        self.layer2, self.layer3, self.layer4 = children[5:8]
        self.decoder = inner.decoder
        self.segmentation_head = inner.segmentation_head
        self.classification_head = inner.classification_head

    def forward(self, x: torch.Tensor):
        features = [self.layer0(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            features.append(layer(features[-1]))
        decoded, _ = self.decoder(features)
        seg = self.segmentation_head(decoded[-1], tuple(x.shape[-2:]))
        if self.classification_head is None:
            return seg
        return seg, self.classification_head([features[3], features[4], decoded[0]])


def _count_deformable(module, inputs, output) -> None:
    # thop has no rule for torchvision's DeformConv2d: count the dense convolution it replaces.
    module.total_ops += torch.DoubleTensor([output.numel() * module.weight[0].numel()])


def main() -> None:
    try:
        from thop import profile
    except ImportError:
        raise SystemExit(
            "benchmarks/acsnet_table5_count.py needs thop: pip install thop==0.1.1.post2209072238"
        ) from None
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    image = torch.randn(1, 3, 256, 256)
    print(f"{'model':34s} {'unique params':>14s} {'thop, authors layout':>22s} {'Table 5':>16s}")
    for name, options in (
        ("acsnet", {"channel_attention": "avg_max"}),
        ("acsnet", {"channel_attention": "se"}),
        ("acsnet_unet", {}),
    ):
        model = AuthorsModuleLayout(name, **options).eval()
        macs, params = profile(
            model, inputs=(image,), custom_ops={DeformConv2d: _count_deformable}, verbose=False
        )
        unique = count_parameters(create_model(name, in_channels=3, **options))
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        paper_params, paper_flops = PAPER[name]
        print(
            f"{label:34s} {unique / 1e6:11.2f} M {params / 1e6:9.2f} M / {macs / 1e9:6.2f} G "
            f"{paper_params:7.2f} M / {paper_flops:5.2f} G"
        )


if __name__ == "__main__":
    main()
