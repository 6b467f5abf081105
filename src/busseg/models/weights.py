"""Pretrained-weight policy shared by every model with an ImageNet encoder.

``encoder_weights`` is one of:

- ``"imagenet"``: the library's ImageNet weights (timm hub or torchvision download). When they
  cannot be had (no network, nothing cached) the model is initialised at random and ONE
  warning per encoder is logged. Set ``BUSSEG_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) to skip the
  network probe altogether.
- ``"none"``: random initialisation, no warning.
- a path to a local ``.pth``/``.safetensors`` state dict of the full backbone (e.g. timm's
  ``resnet18`` or torchvision's ``vgg16``): loaded and checked (missing/unexpected keys are an
  error naming the file).

Every module built here carries ``busseg_weights_info`` (requested, used, detail); the engine
collects them into the run record with :func:`collect_weights_info`.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from busseg.errors import ConfigError
from busseg.fileio import file_sha256

log = logging.getLogger("busseg")
_WARNED: set[str] = set()
_NETWORK_OK: dict[str, bool] = {}


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    if host not in _NETWORK_OK:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                _NETWORK_OK[host] = True
        except OSError:
            _NETWORK_OK[host] = False
    return _NETWORK_OK[host]


def offline() -> bool:
    return os.environ.get("BUSSEG_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_HUB_OFFLINE", ""
    ) not in ("", "0")


def warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def validate_weights_spec(spec: str) -> str:
    if spec in ("imagenet", "none"):
        return spec
    if not Path(spec).is_file():
        raise ConfigError(
            f"encoder weights {spec!r}: expected 'imagenet', 'none' or an existing weights file"
        )
    return spec


def _file_digest(path: str | Path) -> str:
    return file_sha256(path)[:16]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ConfigError(f"weights file {path}: cannot be read ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"weights file {path}: does not hold a state dict")
    return sd


def attach_weights_info(module: nn.Module, requested: str, used: str, detail: str = "") -> nn.Module:
    module.busseg_weights_info = {"requested": requested, "used": used, "detail": detail}  # type: ignore[attr-defined]
    return module


def timm_encoder(
    name: str,
    *,
    weights: str = "none",
    in_channels: int = 1,
    out_indices: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """A timm backbone with ``features_only=True`` following the weight policy.

    Returns the feature extractor; ``.feature_info.channels()`` and ``.reduction()`` describe
    its outputs. With ``in_channels=1`` pretrained first-layer filters are summed over RGB
    (timm's own adaptation).
    """
    import timm

    spec = validate_weights_spec(weights)
    common = dict(features_only=True, in_chans=in_channels, **kwargs)
    if out_indices is not None:
        common["out_indices"] = out_indices
    if spec == "none":
        return attach_weights_info(timm.create_model(name, pretrained=False, **common), spec, "random")
    if spec == "imagenet":
        if not offline() and host_reachable("huggingface.co"):
            try:
                model = timm.create_model(name, pretrained=True, **common)
                return attach_weights_info(model, spec, "imagenet", f"timm:{name}")
            except Exception as exc:  # hub error: fall through to random init
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            reason = "no network (or BUSSEG_OFFLINE set) and no cached weights"
        warn_once(
            f"timm:{name}",
            f"ImageNet weights for encoder {name!r} are not available ({reason}); "
            "training it from random initialisation. Pass --encoder-weights FILE to use a "
            "local copy.",
        )
        return attach_weights_info(
            timm.create_model(name, pretrained=False, **common), spec, "random", reason
        )
    # local file: let timm load it (it adapts in_chans and drops the classifier)
    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(spec)), **common
        )
    except Exception as exc:
        raise ConfigError(
            f"weights file {spec}: does not fit timm encoder {name!r} ({str(exc)[:300]})"
        ) from exc
    return attach_weights_info(model, spec, "file", f"{spec} sha256:{_file_digest(spec)}")


def torchvision_backbone(
    builder: Callable[..., nn.Module],
    imagenet_weights,
    *,
    weights: str = "none",
    label: str,
) -> nn.Module:
    """A torchvision model (e.g. ``torchvision.models.vgg16``) following the weight policy.

    ``imagenet_weights`` is the torchvision weights enum member to try for ``"imagenet"``.
    """
    spec = validate_weights_spec(weights)
    if spec == "none":
        return attach_weights_info(builder(weights=None), spec, "random")
    if spec == "imagenet":
        reason = "no network (or BUSSEG_OFFLINE set) and no cached weights"
        cached = Path(torch.hub.get_dir(), "checkpoints", Path(imagenet_weights.url).name)
        if cached.is_file() or (not offline() and host_reachable("download.pytorch.org")):
            try:
                return attach_weights_info(builder(weights=imagenet_weights), spec, "imagenet", f"torchvision:{label}")
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        warn_once(
            f"tv:{label}",
            f"ImageNet weights for {label!r} are not available ({reason}); using random "
            "initialisation. Pass a local weights file to use a copy.",
        )
        return attach_weights_info(builder(weights=None), spec, "random", reason)
    model = builder(weights=None)
    sd = load_state_dict_file(spec)
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "classifier."))]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"weights file {spec}: does not fit {label} (missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]})"
        )
    return attach_weights_info(model, spec, "file", f"{spec} sha256:{_file_digest(spec)}")


def collect_weights_info(model: nn.Module) -> dict[str, dict]:
    """Every ``busseg_weights_info`` found in ``model``'s sub-modules, by module path."""
    found = {}
    for path, module in model.named_modules():
        info = getattr(module, "busseg_weights_info", None)
        if info is not None:
            found[path or "<model>"] = dict(info)
    return found
