"""Model complexity: parameters, FLOPs / MACs and inference time.

Conventions (state them with every number you report):

- **FLOPs** are counted by :class:`torch.utils.flop_counter.FlopCounterMode` for one forward
  pass at batch 1 in eval mode: one multiply-add is **2 FLOPs**. Only the operators that
  counter knows are counted (convolutions, transposed convolutions, matrix products,
  attention); normalisation, activations, pooling and interpolation are not, as in most
  papers' tables.
- **MACs** (multiply-accumulates) = FLOPs / 2. Papers usually report MACs under the name
  "FLOPs" (e.g. ACSNet's Table 5, computed with thop/ptflops): compare their numbers with
  :func:`count_macs`, not :func:`count_flops`.
- **Inference time** is wall-clock milliseconds per image, after warm-up, with CUDA
  synchronisation on GPU.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from busseg.errors import ConfigError
from busseg.models.registry import count_parameters

__all__ = ["count_parameters", "count_flops", "count_macs", "macs", "measure_inference_ms"]


def _example_input(model: nn.Module, image_size: int | tuple[int, int], in_channels: int, batch: int) -> torch.Tensor:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    try:
        reference = next(model.parameters())
        device, dtype = reference.device, reference.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    return torch.zeros(batch, in_channels, height, width, device=device, dtype=dtype)


class _EvalMode:
    """Put ``model`` in eval mode for the duration of the block and restore its mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


def count_flops(model: nn.Module, image_size: int | tuple[int, int] = 256, in_channels: int = 1) -> float:
    """FLOPs (1 multiply-add = 2 FLOPs) of one forward pass on a ``[1, in_channels, H, W]``
    input, eval mode, no gradient. Divide by 1e9 for GFLOPs; see :func:`count_macs`."""
    images = _example_input(model, image_size, in_channels, batch=1)
    counter = FlopCounterMode(display=False)
    with _EvalMode(model), torch.no_grad(), counter:
        model(images)
    return float(counter.get_total_flops())


def macs(flops: float) -> float:
    """Multiply-accumulates from a FLOP count (FlopCounterMode counts a MAC as 2 FLOPs)."""
    return flops / 2.0


def count_macs(model: nn.Module, image_size: int | tuple[int, int] = 256, in_channels: int = 1) -> float:
    """MACs of one forward pass (what most papers call "FLOPs")."""
    return macs(count_flops(model, image_size, in_channels))


def measure_inference_ms(
    model: nn.Module,
    image_size: int | tuple[int, int] = 256,
    in_channels: int = 1,
    batch: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    amp: bool = False,
) -> float:
    """Median wall-clock milliseconds **per image** of ``model`` in eval mode, no gradient.

    The model is moved to ``device``; ``warmup`` untimed passes come first. On CUDA the
    device is synchronised before and after each timed pass so the time covers the kernels,
    not just their launch. ``amp`` runs under ``torch.autocast`` (float16 on CUDA, bfloat16 on
    CPU). The median of ``repeats`` passes is reported (robust to a stray slow pass).
    """
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"measure_inference_ms: need repeats >= 1, warmup >= 0, batch >= 1 (got {repeats}, {warmup}, {batch})")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("measure_inference_ms: device 'cuda' requested but CUDA is not available")
    model = model.to(device)
    images = _example_input(model, image_size, in_channels, batch).to(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
        if amp
        else nullcontext()
    )
    timings = []
    with _EvalMode(model), torch.no_grad(), autocast:
        for _ in range(warmup):
            model(images)
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            model(images)
            synchronize()
            timings.append((time.perf_counter() - start) * 1000.0 / batch)
    timings.sort()
    return float(timings[len(timings) // 2])
