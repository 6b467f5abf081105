"""The audit and a group-aware split on the real BUSI data (skipped when it is absent).

Known facts (``shared/data/BUSI/README.md``): ``benign (433)``/``malignant (145)`` are
byte-identical and ``benign (42)``/``malignant (51)`` are the same scan under both labels;
``benign (62)`` is ``benign (140)`` with a narrower field of view (389x594 vs 452x591 pixels),
which only the crop/zoom search finds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from busseg.data import audit_dataset, fold_ids, load_records, make_split

SUBDIR = Path("BUSI") / "Dataset_BUSI_with_GT"


def _busi_root() -> Path | None:
    candidates = []
    if os.environ.get("BUSSEG_DATA_DIR"):
        candidates.append(Path(os.environ["BUSSEG_DATA_DIR"]) / SUBDIR)
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / SUBDIR)
    return next((c for c in candidates if (c / "benign").is_dir()), None)


ROOT = _busi_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="real BUSI data not available")


@pytest.fixture(scope="module")
def busi():
    records = load_records("busi", ROOT)  # benign + malignant (normal excluded)
    report = audit_dataset(records, read_masks=False)  # hashes and crop search, no masks
    return records, report


def test_busi_counts(busi):
    records, report = busi
    assert report.class_counts == {"benign": 437, "malignant": 210}
    assert not report.problems


def test_known_cross_class_duplicates_share_a_cluster(busi):
    _, report = busi
    assert ["benign (433)", "malignant (145)"] in report.exact_duplicates
    for a, b in (("benign (433)", "malignant (145)"), ("benign (42)", "malignant (51)")):
        holding = [c for c in report.clusters if a in c or b in c]
        assert len(holding) == 1 and a in holding[0] and b in holding[0]
        assert holding[0] in report.label_conflicts
    # the README's order of magnitude: ~100-145 clusters holding ~220-320 images
    assert 80 <= len(report.clusters) <= 170 and 180 <= report.n_clustered_images <= 360


def test_crop_of_the_same_scan_is_found(busi):
    _, report = busi
    assert not any("benign (62)" in c and "benign (140)" in c for c in report.hash_clusters)
    match = next(m for m in report.crop_pairs if {m.a, m.b} == {"benign (62)", "benign (140)"})
    assert match.scale == pytest.approx(1.0, abs=0.02) and match.inliers >= 100
    assert report.group_map()["benign (62)"] == report.group_map()["benign (140)"]
    # measured: 29 pairs outside the hash clusters among the 647 benign/malignant images
    assert 15 <= len(report.crop_pairs) <= 60


def test_group_aware_split_keeps_every_cluster_in_one_fold(busi):
    records, report = busi
    split = make_split(records, k=5, seed=0, val_fraction=0.1, groups=report.group_map())
    test_fold = {i: f for f in range(5) for i in fold_ids(split, f)[2]}
    assert len(test_fold) == len(records)
    for cluster in report.clusters:
        assert len({test_fold[i] for i in cluster}) == 1, cluster
    for f in range(5):
        train, val, _ = fold_ids(split, f)
        cluster_of = {i: k for k, c in enumerate(report.clusters) for i in c}
        assert not {cluster_of[i] for i in val if i in cluster_of} & {cluster_of[i] for i in train if i in cluster_of}
    sizes = [len(fold_ids(split, f)[2]) for f in range(5)]
    assert max(sizes) - min(sizes) <= 10
