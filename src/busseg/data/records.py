"""The one sample record every dataset adapter produces."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Class names in busseg, and the integer used for benign/malignant classification.
CLASS_NAMES = ("benign", "malignant", "normal", "unknown")
CLASS_TO_INDEX = {"benign": 0, "malignant": 1}


@dataclass(frozen=True)
class SampleRecord:
    """One image of a dataset.

    Attributes:
        id: identifier unique within its dataset (used in split files and result CSVs).
        image_path: the image file.
        mask_paths: every mask file of the image; the lesion mask is their union (may be empty
            for datasets without masks, e.g. a user's own scans).
        label: one of ``CLASS_NAMES``.
        group_id: patient or acquisition group; splits never separate a group.
        source: dataset name (``busi``, ``busbra``, ``udiat``, ``stu``, ``folder``, ``phantom``).
        pixel_spacing_mm: (row, column) spacing when known, else ``None``.
    """

    id: str
    image_path: Path
    mask_paths: tuple[Path, ...]
    label: str = "unknown"
    group_id: str | None = None
    source: str = "unknown"
    pixel_spacing_mm: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.label not in CLASS_NAMES:
            raise ValueError(f"record {self.id!r}: label {self.label!r} not in {CLASS_NAMES}")

    @property
    def class_index(self) -> int:
        """0 benign, 1 malignant, -1 for normal/unknown (ignored by classification losses)."""
        return CLASS_TO_INDEX.get(self.label, -1)

    @property
    def group(self) -> str:
        """The grouping key for splits: the patient/group id, or the sample id itself."""
        return self.group_id if self.group_id is not None else self.id

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_path"] = str(self.image_path)
        d["mask_paths"] = [str(p) for p in self.mask_paths]
        return d
