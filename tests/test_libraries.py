"""Libraries where they serve: MONAI is a test dependency (the package itself never imports it);
classification metrics and Holm's adjustment come from scikit-learn and statsmodels."""

from __future__ import annotations

import ast
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm
from statsmodels.stats.multitest import multipletests

import busseg.metrics.classification
import busseg.report.stats
from busseg.metrics.classification import classification_metrics
from busseg.report.stats import holm_adjust

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_monai_is_a_test_dependency_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "monai" not in runtime
    assert any(d.startswith("monai") for d in project["optional-dependencies"]["dev"])
    users = [p for p in (ROOT / "src").rglob("*.py") if "monai" in _imported_modules(p)]
    assert not users, users


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_are_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    prob = np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1)
    m = classification_metrics(y, prob)
    pred = (prob >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)


def test_classification_zero_denominators_are_noted():
    m = classification_metrics([0, 0, 1], [0.1, 0.2, 0.3])  # nothing called malignant
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert any("precision" in note for note in m["notes"])


@pytest.mark.parametrize("seed", range(5))
def test_holm_is_statsmodels(seed):
    p = np.random.default_rng(seed).uniform(0, 0.2, 7)
    assert holm_adjust(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = np.concatenate([p, [math.nan]])
    adjusted = holm_adjust(with_nan)
    assert math.isnan(adjusted[-1]) and adjusted[:-1] == pytest.approx(multipletests(p, method="holm")[1])


def test_classification_and_holm_are_not_hand_written():
    assert "sklearn" in _imported_modules(Path(busseg.metrics.classification.__file__))
    assert "statsmodels" in _imported_modules(Path(busseg.report.stats.__file__))
