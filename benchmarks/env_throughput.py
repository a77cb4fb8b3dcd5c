"""Environment speed: user-steps per second and the cost of one step relative to candidate scoring.

    python benchmarks/env_throughput.py [--bundle DIR] [--preset kuaisim] [--steps 50]

Without --bundle, a bundle is built from the shipped sample with the default response-model size (one epoch:
weights do not change the cost). The reference is the bare candidate-scoring matmul of a step,
(B, 7, D) @ (D, N) for all N items; the target ratio at 256 users is <= 2.0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from retentionrl.simulator.build import BuildConfig, build_simulator
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.response import ResponseConfig


def timeit(fn, repeat: int) -> float:
    """Seconds per call: median over 5 rounds of ``repeat`` calls (this machine's timings vary by ~15%)."""
    fn()  # warm-up
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        rounds.append((time.perf_counter() - t) / repeat)
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--preset", default="kuaisim")
    ap.add_argument("--steps", type=int, default=20, help="steps per timing round (5 rounds, median)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.bundle:
        sim = Simulator.load(args.bundle)
    else:
        cfg = BuildConfig(response=ResponseConfig(epochs=1))
        sim = build_simulator(cfg, progress=False, log=lambda *_: None)
        with tempfile.TemporaryDirectory() as d:  # exercise the real load path
            sim = Simulator.load(sim.save(f"{d}/b"))
    print(f"bundle: {sim.meta['dataset']}, {sim.n_items:,} items, dim {sim.response.cfg.dim}, "
          f"history {sim.response.cfg.window}, threads {torch.get_num_threads()}, preset {args.preset}")
    print(f"{'users':>6} {'ms/step':>9} {'user-steps/s':>13} {'GEMM ms':>8} {'ratio':>6} {'GEMM+b ms':>10} {'ratio':>6}")
    print("(ratio = one env step / the bare candidate-scoring GEMM; target <= 2.0 at 256 users. GEMM: (B*7, D) @ (D, N);"
          " GEMM+b: the env's own scoring GEMM, (B*7, D+7) @ (D+7, N) with the item biases folded in)")
    for B in (32, 256, 1024):
        env = sim.make_env(args.preset, n_users=B)
        env.reset(seed=0)
        g = torch.Generator().manual_seed(0)
        actions = [torch.rand(B, 7, generator=g) for _ in range(8)]
        k = iter(range(10**9))
        step = timeit(lambda: env.step(actions[next(k) % 8]), args.steps)
        # Both GEMMs get the same advantage as the env: a reused output buffer (a fresh 50 MB output per call
        # costs about as much again in page faults on this machine).
        out = torch.empty(B * 7, sim.n_items)
        q = torch.randn(B * 7, sim.response.cfg.dim)
        vt = env.item_vecs.T.contiguous()
        mm = timeit(lambda: torch.mm(q, vt, out=out), args.steps)
        qb = torch.randn(B * 7, env.scoring_t.shape[0])
        mmb = timeit(lambda: torch.mm(qb, env.scoring_t, out=out), args.steps)
        print(f"{B:>6} {step * 1e3:>9.2f} {B / step:>13,.0f} {mm * 1e3:>8.2f} {step / mm:>6.2f} {mmb * 1e3:>10.2f} {step / mmb:>6.2f}")


if __name__ == "__main__":
    main()
