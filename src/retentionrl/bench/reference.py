"""What the reference checks against other libraries share (``benchmarks/reference_check.py`` for
stable-baselines3, ``benchmarks/reference_check_d3rlpy.py`` for d3rlpy): a resumable cell with its
``result.json``, the evaluation fields a result stores, the report's metric columns (with the ensemble's
disagreement, as every comparison table) and its ours-vs-reference verdict, and bundle paths stored relative to
the repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retentionrl.evaluation.stats import mean_ci, welch_t_test

#: (eval key, column header) of the report's metric columns; the disagreement ones read "–" for a bundle without
#: an ensemble.
METRICS = (("return_time", "return time ↓"), ("retention", "retention ↑"), ("click_rate", "click rate ↑"),
           ("disagreement_click", "disagree. click"), ("disagreement_return", "disagree. return"))


@dataclass
class Cell:
    """One algorithm x implementation x training seed; ``settings`` are what the result must have been made with."""

    algo: str
    impl: str
    seed: int
    settings: dict[str, Any]
    runs: str

    @property
    def dir(self) -> Path:
        return Path(self.runs) / f"{self.algo}-{self.impl}" / f"seed{self.seed}"

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    def finished(self) -> bool:
        """Whether the cell has a result; one made with other settings stops the run, naming the keys."""
        if not self.result_path.is_file():
            return False
        saved = json.loads(self.result_path.read_text())["settings"]
        if saved != self.settings:
            diff = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
            raise SystemExit(f"{self.result_path}: finished with other settings (differ in: {', '.join(diff)}); "
                             "use another --runs folder")
        return True


def eval_fields(res: dict[str, Any]) -> dict[str, Any]:
    """The part of :func:`~retentionrl.evaluation.protocol.evaluate_policy`'s result a cell stores."""
    return {"eval": res["mean"], "eval_per_seed": [{"seed": r["seed"], **r["metrics"]} for r in res["per_seed"]]}


def fmt_ci(ci: dict[str, Any], digits: int = 4) -> str:
    """``mean ± half-width`` of a :func:`~retentionrl.evaluation.stats.mean_ci` result (the mean alone for n = 1)."""
    if ci["half_width"] is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} ± {ci['half_width']:.{digits}f}"


def bundle_path(bundle: str | Path, repo: Path) -> Path:
    """A bundle given relative to the repository (as stored in the settings) or absolute."""
    p = Path(bundle)
    return p if p.is_absolute() else repo / p


def bundle_key(bundle: str | Path, repo: Path) -> str:
    """How a bundle is stored in the settings: relative to the repository when inside it (portable runs)."""
    p = Path(bundle).resolve()
    try:
        return str(p.relative_to(repo))
    except ValueError:
        return str(p)


def metric_cells(results: list[dict[str, Any]]) -> list[str]:
    """One ``mean ± CI`` cell per :data:`METRICS` column over the finished results of one (algo, impl)."""
    cells = []
    for key, _ in METRICS:
        vals = [r["eval"][key] for r in results if key in r["eval"]]
        cells.append(fmt_ci(mean_ci(vals)) if vals and len(vals) == len(results) else "–")
    return cells


def metric_header() -> str:
    """The :data:`METRICS` part of the report's header row."""
    return " | ".join(h for _, h in METRICS)


def verdict(name: str, other: str, ours: list[float] | None, theirs: list[float] | None) -> str:
    """The report line for one algorithm: ours − ``other``'s return time, Welch's t-test and whether the 95% CIs
    overlap; or why there is no test (fewer than 2 finished seeds on a side)."""
    if ours is None or theirs is None or min(len(ours), len(theirs)) < 2:
        return f"* **{name}**: not enough finished seeds for a test (need ≥ 2 per side)."
    ca, cb = mean_ci(ours), mean_ci(theirs)
    w = welch_t_test(ours, theirs)
    overlap = ca["ci_low"] <= cb["ci_high"] and cb["ci_low"] <= ca["ci_high"]
    return (f"* **{name}**: ours − {other} return time = {ca['mean'] - cb['mean']:+.4f} days, Welch t = {w['t']:.2f}, "
            f"p = {w['p_value']:.3g}; 95% CIs {'overlap' if overlap else 'do NOT overlap'}.")
