"""What is recorded with every run: versions, seed, command, weights, device."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata

import torch

PACKAGES = (
    "busseg", "torch", "torchvision", "lightning", "timm", "segmentation-models-pytorch",
    "numpy", "scipy", "scikit-learn", "scikit-image", "onnxruntime",
)


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def command_line() -> str:
    return " ".join(sys.argv)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
