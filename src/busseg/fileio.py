"""Writing outputs safely: atomic files, the user's umask, output folders checked up front, and
operating-system failures reported as one line naming the path.

- **Atomic**: every file is written to a temporary sibling and renamed into place, so an
  interrupted or failed write (killed process, full disk) leaves the previous file or nothing,
  never a truncated one; the temporary file is removed on failure.
- **Permissions**: temporary files are created with mode ``0o666`` filtered by the process
  umask, exactly as ``open(path, "w")`` would create them (``tempfile.mkstemp`` uses ``0o600``,
  which would hide results from colleagues sharing a server).
- **Failures**: an ``OSError`` while writing becomes an :class:`~busseg.errors.OutputError`
  (still an ``OSError``) whose message names the file and says what went wrong in words
  (:func:`describe_os_error`).
- **Output folders**: :func:`prepare_output_dir` creates a command's ``--out`` folder and proves
  that a file can be created in it *before* any work starts (a path that is a file, a read-only
  location or a missing permission is reported at once, not after an hour of training).

This module sits below ``busseg.data`` and ``busseg.engine`` (it imports nothing of busseg but
the errors), so every layer writes files the same way. It also reads a file's identity
(:func:`file_sha256`: model files, input scans, encoder weights).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from busseg.errors import OutputError

#: errno -> what it means for someone writing results (the C library's wording is terse).
_REASONS = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (immutable or protected location?)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EFBIG: "file too large for this file system (or the process's file-size limit)",
    errno.EIO: "input/output error (failing disk or network file system?)",
}


def describe_os_error(exc: OSError) -> str:
    """The reason of ``exc`` in words (``"no space left on the device (disk full)"``)."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return exc.strerror or str(exc) or type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """``"<path>: <reason>"`` for any ``OSError`` (the path(s) it carries, if any)."""
    if isinstance(exc, OutputError):
        return str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) for p in paths)
    reason = describe_os_error(exc)
    return f"{where}: {reason}" if where else reason


def output_error(path: str | Path, action: str, exc: OSError) -> OutputError:
    """An :class:`OutputError` ``"<path>: cannot <action> (<reason>)"`` carrying ``exc``'s errno."""
    return OutputError(f"{path}: cannot {action} ({describe_os_error(exc)})", exc.errno)


def _create_temp(path: Path) -> Path:
    """A new empty sibling of ``path`` (``.<name>.<random>.tmp``) with the umask's mode."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise OutputError(f"{path}: cannot create a temporary file next to it (100 names taken)")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary sibling, which is then
    renamed over ``path``. On any failure the temporary file is removed and ``path`` is left as
    it was; an ``OSError`` is raised as :class:`OutputError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path.parent, "create the folder", exc) from exc
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, cannot write a file there", errno.EISDIR)
    try:
        tmp = _create_temp(path)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise output_error(path, "create the file", exc) from exc
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(path, "write", exc) from exc
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


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


def prepare_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) and check that files can be created
    in it; raises :class:`OutputError` naming ``option`` and the path otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder", errno.ENOTDIR)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(f"{option} {path}", "create the folder", exc) from exc
    try:
        probe = _create_temp(path / ".busseg-write-check")
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise output_error(f"{option} {path}", "create files in this folder", exc) from exc
    probe.unlink(missing_ok=True)
    return path


def prepare_output_file(path: str | Path, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written: it is not a folder and its folder is
    writable (created if needed). Raises :class:`OutputError` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder, expected a file name", errno.EISDIR)
    prepare_output_dir(path.parent, f"{option} {path}: folder")
    return path


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_json", "atomic_write_text",
           "describe_os_error", "file_sha256", "os_error_line", "output_error", "prepare_output_dir",
           "prepare_output_file"]
