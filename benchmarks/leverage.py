"""Measured leverage of session length (and return time) under the presets ResAct's session-length task can use:
the 14 one-behaviour fusion policies and random, frozen (``retentionrl.bench.leverage``).

    python benchmarks/leverage.py [--bundle bundles/kuairand-pure]

Prints one markdown table per preset: KuaiSim with the satisfaction temper, the learned preset at the default
slate of 6 and at slate 1 (the slate its leave model is calibrated for).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from retentionrl.bench.leverage import bounds_markdown, measured_bounds
from retentionrl.evaluation.protocol import EvalConfig
from retentionrl.simulator.bundle import Simulator

REPO = Path(__file__).resolve().parents[1]
PRESETS = [("kuaisim", {"leave": {"kind": "satisfaction"}}, "the KuaiSim preset with the satisfaction temper"),
           ("learned", {}, "the learned preset"), ("learned", {"slate_size": 1}, "the learned preset at slate 1")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    args = ap.parse_args()
    sim = Simulator.load(args.bundle)
    for preset, env, name in PRESETS:
        t = time.time()
        ev = EvalConfig(preset=preset, n_users=256, n_episodes=512, seeds=[10_000, 10_001, 10_002], env_overrides=env)
        print(bounds_markdown(measured_bounds(sim, ev), sim, name, metric="session_length"))
        print(f"({time.time() - t:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
