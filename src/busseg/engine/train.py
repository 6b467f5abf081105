"""Training one fold (``train_fold``) and every fold of a split (``cross_validate``).

A run directory holds everything needed to check and repeat it::

    <run>/recipe.yaml        the resolved recipe (after command-line overrides)
    <run>/split.json         the split file used (the fold's ids are in run.json too)
    <run>/run.json           command, seed, dataset, fold, versions, encoder weights used, status
    <run>/checkpoints/       last.ckpt (every epoch, written atomically) and best.ckpt
    <run>/logs/              metrics.csv and TensorBoard events
    <run>/test/              per_image.csv and summary.json on the fold's test images
    <run>/result.json        written last: its presence marks a finished run

The model is selected on the validation subset carved from the training folds (recipe
``validation.monitor``), never on the test fold.
"""

from __future__ import annotations

import logging
import warnings
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from busseg.data.preprocess import PreparedData
from busseg.data.splits import fold_ids, load_split, make_split, save_split, validation_fraction_mismatch
from busseg.engine.data import InMemoryTensors, is_main_process, load_dataset, make_loader
from busseg.engine.evaluate import evaluate_predictor
from busseg.engine.io import atomic_torch_save, atomic_write_json
from busseg.engine.progress import training_progress
from busseg.engine.recipe import save_recipe
from busseg.engine.rundir import (check_existing_folds, check_same_recipe, check_same_run, check_same_split,
                                  discard_run, existing_run_state, record_run_end,
                                  records_how_the_run_ends)
from busseg.engine.runinfo import command_line, library_versions, timestamp
from busseg.engine.task import SegmentationTask, check_buildable
from busseg.errors import ConfigError
from busseg.fileio import prepare_output_dir
from busseg.inference.predictor import load as load_predictor
from busseg.metrics.aggregate import summarize_folds
from busseg.models import model_info
from busseg.models.checkpoint import read_checkpoint
from busseg.models.weights import collect_weights_info

log = logging.getLogger("busseg")
# Augmentation lives in the LightningModule on purpose (it runs on the device, after transfer).
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
# Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first and are renamed into place: a run killed while
    saving leaves the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Resume reads checkpoints as evaluation does: plain data only, never code
        (:func:`busseg.models.checkpoint.read_checkpoint`; a refused file is named)."""
        return read_checkpoint(path)


class BussegDataModule(L.LightningDataModule):
    """Batches from in-memory tensors; the sampler is sharded by the trainer's rank."""

    def __init__(self, tensors: InMemoryTensors, train_ids, val_ids, batch_size: int, seed: int) -> None:
        super().__init__()
        self.tensors, self.train_ids, self.val_ids = tensors, train_ids, val_ids
        self.batch_size, self.seed = batch_size, seed

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._rank()
        return make_loader(self.tensors, self.train_ids, self.batch_size, shuffle=True,
                           seed=self.seed, rank=rank, world_size=world, drop_last=True)

    def val_dataloader(self):
        rank, world = self._rank()
        return make_loader(self.tensors, self.val_ids, self.batch_size, shuffle=False,
                           rank=rank, world_size=world)


def _merge_metric_logs(log_dir: Path) -> None:
    """Lightning's CSV logger starts ``metrics.csv`` afresh when a run resumes; put the rows of
    the earlier session(s) back in front so the training curves stay whole."""
    import csv
    import io

    previous, current = log_dir / ".metrics_previous.csv", log_dir / "metrics.csv"
    if not previous.is_file():
        return
    with open(previous, newline="") as fh:
        old = list(csv.DictReader(fh))
    new = []
    if current.is_file():
        with open(current, newline="") as fh:
            new = list(csv.DictReader(fh))
    first_new_epoch = min((int(r["epoch"]) for r in new if r.get("epoch")), default=None)
    if first_new_epoch is not None:
        old = [r for r in old if not r.get("epoch") or int(r["epoch"]) < first_new_epoch]
    keys: list[str] = []
    for row in old + new:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(old + new)
    from busseg.engine.io import atomic_write_text

    atomic_write_text(current, buf.getvalue())
    previous.unlink()


def resolve_split(split: str | Path | dict | None, prepared: PreparedData, recipe: dict, dataset: str) -> dict:
    """The split to use: a saved file/dict (checked against the dataset), or a new group-aware
    split with the recipe's fold count (duplicate clusters from the audit kept together)."""
    if isinstance(split, dict):
        return split
    if split is not None:
        loaded = load_split(split, prepared.records)
        mismatch = validation_fraction_mismatch(loaded, recipe["validation"]["fraction"], f"split file {split}")
        if mismatch and is_main_process():
            log.warning(mismatch)
        return loaded
    from busseg.data.audit import audit_dataset

    groups = audit_dataset(prepared.records, read_masks=False).group_map()
    new = make_split(prepared.records, k=recipe["cv_folds"], seed=recipe["seed"],
                     val_fraction=recipe["validation"]["fraction"], groups=groups)
    new["dataset"] = dataset
    return new


def _check_trainable(recipe: dict) -> None:
    """Everything about the recipe that can be checked before data is loaded: the model and
    its options, the loss, the image size the model accepts, metrics it can report."""
    info = model_info(recipe["model"])
    if recipe["image_size"] % info.size_divisor:
        raise ConfigError(
            f"model {recipe['model']!r} needs an image size divisible by {info.size_divisor}; "
            f"recipe image_size is {recipe['image_size']}"
        )
    check_buildable(recipe)
    watched = {"validation.monitor": _monitor(recipe)[0],
               "scheduler.monitor": recipe["scheduler"].get("monitor"),
               "early_stopping.monitor": (recipe["early_stopping"] or {}).get("monitor")}
    classifies = info.multitask or not info.segments
    for field, metric in watched.items():
        if metric in ("val_dice", "val_iou") and not info.segments:
            raise ConfigError(f"recipe {field} {metric!r}: model {recipe['model']!r} has no segmentation output")
        if metric == "val_acc" and not classifies:
            raise ConfigError(f"recipe {field} {metric!r}: model {recipe['model']!r} has no classification output")


def _monitor(recipe: dict) -> tuple[str, str]:
    info = model_info(recipe["model"])
    monitor = recipe["validation"].get("monitor", "val_dice")
    mode = recipe["validation"].get("mode", "max")
    if monitor == "val_dice" and not info.segments:
        monitor = "val_acc"
    return monitor, mode


def last_epoch_checkpoint(directory: Path) -> ModelCheckpoint:
    """``last.ckpt`` after every finished epoch. (Lightning's ``save_last`` writes it only in
    epochs where the monitored checkpoint is saved, i.e. when validation improves, so a resume
    would redo the epochs since.) Listed after the best-model callback, so the file holds that
    callback's state of the same epoch."""
    return ModelCheckpoint(dirpath=directory, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)


@records_how_the_run_ends
def train_fold(
    recipe: dict,
    out_dir: str | Path,
    *,
    dataset: str = "phantom",
    root: str | Path | None = None,
    split: str | Path | dict | None = None,
    fold: int = 0,
    prepared: PreparedData | None = None,
    data_options: dict | None = None,
    resume: bool = False,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str | None = None,
    progress: bool = True,
    evaluate_test: bool = True,
    callbacks: list | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``recipe`` on one fold of ``split`` and evaluate the selected model on its test
    images. Returns the result dict also written to ``<out_dir>/result.json``.

    An existing run in ``out_dir`` is refused unless ``resume`` (continue an interrupted run;
    a finished one is returned as it is) or ``overwrite`` (discard it and train again). Either
    way it is used only when its recipe, its data and its fold of the split are the ones given
    here (:func:`check_same_run`)."""
    out_dir = Path(out_dir)
    _check_trainable(recipe)
    result_path = out_dir / "result.json"
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"
    state = existing_run_state(out_dir)
    if state and overwrite:
        discard_run(out_dir)
        state = None
    if state and not resume:
        raise ConfigError(
            f"{out_dir} already holds {'a finished' if state == 'finished' else 'an unfinished'} run; pass "
            "--resume to continue it, --overwrite to train it again, or choose another --out"
        )
    if state:
        check_same_recipe(out_dir, recipe, finished=state == "finished")
    prepare_output_dir(out_dir)

    L.seed_everything(recipe["seed"], workers=True, verbose=False)
    if prepared is None:
        prepared = load_dataset(dataset, root, recipe, data_options)
    split = resolve_split(split, prepared, recipe, dataset)
    if not 0 <= fold < len(split["folds"]):
        raise ConfigError(f"fold {fold} does not exist; the split has {len(split['folds'])} folds")
    train_ids, val_ids, test_ids = fold_ids(split, fold)
    if not val_ids:
        raise ConfigError(f"fold {fold} of the split has no validation images (training folds too small?)")
    data_sha256 = prepared.subset(train_ids + val_ids + test_ids).fingerprint()
    if state:
        check_same_run(out_dir, dataset, data_sha256, split, fold)
    if state == "finished":
        log.info("run %s already finished with this recipe, data and split; its result is reused", out_dir)
        return yaml.safe_load(result_path.read_text())
    tensors = InMemoryTensors(prepared.subset(train_ids + val_ids), recipe["normalization"], recipe["in_channels"])

    task = SegmentationTask(recipe)
    weights_info = collect_weights_info(task.model)
    objective_info = getattr(task.objective, "describe", lambda: {})()
    main = is_main_process()
    if main:
        save_recipe(recipe, out_dir / "recipe.yaml")
        save_split(split, out_dir / "split.json")
        run_record = {
            "status": "running",
            "started": timestamp(),
            "command": command_line(),
            "model": recipe["model"],
            "dataset": dataset,
            "data_root": str(root) if root else None,
            "data_options": data_options or {},
            "fold": fold,
            "n_train": len(train_ids), "n_val": len(val_ids), "n_test": len(test_ids),
            "data_sha256": data_sha256,
            "seed": recipe["seed"],
            "encoder_weights": weights_info,
            "objective": objective_info,
            "versions": library_versions(),
        }
        atomic_write_json(out_dir / "run.json", run_record)

    monitor, mode = _monitor(recipe)
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
        save_top_k=1, enable_version_counter=False,
    )
    progress_callbacks, show_bar = training_progress(progress)
    callbacks = [checkpoint, last_epoch_checkpoint(out_dir / "checkpoints"),
                 LearningRateMonitor(logging_interval="epoch"), *progress_callbacks, *(callbacks or [])]
    if recipe["early_stopping"]:
        es = dict(recipe["early_stopping"])
        callbacks.append(EarlyStopping(monitor=es.get("monitor", monitor), mode=es.get("mode", mode),
                                       patience=int(es.get("patience", 10))))
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if on_gpu:
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmuls left under AMP
        if devices in (1, "1"):
            # single GPU: the preprocessed arrays (a few hundred MB at most) live on the device
            tensors.to("cuda")
    trainer = L.Trainer(
        max_epochs=recipe["epochs"],
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision or ("bf16-mixed" if on_gpu else "32-true"),
        logger=[CSVLogger(out_dir, name="logs", version=""), TensorBoardLogger(out_dir, name="logs", version="")],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    datamodule = BussegDataModule(tensors, train_ids, val_ids, recipe["batch_size"], recipe["seed"])
    started = time.time()
    sigint = signal.getsignal(signal.SIGINT)
    log_dir = out_dir / "logs"
    if main and resume and (log_dir / "metrics.csv").is_file():
        (log_dir / "metrics.csv").replace(log_dir / ".metrics_previous.csv")
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last_ckpt) if resume and last_ckpt.exists() else None)
    except (SystemExit, Exception) as exc:
        # Lightning turns Ctrl-C into SystemExit(1) after a graceful shutdown; a crash keeps
        # its exception. Either way the last complete checkpoint stays and --resume continues.
        signal.signal(signal.SIGINT, sigint)
        if trainer.is_global_zero and (out_dir / "run.json").is_file():
            record_run_end(out_dir, exc, interrupted_at_epoch=trainer.current_epoch)
        if isinstance(exc, SystemExit):
            raise KeyboardInterrupt(f"training interrupted; continue with --resume (run {out_dir})") from None
        raise
    finally:
        if main:
            _merge_metric_logs(log_dir)
    train_seconds = time.time() - started
    if not trainer.is_global_zero:
        return {}

    # the selected model is always checkpoints/best.ckpt of this run (ModelCheckpoint's
    # filename "best"), named relative to the run so that a moved or copied run uses its own
    # weights (Lightning's best_model_path is absolute, and after resuming a moved run it can
    # still name the original folder)
    best = out_dir / "checkpoints" / "best.ckpt"
    best = best if best.is_file() else last_ckpt
    result: dict[str, Any] = {
        "model": recipe["model"], "fold": fold, "dataset": dataset,
        "best_checkpoint": best.relative_to(out_dir).as_posix(),
        "selected_on": f"{monitor} ({mode}) on the validation subset of the training folds",
        "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs_run": trainer.current_epoch,
        "train_seconds": round(train_seconds, 2),
    }
    if evaluate_test and test_ids:
        predictor = load_predictor(best, device="cuda" if on_gpu else "cpu")
        _, summary = evaluate_predictor(predictor, prepared.subset(test_ids), out_dir / "test",
                                        postprocess=recipe.get("postprocess"),
                                        extra_columns={"fold": fold, "model": recipe["model"]})
        result["test"] = summary
    run_record = yaml.safe_load((out_dir / "run.json").read_text())
    run_record.update(status="finished", finished=timestamp(), train_seconds=result["train_seconds"])
    atomic_write_json(out_dir / "run.json", run_record)
    atomic_write_json(result_path, result)
    return result


def cross_validate(
    recipe: dict,
    out_dir: str | Path,
    *,
    dataset: str = "phantom",
    root: str | Path | None = None,
    split: str | Path | dict | None = None,
    folds: list[int] | None = None,
    data_options: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **trainer_options,
) -> dict[str, Any]:
    """Train and test every fold of a split, then write ``cv_summary.json`` (mean ± std across
    folds) and ``cv_per_image.csv``.

    Rerunning into the same ``out_dir``: a finished fold is reused, and an interrupted one is
    continued with ``resume``, only when its recipe, data and split are the ones given here;
    otherwise nothing is trained and a :class:`ConfigError` says what differs (``overwrite``
    trains the folds again under the new settings). ``split.json`` is never replaced by another
    split, so the summary never mixes folds of different settings."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the runs in --out, --overwrite discards them: choose one")
    _check_trainable(recipe)
    prepare_output_dir(out_dir)
    prepared = load_dataset(dataset, root, recipe, data_options)
    split = resolve_split(split, prepared, recipe, dataset)
    folds = list(range(len(split["folds"]))) if folds is None else folds
    missing = [k for k in folds if not 0 <= k < len(split["folds"])]
    if missing:
        raise ConfigError(f"fold {missing[0]} does not exist; the split has {len(split['folds'])} folds")
    if not overwrite:
        check_same_split(out_dir / "split.json", split)
        check_existing_folds(out_dir, folds, recipe, dataset, prepared, split, resume)
    save_split(split, out_dir / "split.json")
    results = []
    for k in folds:
        fold_dir = out_dir / f"fold_{k}"
        fold_resume = resume or (fold_dir / "result.json").is_file()
        log.info("fold %d/%d", k + 1, len(folds))
        results.append(train_fold(recipe, fold_dir, dataset=dataset, root=root, split=split, fold=k,
                                  prepared=prepared, data_options=data_options, resume=fold_resume,
                                  overwrite=overwrite, **trainer_options))
    if not is_main_process():
        return {}
    return summarize_cv(out_dir, recipe, folds)


def _classification_across_folds(per_fold: list[dict]) -> dict:
    """Mean and std (ddof=1, as :func:`summarize_folds`) across folds of each classification
    metric; a fold where a metric is undefined (AUC with one class) is counted, not hidden."""
    import math

    import numpy as np

    out = {}
    for key, value in per_fold[0].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        values = [float(f[key]) for f in per_fold]
        defined = [v for v in values if not math.isnan(v)]
        out[key] = {
            "mean": float(np.mean(defined)) if defined else math.nan,
            "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else math.nan,
            "folds": values,
            "n_defined": len(defined),
        }
    return out


def summarize_cv(out_dir: str | Path, recipe: dict, folds: list[int]) -> dict:
    """Aggregate the folds' test summaries: mean ± std across folds of per-image means."""
    import json

    from busseg.engine.io import atomic_write_csv

    out_dir = Path(out_dir)
    fold_summaries, rows = [], []
    for k in folds:
        summary = json.loads((out_dir / f"fold_{k}" / "test" / "summary.json").read_text())
        fold_summaries.append(summary)
        import csv

        with open(out_dir / f"fold_{k}" / "test" / "per_image.csv") as fh:
            rows.extend(csv.DictReader(fh))
    cv: dict[str, Any] = {"model": recipe["model"], "folds": folds, "n_images": len(rows),
                          "aggregation": "mean ± std across folds of per-image means",
                          "geometry": fold_summaries[0].get("geometry")}
    if "segmentation" in fold_summaries[0]:
        cv["segmentation"] = summarize_folds([s["segmentation"] for s in fold_summaries])
        for label in ("benign", "malignant"):
            per = [s["by_class"][label] for s in fold_summaries if label in s.get("by_class", {})]
            if len(per) == len(fold_summaries):
                cv.setdefault("by_class", {})[label] = summarize_folds(per)
        if "segmentation_postprocessed" in fold_summaries[0]:
            cv["segmentation_postprocessed"] = summarize_folds(
                [s["segmentation_postprocessed"] for s in fold_summaries])
    if "classification" in fold_summaries[0]:
        cv["classification"] = _classification_across_folds([s["classification"] for s in fold_summaries])
    atomic_write_csv(out_dir / "cv_per_image.csv", rows)
    atomic_write_json(out_dir / "cv_summary.json", cv)
    return cv
