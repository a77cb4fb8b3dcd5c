"""Fixed-weight policies in the learned preset at two slate sizes: does return time follow the policy, or the
slate size the leave / return models were (not) fitted for?

    python benchmarks/learned_preset.py BUNDLE [--slates 6 1] [--users 256] [--episodes 256] [--seed 10000]
                                        [--preset kuaisim --env '{returns: {personal: random_state}}']
                                        [--runs RUN_DIR ...]

Evaluates ranking by click ``[1, 0, ...]``, ranking against clicks ``[-1, 0, ...]`` and random fusion weights on
the bundle's held-out users (the evaluation protocol, one seed) and prints one markdown table: return time,
next-day retention, click rate, session length (requests) and, when the bundle has an ensemble, the members'
disagreement on the visited states (and, per slate, the same figure for the logged-like policy). ``--runs`` adds
trained policies (their checkpoints, e.g. a TD3 trained in the random-state preset).
"""

from __future__ import annotations

import argparse
import time

import torch

from retentionrl.agents.base import FixedWeightsAgent, RandomAgent
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.bundle import Simulator

POLICIES = {
    "ranking (click)": lambda: FixedWeightsAgent([1.0, 0, 0, 0, 0, 0, 0]),
    "against clicks": lambda: FixedWeightsAgent([-1.0, 0, 0, 0, 0, 0, 0]),
    "random": lambda: RandomAgent(seed=0),
}
COLUMNS = ("return_time", "retention", "click_rate", "session_length", "disagreement_click", "disagreement_return")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--preset", default="learned")
    ap.add_argument("--slates", type=int, nargs="+", default=[6, 1])
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--episodes", type=int, default=256)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--runs", nargs="*", default=[], help="run directories whose trained policy to add")
    ap.add_argument("--env", default=None, help="extra env overrides as YAML, e.g. '{returns: {personal: random_state}}'")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import yaml

    extra = yaml.safe_load(args.env) if args.env else {}
    sim = Simulator.load(args.bundle)
    print(f"bundle {args.bundle}, preset {args.preset} {extra or ''}, {args.users} held-out users x "
          f"{args.episodes} episodes, seed {args.seed}\n")
    head = ["slate", "policy", *COLUMNS, "s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    from pathlib import Path

    from retentionrl.training import load_trained

    policies = dict(POLICIES)
    for run in args.runs:
        policies[Path(run).name] = lambda run=run: load_trained(run, sim)[1]
    for k in args.slates:
        ref = None
        for name, make in policies.items():
            cfg = EvalConfig(preset=args.preset, n_users=args.users, n_episodes=args.episodes, seeds=[args.seed],
                             env_overrides={"slate_size": k, **extra})
            t0 = time.perf_counter()
            m = evaluate_policy(make(), sim, cfg)["mean"]
            ref = m
            cells = ["–" if m.get(c) is None else f"{m[c]:.3f}" for c in COLUMNS]
            print(f"| {k} | {name} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.0f} |", flush=True)
        if ref.get("disagreement_click_logged") is not None:
            print(f"| {k} | logged-like (reference) | | | | | {ref['disagreement_click_logged']:.3f} | "
                  f"{ref['disagreement_return_logged']:.3f} | |", flush=True)


if __name__ == "__main__":
    main()
