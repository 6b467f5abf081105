"""Dataset audit: counts, sizes, broken files, exact and near-duplicate images.

Duplicates matter for honest evaluation: BUSI holds the same scan several times (with and
without calipers, slightly shifted, sometimes under different class labels), so a random
image-level split puts copies of test images into training. The audit finds them and
:meth:`AuditReport.group_map` turns them into split groups (:func:`busseg.data.splits.make_split`).

Method:

- **exact duplicates**: SHA-256 of the decoded grayscale pixels (and shape), so a PNG and its
  re-encoded copy match, whatever the file bytes;
- **near-duplicates**: a perceptual DCT hash (pHash): the image is resized to
  ``4 * hash_size`` square (Pillow bilinear, anti-aliased), its 2-D DCT-II (orthonormal) is
  taken, and the ``hash_size x hash_size`` lowest frequencies are compared with their median
  (the DC term excluded from the median, as it only reflects mean brightness) giving
  ``hash_size**2`` bits. Two images with Hamming distance ``<= near_duplicate_threshold`` are
  linked; clusters are the connected components of these links (so A~B and B~C put A, B, C in
  one cluster even when A and C are further apart);
- **conflicts**: a cluster whose members carry different labels, or different masks: the
  masks, resized to 64x64, have an IoU below ``mask_iou_threshold`` (0.8) between some pair.
  (Near-duplicates that are shifted copies also get flagged here; they are worth a look.)

Every unreadable file, size mismatch, empty or non-binary mask is collected as a problem (the
audit never stops at the first one).

Why the DCT hash is written here (:func:`dct_hash`, a few lines on Pillow and SciPy's
``dctn``) rather than taken from ``imagehash``: the hash decides which images a split keeps
together, so its exact definition (resize filter, coefficients kept, median without the DC
term) is fixed and documented here, not left to another package's release; and it saves a
dependency for ten lines.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.fft import dctn

from busseg.data.imageio import DataWarning, read_image, read_mask
from busseg.data.records import SampleRecord
from busseg.errors import ConfigError, DataError

MASK_SIGNATURE_SIZE = 64


def dct_hash(image: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Perceptual hash of a uint8 image: ``hash_size**2`` bools (see module docstring)."""
    side = 4 * hash_size
    small = np.asarray(
        Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float64
    )
    low = dctn(small, type=2, norm="ortho")[:hash_size, :hash_size]
    median = np.median(low.ravel()[1:])
    return (low > median).ravel()


def hamming_matrix(bits: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Pairwise Hamming distances of boolean hash rows ``[N, B]`` as ``int16 [N, N]``."""
    b = bits.astype(np.float32)
    n = b.shape[0]
    out = np.empty((n, n), np.int16)
    for start in range(0, n, chunk):
        rows = b[start : start + chunk]
        # differing bits = ones(a) + ones(b) - 2 * common ones
        d = rows.sum(1, keepdims=True) + b.sum(1)[None, :] - 2.0 * rows @ b.T
        out[start : start + chunk] = np.rint(d).astype(np.int16)
    return out


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def components(self) -> list[list[int]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            groups[self.find(i)].append(i)
        return list(groups.values())


@dataclass
class AuditReport:
    """What :func:`audit_dataset` found. Ids everywhere are record ids."""

    dataset: str
    n_records: int
    class_counts: dict[str, int]
    image_sizes: dict[str, int]  # "HxW" -> count
    empty_masks: list[str]
    multiple_masks: list[str]
    problems: list[tuple[str, str]]  # (path, problem)
    exact_duplicates: list[list[str]]
    clusters: list[list[str]]  # near-duplicate clusters (exact ones included), size >= 2
    label_conflicts: list[list[str]]
    mask_conflicts: list[list[str]]
    near_duplicate_threshold: int
    hash_size: int
    labels: dict[str, str] = field(default_factory=dict, repr=False)
    patient_groups: dict[str, str | None] = field(default_factory=dict, repr=False)
    min_distances: dict[str, int] = field(default_factory=dict, repr=False)
    #: record id -> its problems (``"<file>: <problem>"``): the images ``data split`` refuses.
    flagged: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def group_map(self) -> dict[str, str]:
        """id -> split group: records linked by a duplicate cluster OR a shared patient id
        form one group (connected components of both relations). A group touching a duplicate
        cluster is named ``dup-NNN``; other records keep their patient group, or their own id.
        """
        ids = list(self.labels)
        index = {sample_id: i for i, sample_id in enumerate(ids)}
        uf = _UnionFind(len(ids))
        by_patient: dict[str, int] = {}
        for sample_id, patient in self.patient_groups.items():
            if patient is not None:
                if patient in by_patient:
                    uf.union(index[sample_id], by_patient[patient])
                else:
                    by_patient[patient] = index[sample_id]
        in_cluster = set()
        for cluster in self.clusters:
            in_cluster.update(cluster)
            for a, b in itertools.pairwise(cluster):
                uf.union(index[a], index[b])
        components = sorted(uf.components(), key=lambda c: min(ids[i] for i in c))
        mapping: dict[str, str] = {}
        n_dup = 0
        for comp in components:
            members = [ids[i] for i in comp]
            if any(m in in_cluster for m in members):
                name = f"dup-{n_dup:03d}"
                n_dup += 1
            else:
                patient = self.patient_groups.get(members[0])
                name = patient if patient is not None else members[0]
            for m in members:
                mapping[m] = name
        return mapping

    @property
    def n_clustered_images(self) -> int:
        return sum(len(c) for c in self.clusters)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "n_records": self.n_records,
            "class_counts": self.class_counts,
            "image_sizes": self.image_sizes,
            "empty_masks": self.empty_masks,
            "multiple_masks": self.multiple_masks,
            "problems": [{"path": p, "problem": m} for p, m in self.problems],
            "flagged_ids": sorted(self.flagged),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicate_threshold": self.near_duplicate_threshold,
            "hash_size": self.hash_size,
            "clusters": self.clusters,
            "n_clustered_images": self.n_clustered_images,
            "label_conflicts": self.label_conflicts,
            "mask_conflicts": self.mask_conflicts,
            "labels": self.labels,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self, max_items: int = 20) -> str:
        def more(items: Sequence, shown: int) -> list[str]:
            return [f"  ... and {len(items) - shown} more"] if len(items) > shown else []

        def show(cluster: list[str]) -> str:
            return ", ".join(f"{i} [{self.labels.get(i, '?')}]" for i in cluster)

        lines = [f"Audit of {self.dataset}: {self.n_records} images"]
        lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.class_counts.items())))
        sizes = sorted(self.image_sizes.items(), key=lambda kv: -kv[1])
        lines.append(
            f"  image sizes: {len(sizes)} distinct; most common "
            + ", ".join(f"{s} ({c})" for s, c in sizes[:5])
        )
        lines.append(f"  images with several mask files: {len(self.multiple_masks)}")
        lines.append(f"  empty masks: {len(self.empty_masks)}")
        lines.append(f"\nProblems: {len(self.problems)}")
        lines += [f"  {p}: {m}" for p, m in self.problems[:max_items]] + more(self.problems, max_items)
        lines.append(f"\nExact duplicates (identical pixels): {len(self.exact_duplicates)} groups")
        lines += [f"  {show(c)}" for c in self.exact_duplicates[:max_items]] + more(self.exact_duplicates, max_items)
        lines.append(
            f"\nNear-duplicate clusters (DCT hash {self.hash_size**2} bits, Hamming <= "
            f"{self.near_duplicate_threshold}): {len(self.clusters)} clusters, "
            f"{self.n_clustered_images} images"
        )
        lines += [f"  {show(c)}" for c in self.clusters[:max_items]] + more(self.clusters, max_items)
        lines.append(f"\nClusters with conflicting labels: {len(self.label_conflicts)}")
        lines += [f"  {show(c)}" for c in self.label_conflicts[:max_items]] + more(self.label_conflicts, max_items)
        lines.append(f"\nClusters with differing masks: {len(self.mask_conflicts)}")
        lines += [f"  {show(c)}" for c in self.mask_conflicts[:max_items]] + more(self.mask_conflicts, max_items)
        if self.clusters:
            lines.append(
                "\nA random image-level split would put copies of test images into training: "
                "split with the clusters as groups (busseg data split)."
            )
        return "\n".join(lines)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _flagged_records(records: Sequence[SampleRecord], problems: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Each problem (named by one of a record's files) attached to that record's id."""
    owner = {str(path): r.id for r in records for path in (r.image_path, *r.mask_paths)}
    flagged: dict[str, list[str]] = {}
    for path, message in problems:
        flagged.setdefault(owner.get(path, path), []).append(f"{path}: {message}")
    return flagged


def audit_dataset(
    records: Sequence[SampleRecord],
    *,
    near_duplicate_threshold: int = 6,
    hash_size: int = 8,
    mask_iou_threshold: float = 0.8,
    dataset: str | None = None,
    read_masks: bool = True,
    progress: bool = False,
) -> AuditReport:
    """Audit ``records`` (reads every image and mask once; see the module docstring).

    ``read_masks=False`` hashes images only (about twice as fast): no mask problems, empty
    masks or mask conflicts are reported then.
    """
    records = list(records)
    if hash_size < 2:
        raise ConfigError(f"hash_size={hash_size} must be >= 2")
    if not 0 <= near_duplicate_threshold < hash_size**2:
        raise ConfigError(f"near_duplicate_threshold={near_duplicate_threshold} must be in [0, {hash_size**2})")
    if dataset is None:
        dataset = ", ".join(sorted({r.source for r in records})) or "empty dataset"

    problems: list[tuple[str, str]] = []
    sizes: Counter = Counter()
    empty, multiple = [], []
    hashes, pixel_digests, mask_signatures, ok_ids = [], [], {}, []
    seen_ids: set[str] = set()
    from busseg.console import progress_bar

    for record in progress_bar(records, desc="auditing", unit="img", enabled=progress):
        if record.id in seen_ids:
            problems.append((str(record.image_path), f"duplicate record id {record.id!r}"))
            continue
        seen_ids.add(record.id)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            try:
                image = read_image(record.image_path)
            except DataError as exc:
                problems.append((str(record.image_path), str(exc).removeprefix(f"{record.image_path}: ")))
                continue
            sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
            mask = None
            if read_masks:
                try:
                    mask = read_mask(
                        record.mask_paths,
                        shape=image.shape,
                        allow_resize=bool(record.extra.get("mask_resize", False)),
                    )
                except DataError as exc:
                    where = next(
                        (str(p) for p in record.mask_paths if str(exc).startswith(str(p))),
                        str(record.image_path),
                    )
                    problems.append((where, str(exc).removeprefix(f"{where}: ")))
        for w in caught:
            if issubclass(w.category, DataWarning):
                message = str(w.message)
                path, _, text = message.partition(": ")
                problems.append((path, text or message))
        if len(record.mask_paths) > 1:
            multiple.append(record.id)
        if mask is not None:
            if not mask.any():
                empty.append(record.id)
                if record.label in ("benign", "malignant"):
                    problems.append(
                        (str(record.mask_paths[0]) if record.mask_paths else str(record.image_path),
                         f"empty mask for a {record.label} image")
                    )
            signature = Image.fromarray(mask.astype(np.uint8) * 255).resize(
                (MASK_SIGNATURE_SIZE, MASK_SIGNATURE_SIZE), Image.BILINEAR
            )
            mask_signatures[record.id] = np.asarray(signature) >= 128
        ok_ids.append(record)
        hashes.append(dct_hash(image, hash_size))
        pixel_digests.append(hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest())

    n = len(ok_ids)
    ids = [r.id for r in ok_ids]
    labels = {r.id: r.label for r in ok_ids}
    exact: dict[str, list[str]] = defaultdict(list)
    for sample_id, digest in zip(ids, pixel_digests):
        exact[digest].append(sample_id)
    exact_groups = sorted((sorted(g) for g in exact.values() if len(g) > 1), key=lambda g: g[0])

    uf = _UnionFind(n)
    min_distances: dict[str, int] = {}
    if n > 1:
        distances = hamming_matrix(np.stack(hashes))
        np.fill_diagonal(distances, np.iinfo(np.int16).max)
        for i, d in enumerate(distances.min(axis=1)):
            min_distances[ids[i]] = int(d)
        for i, j in zip(*np.nonzero(np.triu(distances <= near_duplicate_threshold, k=1))):
            uf.union(int(i), int(j))
        index = {sample_id: k for k, sample_id in enumerate(ids)}
        for group in exact_groups:  # identical pixels are always one cluster
            for a, b in itertools.pairwise(group):
                uf.union(index[a], index[b])
    clusters = sorted(
        (sorted(ids[i] for i in comp) for comp in uf.components() if len(comp) > 1),
        key=lambda c: c[0],
    )
    label_conflicts = [c for c in clusters if len({labels[i] for i in c}) > 1]
    mask_conflicts = []
    for cluster in clusters:
        signatures = [mask_signatures[i] for i in cluster if i in mask_signatures]
        if any(_mask_iou(a, b) < mask_iou_threshold for a, b in itertools.combinations(signatures, 2)):
            mask_conflicts.append(cluster)

    return AuditReport(
        flagged=_flagged_records(records, problems),
        dataset=dataset,
        n_records=len(records),
        class_counts=dict(sorted(Counter(r.label for r in records).items())),
        image_sizes=dict(sizes.most_common()),
        empty_masks=sorted(empty),
        multiple_masks=sorted(multiple),
        problems=problems,
        exact_duplicates=exact_groups,
        clusters=clusters,
        label_conflicts=label_conflicts,
        mask_conflicts=mask_conflicts,
        near_duplicate_threshold=near_duplicate_threshold,
        hash_size=hash_size,
        labels=labels,
        patient_groups={r.id: r.group_id for r in ok_ids},
        min_distances=min_distances,
    )
