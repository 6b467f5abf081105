"""The robustness benchmark: a run's model(s) scored on scanner-like corruptions of its test
images (``busseg evaluate RUN --corruptions``).

For every test image — read from the dataset records in its original geometry, never from the
network-size cache — and every corruption of :mod:`busseg.data.corruptions` at every severity,
the corrupted image goes through the model's own preprocessing (resize, normalisation), the
predicted probability is mapped back to the image's geometry, and the mask is scored there
against the (correspondingly transformed) ground truth. Every model therefore sees the same
corrupted pixels, whatever its input size or normalisation.

Outputs (``out``): ``per_image.csv`` — one row per image, model (fold), corruption and severity
(``corruption = none``, ``severity = 0`` for the clean image); ``summary.json`` — clean Dice,
Dice per corruption and severity, the mean corruption Dice (mean over corruptions of the mean
over severities, as ImageNet-C's mean corruption error) and the relative robustness (mean
corruption Dice / clean Dice). Interrupted work resumes: each (model, corruption) is written to
``parts/`` as it finishes, and a rerun with the same settings reuses it; a rerun with other
settings into the same folder is refused rather than mixed.

What this is not: a second site. The corruptions are a reproducible proxy for acquisition
shifts (gain, TGC, speckle, resolution, grey map, field of view, compression, overlays); a
scanner from another vendor also changes anatomy, population, lesion mix and annotators. Test on
another dataset (``evaluate --dataset busbra|udiat|stu|folder``) for that.

Prediction goes through :class:`busseg.inference.predict.Predictor` (one predictor object behind
every way of applying a model); :func:`predict_original_geometry` is the single place that maps
images to the model and back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from busseg.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from busseg.data.imageio import read_sample
from busseg.data.preprocess import normalize, resize_image
from busseg.engine.evaluate import find_fold_checkpoints, predict_probabilities, write_rows_csv
from busseg.engine.io import atomic_write_json
from busseg.errors import ConfigError
from busseg.inference.predict import Predictor, load_predictor, resize_probability
from busseg.metrics.segmentation import segmentation_metrics

ROBUSTNESS_FORMAT = "busseg-robustness/1"


def predict_original_geometry(predictor: Predictor, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Foreground probabilities of uint8 grey ``images`` (any sizes), each ``[H, W]`` in its own
    geometry: the model's preprocessing (bilinear resize to its input size, its normalisation,
    channel repeat), the model (or the ensemble's mean), and a bilinear resize back."""
    recipe = predictor.recipe
    size, channels = int(recipe["image_size"]), int(recipe["in_channels"])
    x = torch.stack([
        torch.from_numpy(normalize(resize_image(image, size), recipe["normalization"]))[None].repeat(channels, 1, 1)
        for image in images
    ])
    seg, _ = predict_probabilities(predictor.models, x, batch_size=batch_size, device=predictor.device)
    if seg is None:
        raise ConfigError(f"{recipe['model']} does not segment: the robustness benchmark scores masks")
    return [resize_probability(seg[i], image.shape) for i, image in enumerate(images)]


def _score(prob: np.ndarray, target: np.ndarray, spacing) -> dict:
    return segmentation_metrics(prob > 0.5, target, spacing=spacing)


def summarize_robustness(rows: list[dict], corruptions: Sequence[str], severities: Sequence[int]) -> dict:
    """Clean Dice, Dice per corruption and severity, mean corruption Dice and relative
    robustness (all per-image means, in [0, 1])."""
    def mean_dice(sub):
        values = [float(r["dice"]) for r in sub]
        return float(np.mean(values)) if values else None

    clean = mean_dice([r for r in rows if r["corruption"] == "none"])
    by_corruption = {}
    for name in corruptions:
        per_severity = [mean_dice([r for r in rows if r["corruption"] == name and int(r["severity"]) == s])
                        for s in severities]
        mean = float(np.mean(per_severity)) if all(v is not None for v in per_severity) else None
        by_corruption[name] = {
            "dice_by_severity": dict(zip((str(s) for s in severities), per_severity)),
            "mean_dice": mean,
            "relative": mean / clean if mean is not None and clean else None,
        }
    means = [v["mean_dice"] for v in by_corruption.values()]
    mean_corruption = float(np.mean(means)) if means and all(m is not None for m in means) else None
    dice_by_severity = {str(s): float(np.mean([by_corruption[c]["dice_by_severity"][str(s)] for c in corruptions]))
                        for s in severities} if mean_corruption is not None else {}
    return {
        "clean_dice": clean,
        "mean_corruption_dice": mean_corruption,
        "relative_robustness": mean_corruption / clean if mean_corruption is not None and clean else None,
        "dice_by_severity": dice_by_severity,
        "by_corruption": by_corruption,
    }


def _settings(checkpoints, dataset: str, subset: str, corruptions, severities, seed: int) -> dict:
    return {
        "format": ROBUSTNESS_FORMAT,
        "checkpoints": [{"fold": fold, "path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size,
                         "mtime_ns": Path(path).stat().st_mtime_ns} for fold, path in checkpoints],
        "dataset": dataset, "subset": subset, "corruptions": list(corruptions),
        "severities": list(severities), "seed": int(seed),
    }


def evaluate_corruptions(
    run: str | Path,
    out_dir: str | Path,
    *,
    dataset: str = "phantom",
    root: str | Path | None = None,
    data_options: dict | None = None,
    subset: str = "auto",
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    device: str = "cpu",
    include_normal: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Score the fold model(s) of ``run`` on corrupted test images; see the module docstring.

    ``subset``: ``test`` — each fold model on its own test fold (needs the run's split and
    dataset); ``all`` — every fold model on every image (another dataset); ``auto`` — ``test``
    on the training dataset, ``all`` elsewhere (as ``evaluate``).
    """
    from busseg.data.splits import fold_ids, load_split
    from busseg.engine.evaluate import load_checkpoint
    from busseg.engine.train import load_dataset

    corruptions = list(corruptions or CORRUPTIONS)
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    severities = [int(s) for s in severities]
    if not severities or any(s not in SEVERITIES for s in severities):
        raise ConfigError(f"severities must be among {SEVERITIES}, got {severities}")
    out_dir = Path(out_dir)
    checkpoints = find_fold_checkpoints(run)
    _, recipe = load_checkpoint(checkpoints[0][1])
    trained_on = None
    for candidate in (checkpoints[0][1].parent.parent / "run.json",):
        if candidate.is_file():
            trained_on = json.loads(candidate.read_text()).get("dataset")
    if subset == "auto":
        subset = "test" if trained_on == dataset and checkpoints[0][0] is not None else "all"
    if subset not in ("test", "all"):
        raise ConfigError(f"subset must be auto, test or all, got {subset!r}")

    settings = _settings(checkpoints, dataset, subset, corruptions, severities, seed)
    parts = out_dir / "parts"
    settings_file = out_dir / "settings.json"
    if settings_file.is_file():
        if json.loads(settings_file.read_text()) != settings:
            raise ConfigError(f"{out_dir} holds robustness results of other settings (model, data, corruptions "
                              "or seed); choose another --out or delete it")
    else:
        atomic_write_json(settings_file, settings)

    # records give the original-geometry files; the prepared arrays are not used for scoring
    prepared = load_dataset(dataset, root, recipe, data_options, include_normal)
    records = {r.id: r for r in prepared.records}
    started = time.perf_counter()
    rows: list[dict] = []
    steps = len(checkpoints) * (1 + len(corruptions))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="corruptions", unit="step", leave=False)
    for fold, ckpt in checkpoints:
        tag = f"fold_{fold}" if fold is not None else "model"
        if subset == "test":
            split = load_split(ckpt.parent.parent / "split.json", prepared.records)
            ids = fold_ids(split, fold)[2]
        else:
            ids = list(prepared.ids)
        todo = ["none", *corruptions]
        if all((parts / f"{tag}__{name}.json").is_file() for name in todo):
            for name in todo:
                rows.extend(json.loads((parts / f"{tag}__{name}.json").read_text()))
            if bar is not None:
                bar.update(len(todo))
            continue
        predictor = load_predictor(ckpt, device=device)
        samples = [(sid, *read_sample(records[sid])) for sid in ids]
        base = {"fold": fold, "model": recipe["model"], "dataset": dataset}
        for name in todo:
            part = parts / f"{tag}__{name}.json"
            if part.is_file():
                rows.extend(json.loads(part.read_text()))
                if bar is not None:
                    bar.update(1)
                continue
            part_rows = []
            for severity in ([0] if name == "none" else severities):
                if name == "none":
                    pairs = [(image, mask.astype(bool)) for _, image, mask in samples]
                else:
                    pairs = [corrupt(image, mask, name, severity, key=sid, seed=seed) for sid, image, mask in samples]
                probs = predict_original_geometry(predictor, [p[0] for p in pairs], batch_size)
                for (sid, _, _), (_, target), prob in zip(samples, pairs, probs):
                    rec = records[sid]
                    part_rows.append({"id": sid, "label": rec.label, **base, "corruption": name,
                                      "severity": severity, **_score(prob, target, rec.pixel_spacing_mm)})
            atomic_write_json(part, part_rows)
            rows.extend(part_rows)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    summary = {
        "format": ROBUSTNESS_FORMAT, "model": recipe["model"], "dataset": dataset, "trained_on": trained_on,
        "subset": subset, "n_models": len(checkpoints), "n_images": len({(r["fold"], r["id"]) for r in rows
                                                                          if r["corruption"] == "none"}),
        "seed": seed, "severities": severities, "corruptions": corruptions,
        "levels": {c: {"parameter": CORRUPTIONS[c].describe, "values": list(CORRUPTIONS[c].levels)}
                   for c in corruptions},
        "geometry": "original image geometry (masks scored at each image's own size)",
        "augmentation": recipe["augmentation"].get("preset", "paper recipe"),
        "elapsed_s": round(time.perf_counter() - started, 1),
        **summarize_robustness(rows, corruptions, severities),
    }
    write_rows_csv(rows, out_dir / "per_image.csv")
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def format_robustness(summary: dict) -> str:
    """A few lines for the terminal."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"{summary['model']} on {summary['dataset']} ({summary['subset']} images, {summary['n_images']} "
             f"image(s) x {len(summary['corruptions'])} corruptions x {len(summary['severities'])} severities)",
             f"  clean Dice {pct(summary['clean_dice'])}   mean corruption Dice {pct(summary['mean_corruption_dice'])}"
             f"   relative robustness {pct(summary['relative_robustness'])} %"]
    for name, c in summary["by_corruption"].items():
        per = " ".join(pct(v) for v in c["dice_by_severity"].values())
        lines.append(f"  {name:12s} {per}   (mean {pct(c['mean_dice'])})")
    return "\n".join(lines)
