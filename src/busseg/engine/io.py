"""Atomic file writes: an interrupted run never leaves a half-written output behind.

The writers live in :mod:`busseg.fileio` (shared with the layers below the engine); this module
adds checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from busseg.fileio import atomic_write, atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text


def _torch_save_to(obj: Any, tmp: Path) -> None:
    # Through a Python file object, so that a full disk raises OSError(ENOSPC) from our write;
    # given a path, torch's own writer reports it as an opaque RuntimeError ("unexpected pos
    # ..."). Even so, torch's zip writer may raise that RuntimeError while unwinding from the
    # OSError: the OSError is what happened, so it is the one raised.
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as exc:
        cause = exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: _torch_save_to(obj, tmp))


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json",
           "atomic_write_text"]
