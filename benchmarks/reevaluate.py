"""Re-evaluate finished runs under another evaluation protocol, e.g. DIN's smaller one, so that methods whose
presets evaluate differently are compared on the same simulated users.

    python benchmarks/reevaluate.py runs/movielens-100k/cem-movielens/seed* --eval '{n_users: 32, n_episodes: 96}'

Each run is scored on its own recorded bundle, or on ``--simulator`` (refused if its fingerprint is not the
run's).

Prints, per run directory, the return time, retention and like/click rates of its frozen policy, then the mean
and 95% CI per method (the run directory's parent). Nothing is written.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import yaml

from retentionrl.bench.grid import load_bundle
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import evaluate_policy
from retentionrl.evaluation.stats import mean_ci
from retentionrl.training import load_trained
from retentionrl.training.run import RunDir

KEYS = ("return_time", "retention", "click_rate", "like_rate")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--simulator", default=None, help="bundle directory (default: each run's own)")
    ap.add_argument("--eval", default="{}", help="YAML mapping merged over each run's `eval` section")
    args = ap.parse_args()
    try:
        overrides = yaml.safe_load(args.eval) or {}
    except yaml.YAMLError as e:
        raise RetentionRLError(f"--eval is not YAML: {args.eval!r} ({str(e).splitlines()[0]})") from None
    by_method: dict[str, list[dict]] = defaultdict(list)
    for d in args.runs:
        run = RunDir(d)
        run.read_config()  # a non-run directory fails before any bundle is loaded
        sim = load_bundle(args.simulator or run.simulator_path())  # once per bundle; load_trained checks it
        cfg, agent = load_trained(d, sim, overrides)
        m = evaluate_policy(agent, sim, cfg.eval_config())["mean"]
        by_method[Path(d).parent.name].append(m)
        print(d, json.dumps({k: round(m[k], 4) for k in KEYS}))
    for method, ms in by_method.items():
        cells = []
        for k in KEYS:
            ci = mean_ci([m[k] for m in ms])
            cells.append(f"{k} {ci['mean']:.3f}" + (f" ± {ci['half_width']:.3f}" if ci["half_width"] is not None else ""))
        print(f"{method} ({len(ms)} runs): " + ", ".join(cells))


if __name__ == "__main__":
    try:
        main()
    except RetentionRLError as e:  # bad input: one line, as the CLI does
        raise SystemExit(f"error: {e}") from None
