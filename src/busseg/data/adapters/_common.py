"""Helpers shared by the dataset adapters: file listing and collected layout problems."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from busseg.data.imageio import IMAGE_SUFFIXES, DataWarning
from busseg.errors import DataError

log = logging.getLogger(__name__)

#: At most this many problems are spelled out in one error message.
MAX_LISTED = 25


def format_problems(problems: list[tuple[str, str]], limit: int = MAX_LISTED) -> str:
    lines = [f"  {path}: {problem}" for path, problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


class LayoutProblems:
    """Problems an adapter finds while scanning a dataset folder, collected (not raised at the
    first one) so that the user sees every broken file at once.

    ``strict=True``: :meth:`finish` raises one :class:`DataError` listing them all.
    ``strict=False``: each problem is a :class:`DataWarning` and the affected samples are
    dropped by the adapter.
    """

    def __init__(self, dataset: str, root: Path, strict: bool = True) -> None:
        self.dataset = dataset
        self.root = Path(root)
        self.strict = strict
        self.items: list[tuple[str, str]] = []

    def add(self, path: str | Path, problem: str) -> None:
        self.items.append((str(path), problem))

    def __len__(self) -> int:
        return len(self.items)

    def finish(self) -> None:
        if not self.items:
            return
        if self.strict:
            raise DataError(
                f"{self.dataset} dataset at {self.root}: {len(self.items)} layout problem(s):\n"
                f"{format_problems(self.items)}\n"
                "(fix the files, or pass strict=False to skip the affected samples with a warning)"
            )
        for path, problem in self.items:
            warnings.warn(f"{path}: {problem} (sample skipped)", DataWarning, stacklevel=3)


def require_dir(path: Path, dataset: str, hint: str) -> Path:
    """``path`` as a directory, or a DataError naming it and describing the expected layout."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{dataset} dataset: folder {path} does not exist. Expected layout: {hint}")
    if not path.is_dir():
        raise DataError(f"{dataset} dataset: {path} is not a folder. Expected layout: {hint}")
    return path


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_csv_rows(path: Path, required: tuple[str, ...], dataset: str) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts with stripped keys/values; DataError on missing columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [
                {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{dataset} dataset: cannot read {path} ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{dataset} dataset: {path} lacks column(s) {', '.join(missing)} "
            f"(found: {', '.join(header) or 'no header'})"
        )
    return rows


def normalize_label(value: str) -> str | None:
    """Map a pathology string to a busseg class name; None when not recognised."""
    v = str(value).strip().lower()
    if v in ("benign", "b", "0"):
        return "benign"
    if v in ("malignant", "m", "1", "cancer", "carcinoma") or v.startswith("malig"):
        return "malignant"
    if v in ("normal", "n"):
        return "normal"
    if v in ("unknown", "", "nan", "none"):
        return "unknown"
    return None
