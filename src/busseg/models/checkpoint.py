"""busseg checkpoint files: read safely, rebuild the model they hold.

A busseg training checkpoint (written by Lightning through ``busseg train``/``cv``) is a
dictionary of plain data: the weights (``state_dict``, tensors named ``model.<name>``), the
resolved recipe (``hyper_parameters["recipe"]``: strings, numbers, lists, dicts) and the
trainer's state (epoch counters, optimizer and scheduler state, callback state: again tensors
and plain values). Nothing in it needs a Python class to be rebuilt, so it is read with
``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which builds tensors and
plain containers only and refuses every other global. A file that needs more (a crafted pickle
whose ``__reduce__`` would run a command, or a checkpoint holding arbitrary objects) is refused
with one message naming the file; its code is never run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from busseg.errors import CheckpointError, ConfigError
from busseg.models.registry import create_model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a busseg checkpoint file, read without running any code it may hold.

    Raises:
        CheckpointError: the file is missing, unreadable, not a checkpoint, or holds objects
            other than tensors and plain data (refused: loading it could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # the restricted unpickler met a global it does not build: the file asks to run code
        # or to rebuild objects that busseg checkpoints never contain
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "global" in line), reason[0] if reason else "")
        raise CheckpointError(
            f"checkpoint {path}: refused, it holds Python objects other than tensors and plain data "
            f"({detail.strip()[:200]}); busseg checkpoints never do, and loading such a file could run "
            "arbitrary code"
        ) from None
    except Exception as exc:  # truncated files, other formats: torch raises many types
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"checkpoint {path}: not a busseg checkpoint (holds a {type(content).__name__})")
    return content


def build_model_from_recipe(recipe: dict, encoder_weights: str | None = None) -> torch.nn.Module:
    """The model a resolved recipe describes (``model``, ``in_channels``, ``model_options``;
    ``encoder_weights`` defaults to the recipe's)."""
    return create_model(
        recipe["model"],
        in_channels=recipe["in_channels"],
        encoder_weights=encoder_weights if encoder_weights is not None else recipe["encoder_weights"],
        **recipe["model_options"],
    )


def load_checkpoint(
    path: str | Path, expected_model: str | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model saved in a busseg checkpoint, in eval mode; returns ``(model, recipe)``.

    The recipe stored in the checkpoint rebuilds the architecture; every weight comes from the
    checkpoint itself (``encoder_weights="none"``: nothing is downloaded)."""
    path = Path(path)
    content = read_checkpoint(path)
    recipe = (content.get("hyper_parameters") or {}).get("recipe")
    if not isinstance(recipe, dict) or not isinstance(content.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path}: not a busseg training checkpoint (no recipe inside)")
    if expected_model is not None and recipe.get("model") != expected_model:
        raise CheckpointError(f"checkpoint {path} holds model {recipe.get('model')!r}, not {expected_model!r}")
    try:
        model = build_model_from_recipe(recipe, encoder_weights="none")
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path}: its recipe cannot rebuild a model ({exc})") from None
    state = {k[len("model."):]: v for k, v in content["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit model {recipe['model']!r} ({str(exc)[:300]})"
        ) from None
    return model.to(device).eval(), recipe


__all__ = ["build_model_from_recipe", "load_checkpoint", "read_checkpoint"]
