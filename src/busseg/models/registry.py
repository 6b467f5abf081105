"""Model registry: ``register_model`` and ``create_model`` (timm style).

A model family lives in one module of ``busseg.models``; each public configuration is a
factory function decorated with :func:`register_model`. Factories take ``in_channels``,
``encoder_weights`` and model-specific keyword options, and return an ``nn.Module`` whose
``forward(images)`` returns :class:`busseg.models.output.ModelOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from busseg.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    paper: str
    #: recipe file name in ``busseg/recipes`` (without ``.yaml``) used by default.
    recipe: str
    #: input size must be divisible by this (e.g. 32 for five down-samplings).
    size_divisor: int = 32
    #: whether the model has a classification head (multi-task).
    multitask: bool = False
    #: whether the model segments at all (False for a classification-only ablation).
    segments: bool = True
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str,
    recipe: str | None = None,
    size_divisor: int = 32,
    multitask: bool = False,
    segments: bool = True,
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name,
            factory=factory,
            paper=paper,
            recipe=recipe or name,
            size_divisor=size_divisor,
            multitask=multitask,
            segments=segments,
            description=description or (factory.__doc__ or "").strip().split("\n")[0],
        )
        return factory

    return wrap


def _ensure_loaded() -> None:
    # Importing the package registers every model module listed in busseg/models/__init__.py.
    import busseg.models  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def create_model(name: str, **options) -> nn.Module:
    """Build a registered model. ``options`` go to its factory (``in_channels``,
    ``encoder_weights``, model-specific switches such as ablation variants)."""
    info = model_info(name)
    try:
        model = info.factory(**options)
    except TypeError as exc:  # unknown keyword: name the model and the option
        raise ConfigError(f"model {name!r}: {exc}") from exc
    model.busseg_name = name  # type: ignore[attr-defined]
    model.busseg_options = dict(options)  # type: ignore[attr-defined]
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
