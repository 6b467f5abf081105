"""Atomic file writes: an interrupted run never leaves a half-written output behind.

The writers live in :mod:`busseg.fileio` (shared with the layers below the engine); this module
adds checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from busseg.fileio import atomic_write, atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json",
           "atomic_write_text"]
