"""Evaluation: a predictor's probabilities → masks → per-image metrics → summaries.

Models are applied through :class:`busseg.inference.predictor.Predictor` (the same preprocessing,
ensembling and test-time flips as ``busseg predict``). Metrics follow busseg's empty-mask policy
(:mod:`busseg.metrics.segmentation`). Summaries are per-image means and standard deviations,
overall and per class (benign / malignant), with and without post-processing, plus
classification metrics for multi-task models.

Geometry (``geometry``; every summary records the one it used):

- ``"original"`` (default) — each image is scored in its own pixel grid, as nnU-Net and a
  clinical reader do: the network-size foreground probability is resized back to the image's
  size (bilinear, step 4 of the predictor), thresholded and post-processed there, and compared
  with the reference mask as the dataset stores it. HD95/ASD are in that image's pixels (a
  missed lesion counts the image's own diagonal) and in millimetres with the record's pixel
  spacing when one is known.
- ``"network"`` — the papers' protocol: the reference mask resized to the network's input size
  (:func:`busseg.data.preprocess.resize_mask`) and scored against the network-size prediction;
  pixel spacings are rescaled to that grid so millimetres stay physical, but pixel distances
  are network pixels (a missed lesion at 64² counts 90.5 px, the 64-px diagonal, whatever the
  image's size).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from busseg.data.imageio import read_sample
from busseg.data.preprocess import PreparedData
from busseg.errors import ConfigError
from busseg.fileio import prepare_output_dir
from busseg.inference.predictor import Predictor, find_models, load, resize_probability, resolve_postprocess
from busseg.engine.io import atomic_write_csv, atomic_write_json
from busseg.metrics.aggregate import summarize_folds, summarize_per_image
from busseg.metrics.classification import classification_metrics
from busseg.metrics.segmentation import SEGMENTATION_METRICS, segmentation_metrics
from busseg.postprocess import PostprocessConfig, postprocess_mask

log = logging.getLogger(__name__)

#: the geometries an evaluation can score in (module docstring).
GEOMETRIES = {
    "original": "each image's own size: probabilities resized back before thresholding; distances in "
                "that image's pixels (mm where a pixel spacing is known)",
    "network": "the network's input size: reference masks resized to it; distances in network pixels "
               "(mm rescaled to that grid where a pixel spacing is known)",
}
#: distance metrics in millimetres, summarised when every image has a pixel spacing.
MM_METRICS = ("hd95_mm", "asd_mm")


def _check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ConfigError(f"geometry {geometry!r} unknown; choose one of {', '.join(GEOMETRIES)}")
    return geometry


def _network_spacing(prepared: PreparedData, i: int) -> tuple[float, float] | None:
    rec = prepared.records[i]
    if rec.pixel_spacing_mm is None:
        return None
    h, w = prepared.original_sizes[i]
    s = prepared.image_size
    return (rec.pixel_spacing_mm[0] * h / s, rec.pixel_spacing_mm[1] * w / s)


def scored_case(
    prepared: PreparedData, i: int, probability: np.ndarray, config: PostprocessConfig | None, geometry: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """What image ``i`` is scored on: ``(image, reference, predicted, post-processed or None,
    pixel spacing)`` in ``geometry``, from its network-size foreground ``probability``. Scores
    and case figures both come from here, so a figure shows exactly what the CSV scored."""
    if geometry == "original":
        image, reference = read_sample(prepared.records[i])
        probability = resize_probability(probability, reference.shape)
        spacing = prepared.records[i].pixel_spacing_mm
    else:
        image, reference = prepared.images[i], prepared.masks[i].astype(bool)
        spacing = _network_spacing(prepared, i)
    predicted = postprocess_mask(probability, PostprocessConfig.RAW)
    processed = postprocess_mask(probability, config) if config is not None else None
    return image, reference, predicted, processed, spacing


def score(
    prepared: PreparedData,
    seg_prob: np.ndarray | None,
    cls_prob: np.ndarray | None,
    *,
    postprocess: PostprocessConfig | None = None,
    geometry: str = "original",
) -> list[dict]:
    """One row per image: id, label, the size it was scored at, segmentation metrics (and
    ``pp_``-prefixed metrics after ``postprocess``), and the malignancy probability of
    multi-task models. ``seg_prob`` / ``cls_prob``: network-size probabilities ``[N, S, S]``
    and ``[N]``."""
    _check_geometry(geometry)
    rows = []
    for i, sid in enumerate(prepared.ids):
        rec = prepared.records[i]
        row: dict = {"id": sid, "label": rec.label, "source": rec.source}
        if seg_prob is not None:
            _, reference, predicted, processed, spacing = scored_case(prepared, i, seg_prob[i], postprocess, geometry)
            row["height"], row["width"] = reference.shape
            row.update(segmentation_metrics(predicted, reference, spacing=spacing))
            if processed is not None:
                for k, v in segmentation_metrics(processed, reference, spacing=spacing).items():
                    row[f"pp_{k}"] = v
        if cls_prob is not None:
            row["prob_malignant"] = float(cls_prob[i])
        rows.append(row)
    return rows


def _metrics_of(rows: list[dict]) -> tuple[str, ...]:
    """The metrics to summarise: the pixel ones, and the mm ones when every image has them."""
    with_mm = all(r.get(m) is not None for r in rows for m in MM_METRICS)
    return SEGMENTATION_METRICS + (MM_METRICS if rows and with_mm else ())


def summarize(rows: list[dict], has_seg: bool, has_cls: bool, postprocessed: bool = False) -> dict:
    summary: dict = {"n_images": len(rows), "aggregation": "per-image mean and std"}
    if has_seg:
        metrics = _metrics_of(rows)
        summary["segmentation"] = summarize_per_image(rows, metrics)
        summary["by_class"] = {}
        for label in ("benign", "malignant"):
            sub = [r for r in rows if r["label"] == label]
            if sub:
                summary["by_class"][label] = summarize_per_image(sub, metrics)
        if postprocessed:
            pp_rows = [{k[3:]: v for k, v in r.items() if k.startswith("pp_")} | {"id": r["id"]} for r in rows]
            summary["segmentation_postprocessed"] = summarize_per_image(pp_rows, metrics)
    if has_cls:
        known = [r for r in rows if r["label"] in ("benign", "malignant") and "prob_malignant" in r]
        if known:
            y = np.array([1 if r["label"] == "malignant" else 0 for r in known])
            p = np.array([r["prob_malignant"] for r in known])
            summary["classification"] = classification_metrics(y, p)
    return summary


def evaluate_predictor(
    predictor: Predictor,
    prepared: PreparedData,
    out_dir: str | Path | None = None,
    *,
    postprocess=None,
    extra_columns: dict | None = None,
    geometry: str = "original",
    figures: int = 0,
) -> tuple[list[dict], dict]:
    """Apply ``predictor`` (its models, ensemble and TTA setting) to ``prepared``, score every
    image in ``geometry``, and write ``per_image.csv`` and ``summary.json`` into ``out_dir``
    when given, with ``figures`` case figures under ``out_dir/figures`` (the post-processed
    panel only when ``postprocess`` is scored).

    ``postprocess`` (see :func:`busseg.inference.predictor.resolve_postprocess`) is scored as
    the ``pp_`` columns, next to the plain 0.5 threshold."""
    _check_geometry(geometry)
    config = resolve_postprocess(postprocess, predictor.recipe) if postprocess else None
    inputs = torch.stack([predictor.preprocess(image) for image in prepared.images]) if len(prepared) else None
    seg_prob, cls_prob = predictor.probabilities(inputs) if inputs is not None else (None, None)
    rows = score(prepared, seg_prob, cls_prob, postprocess=config, geometry=geometry)
    for r in rows:
        r.update(extra_columns or {})
    summary = summarize(rows, predictor.segments and seg_prob is not None, cls_prob is not None, config is not None)
    summary.update(model=predictor.recipe["model"], n_models=len(predictor.models), tta=predictor.tta,
                   postprocess=postprocess, geometry=geometry)
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_csv(out_dir / "per_image.csv", rows)
        atomic_write_json(out_dir / "summary.json", summary)
        if figures and seg_prob is not None:
            write_case_figures(predictor, prepared, seg_prob, rows, out_dir / "figures", n=figures,
                               postprocess=config, geometry=geometry)
    return rows, summary


# ----------------------------------------------------------------------------------- runs


def _run_record(model_file: Path) -> dict | None:
    """``run.json`` of the run a checkpoint belongs to (``<run>/checkpoints/<file>``)."""
    candidate = model_file.parent.parent / "run.json"
    if candidate.is_file():
        try:
            return json.loads(candidate.read_text())
        except (OSError, ValueError):
            return None
    return None


def _split_ids(model_file: Path) -> set[str]:
    """Every id of the split a fold run was trained with (its ``split.json``)."""
    split_file = model_file.parent.parent / "split.json"
    try:
        split = json.loads(split_file.read_text())
        return {i for fold in split["folds"] for part in ("train", "val", "test") for i in fold.get(part, [])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _same_folder(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def trained_on_same_data(
    run_record: dict | None, dataset: str, root: str | Path | None, data_options: dict | None,
    ids: set[str], split_ids: set[str],
) -> bool:
    """True when the evaluated data are the data the run was trained on: the same dataset
    name and options (the number of phantoms ``n`` aside: image ``i`` of a phantom set is the
    same whatever ``n``), and either the same folder or ids that the run's split holds (a
    folder given by another path). Unknown provenance (a bare checkpoint, an ONNX file)
    counts as other data."""
    if run_record is None or run_record.get("dataset") != dataset:
        return False
    trained = {k: v for k, v in (run_record.get("data_options") or {}).items() if k != "n"}
    given = {k: v for k, v in (data_options or {}).items() if k != "n"}
    if trained != given:
        return False
    return _same_folder(run_record.get("data_root"), root) or bool(ids & split_ids)


SUBSETS = ("auto", "test", "all")


def check_subset(subset: str) -> str:
    if subset not in SUBSETS:
        raise ConfigError(f"subset {subset!r} unknown; choose {', '.join(SUBSETS[:-1])} or {SUBSETS[-1]}")
    return subset


@dataclass(frozen=True)
class ScoredImages:
    """Which images each model of a run is scored on (:func:`select_images`).

    Attributes:
        subset: ``"test"`` (each fold model on its own test fold) or ``"all"`` (every image).
        in_domain: the data are those the run was trained on (:func:`trained_on_same_data`).
        trained_on: the dataset named in the run's ``run.json`` (``None`` when unknown).
        ids: per model, in the order of ``find_models``, the ids it scores.
    """

    subset: str
    in_domain: bool
    trained_on: str | None
    ids: list[list[str]]


def select_images(
    run: str | Path,
    models: list[tuple[int | None, Path]],
    prepared: PreparedData,
    *,
    dataset: str,
    root: str | Path | None,
    data_options: dict | None,
    subset: str = "auto",
    ensemble: bool = False,
) -> ScoredImages:
    """The images each fold model of ``run`` (``models``: :func:`find_models`) is scored on —
    the one rule every evaluation of a run follows (``evaluate``, the robustness benchmark):

    - ``subset="test"``: each fold model on its own test fold of the run's ``split.json``;
    - ``subset="all"``: every model on every image of ``prepared`` (cross-dataset evaluation;
      a warning when these are the training data: the scores include training images);
    - ``subset="auto"``: ``test`` on the data the run was trained on, ``all`` elsewhere.

    ``ensemble`` (the mean of the fold models on every image) is refused on the training data,
    where every image was trained on by all but one fold model."""
    from busseg.data.splits import fold_ids, load_split

    check_subset(subset)
    record = _run_record(models[0][1])
    in_domain = trained_on_same_data(record, dataset, root, data_options, set(prepared.ids),
                                     _split_ids(models[0][1]))
    if ensemble and in_domain:
        raise ConfigError(
            f"--ensemble on {dataset!r}, the data {run} was trained on: every image there was trained on by "
            "all but one fold model, so an ensemble's score would be leaky (optimistic). The in-domain estimate "
            "is each fold model on its own test fold (the default); use --ensemble for another dataset "
            "(cross-dataset evaluation)"
        )
    if subset == "auto":
        subset = "test" if in_domain and models[0][0] is not None else "all"
    elif subset == "all" and in_domain:
        log.warning("scoring every fold model on every image of %s, the data it was trained on: "
                    "the scores include training images", dataset)
    if ensemble and subset != "all":
        raise ConfigError("--ensemble scores the mean of the fold models on every image; here each fold model is "
                          "scored on its own test fold (subset 'test'): pass --subset all to ensemble")
    ids = []
    for fold, path in models:
        if subset == "test":
            split_file = path.parent.parent / "split.json"
            if fold is None or not split_file.is_file():
                raise ConfigError(f"{path}: subset 'test' needs a fold run with its split.json; use subset 'all'")
            ids.append(fold_ids(load_split(split_file, prepared.records), fold)[2])
        else:
            ids.append(list(prepared.ids))
    return ScoredImages(subset, in_domain, record.get("dataset") if record else None, ids)


def evaluate_run(
    run: str | Path,
    out_dir: str | Path,
    *,
    dataset: str = "phantom",
    root: str | Path | None = None,
    data_options: dict | None = None,
    subset: str = "auto",
    tta: bool = False,
    postprocess: dict | None = None,
    ensemble: bool = False,
    device: str = "cpu",
    include_normal: bool | None = None,
    figures: int = 0,
    geometry: str = "original",
) -> dict:
    """Evaluate the fold model(s) of ``run`` on ``dataset``.

    ``subset``: ``"test"`` — each fold model on its own test fold (the cross-validation
    estimate; needs the run's split and the data the run was trained on); ``"all"`` — every
    fold model on every image (cross-dataset evaluation), reported as mean ± std across fold
    models; ``"auto"`` picks ``test`` on the training data and ``all`` otherwise.

    ``ensemble``: also score the mean of the fold models' probabilities on every image — for
    cross-dataset evaluation only: on the training data every image was trained on by all but
    one fold model, so the ensemble's score would be leaky, and it is refused.

    ``figures``: per model, this many case figures (best to worst Dice; original, ground
    truth, predicted, post-processed, attention) under ``<out>/<fold>/figures``, drawn from the
    very masks the CSV scores (same TTA, geometry and post-processing).
    """
    from busseg.engine.data import load_dataset

    _check_geometry(geometry)
    check_subset(subset)
    out_dir = Path(out_dir)
    models = find_models(run)
    if ensemble and len(models) < 2:
        raise ConfigError(f"--ensemble averages several fold models; {run} holds {len(models)}")
    predictors = [load(path, device=device, tta=tta) for _, path in models]
    recipe = predictors[0].recipe
    prepare_output_dir(out_dir)
    prepared = load_dataset(dataset, root, recipe, data_options, include_normal)
    chosen = select_images(run, models, prepared, dataset=dataset, root=root, data_options=data_options,
                           subset=subset, ensemble=ensemble)
    subset, trained_on = chosen.subset, chosen.trained_on
    per_model, all_rows = [], []
    for (fold, _), predictor, ids in zip(models, predictors, chosen.ids):
        tag = f"fold_{fold}" if fold is not None else "model"
        rows, summary = evaluate_predictor(
            predictor, prepared.subset(ids), out_dir / tag, postprocess=postprocess, geometry=geometry,
            figures=figures, extra_columns={"fold": fold, "model": recipe["model"], "dataset": dataset})
        per_model.append(summary)
        all_rows.extend(rows)
    n_images = len(all_rows) if subset == "test" else len(prepared)
    result: dict = {"model": recipe["model"], "dataset": dataset, "trained_on": trained_on, "subset": subset,
                    "n_models": len(models), "n_images": n_images, "tta": tta, "postprocess": postprocess,
                    "geometry": geometry,
                    "aggregation": "mean ± std across fold models of per-image means"}
    if "segmentation" in per_model[0]:
        metrics = tuple(m for m in SEGMENTATION_METRICS + MM_METRICS
                        if all(f"{m}_mean" in s["segmentation"] for s in per_model))
        result["segmentation"] = summarize_folds([s["segmentation"] for s in per_model], metrics)
        for label in ("benign", "malignant"):
            per = [s["by_class"][label] for s in per_model if label in s.get("by_class", {})]
            if len(per) == len(per_model):
                result.setdefault("by_class", {})[label] = summarize_folds(per, metrics)
        if postprocess:
            result["segmentation_postprocessed"] = summarize_folds(
                [s["segmentation_postprocessed"] for s in per_model], metrics)
    if "classification" in per_model[0]:
        result["classification_per_model"] = [s["classification"] for s in per_model]
    if ensemble and len(models) > 1:
        combined = load([path for _, path in models], device=device, tta=tta)
        _, result["ensemble"] = evaluate_predictor(
            combined, prepared, out_dir / "ensemble", postprocess=postprocess, geometry=geometry,
            extra_columns={"model": recipe["model"], "dataset": dataset})
    atomic_write_csv(out_dir / "per_image.csv", all_rows)
    atomic_write_json(out_dir / "summary.json", result)
    return result


# -------------------------------------------------------------------------------- figures


def pick_cases(rows: list[dict], n: int, metric: str = "dice") -> list[tuple[str, str]]:
    """Up to ``n`` (id, tag) pairs spread from the best to the worst image by ``metric``
    (best, median and worst first, then evenly between them)."""
    scored = sorted((r for r in rows if r.get(metric) is not None), key=lambda r: (-float(r[metric]), r["id"]))
    if not scored or n <= 0:
        return []
    m = len(scored)
    order = [0, m // 2, m - 1] + [round(i * (m - 1) / max(1, n - 1)) for i in range(n)]
    picked: list[tuple[str, str]] = []
    for position in order:
        sid = scored[position]["id"]
        if sid not in [p for p, _ in picked]:
            tag = {0: "best", m // 2: "median", m - 1: "worst"}.get(position, f"rank {position + 1}/{m}")
            picked.append((sid, tag))
        if len(picked) == n:
            break
    return picked


def figure_name(tag: str, sample_id: str, taken: set[str]) -> str:
    """A portable file name for a case figure: letters, digits, ``-`` and ``_`` only (BUSI's
    ``benign (10)`` becomes ``best_benign_10.png``), made unique among ``taken``."""
    stem = "_".join(part for part in (re.sub(r"[^A-Za-z0-9]+", "", tag.split("/")[0]),
                                      re.sub(r"[^A-Za-z0-9-]+", "_", sample_id).strip("_")) if part)
    name, k = f"{stem}.png", 2
    while name in taken:
        name, k = f"{stem}_{k}.png", k + 1
    taken.add(name)
    return name


def _attention_map(extras: dict, index: int) -> np.ndarray | None:
    """The finest single-channel attention map a model exposes (e.g. the Attention U-Net
    gates' ``attention_1``), as a ``[h, w]`` array in [0, 1], or ``None``."""
    maps = [v for k, v in extras.items() if "attention" in k and v.dim() == 4 and v.shape[1] == 1]
    if not maps:
        return None
    finest = max(maps, key=lambda t: t.shape[-1] * t.shape[-2])[index, 0].float()
    if finest.min() < 0 or finest.max() > 1:
        finest = torch.sigmoid(finest)
    return finest.cpu().numpy()


@torch.no_grad()
def _attention_maps(predictor: Predictor, prepared: PreparedData) -> list[np.ndarray | None]:
    """Attention coefficients of a single PyTorch model (one plain forward pass, no flips: the
    attention panel explains the model, the mask panels show what was scored)."""
    if predictor.backend != "pytorch" or len(predictor.models) != 1:
        return [None] * len(prepared)
    model = predictor.models[0]
    x = torch.stack([predictor.preprocess(image) for image in prepared.images]).to(predictor.device)
    extras = model(x).extras or {}
    return [_attention_map(extras, i) for i in range(len(prepared))]


def write_case_figures(
    predictor: Predictor,
    prepared: PreparedData,
    seg_prob: np.ndarray,
    rows: list[dict],
    out_dir: str | Path,
    *,
    n: int = 6,
    postprocess: PostprocessConfig | None = None,
    geometry: str = "original",
) -> list[Path]:
    """Figures of the papers' kind for ``n`` images picked from best to worst Dice: original |
    ground truth | predicted | post-processed | attention overlay (when the model exposes
    attention coefficients), in the TP green / FP red / FN blue convention. The masks are
    those :func:`score` scored from ``seg_prob`` (:func:`scored_case`), so the IoU in a
    panel's title is the CSV's."""
    from busseg.viz.figures import save_case_figure

    cases = pick_cases(rows, n)
    if not cases:
        return []
    positions = [prepared.index_of(sid) for sid, _ in cases]
    attention = _attention_maps(predictor, prepared.subset([sid for sid, _ in cases]))
    scored = {r["id"]: r for r in rows}
    tta = " + flip TTA" if predictor.tta else ""
    taken: set[str] = set()
    written = []
    for (sid, tag), i, att in zip(cases, positions, attention):
        image, reference, predicted, processed, _ = scored_case(prepared, i, seg_prob[i], postprocess, geometry)
        title = (f"{predictor.recipe['model']}{tta} — {sid} ({tag}); Dice {float(scored[sid]['dice']):.3f}, "
                 f"{geometry} geometry")
        written.append(save_case_figure(Path(out_dir) / figure_name(tag, sid, taken), image, reference,
                                        predicted, processed, att, title=title))
    return written
