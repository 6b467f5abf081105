"""``busseg benchmark report``: ``report.md``, ``report.html`` (self-contained) and
``figures/*.png`` from a results folder, plus ``report_numbers.json`` holding every number
shown (unrounded, with the per-fold values).

All numbers are recomputed from the per-image CSVs of the cross-validations and cross-dataset
evaluations; each table names the files it was computed from, and the provenance section links
every model to its recipe, split, run records (command, seed, versions, weights) and logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from busseg.engine.io import atomic_write_json, atomic_write_text
from busseg.errors import BussegError, DataError
from busseg.report import tables
from busseg.report.claims import claims_section
from busseg.report.figures import cd_diagram, dice_boxplot, read_training_log, training_curves
from busseg.report.html import Cell, Document, Table, to_html, to_markdown
from busseg.report.results import BenchmarkResults, ModelResults, load_benchmark
from busseg.report.stats import friedman_nemenyi, paired_tests

log = logging.getLogger("busseg")

AGGREGATION = ("Each fold's score is the mean over its test images; tables show the mean ± sample standard "
               "deviation across folds (every model on the same shared split). Rates in %, HD95/ASD in pixels of "
               "the scoring geometry below (mm when every image had a pixel spacing). Empty-mask policy: "
               "a missed lesion counts with Dice 0 and the image diagonal as distance (column 'Missed').")
#: how each scoring geometry is stated in the report (see busseg.engine.evaluate).
GEOMETRY_TEXT = {
    "original": "Scored in each image's original geometry: the predicted probabilities are resized back to the "
                "image's own size before thresholding, and distances are in that image's pixels (a missed lesion "
                "counts that image's diagonal).",
    "network": "Scored at each model's input size (the papers' protocol): reference masks resized to the network's "
               "input, distances in network pixels (a missed lesion counts the network-size diagonal).",
}


def _geometry_sentence(models: dict[str, ModelResults]) -> str:
    geometries = {name: res.geometry for name, res in models.items()}
    kinds = set(geometries.values())
    if len(kinds) == 1 and kinds <= set(GEOMETRY_TEXT):
        return GEOMETRY_TEXT[kinds.pop()]
    return ("Scoring geometries differ between models (" + ", ".join(f"{m}: {g}" for m, g in geometries.items())
            + "): their distances are not comparable.")


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def aligned_scores(models: dict[str, ModelResults], metric: str = "dice") -> pd.DataFrame:
    """``[image id × model]`` per-image scores on the images that EVERY model was tested on."""
    columns = {name: res.per_image.set_index("id")[metric] for name, res in models.items()}
    for name, column in columns.items():
        if column.index.has_duplicates:
            raise DataError(f"{models[name].directory / 'cv_per_image.csv'}: an image id appears twice")
    return pd.DataFrame(columns).dropna(how="any")


def pick_cases(aligned: pd.DataFrame, cases: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(id, tag)`` pairs: the given ids, or the best, median and worst image by Dice averaged
    over the models (ties broken by id, so the choice is reproducible)."""
    if cases:
        missing = [c for c in cases if c not in aligned.index]
        if missing:
            raise DataError(f"qualitative cases {missing} are not test images common to all models")
        return [(c, "chosen") for c in cases]
    mean = aligned.mean(axis=1).sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    picks = [(mean.index[0], "best"), (mean.index[len(mean) // 2], "median"), (mean.index[-1], "worst")]
    seen, out = set(), []
    for sample_id, tag in picks:
        if sample_id not in seen:
            seen.add(sample_id)
            out.append((sample_id, tag))
    return out


def _qualitative_grid(bench: BenchmarkResults, dataset: str, models: dict[str, ModelResults],
                      cases: list[tuple[str, str]], path: Path) -> Path:
    """Image, ground truth and each model's prediction (its own fold model, the one that had the
    image in its test fold) in the TP green / FP red / FN blue convention."""
    import torch
    from skimage.transform import resize

    from busseg.data.imageio import read_sample
    from busseg.engine.data import load_dataset
    from busseg.engine.evaluate import scored_case
    from busseg.errors import CheckpointError
    from busseg.inference.predictor import load, run_checkpoint
    from busseg.viz import save_overlay_grid

    info = bench.meta["datasets"][dataset]
    ids = [c for c, _ in cases]
    prepared_by_size: dict[int, object] = {}

    def prepared_for(recipe: dict):
        size = recipe["image_size"]
        if size not in prepared_by_size:
            prepared_by_size[size] = load_dataset(dataset, info.get("root"), recipe, info.get("data_options")).subset(ids)
        return prepared_by_size[size]

    # every model's masks are drawn as its per-image CSV scored them (scored_case), resized to the
    # shape of the first model's display only where geometries differ
    first = next(iter(models.values()))
    display = prepared_for(first.recipe)
    rows = []
    for i, (sample_id, tag) in enumerate(cases):
        image, reference = ((display.images[i], display.masks[i].astype(bool)) if first.geometry == "network"
                            else read_sample(display.records[i]))
        rows.append({"image": image, "target": reference, "name": f"{tag}: {sample_id}", "captions": {}})
    shown = []
    for name, res in models.items():
        per_image = res.per_image.set_index("id")
        by_fold: dict[int, list[int]] = defaultdict(list)
        for i, sample_id in enumerate(ids):
            by_fold[int(per_image.loc[sample_id, "fold"])].append(i)
        try:
            checkpoints = {fold: run_checkpoint(res.fold_dir(fold))[1] for fold in by_fold}
        except CheckpointError as exc:  # results copied without their checkpoints: numbers stay, pictures cannot
            log.warning("qualitative grid: %s left out (%s)", name, exc)
            continue
        shown.append(name)
        prepared = prepared_for(res.recipe)
        geometry = res.geometry if res.geometry in ("original", "network") else "network"
        for fold, rows_of_fold in by_fold.items():
            predictor = load(checkpoints[fold], batch_size=4)
            images = prepared.subset([ids[i] for i in rows_of_fold]).images
            prob, _ = predictor.probabilities(torch.stack([predictor.preprocess(image) for image in images]))
            for j, i in enumerate(rows_of_fold):
                pred = scored_case(prepared, i, prob[j], None, geometry)[2]
                shape = rows[i]["target"].shape
                if pred.shape != shape:  # another geometry or training size: nearest-neighbour to the display
                    pred = resize(pred, shape, order=0, preserve_range=True, anti_aliasing=False).astype(bool)
                rows[i][name] = pred
                rows[i]["captions"][name] = f"Dice {float(per_image.loc[ids[i], 'dice']) * 100:.1f}"
    if not shown:
        return None
    return save_overlay_grid(path, rows, ["image", "target", *shown],
                             title=f"{dataset}: best / median / worst test images by mean Dice over models"
                             if cases[0][1] != "chosen" else f"{dataset}: chosen test images")


def _source(base: Path, what: str, files: list[tuple[str, Path]]) -> list:
    parts: list = [f"{what} "]
    for i, (label, path) in enumerate(files):
        parts += [", " if i else "", Cell(label, href=_rel(path, base))]
    return parts


def _dataset_section(doc: Document, bench: BenchmarkResults, dataset: str, models: dict[str, ModelResults],
                     numbers: dict, cases: Sequence[str] | None, alpha: float, qualitative: bool) -> None:
    base = bench.directory
    info = bench.meta["datasets"][dataset]
    split_path = base / info["split"]
    figures = base / "figures"
    out = numbers.setdefault(dataset, {})
    doc.heading(f"Dataset: {dataset}", 2)
    doc.paragraph(f"{len(models)} model(s), {info['k']}-fold cross-validation on one shared split (",
                  Cell("split file", href=_rel(split_path, base)), f"; data root {info.get('root') or 'default'}). ",
                  AGGREGATION, " ", _geometry_sentence(models))
    out["geometry"] = {name: res.geometry for name, res in models.items()}
    unfinished = bench.unfinished.get(dataset, {})
    if unfinished:
        doc.paragraph("Not in the tables (no finished cross-validation): "
                      + "; ".join(f"{m}: {why}" for m, why in unfinished.items()))
    csv_sources = _source(base, "Computed from", [(f"{m}/cv_per_image.csv", r.directory / "cv_per_image.csv")
                                                   for m, r in models.items()])

    seg = tables.segmentation_numbers(models)
    out["segmentation"] = seg
    doc.heading("Segmentation", 3)
    doc.table(tables.segmentation_table(seg, f"{dataset}: segmentation, mean ± std across folds (best in bold)",
                                        csv_sources))
    post = tables.segmentation_numbers(models, prefix="pp_")
    if post:
        out["segmentation_postprocessed"] = post
        doc.table(tables.segmentation_table(post, f"{dataset}: after each recipe's post-processing", csv_sources))

    classification = tables.classification_numbers(models)
    if classification:
        out["classification"] = classification
        doc.heading("Classification (multi-task models)", 3)
        doc.table(tables.classification_table(
            classification, f"{dataset}: benign/malignant classification (malignant positive, threshold 0.5), "
                            "mean ± std across folds", csv_sources))

    by_class = tables.class_numbers(models)
    if by_class:
        out["by_class"] = by_class
        doc.heading("Benign vs malignant lesions", 3)
        doc.table(tables.class_table(by_class, f"{dataset}: segmentation per lesion class, mean ± std across folds "
                                               "of the per-class image means", csv_sources))

    aligned = aligned_scores(models)
    doc.heading("Statistics on per-image Dice", 3)
    doc.paragraph(f"{len(aligned)} test images common to all models (each image scored by the fold model that "
                  "had it in its test fold). Paired tests compare each model with the best one by mean Dice; Holm's "
                  "adjustment accounts for the several comparisons. Images from one patient are not independent: "
                  "read the p-values as a guide next to the across-fold spread.")
    if len(models) >= 2 and len(aligned) >= 2:
        tests = paired_tests({m: aligned[m].to_numpy() for m in aligned.columns})
        out["paired_tests"] = [dataclasses.asdict(t) for t in tests]
        means = aligned.mean(axis=0).to_dict()
        doc.table(tables.paired_tests_table(tests, means, f"{dataset}: paired t-test and Wilcoxon signed-rank test "
                                                          f"against the best model (α = {alpha})", csv_sources, alpha))
    if len(models) >= 3 and len(aligned) >= 2:
        fn = friedman_nemenyi({m: aligned[m].to_numpy() for m in aligned.columns}, alpha=alpha)
        out["friedman_nemenyi"] = dataclasses.asdict(fn)
        doc.paragraph(f"Friedman test over {len(models)} models and {fn.n} images: χ² = {fn.statistic:.3f}, "
                      f"p = {fn.pvalue:.3g}. Nemenyi critical difference at α = {alpha}: CD = "
                      f"{fn.critical_difference:.3f} average-rank units.")
        doc.table(tables.nemenyi_table(fn, f"{dataset}: Nemenyi post-hoc p-values (bold: p < {alpha})", csv_sources))
        doc.figure(cd_diagram(fn, figures / f"{dataset}_cd_diagram.png", f"{dataset}: per-image Dice ranks"),
                   "Critical-difference diagram: average rank per model (1 = best); models joined by a thick bar "
                   "are not significantly different (Nemenyi).")
    elif len(models) == 2:
        doc.paragraph("Friedman/Nemenyi need at least 3 models; with two, the paired tests above are the comparison.")

    doc.heading("Figures", 3)
    doc.figure(dice_boxplot({m: aligned[m].to_numpy() for m in aligned.columns}, figures / f"{dataset}_dice_boxplot.png",
                            f"{dataset}: per-image Dice"),
               "Per-image Dice of each model (box: quartiles, triangle: mean, dots: images).")
    if qualitative:
        try:
            picked = pick_cases(aligned, cases)
            grid = _qualitative_grid(bench, dataset, models, picked, figures / f"{dataset}_qualitative.png")
            if grid is None:
                raise BussegError("no model's checkpoints are in the results folder")
            doc.figure(grid, "Qualitative comparison: true positive green, false positive red, false negative blue; "
                             "each prediction from the fold model that had the image in its test fold; captions give "
                             "the recorded per-image Dice.")
        except (BussegError, OSError) as exc:
            doc.paragraph(f"Qualitative grid not drawn: {exc}")
    curves = {m: [read_training_log(r.fold_dir(f) / "logs" / "metrics.csv") for f in r.folds
                  if (r.fold_dir(f) / "logs" / "metrics.csv").is_file()] for m, r in models.items()}
    doc.figure(training_curves(curves, figures / f"{dataset}_training_curves.png", f"{dataset}: training curves"),
               "Training curves from each fold's logs/metrics.csv: thin lines are folds, thick lines their mean.")

    cross = tables.cross_numbers(models)
    if cross:
        out["cross"] = cross
        doc.heading("Cross-dataset generalisation", 3)
        files = [(f"{m}/cross/{t}/per_image.csv", r.directory / "cross" / t / "per_image.csv")
                 for m, r in models.items() for t in r.cross]
        doc.table(tables.cross_table(cross, dataset, f"Trained on {dataset} (each fold model), tested on every image "
                                                     "of another dataset: mean ± std across the fold models",
                                     _source(base, "Computed from", files)))

    _robustness_section(doc, bench, dataset, models, out, aligned)
    _provenance(doc, base, dataset, models, split_path)


def _robustness_section(doc: Document, bench: BenchmarkResults, dataset: str, models: dict[str, ModelResults],
                        out: dict, aligned: pd.DataFrame) -> None:
    """Robustness table, Dice against severity and an example grid of the corruptions, when the
    benchmark ran with ``--corruptions``."""
    from busseg.report.robustness import SCOPE, corruption_grid, dice_vs_severity, robustness_numbers, robustness_table

    base = bench.directory
    numbers = robustness_numbers({m: r.directory for m, r in models.items()})
    if not numbers:
        return
    out["robustness"] = {m: {k: s.get(k) for k in ("clean_dice", "mean_corruption_dice", "relative_robustness",
                                                   "dice_by_severity", "by_corruption", "augmentation", "n_images")}
                         for m, s in numbers.items()}
    doc.heading("Robustness to scanner-like corruptions", 3)
    files = [(f"{m}/robustness/per_image.csv", models[m].directory / "robustness" / "per_image.csv") for m in numbers]
    doc.table(robustness_table(numbers, f"{dataset}: Dice under corruptions (per-image means over every fold's test "
                                        "images; per-corruption columns: mean over the five severities, %)",
                               _source(base, "Computed from", files)))
    doc.paragraph(SCOPE)
    figures = base / "figures"
    doc.figure(dice_vs_severity(numbers, figures / f"{dataset}_robustness.png", f"{dataset}: Dice against severity"),
               "Mean Dice over the corruptions at each severity (0 = clean), one line per model.")
    try:
        from busseg.data.imageio import read_sample
        from busseg.engine.train import load_dataset

        info = bench.meta["datasets"][dataset]
        sample_id = pick_cases(aligned)[min(1, len(aligned) - 1)][0] if len(aligned) else None
        if sample_id is None:
            raise DataError("no test image common to all models")
        prepared = load_dataset(dataset, info.get("root"), next(iter(models.values())).recipe, info.get("data_options"))
        image, mask = read_sample(prepared.records[prepared.index_of(sample_id)])
        seed = next(iter(numbers.values())).get("seed", 0)
        grid = corruption_grid(image, mask, sample_id, figures / f"{dataset}_corruptions.png", seed=seed)
        doc.figure(grid, f"The corruptions on test image {sample_id} (the median case), clean and at severities 1, 3 "
                         "and 5: exactly the pixels the models were given, shrunk for display.")
    except (BussegError, OSError) as exc:
        doc.paragraph(f"Example grid of the corruptions not drawn: {exc}")


def _provenance(doc: Document, base: Path, dataset: str, models: dict[str, ModelResults], split_path: Path) -> None:
    doc.heading("Provenance", 3)
    header = ["Model", "Recipe", "Split", "Per-image CSV", "Fold runs (command, seed, versions, weights)",
              "Epochs run", "Selected on", "Train time (s)", "Encoder weights"]
    rows = []
    for name, res in models.items():
        runs: list = []
        for i, fold in enumerate(res.folds):
            runs += [" " if i else "", Cell(f"fold {fold}", href=_rel(res.fold_dir(fold) / "run.json", base))]
        epochs = sorted({r.get("epochs_run") for r in res.fold_results.values()}, key=str)
        selected = sorted({r.get("selected_on", "") for r in res.fold_results.values()})
        rows.append([name, Cell("recipe.yaml", href=_rel(res.fold_dir(res.folds[0]) / "recipe.yaml", base)),
                     Cell("split.json", href=_rel(split_path, base)),
                     Cell("cv_per_image.csv", href=_rel(res.directory / "cv_per_image.csv", base)),
                     runs, ", ".join(map(str, epochs)), "; ".join(selected), f"{res.train_seconds:.0f}",
                     str(res.recipe.get("encoder_weights"))])
    doc.table(Table(header, rows, f"{dataset}: where every number comes from"))

    software: dict[str, list[str]] = defaultdict(list)
    keys = ("busseg", "torch", "torchvision", "lightning", "timm", "segmentation-models-pytorch", "numpy", "python",
            "cuda", "gpu")
    for name, res in models.items():
        for fold, run in res.runs.items():
            versions = run.get("versions", {})
            software[json.dumps({k: versions.get(k, "—") for k in keys})].append(f"{name}/fold_{fold}")
    rows = [[*json.loads(v).values(), ", ".join(runs_)] for v, runs_ in software.items()]
    doc.table(Table([*keys, "runs"], rows, f"{dataset}: software versions recorded in the runs' run.json"))


def _protocol_section(doc: Document, bench: BenchmarkResults) -> None:
    protocol = bench.protocol
    doc.heading("Protocol", 2)
    if protocol.get("name") == "paper":
        doc.paragraph("Protocol 'paper': every model trained with its own paper recipe (epochs, input size, "
                      "augmentation, optimiser and loss as the paper states them, see each recipe.yaml); all models "
                      "share one split.")
    else:
        doc.paragraph(f"Protocol '{protocol.get('name')}': these recipe fields were set identically for every "
                      "model (each keeps its own architecture options, loss, optimiser and scheduler):")
        doc.code(yaml.safe_dump(protocol.get("fields", {}), sort_keys=False).rstrip())
    if protocol.get("overrides"):
        doc.paragraph("Overrides applied to every model: " + ", ".join(protocol["overrides"]))
    doc.paragraph("Model selection: the epoch with the best validation score on a validation subset carved from the "
                  "training folds (never the test fold). Results folder: ", Cell("benchmark.json", href="benchmark.json"),
                  " records every invocation.")
    rows = []
    for inv in bench.meta.get("invocations", []):
        rows.append([inv.get("started", ""), inv.get("dataset", ""), inv.get("command", ""),
                     f"{inv.get('seconds', '—')}", ", ".join(inv.get("failed", [])) or "none"])
    doc.table(Table(["Started", "Dataset", "Command", "Wall time (s)", "Failed models"], rows, "Invocations"))


def build_report(directory: str | Path, *, cases: Sequence[str] | None = None, alpha: float = 0.05,
                 qualitative: bool = True, claims: bool | dict = True) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``report_numbers.json`` and ``figures/`` into the
    results folder ``directory``; returns their paths. ``claims``: the "Claims" section from the
    packaged claims file (True), from a given ``model -> claim`` mapping, or none (False)."""
    directory = Path(directory)
    bench = load_benchmark(directory)
    quick = bench.protocol.get("name") == "quick"
    label = bench.protocol.get("label", "quick protocol")  # written by report.benchmark.Protocol
    doc = Document(f"busseg benchmark report{' — ' + label if quick else ''}")
    if quick:
        doc.paragraph(label + ". Fixed small budget (see Protocol) so that every model runs on a CPU: the "
                      "numbers rank nothing and reproduce no paper.", css_class="banner")
    _protocol_section(doc, bench)
    numbers: dict = {"protocol": bench.protocol, "aggregation": AGGREGATION, "datasets": {}}
    if not bench.datasets:
        doc.paragraph("No finished cross-validation yet.")
    for dataset, models in bench.datasets.items():
        _dataset_section(doc, bench, dataset, models, numbers["datasets"], cases, alpha, qualitative)

    if claims is not False and bench.datasets:
        claims_section(doc, bench, numbers, None if claims is True else claims)

    all_models = list(dict.fromkeys(m for models in bench.datasets.values() for m in models))
    if all_models:
        doc.heading("Complexity", 2)
        doc.table(tables.complexity_table(
            bench.complexity, all_models, "Parameters, FLOPs (PyTorch FlopCounterMode, 1 MAC = 2 FLOPs; "
            "convolutions, matrix products and attention only) and inference time per image at batch 1 "
            "(median of repeated passes, float32, eval mode) of each model with its trained options and input "
            "channels, at the common input size of the 'Input' column (256², as the papers report); the last "
            "column gives the FLOPs at the size the model was trained at in this benchmark",
            _source(directory, "From", [("complexity.json", directory / "complexity.json")])))
        numbers["complexity"] = {m: bench.complexity.get(m) for m in all_models}

    paths = {
        "markdown": atomic_write_text(directory / "report.md", to_markdown(doc, directory)),
        "html": atomic_write_text(directory / "report.html", to_html(doc)),
        "numbers": atomic_write_json(directory / "report_numbers.json", _jsonable(numbers)),
    }
    log.info("report written: %s", paths["markdown"])
    return paths


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


__all__ = ["aligned_scores", "build_report", "pick_cases"]
