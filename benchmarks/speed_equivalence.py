"""Did the speed work change the results? The same benchmark cells trained by two versions of the code.

    python benchmarks/speed_equivalence.py --base COMMIT [--algos td3 sac rlur gfn4retention] [--seeds 0 1 2]
                                           [--workers 2] [--bundle bundles/kuairand-pure]

Each (algorithm, seed) cell of the KuaiRand retention table (``configs/train/<algo>-kuaisim.yaml``, benchmark
budget, frozen evaluation) is trained twice on the same bundle: with ``COMMIT``'s package (a detached git
worktree on PYTHONPATH, in a child process) and with this tree's. Finished cells are kept in
``runs/speed-equivalence/`` (resumable). The table gives, per algorithm, the return time and click rate before
and after with 95% CIs, the Welch test between them and the training time per run. The speed changes are exact
up to float rounding, so any difference is the chaotic growth of rounding through training: it must be within
the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from retentionrl.bench.grid import run_parallel
from retentionrl.bench.report import load_runs
from retentionrl.bench.worktree import add_worktree
from retentionrl.config import load_config
from retentionrl.evaluation.stats import mean_ci, welch_t_test
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def train_cell(job: tuple[str, int, str, Path, Path]) -> str:
    """Train one cell in a child process with the package at ``src`` (PYTHONPATH, one thread); skip it when
    finished."""
    src, seed, bundle, out, config = job
    if (out / "summary.json").is_file():
        return str(out)
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "retentionrl.cli", "train", "--config", str(config), "--seed", str(seed),
                    "--simulator", bundle, "--out", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the commit before the change")
    ap.add_argument("--algos", nargs="+", default=["td3", "sac", "rlur", "gfn4retention"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    ap.add_argument("--runs", default=str(REPO / "runs" / "speed-equivalence"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "speed_equivalence.md"))
    args = ap.parse_args()
    runs = Path(args.runs)
    trees = {"before": str(add_worktree(REPO, args.base, runs / f"base-{args.base}")), "after": str(REPO / "src")}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for algo in args.algos:
            raw = load_config(REPO / "configs" / "train" / f"{algo}-kuaisim.yaml")  # extends resolved
            for side, src in trees.items():
                config = Path(tmp) / f"{algo}-{side}.yaml"
                config.write_text(yaml.safe_dump({**raw, "label": f"{algo} ({side})"}))
                jobs += [(src, s, args.bundle, runs / side / f"{algo}-seed{s}", config) for s in args.seeds]
        for done in run_parallel(train_cell, jobs, args.workers):
            print(f"[speed-equivalence] finished {done}", flush=True)
    got = load_runs([j[3] for j in jobs])  # refuses mixed bundles or protocols
    lines = [f"Bundle {next(iter(got.values()))[0]['bundle'].get('fingerprint', '?')[:16]}; before = `{args.base}`, "
             f"after = this tree; seeds {args.seeds}; 95% CIs; p: Welch t-test before vs after.", "",
             "| method | return time before | return time after | p | click before | click after | p | "
             "train s before | train s after |", "|---|---|---|---|---|---|---|---|---|"]
    for algo in args.algos:
        b, a = got[f"{algo} (before)"], got[f"{algo} (after)"]
        row = [algo]
        for metric in ("return_time", "click_rate"):
            xb, xa = [r["eval"][metric] for r in b], [r["eval"][metric] for r in a]
            cb, ca = mean_ci(xb), mean_ci(xa)
            row += [f"{cb['mean']:.3f} ± {cb['half_width']:.3f}", f"{ca['mean']:.3f} ± {ca['half_width']:.3f}",
                    f"{welch_t_test(xb, xa)['p_value']:.2f}"]
        row += [f"{sum(r['train_seconds'] for r in side) / len(side):.0f}" for side in (b, a)]
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
