"""A run directory on disk: what it holds, whether an existing run may be reused or continued,
and how a training session's end is recorded.

A run (``busseg train``) or a cv fold is reused (finished) or continued (``--resume``) only when
the recipe, the data and the split are the ones it was made with: ``recipe.yaml`` must equal the
recipe, ``run.json`` must name the dataset and fold and hold the same fingerprint of the fold's
prepared images (:meth:`busseg.data.preprocess.PreparedData.fingerprint`), and ``split.json``
must give the fold the same train/val/test ids. Anything else is refused with what differs;
``--overwrite`` discards the run (:func:`discard_run`) and trains again.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from busseg.data.preprocess import PreparedData
from busseg.data.splits import fold_ids, load_split
from busseg.engine.data import is_main_process
from busseg.engine.io import atomic_write_json
from busseg.engine.runinfo import timestamp
from busseg.errors import ConfigError

log = logging.getLogger("busseg")


def _fold_assignment(split: dict) -> list[tuple[list[str], list[str], list[str]]]:
    return [tuple(sorted(fold[part]) for part in ("train", "val", "test")) for fold in split["folds"]]


def check_same_split(path: Path, split: dict) -> None:
    """Refuse to replace the split file of a cv folder with another split."""
    if not path.is_file():
        return
    saved = load_split(path)
    if _fold_assignment(saved) == _fold_assignment(split):
        return
    why = (f"{len(saved['folds'])} folds, not {len(split['folds'])}" if len(saved["folds"]) != len(split["folds"])
           else "the folds hold other images")
    raise ConfigError(
        f"{path} holds another split than this run would use ({why}); its folds were trained on it. "
        f"Reuse it with --split {path}, pass --overwrite to retrain every fold on the new split, "
        "or choose another --out")


def check_existing_folds(out_dir: Path, folds: list[int], recipe: dict, dataset: str,
                         prepared: PreparedData, split: dict, resume: bool) -> None:
    """Before any fold trains: every fold folder that already holds a run must belong to this
    recipe, data and split (finished folds are reused, interrupted ones need ``resume``)."""
    for k in folds:
        fold_dir = out_dir / f"fold_{k}"
        state = existing_run_state(fold_dir)
        if state is None:
            continue
        if state == "started" and not resume:
            raise ConfigError(f"{fold_dir} holds an unfinished run; pass --resume to continue it, "
                              "--overwrite to train it again, or choose another --out")
        check_same_recipe(fold_dir, recipe, finished=state == "finished")
        train_ids, val_ids, test_ids = fold_ids(split, k)
        check_same_run(fold_dir, dataset, prepared.subset(train_ids + val_ids + test_ids).fingerprint(), split, k)


#: What a run directory holds (module docstring); ``discard_run`` removes exactly these.
RUN_ENTRIES = ("recipe.yaml", "split.json", "run.json", "result.json", "checkpoints", "logs", "test")


def existing_run_state(out_dir: Path) -> str | None:
    """``"finished"`` (result.json written), ``"started"`` (a checkpoint exists) or None."""
    if (out_dir / "result.json").is_file():
        return "finished"
    if (out_dir / "checkpoints" / "last.ckpt").exists():
        return "started"
    return None


def discard_run(out_dir: Path) -> None:
    """Remove a run's own files and folders from ``out_dir`` (anything else is left)."""
    import shutil

    log.warning("discarding the run in %s (--overwrite)", out_dir)
    for name in RUN_ENTRIES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def recipe_differences(saved: Any, recipe: Any, prefix: str = "") -> list[str]:
    """``"epochs: 2 -> 5"`` for every (dotted) field where two recipes differ."""
    if isinstance(saved, dict) and isinstance(recipe, dict):
        out = []
        for key in list(saved) + [k for k in recipe if k not in saved]:
            out += recipe_differences(saved.get(key), recipe.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == recipe else [f"{prefix.rstrip('.')}: {saved!r} -> {recipe!r}"]


def check_same_recipe(out_dir: Path, recipe: dict, *, finished: bool) -> None:
    """Refuse to continue or reuse the run in ``out_dir`` under another recipe."""
    try:
        saved = yaml.safe_load((out_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{out_dir / 'recipe.yaml'}: cannot read the run's recipe ({exc}); "
                          "pass --overwrite to train the run again") from None
    changes = recipe_differences(saved, recipe)
    if not changes:
        return
    listed = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    if finished and isinstance(saved, dict) and saved.get("epochs") != recipe.get("epochs"):
        raise ConfigError(
            f"{out_dir} holds a run that finished its {saved.get('epochs')} epochs; this recipe asks for "
            f"{recipe.get('epochs')}. A finished run is never extended (its learning-rate schedule and the "
            f"selected epoch depend on the epoch count): train into another --out, or pass --overwrite to "
            f"train this one again ({listed})")
    raise ConfigError(
        f"{out_dir} holds {'a finished' if finished else 'an unfinished'} run of another recipe ({listed}); "
        "continue it with its own settings, pass --overwrite to train it again, or choose another --out")


def check_same_run(out_dir: Path, dataset: str, data_sha256: str, split: dict, fold: int) -> None:
    """Refuse to continue or reuse the run in ``out_dir`` on other data or another split: its
    record must name this dataset and fold with the same fingerprint of the fold's prepared
    images, and its split file must give the fold the same train/val/test ids."""
    record_path = out_dir / "run.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{record_path}: cannot read the run's record ({exc}); "
                          "pass --overwrite to train the run again") from None
    problems = []
    if record.get("dataset") != dataset:
        problems.append(f"dataset {record.get('dataset')!r}, not {dataset!r}")
    if record.get("fold") != fold:
        problems.append(f"fold {record.get('fold')}, not {fold}")
    if "data_sha256" not in record:
        problems.append("no fingerprint of its data (written by an older busseg)")
    elif record["data_sha256"] != data_sha256:
        problems.append("other images or masks (the data fingerprint differs)")
    try:
        saved_split = load_split(out_dir / "split.json")
        same_fold = fold_ids(saved_split, fold) == fold_ids(split, fold)
    except ConfigError:
        same_fold = False
    if not same_fold:
        problems.append(f"another split (fold {fold}'s train/val/test ids differ)")
    if problems:
        raise ConfigError(
            f"{out_dir} holds a run made with {'; '.join(problems)}; it cannot be continued or reused "
            "here: pass --overwrite to train it again, or choose another --out")


def _read_run_record(out_dir: Path) -> str | None:
    try:
        return (out_dir / "run.json").read_text()
    except OSError:
        return None


def record_run_end(out_dir: Path, exc: BaseException, **extra) -> None:
    """Write into ``run.json`` how this session ended: ``interrupted`` (Ctrl-C, SIGTERM) or
    ``failed`` (any error), with the reason. Best effort: on a full disk the record may not be
    writable, and the original error is what the user must see."""
    interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
    try:
        record = json.loads((out_dir / "run.json").read_text())
        record.update(status="interrupted" if interrupted else "failed", ended=timestamp(),
                      reason=f"{type(exc).__name__}: {exc}", **extra)
        atomic_write_json(out_dir / "run.json", record)
    except (OSError, ValueError) as write_error:
        log.warning("could not record the end of the run in %s (%s)", out_dir / "run.json", write_error)


def records_how_the_run_ends(train):
    """``train_fold`` leaves a ``run.json`` saying ``running`` only while it runs: whatever stops
    the session after it wrote its record (an error while training or testing, Ctrl-C) is
    written into it. A record this session did not write (a refused rerun) is left alone."""

    @functools.wraps(train)
    def wrapper(recipe, out_dir, *args, **kwargs):
        before = _read_run_record(Path(out_dir))
        try:
            return train(recipe, out_dir, *args, **kwargs)
        except BaseException as exc:
            after = _read_run_record(Path(out_dir))
            if is_main_process() and after is not None and after != before \
                    and json.loads(after).get("status") == "running":
                record_run_end(Path(out_dir), exc)
            raise

    return wrapper


__all__ = ["RUN_ENTRIES", "check_existing_folds", "check_same_recipe", "check_same_run", "check_same_split",
           "discard_run", "existing_run_state", "is_main_process", "record_run_end", "recipe_differences",
           "records_how_the_run_ends"]
