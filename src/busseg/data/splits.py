"""Leakage-free cross-validation splits, stored as JSON files.

A split file is a JSON object in the spirit of nnU-Net's ``splits_final.json`` (a list of
folds with ``train``/``val``/``test`` ids) with the metadata needed to check it later::

    {"format": "busseg-split/1", "dataset": "busi", "k": 5, "seed": 0,
     "grouping": "groups" | "none", "stratified_by": "label", "val_fraction": 0.2,
     "created_by": "busseg 0.1.0 ...", "ids_sha256": "...", "groups": {id: group},
     "folds": [{"fold": 0, "train": [...], "val": [...], "test": [...], "counts": {...}}]}

Algorithm of :func:`make_split` (stratified group k-fold, written here rather than taken from
scikit-learn so that a split does not change with the library version):

1. Groups are the connected components of "same patient" (``record.group_id``) and "same
   group in ``groups``" (e.g. the audit's duplicate clusters): a cluster that contains images
   of two patients joins both patients' images.
2. Groups are shuffled with ``seed``, then stably sorted by size, largest first; each group goes
   to the fold that minimises, after adding it, the spread of every class's per-fold counts
   relative to its ideal share (sum over classes of the standard deviation of
   ``count[fold, class] / total[class]`` across folds); ties go to the smallest fold, then the
   lowest index. Large groups are placed while every fold is still flexible.
3. Validation of fold ``i`` is carved from its training groups only: groups are visited in a
   seeded random order and a group is added when it brings the per-class counts closer to
   ``val_fraction`` of the training pool's counts (greedy, never splitting a group). When
   ``val_fraction > 0`` but the pool is too small for any group to help (10 % of 8 images),
   the smallest group is held out, so that every fold has a validation set.

:func:`random_split` runs the same algorithm with every image its own group: an image-level
(leaky) baseline for the leakage study, stratified in the same way so that grouping is the
only difference.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busseg.data.imageio import DataWarning
from busseg.data.records import SampleRecord
from busseg.errors import ConfigError, DataError
from busseg.fileio import atomic_write_json

SPLIT_FORMAT = "busseg-split/1"

#: Share of each training pool held out for validation when none is given; also the recipes'
#: default ``validation.fraction`` (``busseg.engine.recipe.DEFAULTS`` reads it from here).
DEFAULT_VAL_FRACTION = 0.2


def ids_sha256(ids) -> str:
    """SHA-256 of the sorted ids joined by newlines (identifies the set of samples)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _version() -> str:
    try:
        import busseg

        return busseg.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def _check_records(records: Sequence[SampleRecord], k: int, val_fraction: float) -> list[SampleRecord]:
    records = list(records)
    if not records:
        raise ConfigError("cannot split an empty dataset")
    counts = Counter(r.id for r in records)
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    if duplicated:
        raise ConfigError(f"duplicate sample ids cannot be split: {duplicated[:10]}")
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"k={k!r}: cross-validation needs an integer k >= 2")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must be in [0, 1)")
    return records


def _merge_groups(records: Sequence[SampleRecord], groups: dict[str, str] | None) -> dict[str, str]:
    """id -> merged group name (connected components of patient ids and ``groups``)."""
    ids = [r.id for r in records]
    parent = {i: i for i in ids}

    def find(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for relation in ({r.id: r.group_id for r in records if r.group_id is not None}, groups or {}):
        first: dict[str, str] = {}
        for sample_id, group in relation.items():
            if sample_id not in parent:
                continue  # groups may describe more ids than this subset of records
            if group in first:
                union(sample_id, first[group])
            else:
                first[group] = sample_id
    members: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        members[find(i)].append(i)
    by_id = {r.id: r for r in records}
    names: dict[str, str] = {}
    for root, group_ids in members.items():
        candidates = sorted(
            {(groups or {}).get(i) or by_id[i].group_id or i for i in group_ids}
        )
        name = candidates[0] if len(candidates) == 1 else "+".join(candidates[:3]) + ("+..." if len(candidates) > 3 else "")
        for i in group_ids:
            names[i] = name
    return names


def _assign_folds(
    group_members: dict[str, list[str]], labels: dict[str, str], k: int, rng: np.random.Generator
) -> dict[str, int]:
    """Greedy stratified assignment of groups to k folds (step 2 of the module docstring)."""
    classes = sorted(set(labels.values()))
    col = {c: j for j, c in enumerate(classes)}
    vectors = {}
    for g, members in group_members.items():
        v = np.zeros(len(classes))
        for m in members:
            v[col[labels[m]]] += 1
        vectors[g] = v
    totals = np.maximum(sum(vectors.values()), 1)
    names = list(group_members)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -len(group_members[g]))  # stable: ties keep the shuffled order
    fold_counts = np.zeros((k, len(classes)))
    assignment: dict[str, int] = {}
    for g in order:
        best, best_cost = 0, None
        for f in range(k):
            fold_counts[f] += vectors[g]
            cost = float(np.std(fold_counts / totals, axis=0).sum())
            fold_counts[f] -= vectors[g]
            key = (round(cost, 12), fold_counts[f].sum(), f)
            if best_cost is None or key < best_cost:
                best, best_cost = f, key
        fold_counts[best] += vectors[g]
        assignment[g] = best
    return assignment


def _carve_validation(
    pool_groups: list[str],
    group_members: dict[str, list[str]],
    labels: dict[str, str],
    fraction: float,
    rng: np.random.Generator,
) -> set[str]:
    """Greedy group-aware, class-balanced choice of validation groups (step 3)."""
    if fraction <= 0 or not pool_groups:
        return set()
    pool_counts = Counter(labels[m] for g in pool_groups for m in group_members[g])
    target = {c: fraction * n for c, n in pool_counts.items()}
    current: Counter = Counter()
    chosen: set[str] = set()

    def deviation(counts: Counter) -> float:
        return sum(abs(target[c] - counts.get(c, 0)) for c in target)

    for idx in rng.permutation(len(pool_groups)):
        g = pool_groups[idx]
        added = current + Counter(labels[m] for m in group_members[g])
        if deviation(added) < deviation(current):
            current, chosen = added, chosen | {g}
    if not chosen and len(pool_groups) > 1:
        # The pool is so small that no group brings the counts closer to the target (e.g.
        # 10 % of 8 images): hold out the smallest group so that model selection has data.
        order = rng.permutation(len(pool_groups))
        chosen = {min((pool_groups[i] for i in order), key=lambda g: len(group_members[g]))}
    if len(chosen) == len(pool_groups):  # never leave the training set empty
        chosen.discard(pool_groups[0])
    return chosen


def _build_split(
    records: list[SampleRecord],
    k: int,
    seed: int,
    val_fraction: float,
    group_of: dict[str, str],
    grouping: str,
    dataset: str | None,
) -> dict:
    labels = {r.id: r.label for r in records}
    group_members: dict[str, list[str]] = defaultdict(list)
    for r in records:
        group_members[group_of[r.id]].append(r.id)
    if len(group_members) < k:
        raise ConfigError(
            f"cannot make {k} folds from {len(group_members)} group(s) of {len(records)} images "
            "(every group stays inside one fold); lower k"
        )
    rng = np.random.default_rng(seed)
    fold_of_group = _assign_folds(group_members, labels, k, rng)
    folds = []
    for f in range(k):
        test_groups = sorted(g for g, fg in fold_of_group.items() if fg == f)
        pool = sorted(g for g, fg in fold_of_group.items() if fg != f)
        val_groups = _carve_validation(pool, group_members, labels, val_fraction, np.random.default_rng([seed, f]))
        test = sorted(m for g in test_groups for m in group_members[g])
        val = sorted(m for g in val_groups for m in group_members[g])
        train = sorted(m for g in pool if g not in val_groups for m in group_members[g])
        folds.append(_fold_entry(f, train, val, test, labels))
    if dataset is None:
        dataset = ", ".join(sorted({r.source for r in records}))
    return {
        "format": SPLIT_FORMAT,
        "dataset": dataset,
        "k": k,
        "seed": seed,
        "grouping": grouping,
        "stratified_by": "label",
        "val_fraction": float(val_fraction),
        "created_by": f"busseg {_version()} busseg.data.splits ({'group-aware' if grouping != 'none' else 'image-level random'} stratified k-fold)",
        "n_samples": len(records),
        "n_groups": len(group_members),
        "ids_sha256": ids_sha256(labels),
        "groups": {r.id: group_of[r.id] for r in records} if grouping != "none" else {},
        "folds": folds,
    }



def _fold_entry(fold: int, train: list, val: list, test: list, labels) -> dict:
    """One fold of a split file, with its per-part class counts (for checking stratification)."""
    return {
        "fold": fold,
        "train": train,
        "val": val,
        "test": test,
        "counts": {
            part: dict(sorted(Counter(labels[i] for i in ids).items()))
            for part, ids in (("train", train), ("val", val), ("test", test))
        },
    }

def make_split(
    records: Sequence[SampleRecord],
    k: int = 5,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    groups: dict[str, str] | None = None,
    *,
    dataset: str | None = None,
) -> dict:
    """Stratified, group-aware k-fold split with a validation subset per fold.

    Args:
        records: the samples to split.
        k: number of folds (each sample is in exactly one test fold).
        seed: the split is a deterministic function of (ids, labels, groups, k, seed, fraction).
        val_fraction: share of each fold's training pool held out for validation/model
            selection (0 for none).
        groups: id -> group, typically ``audit_dataset(records).group_map()``; merged with the
            records' own ``group_id`` (patients).
    """
    records = _check_records(records, k, val_fraction)
    group_of = _merge_groups(records, groups)
    return _build_split(records, k, seed, val_fraction, group_of, "groups", dataset)


def random_split(
    records: Sequence[SampleRecord], k: int = 5, seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION, *, dataset: str | None = None
) -> dict:
    """Image-level stratified split that deliberately ignores groups (``"grouping": "none"``):
    the leaky baseline of a leakage study. Never use it to report results on BUSI."""
    records = _check_records(records, k, val_fraction)
    return _build_split(records, k, seed, val_fraction, {r.id: r.id for r in records}, "none", dataset)


def save_split(split: dict, path: str | Path) -> None:
    """Write ``split`` as indented JSON, atomically (temporary file + rename)."""
    atomic_write_json(path, split, indent=1)


def _validate(split: dict, where: str, *, groups_must_hold: bool = True) -> None:
    if not isinstance(split, dict) or split.get("format") != SPLIT_FORMAT:
        found = split.get("format") if isinstance(split, dict) else type(split).__name__
        raise ConfigError(f"{where}: not a busseg split file (format {found!r}, expected {SPLIT_FORMAT!r})")
    folds = split.get("folds")
    if not isinstance(folds, list) or not folds:
        raise ConfigError(f"{where}: no folds")
    test_fold: dict[str, int] = {}
    repeated: set[str] = set()
    for i, fold in enumerate(folds):
        parts = {}
        for part in ("train", "val", "test"):
            ids = fold.get(part) if isinstance(fold, dict) else None
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise ConfigError(f"{where}: fold {i} has no list of string ids under {part!r}")
            parts[part] = set(ids)
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = parts[a] & parts[b]
            if both:
                raise ConfigError(f"{where}: fold {i}: ids in both {a} and {b}: {sorted(both)[:10]}")
        for sample_id in parts["test"]:
            if sample_id in test_fold:
                repeated.add(sample_id)
            test_fold[sample_id] = i
    if repeated:
        raise ConfigError(f"{where}: ids in more than one test fold: {sorted(repeated)[:10]}")
    if split.get("grouping", "groups") != "none":
        folds_of_group: dict[str, set[int]] = defaultdict(set)
        for sample_id, group in (split.get("groups") or {}).items():
            if sample_id in test_fold:
                folds_of_group[group].add(test_fold[sample_id])
        broken = sorted(g for g, f in folds_of_group.items() if len(f) > 1)
        if broken:
            message = f"{where}: group(s) spread over several test folds: {broken[:10]}"
            if groups_must_hold:
                raise ConfigError(message)
            warnings.warn(message + " (patients leak between folds)", DataWarning, stacklevel=3)


def load_split(path: str | Path, records: Sequence[SampleRecord] | None = None) -> dict:
    """Read and check a split file.

    Always checked: format, disjoint train/val/test per fold, no id in two test folds, no
    group in two test folds. With ``records``: every id of the split must exist in the dataset
    (a split of another dataset, or of a dataset that lost files, is refused).
    """
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"split file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read split file {path} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"split file {path} is not valid JSON ({exc})") from None
    _validate(split, f"split file {path}")
    if records is not None:
        known = {r.id for r in records}
        used = {i for fold in split["folds"] for part in ("train", "val", "test") for i in fold[part]}
        unknown = sorted(used - known)
        if unknown:
            raise ConfigError(
                f"split file {path}: {len(unknown)} id(s) not in the dataset: {unknown[:10]}"
                f"{' ...' if len(unknown) > 10 else ''} (split of another dataset or missing files?)"
            )
    return split


def validation_fraction_mismatch(split: dict, recipe_fraction: float, where: str) -> str | None:
    """The message to give when ``split`` carved its validation sets with another fraction than
    a recipe's ``validation.fraction`` (``None`` when they agree or the split's validation sets
    were not carved by a fraction, e.g. BUS-BRA's official ones).

    One source of truth: a split file fixes WHICH images validate, so when a run is given one,
    the file decides and the recipe's ``validation.fraction`` (used only when the engine makes
    the split itself) does not apply; the mismatch is reported, never silently resolved."""
    carved = split.get("val_fraction")
    if carved is None or abs(float(carved) - float(recipe_fraction)) < 1e-9:
        return None
    return (f"{where} carved its validation sets with val_fraction {float(carved):g}, the recipe's "
            f"validation.fraction is {float(recipe_fraction):g}: the split file decides (its validation ids are "
            f"used); write the split with `busseg data split --val-fraction {float(recipe_fraction):g}` "
            f"(or --recipe) to follow the recipe")


def fold_ids(split: dict, fold: int) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) ids of ``fold``."""
    folds = split.get("folds") or []
    for entry in folds:
        if entry.get("fold") == fold:
            return list(entry["train"]), list(entry["val"]), list(entry["test"])
    raise ConfigError(f"fold {fold!r} not in split (folds: {[f.get('fold') for f in folds]})")


def import_busbra_folds(root: str | Path, k: int = 5, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> dict:
    """The official BUS-BRA partition ``<root>/<k>-fold-cv.csv`` as a split dict.

    The CSV has columns ``ID, Pathology, kFold`` (the test fold of the image, 1..k) and,
    when present, ``valid_1 ... valid_k`` (1 when the image is in the validation set of fold
    ``j``; read as "train/validation partition of the training folds"). Without ``valid_j``
    columns, validation is carved from each fold's training pool as in :func:`make_split`
    (patients kept together). Fold numbers become 0-based. Raises DataError on a missing or
    inconsistent file, or ids absent from ``bus_data.csv``/``Images``.
    """
    from busseg.data.adapters import busbra
    from busseg.data.adapters._common import read_csv_rows

    root = Path(root)
    table = root / f"{k}-fold-cv.csv"
    if not table.is_file():
        raise DataError(f"BUS-BRA official folds: {table} not found (official files: 5-fold-cv.csv, 10-fold-cv.csv)")
    rows = read_csv_rows(table, ("ID", "kFold"), "BUS-BRA")
    records = {r.id: r for r in busbra.load(root)}
    problems = []
    fold_of: dict[str, int] = {}
    valid: dict[str, set[int]] = defaultdict(set)
    has_valid = all(f"valid_{j}" in rows[0] for j in range(1, k + 1)) if rows else False
    for line, row in enumerate(rows, start=2):
        sample_id = row["ID"]
        if sample_id not in records:
            problems.append(f"line {line}: ID {sample_id!r} not in the dataset")
            continue
        try:
            fold = int(float(row["kFold"]))
        except ValueError:
            problems.append(f"line {line}: kFold {row['kFold']!r} is not a number")
            continue
        if not 1 <= fold <= k:
            problems.append(f"line {line}: kFold {fold} outside 1..{k}")
            continue
        if sample_id in fold_of:
            problems.append(f"line {line}: ID {sample_id!r} listed twice")
            continue
        fold_of[sample_id] = fold - 1
        if has_valid:
            for j in range(1, k + 1):
                value = row[f"valid_{j}"].strip().lower()
                if value in ("1", "1.0", "true", "yes"):
                    if j == fold:
                        problems.append(f"line {line}: ID {sample_id!r} is in the validation set of its own test fold {j}")
                    valid[sample_id].add(j - 1)
    missing = sorted(set(records) - set(fold_of))
    if missing:
        problems.append(f"{len(missing)} dataset image(s) not assigned to a fold, e.g. {missing[:5]}")
    if problems:
        raise DataError(f"BUS-BRA official folds {table}:\n" + "\n".join(f"  {p}" for p in problems[:25]))

    group_members: dict[str, list[str]] = defaultdict(list)
    for sample_id in fold_of:
        group_members[records[sample_id].group].append(sample_id)
    labels = {i: records[i].label for i in fold_of}
    folds = []
    for f in range(k):
        test = sorted(i for i, fi in fold_of.items() if fi == f)
        pool_ids = [i for i, fi in fold_of.items() if fi != f]
        if has_valid:
            val = sorted(i for i in pool_ids if f in valid[i])
        else:
            pool_groups = sorted({records[i].group for i in pool_ids})
            chosen = _carve_validation(pool_groups, group_members, labels, val_fraction, np.random.default_rng([seed, f]))
            val = sorted(i for i in pool_ids if records[i].group in chosen)
        val_set = set(val)
        train = sorted(i for i in pool_ids if i not in val_set)
        folds.append(_fold_entry(f, train, val, test, labels))
    split = {
        "format": SPLIT_FORMAT,
        "dataset": "busbra",
        "k": k,
        "seed": seed,
        "grouping": "official",
        "stratified_by": "official BUS-BRA partition",
        "val_fraction": None if has_valid else float(val_fraction),
        "created_by": f"busseg {_version()} import_busbra_folds({table.name})",
        "n_samples": len(fold_of),
        "n_groups": len(group_members),
        "ids_sha256": ids_sha256(fold_of),
        "groups": {i: records[i].group for i in sorted(fold_of)},
        "folds": folds,
    }
    # The official partition is expected to keep patients together; say so loudly otherwise.
    _validate(split, f"BUS-BRA official folds {table}", groups_must_hold=False)
    return split
