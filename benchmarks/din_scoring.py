"""Time DIN's scoring of the whole catalogue, the cost that dominates evaluating DIN (an untrained net: the
cost does not depend on the weights).

    python benchmarks/din_scoring.py [--bundle bundles/kuairand-pure] [--users 256] [--threads 1] [--repeat 3]
                                     [--chunk-elems 2097152 ...]

Prints, per ``chunk_elems`` value, the median seconds of one ``DIN.act`` for ``--users`` users at the first
request of a KuaiSim-preset episode (history window H, all C items as candidates).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from retentionrl.agents.din import DIN, DINConfig
from retentionrl.simulator.bundle import Simulator

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-elems", type=int, nargs="+", default=[DINConfig().chunk_elems])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sim = Simulator.load(args.bundle)
    obs = sim.make_env("kuaisim", n_users=args.users, users="test", action_mode="items").reset(seed=0)
    B, H = obs.hist_items.shape
    print(f"{args.bundle}: B={B} users, H={H} history slots, C={len(obs.candidates)} candidates, "
          f"{args.threads} thread(s)")
    for chunk in args.chunk_elems:
        agent = DIN(sim, DINConfig(chunk_elems=chunk), seed=0)
        agent.act(obs)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            agent.act(obs)
            times.append(time.perf_counter() - t0)
        print(f"chunk_elems={chunk}: {statistics.median(times):.3f} s per act (min {min(times):.3f})")


if __name__ == "__main__":
    main()
