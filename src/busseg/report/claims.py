"""Every paper's claim beside busseg's measurement (the report's "Claims" section).

``claims.yaml`` (next to this module) holds what each implemented paper reports — its figures
exactly as printed in the cited table, and its protocol: dataset and images, split, folds,
encoder initialisation, epochs, model selection, input size. :func:`claims_section` sets them
beside the figures busseg measured in a benchmark results folder (recomputed from the
per-image CSVs like every other table) and lists every protocol difference between the two,
read from the results folder itself (split file, recipes, ``run.json`` and ``result.json`` of
each fold), so that a reader sees what was reproduced, what was not, and why.

Units: rates in percent; HD95/ASD as each side reports them (busseg: pixels at the model's
input resolution, or mm when every image had a pixel spacing) — a difference the table names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import yaml

from busseg.data.splits import grouping_description
from busseg.errors import ConfigError
from busseg.report import tables
from busseg.report.html import Document, Table
from busseg.report.results import BenchmarkResults, ModelResults

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")

#: (key in claims.yaml / measured figures, column title)
CLAIM_COLUMNS = (
    ("dice", "Dice"), ("iou", "IoU (Jaccard)"), ("precision", "Precision"), ("recall", "Recall"),
    ("specificity", "Specificity"), ("pixel_accuracy", "Pixel accuracy"), ("hd95", "HD95"),
    ("cls_accuracy", "Classification accuracy"),
)
_KNOWN_FIGURES = {key for key, _ in CLAIM_COLUMNS} | {"asd", "cls_precision", "cls_recall"}
_PROTOCOL_FIELDS = ("dataset", "images", "split_kind", "split", "folds", "pretrained", "epochs", "selection",
                    "input_size", "hd95_unit")
_SPLIT_KINDS = ("image-level-cv", "single-random-split", "external-test", "not-stated")
BUSSEG_SELECTION = "best epoch on the validation subset carved from the training folds (never the test fold)"


def load_claims(path: str | Path | None = None) -> dict[str, dict]:
    """``model -> claim`` from ``path`` (default: the packaged ``claims.yaml``), checked:
    every claim names its paper and table, figures are ``{mean, std}`` of known metrics and the
    protocol has every field. Problems raise one ConfigError naming the file."""
    path = Path(path) if path is not None else CLAIMS_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"claims file {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"claims file {path}: expected a mapping model -> claim")
    problems = []
    for model, claim in data.items():
        if not isinstance(claim, dict):
            problems.append(f"{model}: not a mapping")
            continue
        for key in ("paper", "source", "figures", "protocol"):
            if key not in claim:
                problems.append(f"{model}: no {key!r}")
        for metric, value in (claim.get("figures") or {}).items():
            if metric not in _KNOWN_FIGURES:
                problems.append(f"{model}: unknown figure {metric!r} (known: {sorted(_KNOWN_FIGURES)})")
            elif not isinstance(value, dict) or not isinstance(value.get("mean"), (int, float)) or not (
                    value.get("std") is None or isinstance(value.get("std"), (int, float))):
                problems.append(f"{model}: figure {metric!r} must be {{mean: number, std: number or null}}")
        protocol = claim.get("protocol") or {}
        missing = [f for f in _PROTOCOL_FIELDS if f not in protocol]
        if missing:
            problems.append(f"{model}: protocol lacks {missing}")
        if protocol.get("split_kind") not in _SPLIT_KINDS:
            problems.append(f"{model}: split_kind {protocol.get('split_kind')!r} not in {_SPLIT_KINDS}")
    if problems:
        raise ConfigError(f"claims file {path}:\n" + "\n".join(f"  {p}" for p in problems))
    return data


def measured_figures(name: str, res: ModelResults) -> dict[str, dict]:
    """busseg's figures of one model in the claims' units (rates in %), mean ± std across folds."""
    seg = tables.segmentation_numbers({name: res})[name]
    out: dict[str, dict] = {}
    for key, source in (("dice", "dice"), ("iou", "iou"), ("precision", "precision"), ("recall", "recall"),
                        ("specificity", "specificity"), ("pixel_accuracy", "accuracy")):
        out[key] = {"mean": seg[source]["mean"] * 100, "std": seg[source]["std"] * 100}
    distance = next((m for m in ("hd95", "hd95_mm") if m in seg), None)
    if distance:
        out["hd95"] = {"mean": seg[distance]["mean"], "std": seg[distance]["std"],
                       "unit": "mm" if distance.endswith("_mm") else "px"}
    cls = tables.classification_numbers({name: res}).get(name)
    if cls:
        out["cls_accuracy"] = {"mean": cls["accuracy"]["mean"] * 100, "std": cls["accuracy"]["std"] * 100}
    return out


def _weights_used(res: ModelResults) -> str:
    used = sorted({info.get("used", "?") for run in res.runs.values()
                   for info in (run.get("encoder_weights") or {}).values()})
    if not used:
        return "none (no pretrainable encoder)"
    return ", ".join({"random": "random init (from scratch)"}.get(u, u) for u in used)


def measured_protocol(bench: BenchmarkResults, dataset: str, res: ModelResults) -> dict:
    """How busseg's figures of ``res`` were obtained, read back from the results folder."""
    info = bench.meta["datasets"][dataset]
    split_path = bench.directory / info["split"]
    split = json.loads(split_path.read_text()) if split_path.is_file() else {}
    epochs_run = sorted({r.get("epochs_run") for r in res.fold_results.values()}, key=str)
    return {
        "dataset": dataset,
        "root": info.get("root"),
        "n_images": int(len(res.per_image)),
        "include_normal": bool(res.recipe.get("include_normal", False)),
        "grouping": split.get("grouping", "?"),
        "split": grouping_description(split) if split else "split file missing",
        "folds": len(res.folds),
        "pretrained": _weights_used(res),
        "epochs": res.recipe.get("epochs"),
        "epochs_run": epochs_run,
        "selection": "; ".join(sorted({r.get("selected_on", "") for r in res.fold_results.values()})) or BUSSEG_SELECTION,
        "input_size": res.recipe.get("image_size"),
        "protocol": bench.protocol.get("name", "?"),
    }


def _same_dataset(claim_dataset: str | None, protocol: dict) -> str | None:
    """None when busseg measured on the claim's dataset, else what differs."""
    if claim_dataset is None:
        return f"busseg cross-validated on {protocol['dataset']}"
    if protocol["dataset"] == claim_dataset:
        return None
    root = str(protocol.get("root") or "")
    if protocol["dataset"] == "folder" and claim_dataset.lower() in root.lower():
        return None  # a copy of the dataset in folder layout (e.g. resized), judging from its root
    return f"busseg measured on {protocol['dataset']} ({root or 'default root'}), the paper on {claim_dataset}"


def protocol_differences(claim: dict, measured: dict) -> list[list[str]]:
    """``[aspect, paper, busseg, what it does to the comparison]`` for every difference."""
    paper = claim["protocol"]
    rows: list[list[str]] = []
    if measured["protocol"] != "paper":
        rows.append(["Training recipe", "the paper's", f"protocol '{measured['protocol']}' (the same budget for every "
                     "model)", "busseg's figure measures the protocol, not the paper's recipe"])
    other = _same_dataset(paper["dataset"], measured)
    if other:
        rows.append(["Data", paper["images"], other, "different images: the figures are not comparable"])
    elif paper["images"]:
        normal = "with" if measured["include_normal"] else "without"
        rows.append(["Images", paper["images"], f"{measured['n_images']} test images ({normal} normal images)",
                     "different image sets change every mean" if "not stated" in paper["images"] or "yet" in
                     paper["images"] else "same image set"])
    kind = paper["split_kind"]
    grouped = measured["grouping"] not in ("none", "?")
    if kind == "external-test":
        rows.append(["Split", paper["split"], f"{measured['folds']}-fold cross-validation ({measured['split']})",
                     "the paper tests zero-shot on other datasets; a cross-validation is not the same question"])
    elif grouped:
        rows.append(["Split", paper["split"], f"grouped {measured['folds']}-fold cross-validation: {measured['split']}",
                     "copies of test images sit in the paper's training data (BUSI holds the same scans several "
                     "times); busseg keeps every duplicate cluster in one fold, so leakage does not inflate its "
                     "figure (see busseg benchmark leakage)"])
    else:
        rows.append(["Split", paper["split"], f"image-level {measured['folds']}-fold split ({measured['split']})",
                     "both sides leak duplicates across folds"])
    if paper["folds"] != measured["folds"] and kind != "external-test":
        rows.append(["Folds", "one hold-out split" if paper["folds"] is None else f"{paper['folds']}-fold",
                     f"{measured['folds']}-fold", "training sets of another size; a single split has a larger "
                     "sampling error" if paper["folds"] is None else "training sets of another size"])
    pretrained = measured["pretrained"]
    if paper["pretrained"] == "imagenet" and "imagenet" not in pretrained:
        rows.append(["Encoder initialisation", "ImageNet-pretrained", pretrained,
                     "no ImageNet weights were available: busseg trains from scratch, which lowers its figure"])
    elif paper["pretrained"] == "not-stated":
        rows.append(["Encoder initialisation", "not stated", pretrained, "unknown"])
    epochs = measured["epochs"]
    ran = ", ".join(str(e) for e in measured["epochs_run"])
    if paper["epochs"] is None:
        rows.append(["Epochs", "not stated", f"{epochs} (ran {ran})", "unknown"])
    elif epochs is not None and epochs < paper["epochs"]:
        rows.append(["Epochs", str(paper["epochs"]), f"{epochs} (ran {ran})",
                     "fewer epochs: busseg's model is less trained"])
    if paper["selection"] != BUSSEG_SELECTION:
        effect = ("selecting on the test fold is optimistic" if "test fold" in paper["selection"]
                  else "unknown" if "not stated" in paper["selection"] else "comparable")
        rows.append(["Model selection", paper["selection"], measured["selection"], effect])
    if paper["input_size"] is None:
        rows.append(["Input size", "not stated", f"{measured['input_size']} px", "unknown"])
    elif paper["input_size"] != measured["input_size"]:
        rows.append(["Input size", f"{paper['input_size']} px", f"{measured['input_size']} px",
                     "other resolution: distances and fine boundaries differ"])
    if "hd95" in claim["figures"]:
        rows.append(["HD95 unit", paper["hd95_unit"] or "not stated",
                     "pixels at the model's input resolution (mm with a pixel spacing)",
                     "HD95 values are not comparable"])
    return rows


def _fmt(value: Mapping | None) -> str:
    if not value:
        return "—"
    std = value.get("std")
    text = f"{value['mean']:.2f}" + ("" if std is None or std != std else f" ± {std:.2f}")
    return text + (f" {value['unit']}" if value.get("unit") else "")


def claims_numbers(bench: BenchmarkResults, claims: dict[str, dict]) -> list[dict]:
    """One entry per claim and benchmark dataset where the model ran (or one unmeasured entry)."""
    entries = []
    for model, claim in claims.items():
        ran = [(dataset, models[model]) for dataset, models in bench.datasets.items() if model in models]
        if not ran:
            entries.append({"model": model, "claim": claim, "measured": None, "protocol": None, "differences": []})
            continue
        for dataset, res in ran:
            protocol = measured_protocol(bench, dataset, res)
            entries.append({"model": model, "claim": claim, "measured": measured_figures(model, res),
                            "protocol": protocol, "differences": protocol_differences(claim, protocol)})
    return entries


def claims_section(doc: Document, bench: BenchmarkResults, numbers: dict, claims: dict | None = None) -> None:
    """The report's "Claims" section: the figures table and the protocol differences table."""
    claims = load_claims() if claims is None else claims
    entries = claims_numbers(bench, claims)
    numbers["claims"] = [{k: v for k, v in e.items() if k != "claim"} | {"source": e["claim"]["source"]}
                         for e in entries]
    doc.heading("Claims: each paper's figures beside busseg's", 2)
    doc.paragraph("The paper's figures are copied from the cited table (busseg/report/claims.yaml); busseg's are "
                  "mean ± std across folds of this results folder, recomputed from the per-image CSVs. A row "
                  "'Δ' gives busseg − paper for rates both report. Read them with the protocol differences below: "
                  "they explain most of every gap.")
    header = ["Model", "Source"] + [title for _, title in CLAIM_COLUMNS]
    rows = []
    for e in entries:
        claim = e["claim"]
        paper_cells = [_fmt(claim["figures"].get(key)) for key, _ in CLAIM_COLUMNS]
        rows.append([e["model"], f"paper: {claim['source']}", *paper_cells])
        if e["measured"] is None:
            rows.append([e["model"], "busseg: not run in this results folder", *["—"] * len(CLAIM_COLUMNS)])
            continue
        p = e["protocol"]
        rows.append([e["model"], f"busseg: {p['dataset']}, {p['folds']} folds, {p['n_images']} test images",
                     *[_fmt(e["measured"].get(key)) for key, _ in CLAIM_COLUMNS]])
        delta = []
        for key, _ in CLAIM_COLUMNS:
            ours, theirs = e["measured"].get(key), claim["figures"].get(key)
            delta.append(f"{ours['mean'] - theirs['mean']:+.2f}" if ours and theirs and key != "hd95" else "")
        rows.append([e["model"], "Δ (busseg − paper)", *delta])
    doc.table(Table(header, rows, "Reported vs measured (rates in %)"))
    diff_rows = [[e["model"], *row] for e in entries for row in e["differences"]]
    if diff_rows:
        doc.table(Table(["Model", "Aspect", "Paper", "busseg", "Effect on the comparison"], diff_rows,
                        "Every protocol difference between each paper and this results folder"))


__all__ = ["CLAIMS_FILE", "claims_numbers", "claims_section", "load_claims", "measured_protocol",
           "protocol_differences"]
