"""Statistics on per-image scores of several models evaluated on the same images.

Two families of tests, both on PAIRED per-image scores (every model scored on the same test
images, e.g. the out-of-fold predictions of a cross-validation on one shared split):

- :func:`paired_tests` — each model against a reference (the best model by mean): the paired
  t-test (``scipy.stats.ttest_rel``, two-sided) and the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, two-sided, zero differences dropped: ``zero_method="wilcox"``,
  exact or normal-approximated p as SciPy chooses). Because one model is compared with
  ``m - 1`` others, Holm's step-down adjustment of each family of p-values is reported too
  (:func:`holm_adjust`).
- :func:`friedman_nemenyi` — all models at once (Demšar, "Statistical comparisons of
  classifiers over multiple data sets", JMLR 7, 2006, section 3.2.2): per image, models are
  ranked (rank 1 = best, ties share the mean rank); the Friedman test
  (``scipy.stats.friedmanchisquare``) asks whether the average ranks differ at all; the
  Nemenyi post-hoc test (``scikit_posthocs.posthoc_nemenyi_friedman``) compares every pair.
  Two models differ significantly when their average ranks differ by more than the critical
  difference ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with ``q_alpha`` the studentized range
  quantile over sqrt(2) (:func:`critical_difference`); the cliques drawn in the CD diagram
  are the maximal runs of models, consecutive in rank, whose ranks all lie within CD.

Why written here (the statistics glue): SciPy, scikit-posthocs and statsmodels give every
test and adjustment; this module only holds what they leave to the caller — one score matrix
checked for equal image counts and finite values (a NaN would drop an image from one model
only), the reference chosen by mean, identical models answered with p = 1 where SciPy returns
NaN or raises, and Demšar's critical difference with the cliques it defines (scikit-posthocs'
own CD diagram groups models by pairwise p-values instead, not by CD).

Images play the role of Demšar's data sets here. They are not independent when several images
come from one patient; the tests are descriptive aids next to the per-fold table, not proofs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from busseg.errors import DataError


def _score_matrix(scores: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    """Models and the ``[n_images, n_models]`` matrix; all models need the same image count
    and finite scores (a NaN would silently leave an image out of one model only)."""
    names = list(scores)
    if not names:
        raise DataError("statistics: no models given")
    columns = [np.asarray(scores[n], dtype=float).reshape(-1) for n in names]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        detail = ", ".join(f"{n}: {len(c)}" for n, c in zip(names, columns))
        raise DataError(f"statistics: models were scored on different numbers of images ({detail})")
    matrix = np.stack(columns, axis=1)
    if not np.isfinite(matrix).all():
        bad = [n for n, c in zip(names, columns) if not np.isfinite(c).all()]
        raise DataError(f"statistics: non-finite per-image scores for {bad}")
    return names, matrix


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), NaNs left as NaN.

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``, with ``m``
    the number of non-NaN p-values (``statsmodels.stats.multitest.multipletests``, method
    ``holm``, on those)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        out[valid] = multipletests(p[valid], method="holm")[1]
    return out


@dataclass
class PairedTest:
    """One model against the reference on the same images (difference = model - reference)."""

    model: str
    reference: str
    n: int
    mean_difference: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    t_pvalue_holm: float = math.nan
    wilcoxon_pvalue_holm: float = math.nan


def paired_test(model_scores: Sequence[float], reference_scores: Sequence[float],
                model: str = "model", reference: str = "reference") -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of two models' per-image scores.

    When every difference is zero the two models are indistinguishable on these images: both
    p-values are 1 (SciPy would return NaN for the t-test and raise for Wilcoxon)."""
    names, matrix = _score_matrix({model: model_scores, reference: reference_scores})
    a, b = matrix[:, 0], matrix[:, 1]
    n = len(a)
    if n < 2:
        raise DataError(f"statistics: a paired test needs at least 2 images, got {n}")
    diff = a - b
    if np.all(diff == 0):
        return PairedTest(model, reference, n, 0.0, 0.0, 1.0, 0.0, 1.0)
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return PairedTest(model, reference, n, float(diff.mean()), float(t.statistic), float(t.pvalue),
                      float(w.statistic), float(w.pvalue))


def paired_tests(scores: Mapping[str, Sequence[float]], reference: str | None = None,
                 higher_is_better: bool = True) -> list[PairedTest]:
    """Every model against ``reference`` (default: the best mean score), with Holm-adjusted
    p-values over the ``m - 1`` comparisons. Returned in the order of ``scores``."""
    names, matrix = _score_matrix(scores)
    if reference is None:
        means = matrix.mean(axis=0)
        reference = names[int(np.argmax(means) if higher_is_better else np.argmin(means))]
    if reference not in scores:
        raise DataError(f"statistics: reference model {reference!r} not among {names}")
    ref = matrix[:, names.index(reference)]
    tests = [paired_test(matrix[:, j], ref, name, reference) for j, name in enumerate(names) if name != reference]
    t_holm = holm_adjust([t.t_pvalue for t in tests])
    w_holm = holm_adjust([t.wilcoxon_pvalue for t in tests])
    for test, tp, wp in zip(tests, t_holm, w_holm):
        test.t_pvalue_holm, test.wilcoxon_pvalue_holm = float(tp), float(wp)
    return tests


def average_ranks(matrix: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Mean over rows of each column's rank within the row (1 = best; ties: mean rank)."""
    values = -matrix if higher_is_better else matrix
    return stats.rankdata(values, axis=1, method="average").mean(axis=0)


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks for ``k`` models on ``n`` images:
    ``q_alpha sqrt(k (k+1) / (6 n))``, ``q_alpha`` = studentized range quantile (k groups,
    infinite degrees of freedom) / sqrt(2) (Demšar 2006, eq. for CD; q_0.05 = 2.343 at k=3)."""
    if k < 2 or n < 1:
        raise DataError(f"critical difference needs k >= 2 models and n >= 1 images (k={k}, n={n})")
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6.0 * n)))


def rank_cliques(ranks: Mapping[str, float], cd: float) -> list[list[str]]:
    """Maximal groups of models, consecutive in average rank, whose ranks span at most ``cd``
    (no significant difference inside a group); single models are not listed."""
    ordered = sorted(ranks, key=lambda m: ranks[m])
    cliques: list[list[str]] = []
    for start in range(len(ordered)):
        end = start
        while end + 1 < len(ordered) and ranks[ordered[end + 1]] - ranks[ordered[start]] <= cd:
            end += 1
        group = ordered[start:end + 1]
        if len(group) > 1 and not any(set(group) <= set(c) for c in cliques):
            cliques.append(group)
    return cliques


@dataclass
class FriedmanNemenyi:
    models: list[str]
    n: int
    average_ranks: dict[str, float]
    statistic: float
    pvalue: float
    alpha: float
    critical_difference: float
    #: Nemenyi p-values, ``pvalues[a][b]``.
    nemenyi: dict[str, dict[str, float]] = field(default_factory=dict)
    cliques: list[list[str]] = field(default_factory=list)

    def significant(self, a: str, b: str) -> bool:
        return self.nemenyi[a][b] < self.alpha


def friedman_nemenyi(scores: Mapping[str, Sequence[float]], alpha: float = 0.05,
                     higher_is_better: bool = True) -> FriedmanNemenyi:
    """Friedman test over all models and the Nemenyi post-hoc comparison of every pair.

    Needs at least 3 models (with two, use :func:`paired_test`; the Friedman test then reduces
    to a sign test) and 2 images."""
    import scikit_posthocs

    names, matrix = _score_matrix(scores)
    k, n = len(names), matrix.shape[0]
    if k < 3:
        raise DataError(f"the Friedman test needs at least 3 models, got {k}; use the paired tests")
    if n < 2:
        raise DataError(f"the Friedman test needs at least 2 images, got {n}")
    if np.all(matrix == matrix[:, :1]):
        statistic, pvalue = 0.0, 1.0  # every image ranks all models equal: no evidence at all
    else:
        result = stats.friedmanchisquare(*matrix.T)
        statistic, pvalue = float(result.statistic), float(result.pvalue)
    table = scikit_posthocs.posthoc_nemenyi_friedman(matrix)
    nemenyi = {a: {b: float(table.iloc[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}
    ranks = dict(zip(names, map(float, average_ranks(matrix, higher_is_better))))
    cd = critical_difference(k, n, alpha)
    return FriedmanNemenyi(names, n, ranks, statistic, pvalue, alpha, cd, nemenyi, rank_cliques(ranks, cd))


__all__ = [
    "FriedmanNemenyi",
    "PairedTest",
    "average_ranks",
    "critical_difference",
    "friedman_nemenyi",
    "holm_adjust",
    "paired_test",
    "paired_tests",
    "rank_cliques",
]
