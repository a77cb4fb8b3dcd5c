"""Statistics: Student-t CIs and Welch's test against hand-computed answers and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from retentionrl.evaluation.stats import compare_runs, mean_ci, significance_mark, welch_t_test

T975_4 = 2.7764451051977934  # t_{0.975, 4} from tables


def test_mean_ci_known_answer():
    r = mean_ci([1, 2, 3, 4, 5])
    # var = (4 + 1 + 0 + 1 + 4) / 4 = 2.5; half width = t_{0.975,4} * sqrt(2.5) / sqrt(5) = 2.776445 * 0.707107
    assert r["n"] == 5 and r["mean"] == pytest.approx(3.0)
    assert r["std"] == pytest.approx(math.sqrt(2.5), abs=1e-12)
    assert r["half_width"] == pytest.approx(1.963243, abs=1e-4)
    assert r["half_width"] == pytest.approx(T975_4 * math.sqrt(2.5) / math.sqrt(5), abs=1e-9)
    assert r["ci_low"] == pytest.approx(3 - 1.963243, abs=1e-4) and r["ci_high"] == pytest.approx(3 + 1.963243, abs=1e-4)
    # 90%: t_{0.95,4} = 2.131847
    assert mean_ci([1, 2, 3, 4, 5], 0.90)["half_width"] == pytest.approx(2.131847 * math.sqrt(0.5), abs=1e-5)


def test_mean_ci_two_values_and_inputs():
    # n = 2: t_{0.975,1} = 12.706205; std of (0, 2) = sqrt(2); half = 12.706205 * sqrt(2) / sqrt(2)
    assert mean_ci([0.0, 2.0])["half_width"] == pytest.approx(12.706205, abs=1e-5)
    same = mean_ci(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert same == mean_ci([1, 2, 3, 4, 5]) == mean_ci(torch.arange(1.0, 6.0))
    const = mean_ci([0.1, 0.1, 0.1])
    assert const["std"] == 0.0 and const["half_width"] == 0.0 and const["mean"] == 0.1


def test_mean_ci_single_value_has_no_interval():
    r = mean_ci([4.5])
    assert r == {"mean": 4.5, "ci_low": None, "ci_high": None, "half_width": None, "n": 1, "std": None}


@pytest.mark.parametrize("bad, msg", [
    ([1.0, float("nan")], "value 1 is nan"),
    ([1.0, None, 2.0], "value 1 is None"),
    ([float("inf"), 1.0], "value 0 is inf"),
    ([], "no values"),
    ([1.0, "2"], "not a number"),
    (3.0, "expected a sequence"),
])
def test_mean_ci_bad_input(bad, msg):
    with pytest.raises(ValueError, match=msg):
        mean_ci(bad)


def test_mean_ci_bad_confidence():
    for c in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="confidence"):
            mean_ci([1, 2], c)


def test_welch_by_hand():
    # a = (1, 2, 3), b = (4, 5, 6): both variances 1, so se^2 = 1/3 + 1/3, t = -3 / sqrt(2/3);
    # df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4. For 4 df the t CDF is closed-form:
    # F(t) = 1/2 + 3/8 * t / sqrt(1 + t^2/4) * (1 - t^2 / (12 (1 + t^2/4))).
    t = -3 / math.sqrt(2 / 3)
    u = t * t
    p = 2 * (0.5 - 3 / 8 * (abs(t) / math.sqrt(1 + u / 4)) * (1 - u / (12 * (1 + u / 4))))
    r = welch_t_test([1, 2, 3], [4, 5, 6])
    assert r["t"] == pytest.approx(-3.674235, abs=1e-6) == pytest.approx(t)
    assert r["df"] == pytest.approx(4.0)
    assert r["p_value"] == pytest.approx(p, abs=1e-10) and r["p_value"] == pytest.approx(0.021312, abs=1e-6)
    # Unequal sizes and variances: a = 1..5 (mean 3, var 2.5), b = (2, 4, 6) (mean 4, var 4):
    # se^2 = 0.5 + 4/3, t = -1 / sqrt(11/6), df = (11/6)^2 / (0.25/4 + (16/9)/2) = 3.532847.
    r = welch_t_test([1, 2, 3, 4, 5], [2, 4, 6])
    assert r["t"] == pytest.approx(-1 / math.sqrt(11 / 6), abs=1e-10)
    assert r["df"] == pytest.approx((11 / 6) ** 2 / (0.25 / 4 + (16 / 9) / 2), abs=1e-10)
    assert r["df"] == pytest.approx(3.532847, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, 5 + seed)
    b = rng.normal(0.7, 3.0, 8)
    ref = st.ttest_ind(a, b, equal_var=False)
    r = welch_t_test(a, b)
    assert r["t"] == pytest.approx(float(ref.statistic), rel=1e-10)
    assert r["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-8)
    assert r["df"] == pytest.approx(float(ref.df), rel=1e-10)
    assert welch_t_test(b, a)["t"] == pytest.approx(-r["t"])  # symmetric


def test_welch_zero_variance():
    # Identical constant runs (scipy gives p ~ 0.29 here from rounding noise): no difference, p = 1.
    r = welch_t_test([0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1])
    assert r == {"t": 0.0, "df": 5.0, "p_value": 1.0}
    r = welch_t_test([2.0, 2.0], [1.0, 1.0, 1.0])
    assert r["p_value"] == 0.0 and r["t"] == math.inf
    assert welch_t_test([1.0, 1.0], [2.0, 2.0])["t"] == -math.inf
    # One side constant: the ordinary formula. se^2 = 0 + 1/3, t = -1 / sqrt(1/3), df = n_other - 1 = 2, and for
    # 2 df the two-sided p is 1 - |t| / sqrt(2 + t^2).
    r = welch_t_test([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert r["t"] == pytest.approx(-math.sqrt(3)) and r["df"] == pytest.approx(2.0)
    assert r["p_value"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), abs=1e-10)


def test_welch_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        welch_t_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="b: value 0 is nan"):
        welch_t_test([1.0, 2.0], [float("nan"), 2.0])


def test_significance_mark():
    assert [significance_mark(p) for p in (0.0, 0.0009, 0.001, 0.009, 0.01, 0.049, 0.05, 0.5, 1.0, None)] == [
        "***", "***", "**", "**", "*", "*", "", "", "", ""]


def test_compare_runs():
    results = {"ref": [1.0, 2.0, 3.0], "worse": [4.0, 5.0, 6.0], "one_run": [0.5], "same": [1.0, 2.0, 3.0]}
    rows = {r["method"]: r for r in compare_runs(results, "ref", lower_is_better=True)}
    assert list(rows) == list(results)
    ref = rows["ref"]
    assert ref["is_reference"] and ref["p_value"] is None and ref["mark"] == "" and ref["better"] is None
    assert ref["mean"] == pytest.approx(2.0) and ref["half_width"] == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    w = rows["worse"]
    assert w["delta"] == pytest.approx(3.0) and w["p_value"] == pytest.approx(0.021312, abs=1e-6)
    assert w["mark"] == "*" and w["better"] is False and w["significant"] is False
    o = rows["one_run"]
    assert o["better"] is True and o["p_value"] is None and o["half_width"] is None and o["significant"] is False
    assert rows["same"]["p_value"] == pytest.approx(1.0) and rows["same"]["better"] is False
    # Higher is better: "worse" is now significantly better.
    hi = {r["method"]: r for r in compare_runs(results, "ref", lower_is_better=False)}
    assert hi["worse"]["better"] is True and hi["worse"]["significant"] is True
    with pytest.raises(ValueError, match="reference method 'nope'"):
        compare_runs(results, "nope", lower_is_better=True)
    with pytest.raises(ValueError, match=r"results\['bad'\]: value 1 is None"):
        compare_runs({"ref": [1.0, 2.0], "bad": [1.0, None]}, "ref", lower_is_better=True)
