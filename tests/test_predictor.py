"""The Python API: ``busseg.load(source) -> predictor``, ``predictor(image) -> result``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import busseg
from busseg.errors import CheckpointError, ConfigError, DataError
from busseg.inference.predict import predict
from busseg.models import ModelOutput, list_models, register_model
from test_predict import SIZE, blob_image, expected_probability, make_cv_dir, save_checkpoint, write_dicom

if "predictor_rgb" not in list_models():
    class _ThreeChannelNet(torch.nn.Module):
        """Needs three input channels, each used differently (an ImageNet-style encoder)."""

        def __init__(self, in_channels: int = 3) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, 1, 3, padding=1)

        def forward(self, x):
            return ModelOutput(seg=self.conv(x))

    @register_model("predictor_rgb", paper="test fixture", size_divisor=1)
    def _rgb(in_channels=3, encoder_weights="none"):
        return _ThreeChannelNet(in_channels)


def make_run(root, model_name="predict_tiny", seed=0, **recipe_changes):
    """The layout `busseg train` writes: result.json naming the checkpoint relative to the run."""
    save_checkpoint(root / "checkpoints" / "best.ckpt", model_name, seed=seed, **recipe_changes)
    (root / "result.json").write_text(json.dumps({"fold": 0, "best_checkpoint": "checkpoints/best.ckpt"}))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def test_three_lines_from_a_run_folder(run):
    image = blob_image(45, 60, 1)
    model = busseg.load(run)
    result = model(image)
    assert isinstance(model, busseg.Predictor) and isinstance(result, busseg.Prediction)
    assert result.mask.shape == result.probability.shape == image.shape  # the input's size
    assert result.mask.dtype == bool and result.probability.dtype == np.float32
    assert 0.0 <= result.probability.min() <= result.probability.max() <= 1.0
    np.testing.assert_array_equal(result.mask, result.probability > 0.5)
    assert result.class_probabilities is None and result.predicted_class is None
    assert result.measurements["area_px"] == int(result.mask.sum())
    assert result.measurements["area_mm2"] is None  # no spacing known
    # the definition, computed independently: training preprocessing, sigmoid, bilinear resize
    path = run / "a.png"
    Image.fromarray(image).save(path)
    prob, _ = expected_probability(model.models, path)
    np.testing.assert_allclose(result.probability, prob, atol=1e-5)


def test_numpy_pil_and_path_give_the_same_result(run, tmp_path):
    model = busseg.load(run)
    gray = blob_image(50, 40, 2)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "scan.png")
    results = [model(gray), model(rgb), model(Image.fromarray(rgb)), model(tmp_path / "scan.png"),
               model(str(tmp_path / "scan.png")), model(gray.astype(np.float64) / 255.0)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.mask, results[0].mask)
        np.testing.assert_allclose(other.probability, results[0].probability, atol=1e-6)
    batch = model([gray, tmp_path / "scan.png"])  # a list: predicted in batches, one result each
    assert len(batch) == 2 and np.array_equal(batch[1].mask, results[0].mask)


def test_dicom_spacing_and_given_spacing_reach_the_measurements(run, tmp_path):
    model = busseg.load(run)
    dicom = write_dicom(tmp_path / "scan.dcm", blob_image(48, 64, 5), spacing=(0.1, 0.2))
    own = model(dicom, spacing=(0.5, 0.5))  # the file's own spacing wins
    assert own.measurements["area_mm2"] == pytest.approx(own.measurements["area_px"] * 0.02)
    given = model(blob_image(48, 64, 5), spacing=(0.3, 0.3))
    assert given.measurements["area_mm2"] == pytest.approx(given.measurements["area_px"] * 0.09)


def test_multitask_cv_folder_is_an_ensemble_with_class_probabilities(tmp_path):
    cv = make_cv_dir(tmp_path / "cv", "predict_tiny_mt")
    model = busseg.load(cv)
    assert len(model.models) == 2 and model.classifies and "ensemble" in model.describe()
    result = model(blob_image(40, 52, 3))
    probs = result.class_probabilities
    assert set(probs) == {"benign", "malignant"} and sum(probs.values()) == pytest.approx(1.0)
    assert result.predicted_class == ("malignant" if probs["malignant"] > 0.5 else "benign")
    one = busseg.load(cv, fold=1)
    assert len(one.models) == 1 and one.sources[0].parent.parent.name == "fold_1"
    with pytest.raises(ConfigError, match="fold 7"):
        busseg.load(cv, fold=7)


def test_three_channel_models_get_the_grey_image_repeated(tmp_path):
    run = make_run(tmp_path / "rgb", "predictor_rgb", in_channels=3)
    model = busseg.load(run)
    image = blob_image(36, 30, 4)
    result = model(image)
    x = model.preprocess(image)
    assert x.shape == (3, SIZE, SIZE) and torch.equal(x[0], x[2])
    with torch.no_grad():
        logits = model.models[0](x[None]).seg
    expected = np.asarray(Image.fromarray(torch.sigmoid(logits)[0, 0].numpy(), mode="F")
                          .resize((30, 36), Image.BILINEAR)).clip(0, 1)
    np.testing.assert_allclose(result.probability, expected, atol=1e-5)


def test_tta_and_postprocess_are_options(run):
    image = blob_image(45, 60, 1)
    plain, flipped = busseg.load(run)(image), busseg.load(run, tta=True)(image)
    assert np.abs(plain.probability - flipped.probability).max() > 0.01  # not flip-equivariant
    processed = busseg.load(run, postprocess={"keep_largest": 1, "fill_holes": True})(image)
    assert processed.measurements["n_components"] <= 1
    np.testing.assert_array_equal(processed.probability, plain.probability)


def test_onnx_file_serves_the_same_masks(run, tmp_path):
    from busseg.inference.export import export

    export(run, tmp_path / "model.onnx", exporter="torchscript")
    onnx_model, torch_model = busseg.load(tmp_path / "model.onnx"), busseg.load(run)
    assert onnx_model.backend == "onnx" and torch_model.backend == "pytorch"
    image = blob_image(45, 60, 1)
    np.testing.assert_allclose(onnx_model(image).probability, torch_model(image).probability, atol=1e-4)


def test_predict_command_writes_what_the_predictor_returns(run, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(blob_image(45, 60, 1)).save(scans / "a.png")
    predict(run, scans, tmp_path / "out", progress=False, save_probabilities=True)
    result = busseg.load(run)(scans / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png.png")) > 0, result.mask)
    row = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    assert row["area_px"] == result.measurements["area_px"]


def test_bad_sources_and_images_are_named(run, tmp_path):
    with pytest.raises(CheckpointError, match="nothing_here.*does not exist"):
        busseg.load(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no finished run"):
        busseg.load(tmp_path / "empty")
    model = busseg.load(run)
    with pytest.raises(DataError, match="missing.png"):
        model(tmp_path / "missing.png")
    with pytest.raises(DataError, match=r"shape \(2, 3, 4, 5\)"):
        model(np.zeros((2, 3, 4, 5), np.uint8))
