"""Reading a benchmark results folder back (see :mod:`busseg.report.benchmark` for its layout).

Only FINISHED cross-validations (a ``cv_per_image.csv``) enter the report; a model still
training or failed is listed as such. Every number of the report is recomputed from the
per-image CSVs loaded here, never copied from a summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from busseg.errors import ConfigError


@dataclass
class ModelResults:
    dataset: str
    model: str
    directory: Path
    #: ``cv_per_image.csv``: one row per test image (columns id, label, dice, ..., fold, model)
    per_image: pd.DataFrame
    recipe: dict
    #: ``run.json`` and ``result.json`` of each fold, by fold number
    runs: dict[int, dict]
    fold_results: dict[int, dict]
    #: per target dataset: the ``per_image.csv`` of the cross-dataset evaluation (a ``fold``
    #: column names the fold model) and its ``summary.json``
    cross: dict[str, pd.DataFrame] = field(default_factory=dict)
    cross_summary: dict[str, dict] = field(default_factory=dict)

    @property
    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.per_image["fold"].unique())

    def fold_dir(self, fold: int) -> Path:
        return self.directory / f"fold_{fold}"

    @property
    def geometry(self) -> str:
        """Where the test images were scored (:mod:`busseg.engine.evaluate`): ``"original"``
        or ``"network"`` (results written before busseg recorded it were scored at the
        network's size)."""
        geometries = {(r.get("test") or {}).get("geometry") or "network" for r in self.fold_results.values()}
        return geometries.pop() if len(geometries) == 1 else "mixed"

    @property
    def train_seconds(self) -> float:
        return float(sum(r.get("train_seconds", 0.0) for r in self.fold_results.values()))


@dataclass
class BenchmarkResults:
    directory: Path
    meta: dict
    #: dataset -> model -> results (models in the order they were asked for)
    datasets: dict[str, dict[str, ModelResults]]
    #: dataset -> models without a finished cross-validation (and why, when known)
    unfinished: dict[str, dict[str, str]]
    complexity: dict[str, dict]

    @property
    def protocol(self) -> dict:
        return self.meta.get("protocol", {})


def read_per_image(path: Path) -> pd.DataFrame:
    """A per-image CSV with ids kept as strings (an id such as ``0001`` must stay one); the
    ``empty_case`` names of older CSVs are read as today's (``pred_only`` → ``missed``...)."""
    from busseg.metrics.segmentation import LEGACY_EMPTY_CASES

    frame = pd.read_csv(path, dtype={"id": str, "label": str, "source": str, "empty_case": str},
                        keep_default_na=True)
    for column in [c for c in frame.columns if c.endswith("empty_case")]:
        frame[column] = frame[column].replace(LEGACY_EMPTY_CASES)
    return frame


def _load_model(dataset: str, model: str, directory: Path) -> ModelResults:
    per_image = read_per_image(directory / "cv_per_image.csv")
    runs, fold_results = {}, {}
    for fold in sorted(int(f) for f in per_image["fold"].unique()):
        fold_dir = directory / f"fold_{fold}"
        runs[fold] = json.loads((fold_dir / "run.json").read_text())
        fold_results[fold] = json.loads((fold_dir / "result.json").read_text())
    first = directory / f"fold_{min(runs)}" / "recipe.yaml"
    recipe = yaml.safe_load(first.read_text())
    results = ModelResults(dataset, model, directory, per_image, recipe, runs, fold_results)
    cross_root = directory / "cross"
    if cross_root.is_dir():
        for target in sorted(p for p in cross_root.iterdir() if (p / "per_image.csv").is_file()):
            results.cross[target.name] = read_per_image(target / "per_image.csv")
            results.cross_summary[target.name] = json.loads((target / "summary.json").read_text())
    return results


def load_benchmark(directory: str | Path) -> BenchmarkResults:
    directory = Path(directory)
    meta_path = directory / "benchmark.json"
    if not meta_path.is_file():
        raise ConfigError(f"{directory} is not a benchmark results folder (no benchmark.json); "
                          "create one with `busseg benchmark run`")
    meta = json.loads(meta_path.read_text())
    last_status: dict[str, dict[str, dict]] = {}
    for invocation in meta.get("invocations", []):
        last_status.setdefault(invocation["dataset"], {}).update(invocation.get("status", {}))
    datasets: dict[str, dict[str, ModelResults]] = {}
    unfinished: dict[str, dict[str, str]] = {}
    for dataset, info in meta.get("datasets", {}).items():
        for model in info.get("models", []):
            cv_dir = directory / dataset / model
            if (cv_dir / "cv_per_image.csv").is_file():
                datasets.setdefault(dataset, {})[model] = _load_model(dataset, model, cv_dir)
            else:
                status = last_status.get(dataset, {}).get(model, {})
                unfinished.setdefault(dataset, {})[model] = status.get("error", "not finished")
    complexity_path = directory / "complexity.json"
    complexity = json.loads(complexity_path.read_text()) if complexity_path.is_file() else {}
    return BenchmarkResults(directory, meta, datasets, unfinished, complexity)


__all__ = ["BenchmarkResults", "ModelResults", "load_benchmark", "read_per_image"]
