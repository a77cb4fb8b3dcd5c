"""Paper-budget learning curves beside the benchmark-budget ones, on one bundle and one evaluation protocol.

    python benchmarks/paper_budget_curves.py --long 'runs/paper-budget/*/seed*' \
        --short 'runs/speed-equivalence/after/*-seed*' 'runs/short-cem/*' --out docs/results/paper_budget_kuairand

``--long``: the 100,000-step runs (``grids/paper_budget.yaml``), ``--short``: runs of the same methods at the
benchmark budget (2,000 steps), any number of seeds. Runs are matched to a method by their ``algo``; every run must
come from the same simulator bundle and evaluation protocol (``bench.report.load_runs`` refuses a mix). Writes
``vs_benchmark_budget.png`` (per method: return time and click rate of the frozen-policy evaluations against
environment steps, log x, each short and each long run) and ``vs_benchmark_budget.md``
(the numbers), and prints the markdown.
"""

from __future__ import annotations

import argparse
import glob
from collections import defaultdict
from pathlib import Path

from retentionrl.bench.report import METRICS, eval_points, load_runs
from retentionrl.evaluation.stats import mean_ci
from retentionrl.training.run import RunDir
from retentionrl.utils.io import atomic_path, write_text_atomic

PANELS = ("return_time", "click_rate")


def algo_of(run_dir: Path) -> str:
    return RunDir(run_dir).read_config()[0]["algo"]


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f}" + (f" ± {s['half_width']:.3f}" if s["half_width"] is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long", nargs="+", required=True, metavar="GLOB")
    ap.add_argument("--short", nargs="+", required=True, metavar="GLOB")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    expand = lambda pats: sorted({Path(p) for pat in pats for p in glob.glob(pat) if (Path(p) / "summary.json").is_file()})  # noqa: E731
    long_dirs, short_dirs = expand(args.long), expand(args.short)
    runs = load_runs([*long_dirs, *short_dirs])  # one bundle, one protocol, no run twice
    by_algo: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"long": [], "short": []})
    for rs in runs.values():
        for r in rs:
            by_algo[algo_of(r["dir"])]["long" if r["dir"] in long_dirs else "short"].append(r)
    algos = [a for a in by_algo if by_algo[a]["long"] and by_algo[a]["short"]]
    evals = {r["dir"]: {m: dict(pts) for m, pts in eval_points(r["dir"], PANELS).items()}
             for a in algos for side in ("long", "short") for r in by_algo[a][side]}  # step -> value per metric

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), len(algos), figsize=(3.3 * len(algos), 2.9 * len(PANELS)), squeeze=False)
    lines = ["| method | metric | short runs: last eval (seeds) | long run: first eval (step) | last eval (step) | "
             "min … max of its evals | long run train min |", "|---|---|---|---|---|---|---|"]
    for j, algo in enumerate(algos):
        short, long = by_algo[algo]["short"], by_algo[algo]["long"]
        for i, metric in enumerate(PANELS):
            ax = axes[i][j]
            curves = [evals[r["dir"]][metric] for r in short]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            stats = [mean_ci([c[s] for c in curves]) for s in steps]
            for k, c in enumerate(curves):  # each seed (a CI band over 3 seeds would hide the long run's scale)
                ax.plot(steps, [c[s] for s in steps], color="C0", lw=0.8, alpha=0.6, marker="o", ms=2,
                        label=f"{len(short)} seeds × {max(steps):,} steps" if k == 0 else None)
            for r in long:
                c = evals[r["dir"]][metric]
                ax.plot(sorted(c), [c[s] for s in sorted(c)], color="C3", marker=".", ms=3, label=f"seed {r['seed']} × {max(c):,} steps")
                minutes = "" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.0f}"
                vals = list(c.values())
                lines.append(f"| {algo} | {METRICS[metric][0]} | {fmt(stats[-1])} ({len(short)}) | {c[min(c)]:.3f} ({min(c):,}) | "
                             f"{c[max(c)]:.3f} ({max(c):,}) | {min(vals):.3f} … {max(vals):.3f} | {minutes} |")
            ax.axvline(max(steps), color="grey", ls=":", lw=0.8)  # the benchmark budget
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(algo)
            if i == len(PANELS) - 1:
                ax.set_xlabel("environment steps")
            if j == 0:
                ax.set_ylabel(METRICS[metric][0])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "vs_benchmark_budget.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    md = "\n".join(lines) + "\n"
    write_text_atomic(args.out / "vs_benchmark_budget.md", md)
    print(md)


if __name__ == "__main__":
    main()
