"""Image/mask readers, dataset adapters (every layout) and load_records, on tiny generated files."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
from PIL import Image

from busseg.data import load_records, read_image, read_mask, read_pixel_spacing
from busseg.data.adapters import busbra, folder, stu, udiat
from busseg.data.imageio import DataWarning
from busseg.errors import ConfigError, DataError


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)
    return path


def gray(h=20, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def square_mask(h=20, w=24, top=5, left=6, size=8):
    m = np.zeros((h, w), np.uint8)
    m[top : top + size, left : left + size] = 255
    return m


# ----------------------------------------------------------------------------- read_image


def test_read_image_modes_agree(tmp_path):
    g = gray()
    rgb = np.repeat(g[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full(g.shape + (1,), 255, np.uint8)], axis=2)
    for name, arr, mode in (("l.png", g, None), ("rgb.png", rgb, None), ("rgba.png", rgba, None), ("p.png", rgb, "P"), ("b.bmp", g, None), ("t.tif", g, None)):
        out = read_image(save(tmp_path / name, arr, mode))
        assert out.dtype == np.uint8 and out.shape == g.shape, name
        if mode != "P":
            np.testing.assert_array_equal(out, g, err_msg=name)
    jpg = read_image(save(tmp_path / "j.jpg", g))
    assert jpg.shape == g.shape and np.abs(jpg.astype(int) - g).mean() < 40


def test_read_image_one_bit_and_colour(tmp_path):
    bits = read_image(save(tmp_path / "one.png", square_mask(), "1"))
    assert set(np.unique(bits)) == {0, 255}
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 255  # pure red -> BT.601 luminance 76
    assert read_image(save(tmp_path / "red.png", colour))[0, 0] == 76


def test_read_image_16bit_is_rescaled_with_warning(tmp_path):
    arr = np.linspace(1000, 4000, 20 * 24).reshape(20, 24).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    with pytest.warns(DataWarning, match="more than 8 bits"):
        out = read_image(path)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty file"), (b"this is not an image at all", "not a readable image")],
)
def test_read_image_garbage_names_file(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_read_image_truncated_and_missing(tmp_path):
    good = save(tmp_path / "good.png", gray(64, 64))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.png: truncated or corrupt"):
        read_image(cut)
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_read_image_dicom_and_spacing(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "scan.dcm"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    g = gray()
    ds.Rows, ds.Columns = g.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = g.tobytes()
    region = pydicom.Dataset()
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02  # cm
    ds.SequenceOfUltrasoundRegions = [region]
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_image(path), g)
    assert read_pixel_spacing(path) == pytest.approx((0.2, 0.1))
    assert read_pixel_spacing(save(tmp_path / "x.png", g)) is None


def save_with_orientation(path, array, orientation: int):
    """Store ``array`` as it is, tagged with an EXIF orientation (how viewers must turn it)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif)
    return path


# EXIF orientation -> how the stored pixels look once turned as viewers show them
ORIENTED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # "rotate 90 degrees clockwise to display"
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_honoured_for_images_and_masks_alike(tmp_path, orientation, suffix):
    stored = gray(20, 24)
    shown = ORIENTED[orientation](stored)
    image = read_image(save_with_orientation(tmp_path / f"scan{suffix}", stored, orientation))
    assert image.shape == shown.shape
    if suffix == ".png":
        np.testing.assert_array_equal(image, shown)
    else:
        assert np.abs(image.astype(int) - shown).mean() < np.abs(image.astype(int) - np.rot90(shown, 2)).mean()
    # a mask tagged like its image lands on the same pixels; so does a mask drawn on the image
    # as it is shown (no tag): both are read the way a viewer shows them
    lesion = square_mask(20, 24, top=2, left=3, size=6)
    tagged = save_with_orientation(tmp_path / "mask_tagged.png", lesion, orientation)
    drawn = save(tmp_path / "mask_drawn.png", ORIENTED[orientation](lesion))
    for path in (tagged, drawn):
        mask = read_mask([path], shape=image.shape)
        np.testing.assert_array_equal(mask, ORIENTED[orientation](lesion) > 0)


def test_prepared_data_follows_exif_orientation(tmp_path):
    """The dataset path (folder layout -> prepare) sees the image as shown, with its mask on it."""
    from busseg.data.preprocess import prepare

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = np.zeros((16, 32), np.uint8)
    stored[:, :8] = 200  # bright band on the left of the stored grid
    save_with_orientation(root / "images" / "a.png", stored, 6)  # shown: the band on top
    save(root / "masks" / "a.png", np.rot90(stored, -1))
    prepared = prepare(load_records("folder", root, require_masks=True), image_size=16,
                       cache_dir=tmp_path / "cache", progress=False)
    image, mask = prepared.images[0], prepared.masks[0]
    assert image[:4].mean() > 150 and image[-4:].mean() < 50, "the image was not turned as viewers show it"
    np.testing.assert_array_equal(mask, (image > 100).astype(mask.dtype))


# ------------------------------------------------------------------------------ read_mask


def test_read_mask_union_and_encodings(tmp_path):
    a = save(tmp_path / "a.png", square_mask(top=0, left=0, size=4), "1")
    b_rgb = np.repeat(square_mask(top=10, left=10, size=5)[..., None], 3, axis=2)
    b = save(tmp_path / "b.png", b_rgb)
    c = np.zeros((20, 24, 4), np.uint8)
    c[0, 20, 3] = 255  # alpha-only mask: colour channels all zero
    c[..., 3][0, 21] = 255
    c_path = save(tmp_path / "c.png", c)
    union = read_mask([a, b, c_path], shape=(20, 24))
    assert union.dtype == bool
    assert union.sum() == 16 + 25 + 2
    assert read_mask([], shape=(3, 5)).shape == (3, 5) and not read_mask([], shape=(3, 5)).any()


def test_read_mask_size_mismatch_and_nonbinary(tmp_path):
    small = save(tmp_path / "small_mask.png", square_mask(10, 10, 0, 0, 4))
    with pytest.raises(DataError, match="small_mask.png: mask size 10x10 .* differs from the image size 24x20"):
        read_mask([small], shape=(20, 24))
    soft = square_mask().copy()
    soft[0, 0] = 100
    path = save(tmp_path / "soft.png", soft)
    with pytest.warns(DataWarning, match="soft.png: mask is not binary"):
        m = read_mask([path], shape=(20, 24))
    assert m[0, 0] and m.sum() == 65


def test_read_mask_resize_thresholds_at_half_range(tmp_path):
    m = np.zeros((40, 48), np.uint8)
    m[10:30, 12:36] = 255
    m[0, :] = 60  # faint anti-aliasing far from the lesion: below half range
    path = save(tmp_path / "aa.png", m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_mask([path], shape=(20, 24), allow_resize=True)
    assert out.shape == (20, 24)
    assert not out[0].any()
    assert out[5:15, 6:18].all() and out.sum() == pytest.approx(10 * 12, abs=12)


# ------------------------------------------------------------------------------- adapters


def make_busi(root, with_normal=True):
    for label, n in (("benign", 3), ("malignant", 2)):
        for i in range(1, n + 1):
            save(root / label / f"{label} ({i}).png", gray(seed=i))
            save(root / label / f"{label} ({i})_mask.png", square_mask(top=2, left=2, size=4))
    save(root / "benign" / "benign (2)_mask_1.png", square_mask(top=12, left=12, size=5))
    if with_normal:
        save(root / "normal" / "normal (1).png", gray(seed=9))
        save(root / "normal" / "normal (1)_mask.png", np.zeros((20, 24), np.uint8))
    (root / "benign" / ".DS_Store").write_bytes(b"junk")
    return root


def test_busi_adapter_and_normal_exclusion(tmp_path):
    root = make_busi(tmp_path / "BUSI")
    records = load_records("busi", root)
    assert {r.label for r in records} == {"benign", "malignant"} and len(records) == 5
    with_normal = load_records("busi", root, include_normal=True)
    assert len(with_normal) == 6 and with_normal[-1].label == "normal"
    two = next(r for r in records if r.id == "benign (2)")
    assert [p.name for p in two.mask_paths] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    assert read_mask(two.mask_paths, shape=(20, 24)).sum() == 16 + 25  # union of both masks
    assert all(r.source == "busi" and r.group_id is None for r in records)


def test_busi_layout_problems_are_collected(tmp_path):
    root = make_busi(tmp_path / "BUSI")
    (root / "malignant" / "malignant (1)_mask.png").unlink()
    save(root / "benign" / "benign (7)_mask.png", square_mask())
    with pytest.raises(DataError) as err:
        load_records("busi", root)
    text = str(err.value)
    assert "2 layout problem(s)" in text
    assert "malignant (1).png: image without mask" in text
    assert "benign (7)_mask.png: mask without image" in text
    with pytest.warns(DataWarning, match="sample skipped"):
        lenient = load_records("busi", root, strict=False)
    assert "malignant (1)" not in {r.id for r in lenient} and len(lenient) == 4


def test_busi_wrong_layout_and_missing_root(tmp_path, monkeypatch):
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "x.png", gray())
    with pytest.raises(DataError, match="wrong layout, no benign/ or malignant/"):
        load_records("busi", tmp_path / "flat")
    with pytest.raises(DataError, match="does not exist"):
        load_records("busi", tmp_path / "absent")
    monkeypatch.delenv("BUSSEG_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="BUSSEG_DATA_DIR is not set"):
        load_records("busi")
    monkeypatch.setenv("BUSSEG_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="BUSI/Dataset_BUSI_with_GT"):
        load_records("busi")
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_records("nope", tmp_path)


def make_busbra(root):
    rows = []
    for n, (case, path) in enumerate([(1, "benign"), (1, "benign"), (2, "malignant"), (3, "benign")], start=1):
        image_id = f"bus_{n:04d}-{'l' if n % 2 else 'r'}"
        save(root / "Images" / f"{image_id}.png", gray(seed=n))
        save(root / "Masks" / f"mask_{n:04d}-{'l' if n % 2 else 'r'}.png", square_mask())
        rows.append([image_id, case, "x", path, 3, "dev", 24, 20, "left", "[0,0,1,1]"])
    with open(root / "bus_data.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"])
        w.writerows(rows)
    return root


def test_busbra_adapter_groups_by_case(tmp_path):
    records = load_records("busbra", make_busbra(tmp_path / "BUS-BRA"))
    assert [r.id for r in records] == ["bus_0001-l", "bus_0002-r", "bus_0003-l", "bus_0004-r"]
    assert records[0].group_id == records[1].group_id == "case_1" != records[2].group_id
    assert records[2].label == "malignant" and records[0].mask_paths[0].name == "mask_0001-l.png"
    assert records[0].extra["Device"] == "dev"


def test_busbra_problems(tmp_path):
    root = make_busbra(tmp_path / "BUS-BRA")
    (root / "Masks" / "mask_0002-r.png").unlink()
    save(root / "Images" / "bus_0099-l.png", gray())
    with pytest.raises(DataError) as err:
        busbra.load(root)
    assert "bus_0002-r.png: image without mask" in str(err.value)
    assert "bus_0099-l.png: image not listed in bus_data.csv" in str(err.value)
    (root / "bus_data.csv").unlink()
    with pytest.raises(DataError, match="bus_data.csv not found"):
        busbra.load(root)


def test_udiat_adapter_with_and_without_workbook(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    root = tmp_path / "UDIAT"
    for n in (1, 2):
        save(root / "original" / f"{n:06d}.png", gray(seed=n))
        save(root / "GT" / f"{n:06d}.png", square_mask())
    with pytest.warns(DataWarning, match="DatasetB.xlsx not found"):
        records = udiat.load(root)
    assert [r.label for r in records] == ["unknown", "unknown"]
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image", "Type", "Lesion type"])
    ws.append(["000001", "Benign", "FIBROADENOMA"])
    ws.append([2, "Malignant", "IDC"])
    wb.save(root / "DatasetB.xlsx")
    assert [r.label for r in load_records("udiat", root)] == ["benign", "malignant"]
    (root / "GT" / "000002.png").unlink()
    with pytest.raises(DataError, match="000002.png: image without mask"):
        udiat.load(root)


def test_stu_adapter_resizes_antialiased_masks(tmp_path):
    root = tmp_path / "STU"
    save(root / "Test_Image_1.png", gray(20, 24))
    big = np.zeros((40, 48), np.uint8)
    big[10:30, 12:36] = 255
    big[9, 12:36] = 128  # anti-aliased edge
    save(root / "mask_1.png", big)
    records = stu.load(root)
    assert records[0].id == "stu_001" and records[0].extra["mask_resize"]
    from busseg.data import read_sample

    image, mask = read_sample(records[0])
    assert mask.shape == image.shape == (20, 24) and 100 < mask.sum() < 140
    save(root / "mask_2.png", big)
    with pytest.raises(DataError, match="mask_2.png: mask without image"):
        stu.load(root)


def test_folder_adapter(tmp_path):
    root = tmp_path / "mine"
    save(root / "images" / "a.png", gray())
    save(root / "images" / "b.jpg", gray(seed=2))
    save(root / "masks" / "a.png", square_mask())
    save(root / "masks" / "b_mask.png", square_mask())
    save(root / "masks" / "b_mask_1.png", square_mask(top=0, left=0, size=2))
    (root / "labels.csv").write_text("id,label,group\na,benign,p1\nb,malignant,p1\n")
    records = folder.load(root)
    assert [(r.id, r.label, r.group_id) for r in records] == [("a", "benign", "p1"), ("b", "malignant", "p1")]
    assert len(records[1].mask_paths) == 2
    save(root / "masks" / "c.png", square_mask())
    save(root / "images" / "d.png", gray())
    with pytest.raises(DataError) as err:
        folder.load(root)
    assert "c.png: mask without image" in str(err.value) and "d.png: image without mask" in str(err.value)
    (root / "masks" / "c.png").unlink()
    assert [r.mask_paths for r in folder.load(root, require_masks=False) if r.id == "d"] == [()]
    (root / "labels.csv").write_text("id,label\na,maybe\n")
    with pytest.raises(DataError, match="label 'maybe'"):
        folder.load(root, require_masks=False)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_records("folder", tmp_path)
