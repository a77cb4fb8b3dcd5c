"""Compare run directories: a markdown table (and CSV) with 95% CIs over training seeds and Welch t-tests
against a reference method, plus PNG training curves. Reads only what runs write (``config.yaml``,
``summary.json``, ``metrics.jsonl``), so run directories from different machines compare fine.

:func:`load_runs` refuses what would make the table wrong: the same (label, seed) twice (one run counted twice
shrinks the CI), runs made on different simulator bundles (fingerprints), and runs evaluated under different
protocols (their resolved evaluation configs). Runs made before runs recorded their bundle compare only with each
other (the table then says the bundle is not recorded)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any


from retentionrl.config import from_dict, to_dict
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.stats import compare_runs, mean_ci
from retentionrl.simulator.bundle import SHORT
from retentionrl.training import trainer_for
from retentionrl.training.run import BUNDLE_KEY, RunDir
from retentionrl.utils.io import atomic_path, write_text_atomic

#: metric -> (label, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "return_time": ("return time ↓", True),
    "retention": ("retention ↑", False),
    "click_rate": ("click ↑", False),
    "long_view_rate": ("long view ↑", False),
    "like_rate": ("like ↑", False),
    "session_length": ("session length", False),
    "diversity_slate": ("tags / slate ↑", False),  # distinct item tags per slate (SEC's AER claims diversity)
    "diversity_session": ("tags / session ↑", False),
    # Ensemble members' std on the visited states (where the simulator extrapolates; bundles with an ensemble).
    "disagreement_click": ("disagree. click", True),
    "disagreement_return": ("disagree. return", True),
    # The author side (RLIV-UA's Tables 2-3): evaluation/metrics.py defines each.
    "watch_time": ("watch s / session ↑", False),
    "diversity": ("diversity (ILD) ↑", False),
    "new_fans": ("new fans / user ↑", False),
    "ua_count": ("UA pairs / user ↑", False),
}
#: The column sets of a table: the retention papers' (the default) and RLIV-UA's user and author metrics.
COLUMNS: dict[str, tuple[str, ...]] = {
    "retention": ("return_time", "retention", "click_rate", "long_view_rate", "like_rate", "session_length",
                  "diversity_slate", "diversity_session", "disagreement_click", "disagreement_return"),
    "author": ("session_length", "watch_time", "click_rate", "diversity", "new_fans", "ua_count", "return_time",
               "disagreement_click"),
}


def load_runs(run_dirs: list[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """method -> list of {seed, eval, train_seconds, dir, bundle, eval_config, eval_pool_users} (one per finished
    run). Refuses a repeated (method, seed), mixed simulator fingerprints and mixed evaluation protocols, naming
    the runs."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    first: dict[str, Any] | None = None
    for d in run_dirs:
        d = Path(d)
        # A damaged config.yaml / summary.json is an error naming the file (RunDir's readers).
        rd = RunDir(d)
        cfg, record = rd.read_config()
        summary = rd.read_summary()
        label = cfg.get("label") or cfg["algo"]
        bundle = summary.get(BUNDLE_KEY) or record
        eval_cfg = summary.get("eval_config") or _eval_config_of(cfg, d)
        run = {"seed": cfg["seed"], "eval": summary["eval"], "train_seconds": summary.get("train_seconds"), "dir": d,
               "bundle": bundle, "eval_config": eval_cfg, "eval_pool_users": summary.get("eval_pool_users")}
        same = next((r for r in runs[label] if r["seed"] == run["seed"]), None)
        if same is not None:
            raise RetentionRLError(f"{same['dir']} and {d} are both '{label}' seed {run['seed']} (a run counted twice "
                                   "would shrink the CI)")
        if first is None:
            first = run
        _check_comparable(first, run)
        runs[label].append(run)
    return dict(runs)


def _eval_config_of(cfg: dict[str, Any], d: Path) -> dict[str, Any]:
    """The resolved evaluation protocol of a run whose summary predates recording it (from its config.yaml)."""
    return to_dict(from_dict(trainer_for(cfg.get("algo", "td3"), cfg.get("loop"), str(d / "config.yaml"))[0], cfg,
                             str(d / "config.yaml")).eval_config())


def _check_comparable(a: dict[str, Any], b: dict[str, Any]) -> None:
    fa, fb = ((r["bundle"] or {}).get("fingerprint") for r in (a, b))
    if fa != fb:
        name = lambda f: f[:SHORT] if f else "no recorded bundle"  # noqa: E731
        raise RetentionRLError(f"{a['dir']} and {b['dir']} were made on different simulators ({name(fa)} vs "
                               f"{name(fb)}); compare runs of one bundle")
    # `disagreement` only adds columns (the simulation is the same with it off), so it is not the protocol.
    ea, eb = ({k: v for k, v in r["eval_config"].items() if k not in REPORTING_ONLY} for r in (a, b))
    if ea != eb:
        diff = sorted(k for k in set(ea) | set(eb) if ea.get(k) != eb.get(k))
        raise RetentionRLError(f"{a['dir']} and {b['dir']} were evaluated under different protocols (differ in: "
                               f"{', '.join(diff)})")


#: EvalConfig fields that change what is reported, not what is simulated
REPORTING_ONLY = ("disagreement",)


def evaluated_on(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Which users the (common) protocol of ``runs`` evaluated, on which bundle, for the table's note."""
    r = next(iter(runs.values()))[0]
    ev, pool, bundle = r.get("eval_config"), r.get("eval_pool_users"), r.get("bundle")
    if ev is None:  # runs not read by load_runs
        return "evaluated on simulated users with fixed evaluation seeds"
    n = f"{pool:,} " if pool is not None else ""
    who = {"test": f"the {n}held-out users", "train": f"the {n}training users (not held out)",
           "all": f"all {n}users (held-out and training)"}[ev["users"]]
    src = f"bundle `{bundle['fingerprint'][:SHORT]}` ({bundle.get('dataset')})" if bundle else "an unrecorded bundle"
    return (f"evaluated on {ev['n_episodes']} simulated user episodes per seed x {len(ev['seeds'])} fixed evaluation "
            f"seeds, drawn from {who} of {src}")


def best_method(runs: dict[str, list[dict[str, Any]]], metric: str = "return_time") -> str:
    lower = METRICS[metric][1]
    means = {m: sum(r["eval"][metric] for r in rs) / len(rs) for m, rs in runs.items()}
    return min(means, key=means.get) if lower else max(means, key=means.get)


def comparison_table(runs: dict[str, list[dict[str, Any]]], reference: str | None = None,
                     columns: str = "retention") -> tuple[str, str, str]:
    """(markdown, csv, reference used) with the metrics of ``COLUMNS[columns]`` (a metric some run lacks is left
    out). Marks: * p<0.05, ** p<0.01, *** p<0.001 (Welch vs the reference; default: the best by the first column)."""
    if columns not in COLUMNS:
        raise RetentionRLError(f"unknown table columns '{columns}' (known: {', '.join(COLUMNS)})")
    reference = reference or best_method(runs, COLUMNS[columns][0])
    if reference not in runs:
        raise RetentionRLError(f"reference '{reference}' is not among the runs ({', '.join(runs)})")
    methods = list(runs)
    cols: dict[str, list[dict[str, Any]]] = {}
    for metric in COLUMNS[columns]:
        lower = METRICS[metric][1]
        vals = {m: [r["eval"].get(metric) for r in runs[m]] for m in methods}  # None: not measured (old runs)
        if any(v is None for vs in vals.values() for v in vs):
            continue
        cols[metric] = compare_runs(vals, reference, lower_is_better=lower)
    head = ["method", "seeds", *(METRICS[m][0] for m in cols), "train s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "seeds", *(f"{m}_{k}" for m in cols for k in ("mean", "ci_low", "ci_high", "p_value")),
                "train_seconds_mean"])
    for i, m in enumerate(methods):
        secs = [r["train_seconds"] for r in runs[m] if r["train_seconds"] is not None]
        mean_secs = sum(secs) / len(secs) if secs else None
        cells = [m + (" (ref)" if m == reference else ""), str(len(runs[m]))]
        row = [m, len(runs[m])]
        for metric, rows in cols.items():
            r = rows[i]
            ci = f" ± {r['half_width']:.3f}" if r["half_width"] is not None else ""
            cells.append(f"{r['mean']:.3f}{ci}{r['mark']}")
            row += [r["mean"], r["ci_low"], r["ci_high"], r["p_value"]]
        cells.append("–" if mean_secs is None else f"{mean_secs:.0f}")
        row.append(mean_secs)
        lines.append("| " + " | ".join(cells) + " |")
        w.writerow(row)
    note = (f"\nMean ± 95% CI (Student t) over training seeds; each run's policy frozen and {evaluated_on(runs)}. "
            f"Welch t-test against **{reference}**: * p<0.05, ** p<0.01, *** p<0.001.\n")
    return "\n".join(lines) + "\n" + note, buf.getvalue(), reference


def eval_points(run_dir: str | Path, metrics: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """metric -> (step, value) of each periodic frozen-policy evaluation in the run's ``metrics.jsonl``, in file
    order (read once; a bad line is an error naming the file and line)."""
    points: dict[str, list[tuple[int, float]]] = {m: [] for m in metrics}
    for rec in RunDir(run_dir).read_metrics():
        if rec.get("event") == "eval":
            for m in metrics:
                if rec.get(m) is not None:
                    points[m].append((rec["step"], rec[m]))
    return points


def training_curves(runs: dict[str, list[dict[str, Any]]], path: Path, metric: str = "return_time") -> None:
    """Mean over seeds of the periodic frozen-policy evaluations, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[int, list[float]]] = {}
    for m, rs in runs.items():
        by_step: dict[int, list[float]] = curves.setdefault(m, defaultdict(list))
        for r in rs:
            for step, value in eval_points(r["dir"], (metric,))[metric]:
                by_step[step].append(value)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m, by_step in curves.items():
        if by_step:
            steps = sorted(by_step)
            ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], marker="o", label=m)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(METRICS[metric][0])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_comparison(run_dirs: list[str | Path], out: str | Path, reference: str | None = None,
                     reference_among: list[str] | None = None, extra: str = "",
                     columns: str = "retention") -> tuple[str, str]:
    """Write comparison.md / .csv / training_curves.png under ``out``; returns (markdown, reference). Without a
    ``reference``, the best method by the first of ``COLUMNS[columns]`` (return time; session length for
    ``author``) is used, among ``reference_among`` when given (e.g. the baselines, so a new method is tested
    against the best baseline). ``extra`` (markdown, e.g. the paper's table) is appended to comparison.md and to
    the markdown returned."""
    runs = load_runs(run_dirs)
    if reference is None and reference_among:
        among = {m: r for m, r in runs.items() if m in reference_among}
        reference = best_method(among, COLUMNS[columns][0]) if among else None
    md, table_csv, ref = comparison_table(runs, reference, columns)
    if extra:
        md = md + "\n" + extra
    out = Path(out)
    training_curves(runs, out / "training_curves.png")  # first: it reads every metrics.jsonl before writing
    write_text_atomic(out / "comparison.md", md)
    write_text_atomic(out / "comparison.csv", table_csv)
    return md, ref


def sweep_plot(runs: dict[str, list[dict[str, Any]]], values: dict[str, float], path: Path, xlabel: str,
               metrics: tuple[str, ...] = ("return_time", "click_rate"), log_x: bool = False) -> str:
    """One panel per metric: mean ± 95% CI over seeds against a swept parameter. ``values``: method -> x
    (``log_x``: a log axis). Writes the PNG and returns a markdown table of the same numbers. The ensemble's
    disagreement metrics are added whenever every run has them (bundles with an ensemble), as in every
    comparison table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted((m for m in values if m in runs), key=values.get)
    metrics = (*metrics, *(d for d in ("disagreement_click", "disagreement_return") if d not in metrics
                           and order and all(d in r["eval"] for m in order for r in runs[m])))
    stats = {metric: [mean_ci([r["eval"][metric] for r in runs[m]]) for m in order] for metric in metrics}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6))
    for ax, metric in zip(axes if len(metrics) > 1 else [axes], metrics):
        xs = [values[m] for m in order]
        means = [s["mean"] for s in stats[metric]]
        err = [s["half_width"] or 0.0 for s in stats[metric]]
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=3)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        ax.set_ylabel(METRICS[metric][0])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    head = [xlabel, "seeds", *(METRICS[m][0] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, m in enumerate(order):
        cells = [f"{values[m]:g}", str(len(runs[m]))]
        for metric in metrics:
            s = stats[metric][i]
            cells.append(f"{s['mean']:.3f}" + (f" ± {s['half_width']:.3f}" if s["half_width"] is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
