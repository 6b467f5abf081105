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

Prediction goes through :class:`busseg.inference.predictor.Predictor` — called on the corrupted
uint8 images, it resizes, normalises, predicts and maps the probability back to each image's own
size, as for any scan — and the images each fold model scores are chosen by
:func:`busseg.engine.evaluate.select_images`, the rule ``evaluate`` follows, so the clean rows here
are the images (and, with the same ``tta``/``postprocess``, the masks) ``evaluate`` scores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from busseg.console import progress_bar
from busseg.data.augment import describe_augmentation
from busseg.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt
from busseg.data.imageio import read_sample
from busseg.engine.evaluate import select_images
from busseg.engine.io import atomic_write_csv, atomic_write_json
from busseg.errors import ConfigError
from busseg.fileio import file_sha256
from busseg.inference.predictor import Predictor, find_models, load
from busseg.metrics.segmentation import segmentation_metrics

ROBUSTNESS_FORMAT = "busseg-robustness/2"


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


def _settings(models, dataset: str, subset: str, corruptions, severities, seed: int, predictor: Predictor) -> dict:
    """What the results of a folder depend on; a rerun with other settings is refused."""
    return {
        "format": ROBUSTNESS_FORMAT,
        "models": [{"fold": fold, "path": str(Path(path).resolve()), "sha256": file_sha256(path)}
                   for fold, path in models],
        "dataset": dataset, "subset": subset, "corruptions": list(corruptions),
        "severities": list(severities), "seed": int(seed),
        "tta": predictor.tta, "postprocess": predictor.postprocess.describe(),
    }


def _masks(predictor: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """The predictor's masks of uint8 images, each at its image's own size (no measurements)."""
    return [p.mask for p in predictor(images, measure=False)]


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
    tta: bool = False,
    postprocess=None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Score the fold model(s) of ``run`` on corrupted images; see the module docstring.

    ``subset``: ``test`` — each fold model on its own test fold (needs the run's split and
    dataset); ``all`` — every fold model on every image (another dataset); ``auto`` — ``test``
    on the data the run was trained on, ``all`` elsewhere (:func:`select_images`, as
    ``evaluate``). ``tta`` and ``postprocess`` are the predictor's (:func:`busseg.load`): the
    masks scored are the masks ``busseg predict`` would write.
    """
    from busseg.engine.data import load_dataset

    corruptions, severities = check_corruptions(corruptions, severities)
    out_dir = Path(out_dir)
    models = find_models(run)
    predictors: dict[int, Predictor] = {}

    def predictor_of(k: int) -> Predictor:
        if k not in predictors:
            predictors[k] = load(models[k][1], device=device, tta=tta, postprocess=postprocess,
                                 batch_size=batch_size)
        return predictors[k]

    first = predictor_of(0)
    recipe = first.recipe
    if not first.segments:
        raise ConfigError(f"{run}: {recipe['model']} does not segment; the robustness benchmark scores masks")
    # records give the original-geometry files; the prepared network-size arrays are not scored
    prepared = load_dataset(dataset, root, recipe, data_options, include_normal)
    chosen = select_images(run, models, prepared, dataset=dataset, root=root, data_options=data_options,
                           subset=subset)
    settings = _settings(models, dataset, chosen.subset, corruptions, severities, seed, first)
    parts = out_dir / "parts"
    settings_file = out_dir / "settings.json"
    if settings_file.is_file():
        if json.loads(settings_file.read_text()) != settings:
            raise ConfigError(f"{out_dir} holds robustness results of other settings (models, data, corruptions, "
                              "seed, TTA or post-processing); choose another --out or delete it")
    else:
        atomic_write_json(settings_file, settings)

    records = {r.id: r for r in prepared.records}
    started = time.perf_counter()
    rows: list[dict] = []
    todo = ["none", *corruptions]
    bar = progress_bar(total=len(models) * len(todo), desc="corruptions", unit="step", enabled=progress)
    for k, ((fold, _), ids) in enumerate(zip(models, chosen.ids)):
        tag = f"fold_{fold}" if fold is not None else "model"
        samples = None
        base = {"fold": fold, "model": recipe["model"], "dataset": dataset}
        for name in todo:
            part = parts / f"{tag}__{name}.json"
            if part.is_file():
                rows.extend(json.loads(part.read_text()))
                bar.update(1)
                continue
            if samples is None:
                samples = [(sid, *read_sample(records[sid])) for sid in ids]
            part_rows = []
            for severity in ([0] if name == "none" else severities):
                if name == "none":
                    pairs = [(image, mask.astype(bool)) for _, image, mask in samples]
                else:
                    pairs = [corrupt(image, mask, name, severity, key=sid, seed=seed) for sid, image, mask in samples]
                masks = _masks(predictor_of(k), [image for image, _ in pairs])
                for (sid, _, _), (_, target), predicted in zip(samples, pairs, masks):
                    rec = records[sid]
                    part_rows.append({"id": sid, "label": rec.label, **base, "corruption": name,
                                      "severity": severity,
                                      **segmentation_metrics(predicted, target, spacing=rec.pixel_spacing_mm)})
            atomic_write_json(part, part_rows)
            rows.extend(part_rows)
            bar.update(1)
    bar.close()
    summary = {
        "format": ROBUSTNESS_FORMAT, "model": recipe["model"], "dataset": dataset, "trained_on": chosen.trained_on,
        "subset": chosen.subset, "n_models": len(models),
        "n_images": len({(r["fold"], r["id"]) for r in rows if r["corruption"] == "none"}),
        "seed": seed, "severities": severities, "corruptions": corruptions,
        "levels": {c: {"parameter": CORRUPTIONS[c].describe, "values": list(CORRUPTIONS[c].levels)}
                   for c in corruptions},
        "geometry": "original", "tta": first.tta, "postprocess": first.postprocess.describe(),
        "augmentation": describe_augmentation(recipe["augmentation"]),
        "elapsed_s": round(time.perf_counter() - started, 1),
        **summarize_robustness(rows, corruptions, severities),
    }
    atomic_write_csv(out_dir / "per_image.csv", rows)
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
