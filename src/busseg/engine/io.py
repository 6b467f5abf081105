"""Atomic file writes: an interrupted run never leaves a half-written output behind.

The writers live in :mod:`busseg.fileio` (shared with the data layer); this module adds
checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from busseg.fileio import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


def _torch_save_to(obj: Any, tmp: Path) -> None:
    # Through a Python file object: a full disk then raises OSError(ENOSPC); given a path,
    # torch's own writer reports it as an opaque RuntimeError ("unexpected pos ...").
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: _torch_save_to(obj, tmp))


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]
