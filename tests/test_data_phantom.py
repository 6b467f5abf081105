"""Phantom generator: determinism, B-mode-like structure, and that a threshold cannot solve it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from busseg.data import load_records, make_phantoms, read_sample, write_phantom_dataset
from busseg.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def phantoms():
    return make_phantoms(40, image_size=96, seed=3)


def test_deterministic_and_prefix_stable():
    a = make_phantoms(6, 48, seed=1)
    b = make_phantoms(6, 48, seed=1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.labels == b.labels
    c = make_phantoms(3, 48, seed=1)  # image i does not depend on n
    np.testing.assert_array_equal(c.images, a.images[:3])
    assert not np.array_equal(make_phantoms(3, 48, seed=2).images, c.images)


def test_shapes_labels_and_speed():
    start = time.perf_counter()
    ps = make_phantoms(20, 128, seed=0)
    assert time.perf_counter() - start < 10  # ~0.1 s on an idle core
    assert ps.images.dtype == np.uint8 and ps.images.shape == (20, 128, 128)
    assert ps.masks.dtype == np.uint8 and set(np.unique(ps.masks)) == {0, 1}
    assert ps.labels.count("malignant") == 8  # 2 in every block of 5
    assert all(m.any() for m in ps.masks)
    with pytest.raises(ConfigError):
        make_phantoms(0)


def test_lesions_are_hypoechoic_and_shaped_by_class(phantoms):
    ratios, inside_darker = [], 0
    for image, mask, label in zip(phantoms.images, phantoms.masks.astype(bool), phantoms.labels):
        rows, cols = np.nonzero(mask)
        ratios.append(((np.ptp(rows) + 1) / (np.ptp(cols) + 1), label))
        ring = np.zeros_like(mask)
        ring[max(rows.min() - 6, 0) : rows.max() + 7, max(cols.min() - 6, 0) : cols.max() + 7] = True
        ring &= ~mask
        inside_darker += image[mask].mean() < 0.7 * image[ring].mean()
    assert inside_darker >= 0.9 * len(phantoms)
    benign = [r for r, label in ratios if label == "benign"]
    malignant = [r for r, label in ratios if label == "malignant"]
    assert np.median(benign) < 1.0 < np.median(malignant)  # wider-than-tall vs taller-than-wide


def test_malignant_lesions_cast_shadows(phantoms):
    def below_ratio(image, mask):
        rows, cols = np.nonzero(mask)
        bottom, lo, hi = rows.max(), cols.min(), cols.max() + 1
        band = image[bottom + 3 : bottom + 20, lo:hi].astype(float)
        side = np.concatenate([image[bottom + 3 : bottom + 20, max(lo - 12, 0) : lo], image[bottom + 3 : bottom + 20, hi : hi + 12]], axis=1)
        return band.mean() / max(side.mean(), 1.0)

    values = {"benign": [], "malignant": []}
    for image, mask, label in zip(phantoms.images, phantoms.masks.astype(bool), phantoms.labels):
        values[label].append(below_ratio(image, mask))
    assert np.mean(values["malignant"]) < 0.8 < np.mean(values["benign"])


def test_best_global_threshold_is_far_from_solving_it(phantoms):
    """A model must beat this: the best single global threshold after smoothing."""
    smoothed = np.stack([gaussian_filter(im.astype(np.float32), 1.5) for im in phantoms.images])
    truth = phantoms.masks.astype(bool)
    best = 0.0
    for threshold in range(0, 256, 4):
        pred = smoothed < threshold
        inter = (pred & truth).sum(axis=(1, 2))
        dice = 2 * inter / (pred.sum(axis=(1, 2)) + truth.sum(axis=(1, 2)) + 1e-9)
        best = max(best, float(dice.mean()))
    assert 0.1 < best < 0.6


def test_written_dataset_loads_as_phantom_records(tmp_path, monkeypatch):
    root = write_phantom_dataset(tmp_path / "ph", n=5, image_size=32, seed=0)
    records = load_records("phantom", root)
    assert [r.id for r in records] == [f"phantom_{i:04d}" for i in range(5)]
    assert all(r.source == "phantom" for r in records)
    ps = make_phantoms(5, 32, seed=0)
    image, mask = read_sample(records[2])
    np.testing.assert_array_equal(image, ps.images[2])
    np.testing.assert_array_equal(mask, ps.masks[2].astype(bool))
    assert [r.label for r in records] == ps.labels
    write_phantom_dataset(root, n=4, image_size=32)  # rewriting a phantom folder is allowed
    assert len(load_records("phantom", root)) == 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not a phantom dataset"):
        write_phantom_dataset(tmp_path / "other", n=2, image_size=32)

    monkeypatch.setenv("BUSSEG_CACHE_DIR", str(tmp_path / "cache"))
    cached = load_records("phantom", n=3, image_size=32, seed=1)  # generated into the cache
    assert len(cached) == 3 and "cache" in str(cached[0].image_path)
    again = load_records("phantom", n=3, image_size=32, seed=1)  # reused, same files
    assert [r.image_path for r in again] == [r.image_path for r in cached]
    with pytest.raises(ConfigError, match="unknown phantom option"):
        load_records("phantom", size=3)
