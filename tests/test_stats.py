"""Statistics of the benchmark report against SciPy / scikit-posthocs and Demšar's tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scikit_posthocs
from scipy import stats

from busseg.errors import DataError
from busseg.report.stats import (
    average_ranks,
    critical_difference,
    friedman_nemenyi,
    holm_adjust,
    paired_test,
    paired_tests,
    rank_cliques,
)


def _scores(seed: int = 0, n: int = 40, shifts=(0.0, 0.02, 0.05, 0.15)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.9, n)
    return {f"m{i}": np.clip(base - s + 0.05 * rng.standard_normal(n), 0, 1) for i, s in enumerate(shifts)}


def test_paired_test_matches_scipy():
    s = _scores()
    result = paired_test(s["m1"], s["m0"], "m1", "m0")
    t = stats.ttest_rel(s["m1"], s["m0"])
    w = stats.wilcoxon(s["m1"], s["m0"])
    assert result.t_statistic == pytest.approx(t.statistic)
    assert result.t_pvalue == pytest.approx(t.pvalue)
    assert result.wilcoxon_statistic == pytest.approx(w.statistic)
    assert result.wilcoxon_pvalue == pytest.approx(w.pvalue)
    assert result.mean_difference == pytest.approx(np.mean(s["m1"] - s["m0"]))
    assert result.n == 40


def test_identical_models_are_not_different():
    a = np.linspace(0, 1, 10)
    result = paired_test(a, a.copy())
    assert result.t_pvalue == 1.0 and result.wilcoxon_pvalue == 1.0 and result.mean_difference == 0.0


def test_paired_tests_pick_the_best_and_holm_adjust():
    s = _scores()
    tests = paired_tests(s)
    assert {t.reference for t in tests} == {"m0"}  # highest mean Dice
    assert [t.model for t in tests] == ["m1", "m2", "m3"]
    raw = [t.t_pvalue for t in tests]
    assert [t.t_pvalue_holm for t in tests] == pytest.approx(list(holm_adjust(raw)))
    assert tests[-1].t_pvalue < 1e-6  # a 15-point drop is detected
    # lower is better (HD95): the reference is the lowest mean
    assert paired_tests(s, higher_is_better=False)[0].reference == "m3"


def test_holm_on_known_values():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm_adjust([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    adjusted = holm_adjust([0.2, math.nan, 0.9])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.4) and adjusted[2] == pytest.approx(0.9)


def test_average_ranks_best_is_one_and_ties_share():
    matrix = np.array([[0.9, 0.5, 0.5], [0.8, 0.7, 0.1]])
    assert average_ranks(matrix) == pytest.approx([1.0, 2.25, 2.75])
    assert average_ranks(matrix, higher_is_better=False) == pytest.approx([3.0, 1.75, 1.25])


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (10, 3.164)])
def test_critical_difference_uses_demsar_q_values(k, q):
    n = 50
    assert critical_difference(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_friedman_nemenyi_against_scipy_and_scikit_posthocs():
    s = _scores(seed=3)
    result = friedman_nemenyi(s)
    matrix = np.stack(list(s.values()), axis=1)
    f = stats.friedmanchisquare(*matrix.T)
    assert result.statistic == pytest.approx(f.statistic) and result.pvalue == pytest.approx(f.pvalue)
    reference = scikit_posthocs.posthoc_nemenyi_friedman(matrix)
    for i, a in enumerate(s):
        for j, b in enumerate(s):
            assert result.nemenyi[a][b] == pytest.approx(reference.iloc[i, j])
    # the CD and the Nemenyi p-values tell the same story
    for a in s:
        for b in s:
            if a != b:
                apart = abs(result.average_ranks[a] - result.average_ranks[b]) > result.critical_difference
                assert apart == result.significant(a, b), (a, b)
    assert result.average_ranks["m0"] < result.average_ranks["m3"]


def test_cliques_are_maximal_runs_within_cd():
    ranks = {"a": 1.0, "b": 1.4, "c": 2.0, "d": 3.5, "e": 3.6}
    assert rank_cliques(ranks, cd=1.0) == [["a", "b", "c"], ["d", "e"]]
    assert rank_cliques(ranks, cd=0.05) == []
    assert rank_cliques(ranks, cd=10) == [["a", "b", "c", "d", "e"]]
    assert rank_cliques({"a": 1.0, "b": 1.8, "c": 2.6}, cd=1.0) == [["a", "b"], ["b", "c"]]


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="different numbers of images"):
        paired_tests({"a": [0.1, 0.2], "b": [0.3]})
    with pytest.raises(DataError, match="non-finite"):
        paired_tests({"a": [0.1, math.nan], "b": [0.3, 0.2]})
    with pytest.raises(DataError, match="at least 3 models"):
        friedman_nemenyi({"a": [0.1, 0.2], "b": [0.3, 0.4]})
