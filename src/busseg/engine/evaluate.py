"""Evaluation: checkpoints → probabilities → per-image metrics → summaries.

Metrics are computed per image at the model's input resolution (the papers' protocol: masks
resized to the network size), with busseg's empty-mask policy (see
:mod:`busseg.metrics.segmentation`); pixel spacings are rescaled to that resolution so HD95/ASD
in millimetres stay physical. Summaries are per-image means and standard deviations, overall and
per class (benign / malignant), with and without post-processing, plus classification metrics
for multi-task models.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from busseg.data.preprocess import PreparedData
from busseg.engine.data import InMemoryTensors
from busseg.engine.io import atomic_write_json, atomic_write_text
from busseg.errors import CheckpointError, ConfigError
from busseg.fileio import prepare_output_dir
from busseg.metrics.aggregate import summarize_per_image
from busseg.metrics.classification import classification_metrics
from busseg.metrics.segmentation import segmentation_metrics
from busseg.models import model_info


def load_checkpoint(path: str | Path, expected_model: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild the model saved in a busseg checkpoint; returns ``(model, recipe)``.

    The recipe stored in the checkpoint rebuilds the architecture (encoder weights come from the
    checkpoint itself, so no download is attempted)."""
    from busseg.engine.task import build_model_from_recipe

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    recipe = (ckpt.get("hyper_parameters") or {}).get("recipe") if isinstance(ckpt, dict) else None
    if recipe is None or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a busseg training checkpoint (no recipe inside)")
    if expected_model is not None and recipe["model"] != expected_model:
        raise CheckpointError(
            f"checkpoint {path} holds model {recipe['model']!r}, not {expected_model!r}"
        )
    model = build_model_from_recipe(recipe, encoder_weights="none")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit model {recipe['model']!r} ({str(exc)[:300]})") from exc
    return model.to(device).eval(), recipe


@torch.no_grad()
def predict_probabilities(
    models: Sequence[torch.nn.Module],
    images: torch.Tensor,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: bool = False,
    amp: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Mean foreground probability ``[N,S,S]`` and mean malignancy probability ``[N]`` over
    ``models`` (an ensemble: mean of probabilities) and, with ``tta``, over the identity, the
    horizontal and the vertical flip (each prediction flipped back before averaging)."""
    device = torch.device(device)
    seg_chunks, cls_chunks = [], []
    flips = [None, (3,), (2,)] if tta else [None]
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        seg_sum, cls_sum, count = None, None, 0
        for model in models:
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                    out = model(xi)
                if out.seg is not None:
                    p = torch.sigmoid(out.seg.float())
                    p = torch.flip(p, dims) if dims else p
                    seg_sum = p if seg_sum is None else seg_sum + p
                if out.cls is not None:
                    c = torch.softmax(out.cls.float(), 1)[:, 1]
                    cls_sum = c if cls_sum is None else cls_sum + c
                count += 1
        if seg_sum is not None:
            seg_chunks.append((seg_sum / count)[:, 0].cpu().numpy())
        if cls_sum is not None:
            cls_chunks.append((cls_sum / count).cpu().numpy())
    seg = np.concatenate(seg_chunks) if seg_chunks else None
    cls = np.concatenate(cls_chunks) if cls_chunks else None
    return seg, cls


def _spacing_at(prepared: PreparedData, i: int) -> tuple[float, float] | None:
    rec = prepared.records[i]
    if rec.pixel_spacing_mm is None:
        return None
    h, w = prepared.original_sizes[i]
    s = prepared.image_size
    return (rec.pixel_spacing_mm[0] * h / s, rec.pixel_spacing_mm[1] * w / s)


def score(
    prepared: PreparedData,
    seg_prob: np.ndarray | None,
    cls_prob: np.ndarray | None,
    *,
    threshold: float = 0.5,
    postprocess: dict | None = None,
) -> list[dict]:
    """One row per image: id, label, segmentation metrics (and ``pp_``-prefixed metrics after
    post-processing), and the malignancy probability for multi-task models."""
    pp_config = None
    if postprocess:
        from busseg.postprocess import PostprocessConfig, postprocess_mask

        pp_config = PostprocessConfig.from_dict(postprocess)
    rows = []
    for i, sid in enumerate(prepared.ids):
        rec = prepared.records[i]
        row: dict = {"id": sid, "label": rec.label, "source": rec.source}
        target = prepared.masks[i].astype(bool)
        spacing = _spacing_at(prepared, i)
        if seg_prob is not None:
            pred = seg_prob[i] > threshold
            row.update(segmentation_metrics(pred, target, spacing=spacing))
            if pp_config is not None:
                processed = postprocess_mask(seg_prob[i], pp_config)
                for k, v in segmentation_metrics(processed, target, spacing=spacing).items():
                    row[f"pp_{k}"] = v
        if cls_prob is not None:
            row["prob_malignant"] = float(cls_prob[i])
        rows.append(row)
    return rows


def summarize(rows: list[dict], has_seg: bool, has_cls: bool, postprocessed: bool = False) -> dict:
    summary: dict = {"n_images": len(rows), "aggregation": "per-image mean and std"}
    if has_seg:
        summary["segmentation"] = summarize_per_image(rows)
        summary["by_class"] = {}
        for label in ("benign", "malignant"):
            sub = [r for r in rows if r["label"] == label]
            if sub:
                summary["by_class"][label] = summarize_per_image(sub)
        if postprocessed:
            pp_rows = [{k[3:]: v for k, v in r.items() if k.startswith("pp_")} for r in rows]
            summary["segmentation_postprocessed"] = summarize_per_image(pp_rows)
    if has_cls:
        known = [r for r in rows if r["label"] in ("benign", "malignant") and "prob_malignant" in r]
        if known:
            y = np.array([1 if r["label"] == "malignant" else 0 for r in known])
            p = np.array([r["prob_malignant"] for r in known])
            summary["classification"] = classification_metrics(y, p)
    return summary


def write_rows_csv(rows: list[dict], path: str | Path) -> Path:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return atomic_write_text(path, buf.getvalue())


def evaluate_models(
    models: Sequence[torch.nn.Module],
    recipe: dict,
    prepared: PreparedData,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    tta: bool = False,
    postprocess: dict | None = None,
    extra_columns: dict | None = None,
    batch_size: int = 16,
) -> tuple[list[dict], dict]:
    """Predict ``prepared`` with ``models`` (mean of probabilities), score every image, and
    write ``per_image.csv`` and ``summary.json`` into ``out_dir`` when given."""
    tensors = InMemoryTensors(prepared, recipe["normalization"], recipe["in_channels"])
    info = model_info(recipe["model"])
    seg_prob, cls_prob = predict_probabilities(
        models, tensors.images, batch_size=batch_size, device=device, tta=tta,
        amp=torch.device(device).type == "cuda",
    )
    rows = score(prepared, seg_prob, cls_prob, postprocess=postprocess)
    for r in rows:
        r.update(extra_columns or {})
    summary = summarize(rows, info.segments and seg_prob is not None, cls_prob is not None, bool(postprocess))
    summary["model"] = recipe["model"]
    summary["tta"] = tta
    summary["postprocess"] = postprocess
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_rows_csv(rows, out_dir / "per_image.csv")
        atomic_write_json(out_dir / "summary.json", summary)
    return rows, summary


def find_fold_checkpoints(run: str | Path) -> list[tuple[int | None, Path]]:
    """``(fold, best checkpoint)`` for a fold run directory, a ``cv`` directory of
    ``fold_*`` runs, or a checkpoint file."""
    import json

    run = Path(run)
    if run.is_file():
        return [(None, run)]
    if (run / "result.json").is_file():
        res = json.loads((run / "result.json").read_text())
        return [(res.get("fold"), run / res["best_checkpoint"])]
    found = []
    for d in sorted(run.glob("fold_*"), key=lambda p: int(p.name.split("_")[1])):
        if (d / "result.json").is_file():
            found.extend(find_fold_checkpoints(d))
    if not found:
        raise CheckpointError(f"{run}: no finished run (result.json) or checkpoint found there")
    return found


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
) -> dict:
    """Evaluate the fold model(s) of ``run`` on ``dataset``.

    ``subset``: ``"test"`` — each fold model on its own test fold (the cross-validation
    estimate; needs the run's split and the same dataset); ``"all"`` — every fold model on every
    image (cross-dataset evaluation), reported as mean ± std across fold models, plus the
    ensemble (mean of probabilities) with ``ensemble``; ``"auto"`` picks ``test`` when the
    dataset is the one the run was trained on and ``all`` otherwise.

    ``figures``: per model, this many case figures (best to worst Dice; original, ground
    truth, predicted, post-processed, attention) under ``<out>/<fold>/figures``.
    """
    import json

    from busseg.data.splits import fold_ids, load_split
    from busseg.engine.train import load_dataset
    from busseg.metrics.aggregate import summarize_folds

    out_dir = Path(out_dir)
    checkpoints = find_fold_checkpoints(run)
    if ensemble and len(checkpoints) < 2:
        raise ConfigError(f"--ensemble averages several fold models; {run} holds {len(checkpoints)}")
    first_model, recipe = load_checkpoint(checkpoints[0][1], device=device)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    trained_on = None
    for candidate in (run_dir / "run.json", checkpoints[0][1].parent.parent / "run.json"):
        if candidate.is_file():
            trained_on = json.loads(candidate.read_text()).get("dataset")
            break
    if subset == "auto":
        subset = "test" if trained_on == dataset and checkpoints[0][0] is not None else "all"
    if ensemble and subset != "all":
        raise ConfigError("--ensemble scores the mean of the fold models on every image; here each fold model is "
                          "scored on its own test fold (subset 'test'): pass --subset all to ensemble")
    prepare_output_dir(out_dir)
    prepared = load_dataset(dataset, root, recipe, data_options, include_normal)
    per_model, all_rows = [], []
    for fold, ckpt in checkpoints:
        model = first_model if ckpt == checkpoints[0][1] else load_checkpoint(ckpt, recipe["model"], device)[0]
        if subset == "test":
            split_file = ckpt.parent.parent / "split.json"
            split = load_split(split_file, prepared.records)
            ids = fold_ids(split, fold)[2]
        else:
            ids = prepared.ids
        tag = f"fold_{fold}" if fold is not None else "model"
        rows, summary = evaluate_models([model], recipe, prepared.subset(ids), out_dir / tag, device=device,
                                        tta=tta, postprocess=postprocess,
                                        extra_columns={"fold": fold, "model": recipe["model"], "dataset": dataset})
        if figures:
            write_case_figures(model, recipe, prepared.subset(ids), rows, out_dir / tag / "figures", n=figures,
                               postprocess=postprocess or recipe.get("postprocess"), device=device)
        per_model.append(summary)
        all_rows.extend(rows)
    result: dict = {"model": recipe["model"], "dataset": dataset, "trained_on": trained_on, "subset": subset,
                    "n_models": len(checkpoints), "tta": tta, "postprocess": postprocess}
    if "segmentation" in per_model[0]:
        result["segmentation"] = summarize_folds([s["segmentation"] for s in per_model])
        for label in ("benign", "malignant"):
            per = [s["by_class"][label] for s in per_model if label in s.get("by_class", {})]
            if len(per) == len(per_model):
                result.setdefault("by_class", {})[label] = summarize_folds(per)
        if postprocess:
            result["segmentation_postprocessed"] = summarize_folds([s["segmentation_postprocessed"] for s in per_model])
    if "classification" in per_model[0]:
        result["classification_per_model"] = [s["classification"] for s in per_model]
    if ensemble and subset == "all" and len(checkpoints) > 1:
        models = [load_checkpoint(c, recipe["model"], device)[0] for _, c in checkpoints]
        _, ens = evaluate_models(models, recipe, prepared, out_dir / "ensemble", device=device, tta=tta,
                                 postprocess=postprocess, extra_columns={"model": recipe["model"], "dataset": dataset})
        result["ensemble"] = ens
    write_rows_csv(all_rows, out_dir / "per_image.csv")
    atomic_write_json(out_dir / "summary.json", result)
    return result


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
def write_case_figures(
    model: torch.nn.Module,
    recipe: dict,
    prepared: PreparedData,
    rows: list[dict],
    out_dir: str | Path,
    *,
    n: int = 6,
    postprocess: dict | None = None,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Figures of the papers' kind for ``n`` images picked from best to worst Dice: original |
    ground truth | predicted | post-processed | attention overlay (when the model exposes
    attention coefficients), in the TP green / FP red / FN blue convention."""
    from busseg.viz.figures import save_case_figure

    cases = pick_cases(rows, n)
    if not cases:
        return []
    pp_config = None
    if postprocess:
        from busseg.postprocess import PostprocessConfig, postprocess_mask

        pp_config = PostprocessConfig.from_dict(postprocess)
    subset = prepared.subset([sid for sid, _ in cases])
    tensors = InMemoryTensors(subset, recipe["normalization"], recipe["in_channels"])
    out = model.to(device).eval()(tensors.images.to(device))
    if out.seg is None:
        return []
    prob = torch.sigmoid(out.seg.float())[:, 0].cpu().numpy()
    written = []
    for i, (sid, tag) in enumerate(cases):
        processed = postprocess_mask(prob[i], pp_config) if pp_config is not None else None
        written.append(save_case_figure(
            Path(out_dir) / f"{tag.split()[0]}_{sid}.png".replace(" ", "_").replace("/", "-"),
            subset.images[i], subset.masks[i].astype(bool), prob[i] > 0.5, processed,
            _attention_map(out.extras, i), title=f"{recipe['model']} — {sid} ({tag})"))
    return written
