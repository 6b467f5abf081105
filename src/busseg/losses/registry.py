"""Objective registry: a recipe names its objective (``loss: {name: ..., ...options}``).

Two kinds of loss live in ``busseg.losses``:

- pixel losses (``DiceLoss``, ``BCELoss``, …): ``forward(logits, target) -> scalar`` with
  ``logits`` and ``target`` of shape ``[B, 1, H, W]`` and ``target`` in {0, 1} (float);
- objectives: ``forward(output: ModelOutput, batch: dict) -> (loss, parts)`` combining the
  model's outputs (segmentation, auxiliary maps, classification) with the batch
  (``batch["mask"]`` ``[B, 1, H, W]`` float, ``batch["label"]`` ``[B]`` long with -1 for
  unknown). ``parts`` maps names to detached scalars for logging.

Every objective is registered here under the name recipes use.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from busseg.errors import ConfigError

_OBJECTIVES: dict[str, Callable[..., nn.Module]] = {}


def register_objective(name: str):
    def wrap(factory):
        if name in _OBJECTIVES:
            raise RuntimeError(f"objective {name!r} registered twice")
        _OBJECTIVES[name] = factory
        return factory

    return wrap


def list_objectives() -> list[str]:
    import busseg.losses  # noqa: F401  (registers everything)

    return sorted(_OBJECTIVES)


def create_objective(name: str, **options) -> nn.Module:
    import busseg.losses  # noqa: F401

    if name not in _OBJECTIVES:
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(sorted(_OBJECTIVES))}")
    try:
        return _OBJECTIVES[name](**options)
    except TypeError as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from exc


_PIXEL_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_pixel_loss(name: str):
    """Register a pixel loss (``forward(logits, target) -> scalar``) under ``name``."""

    def wrap(factory):
        if name in _PIXEL_LOSSES:
            raise RuntimeError(f"pixel loss {name!r} registered twice")
        _PIXEL_LOSSES[name] = factory
        return factory

    return wrap


def list_pixel_losses() -> list[str]:
    import busseg.losses  # noqa: F401

    return sorted(_PIXEL_LOSSES)


def create_pixel_loss(name: str, **options) -> nn.Module:
    import busseg.losses  # noqa: F401

    if name not in _PIXEL_LOSSES:
        raise ConfigError(
            f"unknown pixel loss {name!r}; known: {', '.join(sorted(_PIXEL_LOSSES))}"
        )
    try:
        return _PIXEL_LOSSES[name](**options)
    except TypeError as exc:
        raise ConfigError(f"pixel loss {name!r}: {exc}") from exc
