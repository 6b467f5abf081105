"""The training/evaluation engine on tiny phantoms with a tiny registered model."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn as nn

from busseg.engine.evaluate import evaluate_run, load_checkpoint
from busseg.engine.recipe import apply_overrides, list_recipes, load_recipe, validate_recipe
from busseg.engine.train import cross_validate, load_dataset, resolve_split, train_fold
from busseg.errors import CheckpointError, ConfigError
from busseg.models import ModelOutput, list_models, register_model


class _TinySegNet(nn.Module):
    """Two conv layers, one pooling: enough to learn phantoms a little, fast on CPU."""

    def __init__(self, in_channels: int = 1, multitask: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Dropout2d(dropout), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Conv2d(8, 1, 1)
        self.cls = nn.Linear(8, 2) if multitask else None

    def forward(self, x):
        f = self.body(x)
        cls = self.cls(f.mean((2, 3))) if self.cls is not None else None
        return ModelOutput(seg=self.head(f), cls=cls)


if "test_tiny" not in list_models():
    @register_model("test_tiny", paper="test fixture", recipe="test_tiny", size_divisor=8)
    def _tiny(in_channels=1, encoder_weights="none", dropout=0.1):
        return _TinySegNet(in_channels, dropout=dropout)

    @register_model("test_tiny_multitask", paper="test fixture", recipe="test_tiny", size_divisor=8, multitask=True)
    def _tiny_mt(in_channels=1, encoder_weights="none"):
        return _TinySegNet(in_channels, multitask=True)


def tiny_recipe(**changes) -> dict:
    recipe = {
        "model": "test_tiny", "image_size": 32, "epochs": 2, "batch_size": 4,
        "optimizer": {"name": "adam", "lr": 0.01},
        "loss": {"name": "segmentation", "pixel": "bce_dice"},
        "augmentation": {"hflip": 0.5, "rotate": 0.5, "rotate_deg": [5, 15]},
        "validation": {"fraction": 0.2, "monitor": "val_dice", "mode": "max"},
        "cv_folds": 2, "seed": 3,
    }
    recipe.update(changes)
    return validate_recipe(recipe, "test")


PHANTOMS = {"n": 24}
QUIET = dict(progress=False, accelerator="cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "fold0"
    result = train_fold(tiny_recipe(), out, data_options=PHANTOMS, **QUIET)
    return out, result


# ---------------------------------------------------------------- recipes


def test_every_shipped_recipe_validates():
    names = list_recipes()
    assert names, "no recipe files shipped"
    for name in names:
        recipe = load_recipe(name)
        assert recipe["model"] in list_models(), f"recipe {name} names an unregistered model"


def test_recipe_overrides_and_errors(tmp_path):
    recipe = tiny_recipe()
    changed = apply_overrides(recipe, ["optimizer.lr=3e-4", "augmentation.vflip=0.5", "epochs=7"])
    assert changed["optimizer"]["lr"] == pytest.approx(3e-4) and changed["epochs"] == 7
    assert changed["augmentation"]["vflip"] == 0.5 and recipe["epochs"] == 2
    with pytest.raises(ConfigError, match="epochs"):
        apply_overrides(recipe, ["epochs=many"])
    with pytest.raises(ConfigError, match="unknown recipe field"):
        apply_overrides(recipe, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe("no_such_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: test_tiny\nbatch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match="bad.yaml.*batch_size"):
        load_recipe(bad)


# ---------------------------------------------------------------- training


def test_train_fold_writes_a_complete_run(trained_run):
    out, result = trained_run
    for name in ("recipe.yaml", "split.json", "run.json", "result.json", "checkpoints/last.ckpt",
                 "checkpoints/best.ckpt", "test/per_image.csv", "test/summary.json", "logs/metrics.csv"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["seed"] == 3
    assert run["versions"]["torch"] == torch.__version__.split("+")[0] or run["versions"]["torch"]
    split = json.loads((out / "split.json").read_text())
    fold = split["folds"][0]
    assert not set(fold["test"]) & (set(fold["train"]) | set(fold["val"]))
    assert not set(fold["val"]) & set(fold["train"])
    seg = result["test"]["segmentation"]
    assert seg["n"] == len(fold["test"]) and 0.0 <= seg["dice_mean"] <= 1.0
    assert "validation" in result["selected_on"]


def test_existing_run_needs_resume(trained_run):
    out, _ = trained_run
    with pytest.raises(ConfigError, match="--resume"):
        train_fold(tiny_recipe(), out, data_options=PHANTOMS, **QUIET)
    # a finished run is skipped with --resume
    again = train_fold(tiny_recipe(), out, data_options=PHANTOMS, resume=True, **QUIET)
    assert again["best_checkpoint"]


class _SimulatedCrash(RuntimeError):
    pass


class _CrashAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            raise _SimulatedCrash("killed after epoch 0")


@pytest.mark.parametrize("augmentation", ["paper", "robust"])
def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path, augmentation):
    recipe = tiny_recipe(epochs=3)
    if augmentation == "robust":  # every transform's draws must be resumable too
        recipe = apply_overrides(recipe, ["augmentation={preset: robust}"])
    full = tmp_path / "full"
    train_fold(recipe, full, data_options=PHANTOMS, evaluate_test=False, **QUIET)
    cut = tmp_path / "cut"
    with pytest.raises(_SimulatedCrash):
        train_fold(recipe, cut, data_options=PHANTOMS, evaluate_test=False,
                   callbacks=[_CrashAfterFirstEpoch()], **QUIET)
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"
    assert not (cut / "result.json").exists()
    train_fold(recipe, cut, data_options=PHANTOMS, evaluate_test=False, resume=True, **QUIET)
    header = (cut / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in (cut / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert {int(r["epoch"]) for r in rows if r.get("epoch")} == {0, 1, 2}, "training curve lost on resume"
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_cv_and_evaluate(tmp_path):
    out = tmp_path / "cv"
    cv = cross_validate(tiny_recipe(epochs=1), out, data_options=PHANTOMS, **QUIET)
    assert cv["folds"] == [0, 1]
    dice = cv["segmentation"]["dice"]
    assert len(dice["folds"]) == 2 and dice["mean"] == pytest.approx(sum(dice["folds"]) / 2)
    assert (out / "cv_per_image.csv").is_file()
    # same dataset: each fold model on its own test fold reproduces the cv numbers
    same = evaluate_run(out, tmp_path / "eval_same", data_options=PHANTOMS)
    assert same["subset"] == "test"
    assert same["segmentation"]["dice"]["mean"] == pytest.approx(dice["mean"], abs=1e-6)
    # another dataset (other phantom seed): every fold model on every image + the ensemble
    other = evaluate_run(out, tmp_path / "eval_other", dataset="phantom",
                         data_options={"n": 12, "seed": 99}, subset="all", ensemble=True, tta=True)
    assert other["subset"] == "all" and other["n_models"] == 2
    assert other["ensemble"]["n_images"] == 12


def test_multitask_training_reports_classification(tmp_path):
    recipe = tiny_recipe(model="test_tiny_multitask", epochs=1,
                         loss={"name": "multitask", "cls_weight": 0.3})
    result = train_fold(recipe, tmp_path / "mt", data_options=PHANTOMS, **QUIET)
    cls = result["test"]["classification"]
    assert set(cls) >= {"accuracy", "precision", "recall", "f1", "auc"}
    assert "prob_malignant" in (tmp_path / "mt" / "test" / "per_image.csv").read_text()


# ---------------------------------------------------------------- bad input


def test_bad_input_fails_before_training(trained_run, tmp_path):
    out, _ = trained_run
    with pytest.raises(ConfigError, match="divisible by 8"):
        train_fold(tiny_recipe(image_size=36), tmp_path / "x", data_options=PHANTOMS, **QUIET)
    with pytest.raises(ConfigError, match="unknown model"):
        train_fold(tiny_recipe(model="no_such_model"), tmp_path / "y", data_options=PHANTOMS, **QUIET)
    with pytest.raises(CheckpointError, match="holds model 'test_tiny'"):
        load_checkpoint(out / "checkpoints" / "best.ckpt", expected_model="unet")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_checkpoint(junk)
    # a split made for another dataset does not fit these phantoms
    split = json.loads((out / "split.json").read_text())
    split["folds"][0]["test"].append("not-an-image")
    bad_split = tmp_path / "split.json"
    bad_split.write_text(json.dumps(split))
    prepared = load_dataset("phantom", None, tiny_recipe(), PHANTOMS)
    with pytest.raises(ConfigError, match="not-an-image"):
        resolve_split(bad_split, prepared, tiny_recipe(), "phantom")


def test_cli_train_reports_bad_recipe_field_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "busseg", "train", "--model", "unet", "--set", "epochs=abc",
         "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "epochs" in proc.stderr and "Traceback" not in proc.stderr


def test_ddp_two_processes_on_cpu(tmp_path):
    """Lightning's DDP strategy, two processes over gloo, through the CLI."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "busseg", "train", "--model", "unet", "--image-size", "32", "--epochs", "1",
         "--batch-size", "4", "--set", "model_options.base_channels=8", "--n-phantoms", "16", "--accelerator", "cpu",
         "--devices", "2", "--strategy", "ddp", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "BUSSEG_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["test"]["segmentation"]["n"] > 0
    assert "world_size" not in proc.stderr or "2" in proc.stderr


def test_evaluate_writes_case_figures_with_attention(tmp_path):
    """The papers' figure kind: original | ground truth | predicted | processed | attention."""
    from PIL import Image

    from busseg.engine.evaluate import _attention_map, pick_cases

    recipe = apply_overrides(load_recipe("attention_unet_plus"), [
        "image_size=64", "epochs=1", "batch_size=4", "cv_folds=2",
        "model_options={base_channels: 4, depth: 3}"])
    run = tmp_path / "att"
    train_fold(recipe, run, data_options={"n": 16}, **QUIET)
    result = evaluate_run(run, tmp_path / "eval", data_options={"n": 16}, figures=3,
                          postprocess={"keep_largest": 1, "fill_holes": True})
    pngs = sorted((tmp_path / "eval" / "fold_0" / "figures").glob("*.png"))
    assert len(pngs) == 3 and result["segmentation_postprocessed"]
    tags = {p.name.split("_")[0] for p in pngs}
    assert {"best", "worst"} <= tags
    width = Image.open(pngs[0]).size[0]
    assert width > 4 * Image.open(pngs[0]).size[1] / 2, "expected a row of five panels"
    rows = [{"id": f"i{k}", "dice": d} for k, d in enumerate([0.1, 0.9, 0.5, 0.7])]
    assert pick_cases(rows, 3) == [("i1", "best"), ("i2", "median"), ("i0", "worst")]
    att = {"attention_1": torch.rand(2, 1, 8, 8), "attention_2": torch.rand(2, 1, 4, 4)}
    assert _attention_map(att, 1).shape == (8, 8)
