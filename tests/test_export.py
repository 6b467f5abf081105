"""`busseg export`: ONNX round trip (dynamic batch, within 1e-4), metadata, onnxruntime
prediction equal to PyTorch's, and refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from busseg.cli.main import main as cli_main
from busseg.engine.recipe import validate_recipe
from busseg.errors import CheckpointError
from busseg.inference.export import ExportError, export, export_onnx, random_inputs
from busseg.inference.onnx_runner import OnnxModel
from busseg.inference.predict import predict
from busseg.inference.predictor import load as load_predictor
from busseg.models import ModelOutput, list_models, register_model

SIZE = 32
TOLERANCE = 1e-4


class _TinyNet(nn.Module):
    def __init__(self, in_channels: int, multitask: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                  nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.head = nn.Conv2d(6, 1, 1)
        self.cls = nn.Linear(6, 2) if multitask else None

    def forward(self, x):
        f = self.body(x)
        return ModelOutput(seg=self.head(f), aux={"ds": f[:, :1]},
                           cls=self.cls(f.mean((2, 3))) if self.cls is not None else None)


if "export_tiny" not in list_models():
    @register_model("export_tiny", paper="test fixture", recipe="unet", size_divisor=2)
    def _tiny(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, multitask=False)

    @register_model("export_tiny_mt", paper="test fixture", recipe="unet", size_divisor=2, multitask=True)
    def _tiny_mt(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, multitask=True)


def save_checkpoint(path, model_name="export_tiny", seed=0, **changes):
    from busseg.engine.task import build_model_from_recipe

    recipe = validate_recipe({"model": model_name, "image_size": SIZE, **changes}, "test")
    torch.manual_seed(seed)
    model = build_model_from_recipe(recipe)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        bn = model.body[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        for parameter in model.parameters():
            parameter.mul_(3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"recipe": recipe},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    for k in (0, 1):
        save_checkpoint(root / f"fold_{k}" / "checkpoints" / "best.ckpt", "export_tiny_mt", seed=k,
                        normalization="zscore")
        (root / f"fold_{k}" / "result.json").write_text(json.dumps({"fold": k, "best_checkpoint": "checkpoints/best.ckpt"}))
    return root


@pytest.fixture(scope="module")
def exported_folds(cv_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    results = export(cv_run, out, exporter="torchscript")
    return out, results


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    g = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 52), (36, 30), (64, 64)]):
        img = (120 + 40 * g.standard_normal((h, w))).clip(0, 255).astype(np.uint8)
        img[h // 4 : h // 2, w // 3 : w // 2] //= 3
        Image.fromarray(img).save(root / f"scan{i}.png")
    return root


def test_round_trip_multitask_within_tolerance_with_dynamic_batch(cv_run, exported_folds):
    out, results = exported_folds
    assert [r.path.name for r in results] == ["fold_0.onnx", "fold_1.onnx"]
    assert [r.fold for r in results] == [0, 1]
    for result in results:
        assert result.outputs == ["seg_logits", "cls_logits"] and result.exporter == "torchscript"
        assert result.checked_batch_sizes == [1, 3]
        assert max(result.max_abs_diff.values()) < TOLERANCE
    torch_models = load_predictor(cv_run).models
    onnx_model = OnnxModel(out / "fold_0.onnx")
    assert onnx_model.recipe["normalization"] == "zscore" and onnx_model.recipe["model"] == "export_tiny_mt"
    x = random_inputs(onnx_model.recipe, batch=5, seed=7)  # a batch size never traced
    with torch.no_grad():
        ref = torch_models[0](x)
    got = onnx_model(x)
    assert got.seg.shape == (5, 1, SIZE, SIZE) and got.cls.shape == (5, 2)
    assert (got.seg - ref.seg).abs().max() < TOLERANCE
    assert (got.cls - ref.cls).abs().max() < TOLERANCE
    meta = onnx_model.session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["busseg.check_max_abs_diff"]) == pytest.approx(results[0].max_abs_diff)


def test_onnx_ensemble_with_tta_equals_pytorch(cv_run, exported_folds):
    out, _ = exported_folds
    torch_predictor = load_predictor(cv_run)
    onnx_predictor = load_predictor(out)
    assert len(onnx_predictor.models) == 2 and (onnx_predictor.segments, onnx_predictor.classifies) == (True, True)
    x = random_inputs(torch_predictor.recipe, batch=3, seed=3)
    seg_t, cls_t = torch_predictor.with_options(tta=True).probabilities(x)
    seg_o, cls_o = onnx_predictor.with_options(tta=True).probabilities(x)
    np.testing.assert_allclose(seg_o, seg_t, atol=TOLERANCE)
    np.testing.assert_allclose(cls_o, cls_t, atol=TOLERANCE)


def test_predict_onnx_cli_matches_checkpoint_predictions(cv_run, exported_folds, scans, tmp_path, capsys):
    out, _ = exported_folds
    assert cli_main(["predict", "--onnx", str(out), str(scans), "--out", str(tmp_path / "onnx"),
                     "--no-progress"]) == 0
    assert "2 export_tiny_mt models (ensemble), onnx" in capsys.readouterr().out
    predict(cv_run, scans, tmp_path / "torch", progress=False)
    rows_o = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    rows_t = json.loads((tmp_path / "torch" / "predictions.json").read_text())
    assert [r["id"] for r in rows_o] == [r["id"] for r in rows_t] == ["scan0.png", "scan1.png", "scan2.png"]
    for ro, rt in zip(rows_o, rows_t):
        assert ro["prob_malignant"] == pytest.approx(rt["prob_malignant"], abs=TOLERANCE)
        assert ro["max_probability"] == pytest.approx(rt["max_probability"], abs=TOLERANCE)
        mo = np.asarray(Image.open(tmp_path / "onnx" / ro["mask"]))
        mt = np.asarray(Image.open(tmp_path / "torch" / rt["mask"]))
        assert mo.shape == (ro["height"], ro["width"])
        assert (mo != mt).mean() < 0.01  # identical but for pixels within 1e-4 of the threshold


def test_default_exporter_and_registered_model(tmp_path):
    """The default (torch.export) path, on a model given by its registered name."""
    from busseg.cli.export import registered_model

    model = registered_model("export_tiny", overrides=[f"image_size={SIZE}", "model_options={}"])
    results = export(model, tmp_path / "tiny.onnx")
    assert results[0].exporter in ("dynamo", "torchscript")
    if results[0].exporter == "torchscript":  # the fallback must say why
        assert results[0].notes and "dynamo export failed" in results[0].notes[0]
    assert results[0].max_abs_diff["seg_logits"] < TOLERANCE
    model = OnnxModel(tmp_path / "tiny.onnx")
    assert model.outputs == ["seg_logits"] and model(torch.zeros(4, 1, SIZE, SIZE)).cls is None


def test_cli_export_prints_the_check(tmp_path, capsys):
    target = tmp_path / "unet.onnx"
    assert cli_main(["export", "unet", "--out", str(target), "--exporter", "torchscript",
                     "--set", "image_size=32", "--set", "model_options={base_channels: 4}"]) == 0
    printed = capsys.readouterr().out
    assert "exporter torchscript" in printed and "max |onnxruntime - PyTorch|" in printed
    assert target.is_file()


class _NumpyInside(nn.Module):
    """Leaves the graph through NumPy: a tracer bakes the output in as a constant."""

    def forward(self, x):
        return ModelOutput(seg=torch.from_numpy(x.numpy().copy()) * 2.0)


class _BatchDependent(nn.Module):
    """A Python branch on the batch size: the tracer keeps the branch of the traced batch."""

    def forward(self, x):
        return ModelOutput(seg=x * 2.0 + (1.0 if x.shape[0] == 2 else 0.0))


def test_export_that_disagrees_with_pytorch_is_refused(tmp_path):
    recipe = validate_recipe({"model": "export_tiny", "image_size": 8}, "test")
    target = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="inputs instead of the image"):
        export_onnx(_NumpyInside(), recipe, target, exporter="torchscript")
    with pytest.raises(ExportError, match=r"seg_logits at batch 1: onnxruntime differs from PyTorch by up to 1"):
        export_onnx(_BatchDependent(), recipe, target, exporter="torchscript")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_onnx_files_without_busseg_metadata_are_refused(tmp_path, exported_folds):
    import onnx

    plain = onnx.load(str(exported_folds[0] / "fold_0.onnx"))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match="no busseg metadata"):
        OnnxModel(tmp_path / "plain.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        OnnxModel(tmp_path / "junk.onnx")


# ------------------------------------------------------------------------------- INT8


@pytest.fixture(scope="module")
def quantized_folds(cv_run, scans, tmp_path_factory):
    """Both fold models exported to a folder with INT8 twins calibrated on the scans."""
    out = tmp_path_factory.mktemp("onnx_int8")
    results = export(cv_run, out, exporter="torchscript", quantize="int8", calibration=scans)
    return out, results


def test_int8_twins_are_checked_by_mask_agreement_and_kept_apart(cv_run, quantized_folds, scans):
    out, results = quantized_folds
    assert sorted(p.name for p in out.glob("*.onnx")) == ["fold_0.onnx", "fold_1.onnx"]
    assert sorted(p.name for p in (out / "int8").glob("*.onnx")) == ["fold_0.onnx", "fold_1.onnx"]
    for result in results:
        q = result.quantization
        assert q.path == out / "int8" / result.path.name and q.fold == result.fold
        assert q.n_calibration == 3 and q.calibration == str(scans)
        assert 0.98 <= q.mean_dice <= 1.0 and q.min_dice <= q.mean_dice and q.class_agreement is not None
        assert "mean Dice" in result.describe() and "INT8 logits differ from fp32 by design" in result.describe()
    model = OnnxModel(out / "int8" / "fold_0.onnx")
    assert model.precision == "int8" and OnnxModel(out / "fold_0.onnx").precision == "fp32"
    assert model.quantization["mask_dice_mean"] == pytest.approx(results[0].quantization.mean_dice)
    assert model.recipe == OnnxModel(out / "fold_0.onnx").recipe
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(model.path)).graph.node)
    # the fp32 folder is still an ensemble of the two fp32 models only
    assert [m.precision for m in load_predictor(out).models] == ["fp32", "fp32"]
    int8 = load_predictor(out / "int8")
    assert "onnx int8" in int8.describe()
    x = random_inputs(int8.recipe, batch=4, seed=5)
    seg_q, cls_q = int8.probabilities(x)
    seg_t, cls_t = load_predictor(cv_run).probabilities(x)
    assert np.abs(seg_q - seg_t).max() < 0.1 and np.abs(cls_q - cls_t).max() < 0.1


def test_predict_with_int8_file_agrees_with_pytorch_masks(cv_run, quantized_folds, scans, tmp_path, capsys):
    out, _ = quantized_folds
    assert cli_main(["predict", "--onnx", str(out / "int8" / "fold_0.onnx"), str(scans),
                     "--out", str(tmp_path / "int8"), "--no-progress"]) == 0
    assert "export_tiny_mt, onnx int8 on cpu" in capsys.readouterr().out
    predict(cv_run, scans, tmp_path / "torch", fold=0, progress=False)
    for name in ("scan0.png", "scan1.png", "scan2.png"):
        mq = np.asarray(Image.open(tmp_path / "int8" / "masks" / f"{name}.png")) > 0
        mt = np.asarray(Image.open(tmp_path / "torch" / "masks" / f"{name}.png")) > 0
        assert 2 * (mq & mt).sum() / max(mq.sum() + mt.sum(), 1) > 0.95


def test_int8_that_changes_the_masks_is_refused(exported_folds, tmp_path):
    from busseg.inference.quantize import quantize_onnx

    fp32 = OnnxModel(exported_folds[0] / "fold_0.onnx")

    def inverted(images):  # a "reference" whose masks are the complement: Dice near 0
        out = fp32(torch.from_numpy(images))
        return {"seg_logits": -out.seg.numpy(), "cls_logits": out.cls.numpy()}

    target = tmp_path / "bad.int8.onnx"
    with pytest.raises(ExportError, match=r"mean Dice 0\.\d+ .* below the required 0.98; .* not written"):
        quantize_onnx(fp32.path, target, fp32.recipe, inverted, calibration_count=2, check_count=2)
    assert not target.exists()


def test_mask_agreement_and_calibration_sources(scans):
    from busseg.inference.quantize import calibration_inputs, mask_agreement, quantized_path

    ref = {"seg_logits": np.array([[[-1.0, 2.0], [3.0, -4.0]], [[-1.0, -1.0], [-1.0, -1.0]]])}
    got = {"seg_logits": np.array([[[1.0, 2.0], [3.0, -4.0]], [[-2.0, -2.0], [-2.0, -2.0]]])}
    agreement = mask_agreement(ref, got)
    assert agreement["dice"] == pytest.approx([0.8, 1.0])  # two empty masks agree
    assert agreement["class_agreement"] is None
    recipe = validate_recipe({"model": "export_tiny", "image_size": SIZE, "in_channels": 3}, "test")
    images, name = calibration_inputs(scans, recipe, count=2)
    assert images.shape == (2, 3, SIZE, SIZE) and images.dtype == np.float32 and name == str(scans)
    phantoms, name = calibration_inputs("phantoms", recipe, count=3)
    assert phantoms.shape == (3, 3, SIZE, SIZE) and name == "phantoms" and 0 <= phantoms.min() < phantoms.max() <= 1
    assert quantized_path("a/m.onnx", out_is_file=True).name == "m.int8.onnx"
    assert quantized_path("a/fold_1.onnx", out_is_file=False).as_posix() == "a/int8/fold_1.onnx"


def test_cli_export_quantize_states_the_mask_agreement(tmp_path, capsys):
    target = tmp_path / "tiny.onnx"
    save_checkpoint(tmp_path / "run" / "best.ckpt", "export_tiny")
    assert cli_main(["export", str(tmp_path / "run" / "best.ckpt"), "--out", str(target), "--exporter",
                     "torchscript", "--quantize", "int8", "--calibration", "phantoms",
                     "--calibration-count", "4"]) == 0
    printed = capsys.readouterr().out
    assert "quantized to INT8 (calibrated on 4 images: phantoms)" in printed
    assert "Mask agreement with PyTorch fp32 on 8 phantom images" in printed
    assert target.is_file() and (tmp_path / "tiny.int8.onnx").is_file()


def test_cli_export_refuses_recipe_overrides_for_a_trained_model(cv_run, tmp_path, capsys):
    """--set / --encoder-weights build an untrained registered model; a trained one is exported
    as it was trained, so they are refused rather than ignored."""
    assert cli_main(["export", str(cv_run), "--out", str(tmp_path / "x"), "--set", "image_size=64"]) == 2
    assert "--set applies to a registered model name only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
