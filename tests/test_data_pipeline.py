"""prepare() and its cache, normalize, the audit, splits (group-aware, stratified, validated),
BUS-BRA official folds and the ``busseg data`` CLI, on tiny generated datasets."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from busseg.data import (
    audit_dataset,
    fold_ids,
    import_busbra_folds,
    load_records,
    load_split,
    make_phantoms,
    make_split,
    normalize,
    prepare,
    random_split,
    save_split,
    write_phantom_dataset,
)
from busseg.data.records import SampleRecord
from busseg.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "ph", n=30, image_size=48, seed=0)


@pytest.fixture(scope="module")
def phantom_records(phantom_root):
    return load_records("phantom", phantom_root)


# -------------------------------------------------------------------------------- prepare


def test_prepare_resizes_and_caches(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ps = make_phantoms(4, 40, seed=5)
    for i in range(4):  # non-square originals of different sizes
        h, w = 40 + 4 * i, 60
        Image.fromarray(ps.images[i]).resize((w, h)).save(root / "images" / f"s{i}.png")
        Image.fromarray(ps.masks[i] * 255).resize((w, h), Image.NEAREST).save(root / "masks" / f"s{i}.png")
    (root / "labels.csv").write_text("id,label\ns0,benign\ns1,malignant\ns2,normal\ns3,unknown\n")
    records = load_records("folder", root, include_normal=True)
    cache = tmp_path / "cache"
    first = prepare(records, image_size=32, cache_dir=cache, progress=False)
    assert first.images.shape == first.masks.shape == (4, 32, 32)
    assert first.images.dtype == first.masks.dtype == np.uint8 and set(np.unique(first.masks)) <= {0, 1}
    assert first.labels.tolist() == [0, 1, -1, -1] and first.labels.dtype == np.int64
    assert first.original_sizes == [(40, 60), (44, 60), (48, 60), (52, 60)]
    for i in range(4):  # resized masks still cover the lesion area (relative to the image)
        assert abs(first.masks[i].mean() - ps.masks[i].mean()) < 0.03

    start = time.perf_counter()
    second = prepare(records, image_size=32, cache_dir=cache, progress=False)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.masks, first.masks)
    assert second.original_sizes == first.original_sizes and second.ids == first.ids

    # touched files: the stat key misses, the content hash hits (no decoding: files unchanged)
    for p in (root / "images").iterdir():
        p.touch()
    third = prepare(records, image_size=32, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(third.images, first.images)
    assert len([p for p in (cache / "prepared").iterdir() if p.is_dir()]) == 1

    # a changed image is decoded again
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(root / "images" / "s0.png")
    changed = prepare(records, image_size=32, cache_dir=cache, progress=False)
    assert changed.images[0].max() == 0 and (changed.images[1:] == first.images[1:]).all()

    sub = first.subset(["s3", "s1"])
    assert sub.ids == ["s3", "s1"] and sub.labels.tolist() == [-1, 1]
    np.testing.assert_array_equal(sub.images[1], first.images[1])
    with pytest.raises(ConfigError, match="'zz'"):
        first.subset(["s1", "zz"])


def test_prepare_lists_every_unreadable_sample(tmp_path):
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((20, 20), 100, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / f"{name}.png")
    (root / "images" / "a.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "c.png")
    with pytest.raises(DataError) as err:
        prepare(load_records("folder", root), 16, cache_dir=tmp_path / "cache", progress=False)
    assert "2 of 3 samples" in str(err.value)
    assert "a.png" in str(err.value) and "c.png: mask size 10x10" in str(err.value)


def test_normalize_modes():
    x = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4) * 10, np.full((4, 4), 7, np.uint8)])
    mm = normalize(x, "minmax")
    assert mm.dtype == np.float32 and mm[0].min() == 0 and mm[0].max() == 1 and not mm[1].any()
    z = normalize(x, "zscore")
    assert abs(z[0].mean()) < 1e-6 and abs(z[0].std() - 1) < 1e-5 and not z[1].any()
    im = normalize(x, "imagenet")
    np.testing.assert_allclose(im[0], (mm[0] - 0.449) / 0.226, rtol=1e-6)
    t = normalize(torch.from_numpy(x).unsqueeze(1), "zscore")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t[:, 0].numpy(), z, atol=1e-5)
    np.testing.assert_allclose(normalize(torch.from_numpy(x), "minmax").numpy(), mm)
    with pytest.raises(ConfigError, match="unknown normalization"):
        normalize(x, "bogus")


# ---------------------------------------------------------------------------------- audit


@pytest.fixture(scope="module")
def duplicate_dataset(tmp_path_factory):
    """Ten phantom images plus: an exact copy under another label, a near-duplicate with a
    caliper mark and noise, and an unreadable image."""
    root = tmp_path_factory.mktemp("dups")
    ps = make_phantoms(10, 64, seed=7)
    rows = []
    for i in range(10):
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(ps.images[i]).save(root / "images" / f"img{i}.png")
        Image.fromarray(ps.masks[i] * 255).save(root / "masks" / f"img{i}.png")
        rows.append((f"img{i}", ps.labels[i]))
    other = "malignant" if ps.labels[0] == "benign" else "benign"
    Image.fromarray(ps.images[0]).save(root / "images" / "copy0.png")  # exact copy, other label
    shifted = np.roll(ps.masks[0], 6, axis=1)
    Image.fromarray(shifted * 255).save(root / "masks" / "copy0.png")  # and another mask
    rows.append(("copy0", other))
    marked = ps.images[3].astype(int) + np.random.default_rng(0).integers(-4, 5, (64, 64))
    marked[10, 10:15] = 255  # small caliper cross
    marked[8:13, 12] = 255
    Image.fromarray(np.clip(marked, 0, 255).astype(np.uint8)).save(root / "images" / "near3.png")
    Image.fromarray(ps.masks[3] * 255).save(root / "masks" / "near3.png")
    rows.append(("near3", ps.labels[3]))
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(ps.masks[1] * 255).save(root / "masks" / "broken.png")
    rows.append(("broken", "benign"))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "label"), *rows])
    return root


def test_audit_finds_duplicates_conflicts_and_problems(duplicate_dataset):
    records = load_records("folder", duplicate_dataset)
    report = audit_dataset(records, near_duplicate_threshold=6)
    assert report.exact_duplicates == [["copy0", "img0"]]
    assert ["copy0", "img0"] in report.clusters and ["img3", "near3"] in report.clusters
    assert report.label_conflicts == [["copy0", "img0"]]
    assert ["copy0", "img0"] in report.mask_conflicts and ["img3", "near3"] not in report.mask_conflicts
    assert any(path.endswith("broken.png") for path, _ in report.problems)
    assert report.n_records == 13 and sum(report.class_counts.values()) == 13
    groups = report.group_map()
    assert groups["img0"] == groups["copy0"] and groups["img3"] == groups["near3"] != groups["img0"]
    assert groups["img5"] == "img5"
    text = report.to_text()
    assert "conflicting labels: 1" in text and "broken.png" in text
    json.loads(report.to_json())


def test_audit_flags_the_images_behind_each_problem(duplicate_dataset):
    report = audit_dataset(load_records("folder", duplicate_dataset))
    assert list(report.flagged) == ["broken"]
    assert report.flagged["broken"][0].startswith(str(duplicate_dataset / "images" / "broken.png"))
    assert json.loads(report.to_json())["flagged_ids"] == ["broken"]


def test_cli_audit_exit_status_and_split_refuses_flagged_images(duplicate_dataset, tmp_path, capsys):
    from busseg.cli.main import main

    root = str(duplicate_dataset)
    assert main(["data", "audit", "folder", "--root", root]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s) in 1 image(s): exit status 1" in out
    for extra in ([], ["--random"]):
        split_file = tmp_path / f"split{len(extra)}.json"
        assert main(["data", "split", "folder", "--root", root, "--k", "2", *extra, "--out", str(split_file)]) == 2
        err = capsys.readouterr().err
        assert "broken.png" in err and "--lenient" in err and "Traceback" not in err
        assert not split_file.exists()
    # a mask that is not binary is flagged too (it would be thresholded silently in training)
    soft = np.array(Image.open(duplicate_dataset / "masks" / "img2.png"))
    soft[0, 0] = 100
    Image.fromarray(soft).save(duplicate_dataset / "masks" / "img2.png")
    lenient = tmp_path / "lenient.json"
    assert main(["data", "split", "folder", "--root", root, "--k", "2", "--lenient", "--out", str(lenient)]) == 0
    assert "leaving 2 flagged image(s) out of the split" in capsys.readouterr().out
    split = load_split(lenient)
    used = {i for fold in split["folds"] for part in ("train", "val", "test") for i in fold[part]}
    assert sorted(split["excluded"]) == ["broken", "img2"] and not used & {"broken", "img2"}
    assert len(used) == 11


def test_group_map_merges_patients_and_clusters():
    # a duplicate cluster joining two patients makes one group of all their images
    records = [SampleRecord(f"i{k}", Path(f"i{k}.png"), (), "benign", group_id=f"p{k // 2}") for k in range(6)]
    from busseg.data.audit import AuditReport

    report = AuditReport(
        dataset="x", n_records=6, class_counts={}, image_sizes={}, empty_masks=[], multiple_masks=[],
        problems=[], exact_duplicates=[], clusters=[["i1", "i2"]], label_conflicts=[], mask_conflicts=[],
        near_duplicate_threshold=6, hash_size=8, labels={r.id: r.label for r in records},
        patient_groups={r.id: r.group_id for r in records},
    )
    g = report.group_map()
    assert g["i0"] == g["i1"] == g["i2"] == g["i3"] != g["i4"] and g["i4"] == g["i5"] == "p2"


# --------------------------------------------------------------------------------- splits


def records_with_groups(n=60, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = "malignant" if i % 3 == 0 else "benign"
        group = f"pat{rng.integers(0, n // 3)}" if i % 4 else None
        records.append(SampleRecord(f"s{i:03d}", Path(f"s{i}.png"), (), label, group_id=group))
    return records


def check_split(split, records, groups):
    test_fold = {}
    for fold in split["folds"]:
        train, val, test = map(set, fold_ids(split, fold["fold"]))
        assert not (train & val or train & test or val & test)
        assert train | val | test == {r.id for r in records}
        for i in test:
            assert i not in test_fold
            test_fold[i] = fold["fold"]
    assert len(test_fold) == len(records)
    by_group = {}
    for r in records:
        key = groups.get(r.id, r.group)
        by_group.setdefault(key, set()).add(test_fold[r.id])
    return test_fold, by_group


def test_make_split_keeps_groups_and_stratifies():
    records = records_with_groups()
    clusters = {"s001": "dupA", "s050": "dupA", "s007": "dupB", "s008": "dupB", "s033": "dupB"}
    split = make_split(records, k=5, seed=1, val_fraction=0.2, groups=clusters)
    test_fold, by_group = check_split(split, records, clusters)
    assert all(len(folds) == 1 for folds in by_group.values())  # patients never split
    assert len({test_fold[i] for i in clusters if clusters[i] == "dupA"}) == 1
    assert len({test_fold[i] for i in clusters if clusters[i] == "dupB"}) == 1
    # a cluster member's patient comes along: s001's patient is with s050's fold
    pat = records[1].group_id
    assert {test_fold[r.id] for r in records if r.group_id == pat} == {test_fold["s050"]}
    labels = {r.id: r.label for r in records}
    share = Counter(r.label for r in records)["malignant"] / len(records)
    for fold in split["folds"]:
        test = fold["test"]
        assert abs(sum(labels[i] == "malignant" for i in test) / len(test) - share) < 0.2
        assert 0 < len(fold["val"]) < len(fold["train"])
        # val comes from the training folds only, and keeps groups together with train
        assert not set(fold["val"]) & set(test)
        merged = split["groups"]
        assert not {merged[i] for i in fold["val"]} & {merged[i] for i in fold["train"]}
    assert split["format"] == "busseg-split/1" and split["grouping"] == "groups"
    assert make_split(records, k=5, seed=1, val_fraction=0.2, groups=clusters) == split  # deterministic
    assert make_split(records, k=5, seed=2, val_fraction=0.2, groups=clusters)["folds"] != split["folds"]


def test_random_split_ignores_groups():
    records = records_with_groups()
    split = random_split(records, k=5, seed=0, val_fraction=0.1)
    assert split["grouping"] == "none" and split["groups"] == {}
    _, by_group = check_split(split, records, {})
    assert any(len(folds) > 1 for folds in by_group.values())  # patients leak: that's the point


def test_split_errors():
    records = records_with_groups(6)
    with pytest.raises(ConfigError, match="k >= 2"):
        make_split(records, k=1)
    with pytest.raises(ConfigError, match="lower k"):
        make_split(records, k=5, groups={r.id: "one" for r in records})
    with pytest.raises(ConfigError, match="val_fraction"):
        make_split(records, k=2, val_fraction=1.0)


def test_save_and_load_split_validates(tmp_path):
    records = records_with_groups(30)
    split = make_split(records, k=3, seed=0)
    path = tmp_path / "split.json"
    save_split(split, path)
    assert load_split(path, records) == split
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ConfigError, match=r"split\.json: 10 id\(s\) not in the dataset"):
        load_split(path, records[10:])
    bad = json.loads(path.read_text())
    moved = bad["folds"][0]["test"][0]
    bad["folds"][1]["test"].append(moved)
    for part in ("train", "val"):
        bad["folds"][1][part] = [i for i in bad["folds"][1][part] if i != moved]
    save_split(bad, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="bad.json.*more than one test fold"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="junk.json is not valid JSON"):
        load_split(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match="fold 7"):
        fold_ids(split, 7)


def test_import_busbra_official_folds(tmp_path):
    root = tmp_path / "BUS-BRA"
    rows, folds = [], []
    for n in range(1, 11):
        image_id = f"bus_{n:04d}-l"
        Image.fromarray(np.full((8, 8), n, np.uint8)).save((root / "Images").mkdir(parents=True, exist_ok=True) or root / "Images" / f"{image_id}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save((root / "Masks").mkdir(exist_ok=True) or root / "Masks" / f"mask_{n:04d}-l.png")
        case = (n + 1) // 2  # two images per patient
        fold = (case - 1) % 5 + 1
        rows.append([image_id, case, "-", "malignant" if n % 3 == 0 else "benign", 3, "d", 8, 8, "l", "-"])
        valid = [int(j != fold and (case % 5) + 1 == j) for j in range(1, 6)]
        folds.append([image_id, rows[-1][3], fold, *valid])
    with open(root / "bus_data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"], *rows])
    with open(root / "5-fold-cv.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["ID", "Pathology", "kFold", *(f"valid_{j}" for j in range(1, 6))], *folds])
    split = import_busbra_folds(root, k=5)
    assert split["k"] == 5 and len(split["folds"]) == 5
    assert split["folds"][0]["test"] == ["bus_0001-l", "bus_0002-l"]
    assert split["folds"][1]["val"] == ["bus_0001-l", "bus_0002-l"]  # case 1 -> valid_2
    records = load_records("busbra", root)
    save_split(split, tmp_path / "official.json")
    load_split(tmp_path / "official.json", records)
    with pytest.raises(DataError, match="10-fold-cv.csv not found"):
        import_busbra_folds(root, k=10)


# ------------------------------------------------------------------------------------ CLI


def test_cli_phantom_audit_split(tmp_path, capsys, monkeypatch):
    from busseg.cli.main import main

    monkeypatch.setenv("BUSSEG_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "ph"
    assert main(["data", "phantom", "--out", str(out), "--n", "10", "--size", "32"]) == 0
    assert main(["data", "audit", "phantom", "--root", str(out), "--out", str(tmp_path / "a.json")]) == 0
    assert "Audit of phantom: 10 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["n_records"] == 10
    assert main(["data", "split", "phantom", "--root", str(out), "--k", "2", "--out", str(tmp_path / "s.json")]) == 0
    split = load_split(tmp_path / "s.json", load_records("phantom", out))
    assert split["grouping"] == "groups" and split["k"] == 2
    assert main(["data", "split", "phantom", "--root", str(out), "--k", "2", "--random", "--out", str(tmp_path / "r.json")]) == 0
    assert load_split(tmp_path / "r.json")["grouping"] == "none"
    assert main(["data", "audit", "busi", "--root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "split", "--help"])
    assert "--busbra-official" in capsys.readouterr().out
