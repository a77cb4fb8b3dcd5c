"""Statistics for comparing methods over training seeds (design §4): mean ± Student-t CI and Welch's t-test.

Every function takes plain sequences of finite numbers (one value per run, e.g. per training seed). NaN, inf
and ``None`` are rejected with a ``ValueError`` rather than silently dropped: a missing run changes ``n`` and
so the width of every interval, which must never happen unnoticed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st


def _as_values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    """Validate ``values`` -> (n,) float64, n >= 1, all finite."""
    try:
        seq = list(values)
    except TypeError:
        raise ValueError(f"{name}: expected a sequence of numbers, got {type(values).__name__}") from None
    if not seq:
        raise ValueError(f"{name}: no values")
    for i, v in enumerate(seq):
        if v is None:
            raise ValueError(f"{name}: value {i} is None (a failed or missing run?)")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            if not (hasattr(v, "item") and getattr(v, "ndim", 1) == 0):  # 0-d tensors / arrays
                raise ValueError(f"{name}: value {i} is not a number: {v!r}")
    x = np.asarray([float(v) for v in seq], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        raise ValueError(f"{name}: value {bad[0]} is {x[bad[0]]} (NaN/inf are not allowed)")
    return x


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    """Sample mean and unbiased variance; exactly (x[0], 0.0) for a constant sample.

    Why: ``np.var`` of e.g. [0.1, 0.1, 0.1] is ~1e-34, not 0, which would turn "identical runs" into an
    infinite t statistic. Constant samples are detected exactly instead.
    """
    if np.all(x == x[0]):
        return float(x[0]), 0.0
    return float(x.mean()), float(x.var(ddof=1))  # len(x) >= 2 here: a single value is constant


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, float | int | None]:
    """Mean with a two-sided Student-t confidence interval.

    values: (n,) finite numbers. Returns ``mean, ci_low, ci_high, half_width, n, std`` where
    ``half_width = t_{(1+confidence)/2, n-1} * std / sqrt(n)`` and ``std`` is the sample (ddof=1) standard
    deviation. With n == 1 there is no spread estimate: ``ci_low``, ``ci_high``, ``half_width`` and ``std``
    are ``None`` (not 0, which would claim certainty).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _as_values(values)
    n = len(x)
    mean, var = _mean_var(x)
    if n == 1:
        return {"mean": mean, "ci_low": None, "ci_high": None, "half_width": None, "n": 1, "std": None}
    std = math.sqrt(var)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n, "std": std}


def welch_t_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Two-sided Welch t-test of mean(a) == mean(b) (unequal variances). a: (n_a,), b: (n_b,), each n >= 2.

    ``t = (mean_a - mean_b) / sqrt(v_a/n_a + v_b/n_b)`` with the Welch–Satterthwaite degrees of freedom
    ``df = (v_a/n_a + v_b/n_b)^2 / ((v_a/n_a)^2/(n_a-1) + (v_b/n_b)^2/(n_b-1))``; matches
    ``scipy.stats.ttest_ind(a, b, equal_var=False)``.

    Both samples constant (zero variance on both sides; scipy returns NaN here): the difference is known
    exactly, so equal means give ``t = 0, p = 1.0`` and different means give ``t = ±inf, p = 0.0``; ``df`` is
    then reported as ``n_a + n_b - 2``.
    """
    xa, xb = _as_values(a, "a"), _as_values(b, "b")
    na, nb = len(xa), len(xb)
    if na < 2 or nb < 2:
        raise ValueError(f"Welch's t-test needs at least 2 values per sample, got {na} and {nb}")
    ma, va = _mean_var(xa)
    mb, vb = _mean_var(xb)
    diff = ma - mb
    sa, sb = va / na, vb / nb
    if sa == 0.0 and sb == 0.0:
        if diff == 0.0:
            return {"t": 0.0, "df": float(na + nb - 2), "p_value": 1.0}
        return {"t": math.copysign(math.inf, diff), "df": float(na + nb - 2), "p_value": 0.0}
    se2 = sa + sb
    t = diff / math.sqrt(se2)
    df = se2**2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    p = float(2.0 * _st.t.sf(abs(t), df))
    return {"t": float(t), "df": float(df), "p_value": min(p, 1.0)}


def significance_mark(p: float | None) -> str:
    """"***" p < 0.001, "**" p < 0.01, "*" p < 0.05, "" otherwise (also for ``None``: no test was possible)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return ""


def compare_runs(results: dict[str, Sequence[float]], reference: str, lower_is_better: bool,
                 confidence: float = 0.95, alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per method (in ``results`` order) comparing it with ``reference`` on one metric.

    results: method -> (n_runs,) values of the metric, one per run (training seed). Row keys:

    * ``method``, ``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``half_width`` (see :func:`mean_ci`);
    * ``delta`` — mean minus the reference's mean;
    * ``p_value`` — two-sided Welch test against the reference (``None`` for the reference itself, or when
      either side has fewer than 2 runs); ``mark`` — :func:`significance_mark` of it;
    * ``better`` — the mean is strictly better than the reference's in the metric's direction (``None`` for the
      reference); ``significant`` — ``better`` and ``p_value < alpha``;
    * ``is_reference``.
    """
    if reference not in results:
        raise ValueError(f"reference method '{reference}' not in results (have: {', '.join(results) or 'none'})")
    checked = {m: _as_values(v, f"results['{m}']") for m, v in results.items()}
    ref = checked[reference]
    ref_mean = _mean_var(ref)[0]
    rows = []
    for method, x in checked.items():
        ci = mean_ci(x, confidence)
        is_ref = method == reference
        p = None
        if not is_ref and len(x) >= 2 and len(ref) >= 2:
            p = welch_t_test(x, ref)["p_value"]
        better = None if is_ref else (ci["mean"] < ref_mean if lower_is_better else ci["mean"] > ref_mean)
        rows.append({
            "method": method, **ci, "delta": ci["mean"] - ref_mean, "p_value": p, "mark": significance_mark(p),
            "better": better, "significant": bool(better and p is not None and p < alpha), "is_reference": is_ref,
        })
    return rows
