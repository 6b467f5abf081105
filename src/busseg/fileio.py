"""Writing outputs safely: every file is written to a temporary sibling and renamed into place,
so an interrupted run never leaves a half-written output behind; and reading a file's identity.

Every layer that writes results (prediction, export, training, evaluation, reports) writes
through these functions, so this module sits at the bottom of the package next to
:mod:`busseg.errors` and imports nothing else of busseg (nor PyTorch: checkpoints are written by
:func:`busseg.engine.io.atomic_torch_save`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary sibling, which is then renamed
    over ``path``; on any failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_csv(path: str | Path, rows: list[dict]) -> Path:
    """``rows`` as a CSV file; the columns are every key met, in order of first appearance
    (rows lacking one leave it empty, ``None`` is written empty)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return atomic_write_text(path, buffer.getvalue())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (identifies a file by its content)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json", "atomic_write_text",
           "file_sha256"]
