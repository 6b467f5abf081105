"""`busseg predict`: inputs, outputs at original size, bad files, restart, TTA/ensemble
definitions, measurements."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from busseg.cli.main import main as cli_main
from busseg.data.imageio import read_image
from busseg.data.preprocess import normalize, resize_image
from busseg.engine.recipe import validate_recipe
from busseg.errors import CheckpointError, ConfigError, DataError
import busseg.inference.predict as predict_module
from busseg.inference.measurements import (
    TALLER_THAN_WIDE,
    WIDER_THAN_TALL,
    circularity,
    lesion_measurements,
    max_feret_diameter,
)
from busseg.inference.predict import collect_inputs, predict
from busseg.inference.predictor import load as load_predictor
from busseg.inference.predictor import resize_probability, resolve_postprocess
from busseg.models import ModelOutput, list_models, register_model

SIZE = 32


class _TinyNet(nn.Module):
    """Two convolutions; not flip-equivariant, so TTA changes its output."""

    def __init__(self, in_channels: int, multitask: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 1, 1)
        self.cls = nn.Linear(4, 2) if multitask else None

    def forward(self, x):
        f = self.body(x)
        return ModelOutput(seg=self.head(f), cls=self.cls(f.mean((2, 3))) if self.cls is not None else None)


if "predict_tiny" not in list_models():
    @register_model("predict_tiny", paper="test fixture", size_divisor=1)
    def _tiny(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, multitask=False)

    @register_model("predict_tiny_mt", paper="test fixture", size_divisor=1, multitask=True)
    def _tiny_mt(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, multitask=True)

    class _ClassifierOnly(_TinyNet):
        def forward(self, x):
            return ModelOutput(seg=None, cls=super().forward(x).cls)

    @register_model("predict_tiny_cls", paper="test fixture", size_divisor=1, multitask=True, segments=False)
    def _tiny_cls(in_channels=1, encoder_weights="none"):
        return _ClassifierOnly(in_channels, multitask=True)


def save_checkpoint(path, model_name="predict_tiny", seed=0, **recipe_changes):
    """A checkpoint in the engine's format (recipe in hyper_parameters, 'model.' weights)."""
    recipe = validate_recipe({"model": model_name, "image_size": SIZE, **recipe_changes}, "test")
    torch.manual_seed(seed)
    from busseg.engine.task import build_model_from_recipe

    model = build_model_from_recipe(recipe)
    with torch.no_grad():  # larger weights: probabilities spread over (0, 1), not all near 0.5
        for parameter in model.parameters():
            parameter.mul_(3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"recipe": recipe},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def make_cv_dir(root, model_name="predict_tiny", folds=(0, 1)):
    """The layout `busseg cv` writes: fold_<k>/result.json naming the best checkpoint."""
    for k in folds:
        fold_dir = root / f"fold_{k}"
        save_checkpoint(fold_dir / "checkpoints" / "best.ckpt", model_name, seed=10 + k)
        (fold_dir / "result.json").write_text(json.dumps({"fold": k, "best_checkpoint": "checkpoints/best.ckpt"}))
    return root


def blob_image(h, w, seed=0):
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 150 + 20 * g.standard_normal((h, w))
    img[((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 3) / (w / 5)) ** 2 <= 1] -= 90
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dicom(path, pixels, spacing=(0.1, 0.2)):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelSpacing = [pydicom.valuerep.DSfloat(spacing[0]), pydicom.valuerep.DSfloat(spacing[1])]
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("model") / "best.ckpt")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Good PNG/JPEG/BMP images of several sizes, a DICOM with spacing, a corrupt PNG, a 0-byte
    PNG, an all-black image and a text file."""
    root = tmp_path_factory.mktemp("scans")
    (root / "sub").mkdir()
    Image.fromarray(blob_image(45, 60, 1)).save(root / "a.png")
    Image.fromarray(np.repeat(blob_image(50, 40, 2)[..., None], 3, 2)).save(root / "b.png")  # RGB
    Image.fromarray(blob_image(33, 47, 3)).save(root / "sub" / "c.bmp")
    Image.fromarray(blob_image(40, 40, 4)).save(root / "sub" / "d.jpg", quality=95)
    write_dicom(root / "scan.dcm", blob_image(48, 64, 5), spacing=(0.1, 0.2))
    Image.fromarray(np.zeros((30, 36), np.uint8)).save(root / "black.png")
    good = (root / "a.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


GOOD = {"a.png": (45, 60), "b.png": (50, 40), "sub/c.bmp": (33, 47), "sub/d.jpg": (40, 40), "scan.dcm": (48, 64),
        "black.png": (30, 36)}


def expected_probability(models, path, tta=False):
    """The definition, computed independently of busseg's prediction code: training's
    preprocessing, then the mean over models (and identity/h-flip/v-flip) of the sigmoid of
    the flipped-back logits, resized bilinearly to the image."""
    image = read_image(path)
    x = torch.from_numpy(normalize(resize_image(image, SIZE), "minmax"))[None, None]
    probs, cls = [], []
    with torch.no_grad():
        for model in models:
            for dims in ([None, (3,), (2,)] if tta else [None]):
                out = model(torch.flip(x, dims) if dims else x)
                p = torch.sigmoid(out.seg)
                probs.append(torch.flip(p, dims) if dims else p)
                if out.cls is not None:
                    cls.append(torch.softmax(out.cls, 1)[0, 1])
    prob = torch.stack(probs).mean(0)[0, 0].numpy()
    return resize_probability(prob, image.shape), (float(torch.stack(cls).mean()) if cls else None)


# ------------------------------------------------------------------------------- predict


def test_mixed_folder_writes_right_files_and_reports_bad_ones(checkpoint, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["predict", "--model", str(checkpoint), str(mixed_folder), "--out", str(out),
                     "--batch-size", "4", "--no-progress"])
    assert code == 1  # some files were skipped, the others written
    printed = capsys.readouterr().out
    assert "6 images predicted" in printed and "3 skipped" in printed
    summary = json.loads((out / "summary.json").read_text())
    failed = {f["file"].rsplit("/", 1)[-1]: f for f in summary["failures"]}
    assert set(failed) == {"corrupt.png", "empty.png", "notes.txt"}
    assert "corrupt.png: truncated or corrupt" in failed["corrupt.png"]["problem"]
    assert "empty file" in failed["empty.png"]["problem"]
    assert "unsupported file type .txt" in failed["notes.txt"]["problem"]
    assert (out / "failures.csv").read_text().count("\n") == 4

    rows = {r["id"]: r for r in json.loads((out / "predictions.json").read_text())}
    assert set(rows) == {"a.png", "b.png", "sub/c.bmp", "sub/d.jpg", "scan.dcm", "black.png"}
    for name, (h, w) in GOOD.items():
        mask = Image.open(out / "masks" / f"{name}.png")
        overlay = Image.open(out / "overlays" / f"{name}.png")
        assert mask.size == (w, h) and mask.mode == "L"  # original size, not the network's
        assert overlay.size == (w, h) and overlay.mode == "RGB"
        values = np.unique(np.asarray(mask))
        assert set(values.tolist()) <= {0, 255}
    scan = rows["scan.dcm"]
    assert (scan["pixel_spacing_row_mm"], scan["pixel_spacing_col_mm"]) == pytest.approx((0.1, 0.2))
    assert scan["spacing_source"] == "dicom"
    assert scan["area_mm2"] == pytest.approx(scan["area_px"] * 0.02)
    assert rows["a.png"]["area_mm2"] is None and rows["a.png"]["spacing_source"] == ""
    mask_a = np.asarray(Image.open(out / "masks" / "a.png.png")) > 0
    assert rows["a.png"]["area_px"] == int(mask_a.sum()) > 0
    csv_lines = (out / "predictions.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("id,file,height,width")


def test_full_disk_stops_predict_with_one_line(checkpoint, mixed_folder, tmp_path, capsys, monkeypatch):
    """Writing an output fails (disk full): not 'skipped' image after image, but one line naming
    the file, exit 2, and no temporary file left behind."""
    import errno
    import os
    from pathlib import Path

    out = tmp_path / "out"
    real_write_bytes = Path.write_bytes

    def disk_full_for_masks(self, data):
        if "masks" in self.parts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_for_masks)
    code = cli_main(["predict", "--model", str(checkpoint), str(mixed_folder / "a.png"), str(mixed_folder / "b.png"),
                     "--out", str(out), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("busseg: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "masks" in lines[0] and "disk full" in lines[0]
    assert not list(out.rglob("*.tmp"))


def test_masks_follow_training_preprocessing_exactly(checkpoint, mixed_folder, tmp_path):
    out = tmp_path / "out"
    predict(checkpoint, [mixed_folder / "a.png", mixed_folder / "scan.dcm"], out, progress=False)
    model = load_predictor(checkpoint).models[0]
    for file in ("a.png", "scan.dcm"):
        prob, _ = expected_probability([model], mixed_folder / file)
        mask = np.asarray(Image.open(out / "masks" / f"{file}.png")) > 0
        np.testing.assert_array_equal(mask, prob > 0.5)


def test_tta_and_ensemble_equal_their_definitions(tmp_path, mixed_folder):
    cv = make_cv_dir(tmp_path / "cv", "predict_tiny_mt")
    predictor = load_predictor(cv)
    assert len(predictor.models) == 2 and (predictor.segments, predictor.classifies) == (True, True)
    single = load_predictor(cv, fold=1)
    assert len(single.models) == 1 and single.sources[0].parent.parent.name == "fold_1"
    for tta in (False, True):
        out = tmp_path / f"out_tta{tta}"
        predict(predictor, mixed_folder / "a.png", out, tta=tta, save_probabilities=True, progress=False)
        prob, p_malignant = expected_probability(predictor.models, mixed_folder / "a.png", tta=tta)
        saved = np.asarray(Image.open(out / "probabilities" / "a.png.png"), np.float64) / 255
        np.testing.assert_allclose(saved, prob, atol=0.5 / 255 + 1e-6)
        row = json.loads((out / "predictions.json").read_text())[0]
        assert row["prob_malignant"] == pytest.approx(p_malignant, abs=1e-6)
        assert row["prob_benign"] == pytest.approx(1 - p_malignant, abs=1e-6)
        assert row["predicted_class"] == ("malignant" if p_malignant > 0.5 else "benign")
        assert row["max_probability"] == pytest.approx(float(prob.max()), abs=1e-6)
    # TTA really changes the prediction of this (not flip-equivariant) model
    plain = np.asarray(Image.open(tmp_path / "out_ttaFalse" / "probabilities" / "a.png.png"), np.int16)
    flipped = np.asarray(Image.open(tmp_path / "out_ttaTrue" / "probabilities" / "a.png.png"), np.int16)
    assert np.abs(plain - flipped).max() > 2


def test_classification_only_model_writes_rows_without_masks(mixed_folder, tmp_path):
    ckpt = save_checkpoint(tmp_path / "cls.ckpt", model_name="predict_tiny_cls")
    out = tmp_path / "out"
    summary = predict(ckpt, [mixed_folder / "a.png", mixed_folder / "b.png"], out, progress=False)
    rows = json.loads((out / "predictions.json").read_text())
    assert summary["n_with_lesion"] is None and len(rows) == 2
    assert all(0 <= r["prob_malignant"] <= 1 and "mask" not in r and "area_px" not in r for r in rows)
    assert not (out / "masks").exists() and not (out / "overlays").exists()


def test_restart_skips_finished_images_and_refuses_other_settings(checkpoint, mixed_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_finish = predict_module._finish
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C while the 4th image is being written
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(checkpoint, mixed_folder, out, batch_size=2, workers=1, progress=False)
    monkeypatch.setattr(predict_module, "_finish", real_finish)
    finished = sorted(p.name for p in (out / "rows").rglob("*.json"))
    assert 1 <= len(finished) < 6
    assert not list(out.rglob("*.tmp"))  # atomic writes: nothing half-written

    again = predict(checkpoint, mixed_folder, out, batch_size=2, progress=False)
    assert again["n_already_done"] == len(finished)
    assert again["n_predicted"] == 6 - len(finished)
    assert len(json.loads((out / "predictions.json").read_text())) == 6
    done = predict(checkpoint, mixed_folder, out, progress=False)
    assert (done["n_predicted"], done["n_already_done"]) == (0, 6)

    with pytest.raises(ConfigError, match="other settings .*tta"):
        predict(checkpoint, mixed_folder, out, tta=True, progress=False)
    redone = predict(checkpoint, mixed_folder, out, tta=True, overwrite=True, progress=False)
    assert redone["n_predicted"] == 6


def test_output_folder_inside_input_folder_is_not_read_back(checkpoint, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(blob_image(40, 48)).save(scans / "x.png")
    first = predict(checkpoint, scans, scans / "predictions", progress=False)
    second = predict(checkpoint, scans, scans / "predictions", progress=False)
    assert first["n_inputs"] == second["n_inputs"] == 1 and second["n_already_done"] == 1


def test_collect_inputs_list_file_and_name_collisions(tmp_path):
    for name in ("x.png", "x.jpg", "y.png"):
        Image.fromarray(blob_image(20, 20)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("# scans\nx.png\n\nx.jpg\nmissing.png\n")
    images, problems = collect_inputs(tmp_path / "list.txt")
    assert [i.id for i in images] == ["x.png", "x.jpg"]
    assert problems[0]["file"].endswith("missing.png") and "not found" in problems[0]["problem"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "outside.txt").write_text(f"{tmp_path / 'y.png'}\n../x.png\n")
    images, problems = collect_inputs(tmp_path / "lists" / "outside.txt")
    assert [i.id for i in images] == ["y.png", "x.png"] and not problems
    images, _ = collect_inputs([tmp_path / "y.png"])
    assert [i.id for i in images] == ["y.png"]
    with pytest.raises(ConfigError, match="no image to predict"):
        collect_inputs(tmp_path / "nothing_here")


def test_postprocess_sizes_are_network_pixels(checkpoint, mixed_folder, tmp_path):
    recipe = load_predictor(checkpoint).recipe
    assert resolve_postprocess(None, recipe).is_identity
    config = resolve_postprocess({"min_component_px": 10, "fill_holes": True}, recipe)
    assert config.reference_size == SIZE
    assert config.pixel_sizes((SIZE * 2, SIZE * 2))[0] == 40  # scaled to a 2x larger image
    assert resolve_postprocess("paper", recipe).reference_size == 256  # the preset keeps its own
    out = tmp_path / "out"
    summary = predict(checkpoint, mixed_folder / "a.png", out, progress=False,
                      postprocess={"keep_largest": 1, "fill_holes": True})
    row = json.loads((out / "predictions.json").read_text())[0]
    assert row["n_components"] <= 1 and "keep 1 largest" in summary["postprocess"]


def test_pixel_spacing_option_and_bad_values(checkpoint, mixed_folder, tmp_path):
    out = tmp_path / "out"
    predict(checkpoint, [mixed_folder / "a.png", mixed_folder / "scan.dcm"], out,
            pixel_spacing=(0.3, 0.3), progress=False)
    rows = {r["id"]: r for r in json.loads((out / "predictions.json").read_text())}
    assert rows["a.png"]["spacing_source"] == "given" and rows["a.png"]["pixel_spacing_row_mm"] == 0.3
    assert rows["scan.dcm"]["pixel_spacing_row_mm"] == pytest.approx(0.1)  # the file's own wins
    with pytest.raises(DataError, match="pixel spacing must be positive"):
        predict(checkpoint, mixed_folder / "a.png", out, pixel_spacing=(0.0, 0.1), progress=False)


def test_ensemble_must_share_preprocessing(tmp_path):
    a = save_checkpoint(tmp_path / "a.ckpt")
    b = save_checkpoint(tmp_path / "b.ckpt", image_size=64)
    c = save_checkpoint(tmp_path / "c.ckpt", model_name="predict_tiny_mt")
    with pytest.raises(CheckpointError, match="image_size 64 differs"):
        load_predictor([a, b])
    with pytest.raises(CheckpointError, match="outputs"):
        load_predictor([a, c])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_predictor(tmp_path / "nope.ckpt")


# -------------------------------------------------------------------------- measurements


def disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_measurements_of_known_shapes():
    m = lesion_measurements(disk(120, 120, 60, 60, 30), spacing_mm=(0.1, 0.1))
    assert m["lesion_found"] and m["n_components"] == 1
    assert m["area_px"] == pytest.approx(math.pi * 30**2, rel=0.01)
    assert m["area_mm2"] == pytest.approx(m["area_px"] * 0.01)
    assert (m["bbox_x"], m["bbox_y"], m["bbox_width"], m["bbox_height"]) == (30, 30, 61, 61)
    assert m["max_diameter_px"] == pytest.approx(61, abs=0.5)
    assert m["max_diameter_mm"] == pytest.approx(6.1, abs=0.05)
    assert m["circularity"] == pytest.approx(1.0, abs=0.02)
    assert m["orientation"] == WIDER_THAN_TALL  # equal extents are not taller than wide

    yy, xx = np.mgrid[0:100, 0:100]
    tall = ((yy - 50) / 30) ** 2 + ((xx - 50) / 10) ** 2 <= 1  # 3:1 ellipse, exact circularity 0.663
    t = lesion_measurements(tall)
    assert t["orientation"] == TALLER_THAN_WIDE and t["depth_width_ratio"] == pytest.approx(61 / 21)
    assert t["circularity"] == pytest.approx(0.663, abs=0.03)
    # anisotropic spacing: 3x finer rows turn the same pixels into a wide lesion
    assert lesion_measurements(tall, spacing_mm=(0.1, 0.9))["orientation"] == WIDER_THAN_TALL

    square = np.zeros((10, 10), bool)
    square[2:5, 3:7] = True  # 3 rows x 4 columns, as union of pixel squares: diagonal 5
    assert max_feret_diameter(square) == pytest.approx(5.0)
    assert max_feret_diameter(square, (2.0, 1.0)) == pytest.approx(math.hypot(6, 4))


def test_measurements_largest_component_and_empty_mask():
    mask = disk(80, 80, 20, 20, 10) | disk(80, 80, 60, 60, 5)
    m = lesion_measurements(mask)
    assert m["n_components"] == 2 and m["area_px"] == int(mask.sum())
    assert (m["bbox_x"], m["bbox_y"], m["bbox_width"]) == (10, 10, 21)  # the larger disc
    empty = lesion_measurements(np.zeros((5, 5), bool), spacing_mm=(0.1, 0.1))
    assert empty["lesion_found"] is False and empty["area_px"] == 0 and empty["area_mm2"] == 0
    assert empty["max_diameter_px"] is None and empty["orientation"] is None
    with pytest.raises(DataError, match="2-D mask"):
        lesion_measurements(np.zeros((2, 3, 4), bool))


def test_feret_diameter_matches_brute_force():
    g = np.random.default_rng(1)
    for _ in range(5):
        mask = g.random((9, 11)) > 0.55
        from busseg.inference.measurements import largest_component

        comp, _ = largest_component(mask)
        corners = [(x + dx, y + dy) for y, x in zip(*np.nonzero(comp)) for dy in (0, 1) for dx in (0, 1)]
        brute = max(math.hypot(a[0] - b[0], 1.5 * (a[1] - b[1])) for a, b in combinations(corners, 2))
        assert max_feret_diameter(comp, (1.5, 1.0)) == pytest.approx(brute)
    assert 0 < circularity(np.ones((1, 1), bool)) <= 1


def test_png_writer_round_trips_exactly_through_pillow(tmp_path):
    from busseg.inference.predict import png_bytes

    g = np.random.default_rng(5)
    for array in (g.integers(0, 256, (7, 5), dtype=np.uint8), g.integers(0, 256, (1, 9, 3), dtype=np.uint8),
                  (disk(31, 40, 15, 20, 9) * 255).astype(np.uint8), np.full((3, 4, 3), 255, np.uint8)):
        path = tmp_path / "x.png"
        path.write_bytes(png_bytes(array))
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and image.mode == ("L" if array.ndim == 2 else "RGB")
            np.testing.assert_array_equal(np.asarray(image), array)
    with pytest.raises(DataError, match="uint8"):
        png_bytes(np.zeros((4, 4), np.float32))


# ------------------------------------------------------------------ reruns and output names


def test_rerun_predicts_again_a_replaced_input_and_a_model_retrained_in_place(tmp_path):
    """"Done" means: same input content and same model files (issue 14, item 3)."""
    model = save_checkpoint(tmp_path / "model.ckpt", seed=0)
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(blob_image(40, 48, 1)).save(scans / "a.png")
    Image.fromarray(blob_image(36, 30, 2)).save(scans / "b.png")
    out = tmp_path / "out"
    predict(model, scans, out, progress=False)

    Image.fromarray(blob_image(50, 30, 3)).save(scans / "a.png")  # replaced under the same name
    again = predict(model, scans, out, progress=False)
    assert (again["n_predicted"], again["n_already_done"]) == (1, 1)
    assert Image.open(out / "masks" / "a.png.png").size == (30, 50)  # the new image's size
    rows = {r["id"]: r for r in json.loads((out / "predictions.json").read_text())}
    assert (rows["a.png"]["height"], rows["a.png"]["width"]) == (50, 30)

    size = model.stat().st_size
    save_checkpoint(model, seed=1)  # retrained in place: same path, same size
    assert model.stat().st_size == size
    third = predict(model, scans, out, progress=False)
    assert (third["n_predicted"], third["n_already_done"]) == (2, 0)
    retrained = load_predictor(model)
    for name in ("a.png", "b.png"):
        expected, _ = expected_probability(retrained.models, scans / name)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / f"{name}.png")) > 0, expected > 0.5)
    assert predict(model, scans, out, progress=False)["n_already_done"] == 2


def test_output_names_are_unique_and_do_not_depend_on_the_other_inputs(checkpoint, tmp_path):
    """dup.png, dup.jpg and dup_png.png get three outputs; a folder's ids are the same however
    it is given (issue 14, item 4)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    sizes = {"dup.png": (30, 40), "dup.jpg": (34, 44), "dup_png.png": (38, 48)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(blob_image(h, w, i)).save(scans / name, quality=95)
    out = tmp_path / "out"
    predict(checkpoint, scans, out, progress=False)
    rows = json.loads((out / "predictions.json").read_text())
    assert sorted(r["id"] for r in rows) == sorted(sizes)
    assert len({r["mask"] for r in rows}) == 3 and len(list((out / "masks").rglob("*.png"))) == 3
    for row in rows:
        h, w = sizes[row["id"]]
        assert Image.open(out / row["mask"]).size == (w, h)  # each row points at its own image's mask

    (tmp_path / "list.txt").write_text("\n".join(f"scans/{n}" for n in sizes))
    as_folder = [i.id for i in collect_inputs(scans)[0]]
    as_files = [i.id for i in collect_inputs([scans / n for n in sorted(sizes)])[0]]
    as_list = [i.id for i in collect_inputs(tmp_path / "list.txt")[0]]
    assert sorted(as_folder) == sorted(as_files) == sorted(i.removeprefix("scans/") for i in as_list) == sorted(sizes)

    dcm = tmp_path / "dcm"
    dcm.mkdir()
    write_dicom(dcm / "x.dcm", blob_image(48, 64, 5))
    both = predict(checkpoint, [scans, dcm], out, progress=False)  # one --out: the same ids as before
    assert (both["n_already_done"], both["n_predicted"]) == (3, 1)
    assert sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png")) == \
        sorted([*(f"{n}.png" for n in sizes), "x.dcm.png"])


def test_two_inputs_with_one_id_are_refused(checkpoint, tmp_path):
    for folder in ("p1", "p2"):
        (tmp_path / folder).mkdir()
        Image.fromarray(blob_image(20, 20)).save(tmp_path / folder / "img.png")
    with pytest.raises(ConfigError, match=r"share the id .*img.png.*common folder"):
        collect_inputs([tmp_path / "p1", tmp_path / "p2"])
    images, _ = collect_inputs(tmp_path)
    assert sorted(i.id for i in images) == ["p1/img.png", "p2/img.png"]
