"""Re-evaluate finished runs under another evaluation protocol, e.g. DIN's smaller one, so that methods whose
presets evaluate differently are compared on the same simulated users.

    python benchmarks/reevaluate.py runs/movielens-100k/cem-movielens/seed* --simulator bundles/ml-100k \
        --eval '{n_users: 32, n_episodes: 96}'

Prints, per run directory, the return time, retention and like/click rates of its frozen policy, then the mean
and 95% CI per method (the run directory's parent). Nothing is written.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import yaml

from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import evaluate_policy
from retentionrl.evaluation.stats import mean_ci
from retentionrl.simulator.bundle import Simulator
from retentionrl.training import load_trained

KEYS = ("return_time", "retention", "click_rate", "like_rate")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--simulator", required=True)
    ap.add_argument("--eval", default="{}", help="YAML mapping merged over each run's `eval` section")
    args = ap.parse_args()
    try:
        overrides = yaml.safe_load(args.eval) or {}
    except yaml.YAMLError as e:
        raise RetentionRLError(f"--eval is not YAML: {args.eval!r} ({str(e).splitlines()[0]})") from None
    sim = Simulator.load(args.simulator)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for d in args.runs:
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
