"""The training/evaluation engine on tiny phantoms with a tiny registered model."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn as nn

from busseg.engine.evaluate import evaluate_run
from busseg.models.checkpoint import load_checkpoint
from busseg.engine.recipe import apply_overrides, list_recipes, load_recipe, merge_recipe, validate_recipe
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


BAD_NESTED_FIELDS = [
    ("optimizer.lr=-1", r"optimizer.lr must be in \(0, inf\]"),
    ("optimizer.momentum=0.9", r"unknown option\(s\) \['momentum'\] in optimizer; known: .*betas"),
    ("optimizer.betas=[0.9]", r"optimizer.betas must be a pair"),
    ("optimizer.betas=[0.9, 1.5]", r"optimizer.betas element 1.5: must be in \[0, 1\)"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be in"),
    ("optimizer={name: sgd, lr: 0.1, nesterov: 1}", "optimizer.nesterov must be true or false"),
    ("scheduler={name: step, step_size: 0}", r"scheduler \(step\).step_size must be in \[1, inf\]"),
    ("scheduler={name: plateau, factor: 2}", r"scheduler \(plateau\).factor must be in \(0, 1\)"),
    ("scheduler={name: plateau, patience: 2.5}", "patience must be an integer"),
    ("scheduler={name: cosine, T_max: 5}", r"unknown option\(s\) \['T_max'\] in scheduler \(cosine\)"),
    ("scheduler={name: plateau, monitor: val_dcie}", "scheduler .*monitor must be one of"),
    ("augmentation.hflip=1.5", r"augmentation.hflip must be in \[0, 1\], got 1.5"),
    ("augmentation.rotate=-0.1", r"augmentation.rotate must be in \[0, 1\]"),
    ("augmentation.rotate_deg=[30, 10]", "augmentation.rotate_deg must be \\[min, max\\]"),
    ("augmentation.scale=[0, 1.2]", "augmentation.scale element 0"),
    ("augmentation.brightness=2", r"augmentation.brightness must be in \[0, 1\]"),
    ("augmentation.flip=0.5", r"unknown option\(s\) \['flip'\] in augmentation"),
    ("augmentation.preset=strong", r"augmentation.preset must be one of robust; got 'strong'"),
    ("augmentation={preset: robust, speckle: {p: 2}}", r"augmentation.speckle.p must be in \[0, 1\], got 2"),
    ("augmentation={preset: robust, gamma: {p: 0.3, gama: [1, 2]}}",
     r"unknown option\(s\) \['gama'\] in augmentation.gamma"),
    ("augmentation={depth_gain: {p: 0.3, max_db: -6, knots: 5}}", r"augmentation.depth_gain.max_db must be in \[0, inf\]"),
    ("validation.fraction=1.5", "validation.fraction must be in"),
    ("validation.monitor=dice", "validation.monitor must be one of"),
    ("validation.patience=3", r"unknown option\(s\) \['patience'\] in validation"),
    ("early_stopping={patience: 0}", r"early_stopping.patience must be in \[1, inf\]"),
    ("early_stopping={patience: 5, min_delta: 0.01}", r"unknown option\(s\) \['min_delta'\] in early_stopping"),
    ("postprocess={min_size: -3}", "postprocess"),
    ("image_size=100000", "field 'image_size' must be in"),
    ("image_size=4", "field 'image_size' must be in"),
    ("batch_size=0", "field 'batch_size' must be in"),
    ("cv_folds=1", "field 'cv_folds' must be in"),
    ("seed=-1", "field 'seed' must be in"),
    ("epochs=2.5", "field 'epochs' must be int"),
]


@pytest.mark.parametrize("override, message", BAD_NESTED_FIELDS)
def test_recipe_validation_covers_nested_fields_and_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(tiny_recipe(), [override], "command line")


def test_choosing_a_preset_starts_the_section_from_the_preset():
    # elad_net's paper augmentation is all zeros: merged key by key onto the robust preset, its
    # hflip 0.0 silently switched off the preset's mirroring (and vflip, rotate... were kept)
    paper = load_recipe("elad_net")
    robust = apply_overrides(paper, ["augmentation={preset: robust}"])
    assert robust["augmentation"]["hflip"] == 0.5 and "vflip" not in robust["augmentation"]
    assert apply_overrides(paper, ["augmentation.preset=robust"])["augmentation"] == robust["augmentation"]
    assert merge_recipe(paper, {"augmentation": {"preset": "robust"}})["augmentation"] == robust["augmentation"]
    # keys given after the preset change it; a section without a preset still merges key by key
    changed = apply_overrides(paper, ["augmentation.preset=robust", "augmentation.hflip=0.0"])
    assert changed["augmentation"]["hflip"] == 0.0 and changed["augmentation"]["speckle"]["p"] == 0.3
    assert merge_recipe(robust, {"augmentation": {"speckle": {"p": 0.0}}})["augmentation"]["speckle"] == {
        **robust["augmentation"]["speckle"], "p": 0.0}
    # the same rule for post-processing presets
    custom = apply_overrides(paper, ["postprocess={keep_largest: 2, fill_holes: true}"])
    assert merge_recipe(custom, {"postprocess": {"preset": "paper"}})["postprocess"] == {"preset": "paper"}


def test_recipe_model_and_loss_options_fail_before_any_data_is_loaded(tmp_path, monkeypatch):
    import busseg.engine.train as train_module

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the recipe was checked")

    monkeypatch.setattr(train_module, "load_dataset", no_data)
    for recipe, message in (
        (tiny_recipe(model_options={"widht": 4}),
         r"model 'test_tiny' has no option\(s\) \['widht'\] \(model_options\); its options: dropout"),
        (tiny_recipe(loss={"name": "segmentation", "pixel": "no_such_loss"}), "no_such_loss"),
        (tiny_recipe(loss={"name": "segmentation", "pixel": "bce_dice", "smoth": 1}), "smoth"),
        (tiny_recipe(encoder_weights="/no/such/weights.pth"), "encoder weights"),
        (tiny_recipe(validation={"fraction": 0.2, "monitor": "val_acc", "mode": "max"}),
         "validation.monitor 'val_acc': model 'test_tiny' has no classification output"),
    ):
        with pytest.raises(ConfigError, match=message):
            train_fold(recipe, tmp_path / "never", data_options=PHANTOMS, **QUIET)
        with pytest.raises(ConfigError, match=message):
            cross_validate(recipe, tmp_path / "never_cv", data_options=PHANTOMS, **QUIET)
    assert not (tmp_path / "never").exists() and not (tmp_path / "never_cv").exists()


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


def test_resume_of_a_finished_run_with_another_epoch_count_says_what_it_does(trained_run):
    out, _ = trained_run
    with pytest.raises(ConfigError, match=r"finished its 2 epochs; this recipe asks for 4"
                                          r".*never extended.*--overwrite"):
        train_fold(tiny_recipe(epochs=4), out, data_options=PHANTOMS, resume=True, **QUIET)
    with pytest.raises(ConfigError, match=r"another recipe \(optimizer.lr: 0.01 -> 0.02\)"):
        train_fold(tiny_recipe(optimizer={"name": "adam", "lr": 0.02}), out, data_options=PHANTOMS,
                   resume=True, **QUIET)
    # other images under the same ids (another phantom seed): refused, not reused
    with pytest.raises(ConfigError, match="other images or masks"):
        train_fold(tiny_recipe(), out, data_options={**PHANTOMS, "seed": 7}, resume=True, **QUIET)


def test_cli_train_resume_of_a_finished_run_says_it_is_reused(trained_run, tmp_path, capsys, caplog):
    import logging

    out, result = trained_run
    recipe = _write_recipe(tmp_path / "tiny.yaml")
    with caplog.at_level(logging.INFO, logger="busseg"):
        code, _ = _cli(["train", "--recipe", str(recipe), "--n-phantoms", "24", "--accelerator", "cpu",
                        "--no-progress", "--resume", "--out", str(out)], capsys)
    assert code == 0
    assert "already finished with this recipe, data and split; its result is reused" in caplog.text


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
    record = json.loads((cut / "run.json").read_text())
    assert record["status"] == "failed" and record["interrupted_at_epoch"] == 0  # a crash, not Ctrl-C
    assert not (cut / "result.json").exists()
    train_fold(recipe, cut, data_options=PHANTOMS, evaluate_test=False, resume=True, **QUIET)
    header = (cut / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in (cut / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert {int(r["epoch"]) for r in rows if r.get("epoch")} == {0, 1, 2}, "training curve lost on resume"
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_last_checkpoint_is_the_last_finished_epoch(tmp_path):
    """Selection on a metric that stops improving after the first epoch: best.ckpt stays at
    epoch 0, last.ckpt must still follow every epoch (a resume continues from there)."""
    recipe = tiny_recipe(epochs=3, validation={"fraction": 0.2, "monitor": "val_loss", "mode": "max"})
    out = tmp_path / "run"
    result = train_fold(recipe, out, data_options=PHANTOMS, evaluate_test=False, **QUIET)
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert best["epoch"] < 2, "this recipe was meant to select an early epoch"
    assert last["epoch"] == 2 and result["epochs_run"] == 3


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


def _folder_state(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".csv", ".yaml")}


def test_cv_rerun_reuses_only_folds_of_the_same_recipe_data_and_split(tmp_path, caplog):
    import logging

    out = tmp_path / "cv"
    first = cross_validate(tiny_recipe(epochs=1), out, data_options=PHANTOMS, **QUIET)
    before = _folder_state(out)
    # the same settings: both folds reused, nothing rewritten but the summary
    with caplog.at_level(logging.INFO, logger="busseg"):
        again = cross_validate(tiny_recipe(epochs=1), out, data_options=PHANTOMS, **QUIET)
    assert again == first and caplog.text.count("its result is reused") == 2
    # other epochs, another recipe field, other data, another split: refused, nothing changed
    with pytest.raises(ConfigError, match=r"fold_0 holds a run that finished its 1 epochs; this recipe asks for 2"):
        cross_validate(tiny_recipe(epochs=2), out, data_options=PHANTOMS, **QUIET)
    with pytest.raises(ConfigError, match=r"fold_0 holds a finished run of another recipe \(batch_size: 4 -> 8\)"):
        cross_validate(tiny_recipe(epochs=1, batch_size=8), out, data_options=PHANTOMS, **QUIET)
    with pytest.raises(ConfigError, match="other images or masks|another split"):
        cross_validate(tiny_recipe(epochs=1), out, data_options={**PHANTOMS, "seed": 5}, **QUIET)
    # without --split a rerun keeps the split it saved (so another seed cannot re-split it) ...
    with pytest.raises(ConfigError, match=r"fold_0 holds a finished run of another recipe \(seed: 3 -> 4\)"):
        cross_validate(tiny_recipe(epochs=1, seed=4), out, data_options=PHANTOMS, **QUIET)
    # ... and another split given explicitly is refused
    other = json.loads((out / "split.json").read_text())
    other["folds"][0], other["folds"][1] = other["folds"][1], other["folds"][0]
    for k, fold in enumerate(other["folds"]):
        fold["fold"] = k
    (tmp_path / "other_split.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match=r"another split"):
        cross_validate(tiny_recipe(epochs=1), out, data_options=PHANTOMS, split=tmp_path / "other_split.json", **QUIET)
    assert _folder_state(out) == before, "a refused rerun changed the cv folder"
    # a fold left over from another recipe is refused even when only the other fold is new
    import shutil

    shutil.rmtree(out / "fold_1")
    with pytest.raises(ConfigError, match="fold_0"):
        cross_validate(tiny_recipe(epochs=2), out, data_options=PHANTOMS, **QUIET)
    assert not (out / "fold_1" / "result.json").exists(), "trained a fold before refusing another"
    # asked to retrain: every fold under the new recipe, one consistent summary
    new = cross_validate(tiny_recipe(epochs=2), out, data_options=PHANTOMS, overwrite=True, **QUIET)
    for k in (0, 1):
        assert json.loads((out / f"fold_{k}" / "result.json").read_text())["epochs_run"] == 2
    assert new["folds"] == [0, 1]


def test_cv_refuses_unknown_folds_before_training(tmp_path):
    with pytest.raises(ConfigError, match="fold 5 does not exist"):
        cross_validate(tiny_recipe(epochs=1), tmp_path / "cv", folds=[0, 5], data_options=PHANTOMS, **QUIET)
    assert not (tmp_path / "cv" / "fold_0").exists()


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


# ---------------------------------------------------------------- operating-system failures


def _write_recipe(path, **changes):
    import yaml

    path.write_text(yaml.safe_dump(tiny_recipe(**changes)))
    return path


def _cli(argv, capsys):
    """Run the busseg command in this process; (exit status, stderr)."""
    from busseg.cli.main import main

    code = main(argv)
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("busseg: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _cli_train_tiny_fails(tmp_path, out, capsys) -> str:
    """``busseg train`` of the tiny recipe into ``out``: asserts exit status 2 and one error
    line without a traceback, and returns that line."""
    recipe = _write_recipe(tmp_path / "tiny.yaml")
    code, err = _cli(["train", "--recipe", str(recipe), "--n-phantoms", "16", "--accelerator", "cpu",
                      "--no-progress", "--out", str(out)], capsys)
    assert code == 2
    return _one_line_error(err)


def test_cli_train_into_a_path_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    line = _cli_train_tiny_fails(tmp_path, taken, capsys)
    assert str(taken) in line and "is a file" in line
    assert taken.read_text() == "not a folder"


@pytest.fixture
def unwritable_dir(tmp_path, monkeypatch):
    """A folder nobody can create files in. Made immutable with ``chattr +i`` where the file
    system allows it (root ignores permission bits); otherwise the OS calls are patched to
    answer EACCES for paths inside it, as they would for a user without write permission."""
    locked = tmp_path / "locked"
    locked.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0 \
        if __import__("shutil").which("chattr") else False
    if not immutable:
        import builtins
        import errno
        import os as _os

        def inside(path) -> bool:
            try:
                return str(_os.path.abspath(_os.fspath(path))).startswith(str(locked) + _os.sep)
            except TypeError:
                return False

        def denied(path):
            return PermissionError(errno.EACCES, "Permission denied", _os.fspath(path))

        real_open, real_os_open, real_mkdir = builtins.open, _os.open, _os.mkdir

        def fake_open(file, mode="r", *args, **kwargs):
            if inside(file) and any(c in mode for c in "wax+"):
                raise denied(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (_os.O_WRONLY | _os.O_RDWR | _os.O_CREAT):
                raise denied(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if inside(path):
                raise denied(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(_os, "open", fake_os_open)
        monkeypatch.setattr(_os, "mkdir", fake_mkdir)
    yield locked
    if immutable:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_cli_train_into_a_folder_without_write_permission(tmp_path, unwritable_dir, capsys):
    out = unwritable_dir / "run"
    line = _cli_train_tiny_fails(tmp_path, out, capsys)
    assert str(out) in line and ("permission denied" in line or "not permitted" in line)
    assert not list(unwritable_dir.iterdir())


def test_cli_train_on_a_full_disk_ends_failed_with_one_line(tmp_path, capsys, monkeypatch):
    """The disk fills while a checkpoint is written: one line naming it, no temporary file,
    no result, and run.json says the run failed (and why)."""
    import errno
    import os as _os

    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        if "state_dict" in obj:  # a training checkpoint: write part of it, then ENOSPC
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, _os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    out = tmp_path / "run"
    line = _cli_train_tiny_fails(tmp_path, out, capsys)
    assert ".ckpt" in line and "disk full" in line
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("*.tmp")) and not (out / "result.json").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "disk full" in run["reason"]


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a file system with 256 KiB free: a real tmpfs where this machine lets the
    tests mount one, else the process's file-size limit (RLIMIT_FSIZE) for the command run
    there, which makes writes fail in the kernel the same way (EFBIG instead of ENOSPC).
    Yields ``(folder, preexec_fn for subprocess)``."""
    import resource
    import signal as _signal

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0

    def limit_file_size():
        _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    yield folder, (None if mounted else limit_file_size)
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_cli_train_on_a_really_full_disk(tmp_path, small_disk):
    """End to end through the real file system: the checkpoint does not fit."""
    folder, preexec = small_disk
    out = folder / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "busseg", "train", "--model", "unet", "--image-size", "32", "--epochs", "1",
         "--batch-size", "4", "--set", "model_options.base_channels=4", "--n-phantoms", "12",
         "--accelerator", "cpu", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=300, preexec_fn=preexec,
        env={**__import__("os").environ, "BUSSEG_OFFLINE": "1", "OMP_NUM_THREADS": "1",
             "BUSSEG_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("busseg: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert ".ckpt: cannot write (" in errors[0], errors[0]
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.ckpt"))
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_run_json_records_a_failure_after_training(tmp_path, monkeypatch):
    """A failure while testing the selected model (after fit) no longer leaves 'running'."""
    import busseg.engine.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(train_module, "evaluate_predictor", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="exploded"):
        train_fold(tiny_recipe(epochs=1), out, data_options=PHANTOMS, **QUIET)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "evaluation exploded" in run["reason"]
    assert "ended" in run


class _CtrlCInFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise KeyboardInterrupt


def test_run_json_records_an_interruption(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        train_fold(tiny_recipe(epochs=2), out, data_options=PHANTOMS, evaluate_test=False,
                   callbacks=[_CtrlCInFirstEpoch()], **QUIET)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["interrupted_at_epoch"] == 0


def test_a_refused_rerun_leaves_the_finished_record_alone(trained_run):
    out, _ = trained_run
    before = (out / "run.json").read_text()
    with pytest.raises(ConfigError):
        train_fold(tiny_recipe(), out, data_options=PHANTOMS, **QUIET)
    assert (out / "run.json").read_text() == before


# ---------------------------------------------------------------- trust (issue 14)


class _RunsCode:
    """Unpickling this object runs code: it creates the folder ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.makedirs, (self.marker,))


def test_checkpoints_that_would_run_code_are_refused_everywhere(tmp_path, capsys):
    """Evaluate, predict, export and resume read checkpoints as plain data (issue 14, item 1)."""
    import shutil

    import busseg
    from busseg.cli.main import main as cli_main
    from busseg.inference.export import models_to_export

    run = tmp_path / "run"
    train_fold(tiny_recipe(epochs=1), run, data_options=PHANTOMS, evaluate_test=False, **QUIET)
    marker = tmp_path / "code_ran"
    crafted = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    crafted["hyper_parameters"]["note"] = _RunsCode(marker)
    for name in ("best.ckpt", "last.ckpt"):
        torch.save(crafted, run / "checkpoints" / name)

    for attempt in (lambda: busseg.load(run), lambda: load_checkpoint(run / "checkpoints" / "best.ckpt"),
                    lambda: evaluate_run(run, tmp_path / "eval", data_options=PHANTOMS),
                    lambda: models_to_export(run)):
        with pytest.raises(CheckpointError, match=r"best.ckpt: refused, it holds Python objects"):
            attempt()
    assert cli_main(["predict", "--model", str(run), str(run / "split.json"), "--out", str(tmp_path / "p")]) == 2
    assert "best.ckpt: refused" in capsys.readouterr().err
    shutil.rmtree(run / "test", ignore_errors=True)
    (run / "result.json").unlink()
    with pytest.raises(CheckpointError, match=r"last.ckpt: refused"):  # resume
        train_fold(tiny_recipe(epochs=1), run, data_options=PHANTOMS, evaluate_test=False, resume=True, **QUIET)
    assert not marker.exists()


def test_run_folders_are_relocatable(tmp_path, monkeypatch):
    """Paths in result.json are relative to the run: a moved run works, a copied run uses its
    own weights, also when an older result.json holds an absolute path (issue 14, item 5)."""
    import shutil
    from pathlib import Path

    import busseg

    monkeypatch.chdir(tmp_path)
    train_fold(tiny_recipe(epochs=1), Path("runs") / "r", data_options=PHANTOMS, **QUIET)  # a relative --out
    result = json.loads(Path("runs/r/result.json").read_text())
    assert result["best_checkpoint"] == "checkpoints/best.ckpt"
    for written in ("result.json", "test/summary.json"):
        assert str(tmp_path) not in Path("runs/r", written).read_text()

    shutil.copytree("runs/r", "copied")
    shutil.move("runs/r", "moved")
    moved = evaluate_run("moved", "eval_moved", data_options=PHANTOMS)
    assert moved["subset"] == "test"
    assert moved["segmentation"]["dice"]["mean"] == pytest.approx(result["test"]["segmentation"]["dice_mean"])
    # a copy whose result.json (as older busseg wrote it) names the original by absolute path
    legacy = dict(result, best_checkpoint=str(tmp_path / "moved" / "checkpoints" / "best.ckpt"))
    Path("copied/result.json").write_text(json.dumps(legacy))
    assert busseg.load("copied").sources == [Path("copied/checkpoints/best.ckpt")]
    Path("copied/result.json").write_text(json.dumps(dict(result, best_checkpoint="../moved/checkpoints/best.ckpt")))
    assert busseg.load("copied").sources == [Path("copied/checkpoints/best.ckpt")]
    shutil.rmtree("copied/checkpoints")
    with pytest.raises(CheckpointError, match="outside this run folder.*refusing to load another run's weights"):
        busseg.load("copied")
