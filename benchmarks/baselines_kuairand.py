"""The baseline table on the KuaiRand simulator (KuaiSim preset): every method × 5 training seeds, frozen
evaluation on held-out simulated users, mean ± 95% CI and Welch t-tests against the best method.

    python benchmarks/baselines_kuairand.py [--bundle bundles/kuairand-pure] [--seeds 0 1 2 3 4] [--workers 1]
                                            [--methods td3-kuaisim sac-kuaisim ...]

Finished runs under runs/baselines-kuairand/<method>/seed<k>-<key> are kept and skipped, so the grid can be
filled over several sittings; an interrupted run resumes from its checkpoint; a cell whose config or bundle
changed (another key) is rerun. Writes docs/results/baselines_kuairand.md (+ .csv,
training curves PNG). Build the bundle first with benchmarks/simulator_build.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retentionrl.bench.grid import cells, run_grid
from retentionrl.bench.report import write_comparison

REPO = Path(__file__).resolve().parents[1]
METHODS = ["td3-kuaisim", "sac-kuaisim", "ddpg-kuaisim", "cem-kuaisim", "din-kuaisim", "ranking-kuaisim", "random-kuaisim"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--runs", default=str(REPO / "runs" / "baselines-kuairand"))
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    configs = [REPO / "configs" / "train" / f"{m}.yaml" for m in args.methods]
    done = run_grid(cells(configs, args.seeds, args.runs, args.bundle), workers=args.workers)
    out = REPO / "docs" / "results" / "baselines_kuairand"
    md, ref = write_comparison(done, out)
    print(md)


if __name__ == "__main__":
    main()
