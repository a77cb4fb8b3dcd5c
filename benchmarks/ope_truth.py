"""Off-policy evaluation against the simulator's truth (issue 13): for every finished offline run, each estimator's
value of its frozen policy from held-out logs of the run's behaviour, beside the policy's true value from
simulator rollouts; bias, RMSE and Spearman rank correlation over the policies, per estimator and cap.

    python benchmarks/ope_truth.py [--roots runs/resact-kuaisim] [--tasks return_time] [--simulator BUNDLE]
                                   [--reference NAME=w1,...,w7 ...] [--no-behaviour-mean] [--sigma S]
                                   [--caps 2 10 inf] [--estimators ncis is pdwis] [--split session]
                                   [--n-users 256] [--steps 60] [--truth-seeds 30000 30001 30002]
                                   [--task-stats separate|logs]
                                   [--out docs/results/ope_truth]

Runs are the finished run directories (``summary.json``) under the roots whose ResAct task is one of ``--tasks``
(``none``: runs without a task). Each frozen agent is rebuilt with ``training.load_trained`` on the run's own
bundle (or ``--simulator``). Runs are grouped by what their estimates must share — bundle, preset, env
overrides, task, behaviour config — and each group is one call of
:func:`retentionrl.bench.ope_truth.ope_against_truth`: one set of held-out logs of the run's behaviour (the
Gaussian "online-serving" policy, whose σ is the target σ unless ``--sigma``), the targets being the runs' policies,
the behaviour's own mean action (unless ``--no-behaviour-mean``) and the ``--reference`` fixed fusion policies.
Writes ``<out>/report.md`` (tables per group) and ``<out>/ope_truth_<k>.png`` (estimate against truth per estimator
column); nothing is resumable (a group's cost is a few rollouts per policy). Prints the report and its wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from retentionrl.agents.base import Agent, FixedWeightsAgent, GaussianBehaviour
from retentionrl.bench.grid import load_bundle
from retentionrl.bench.ope_truth import (
    DEFAULT_CAPS, DEFAULT_ESTIMATORS, ESTIMATORS, OPETruthResult, markdown_tables, ope_against_truth, scatter_plot,
)
from retentionrl.errors import RetentionRLError
from retentionrl.training import load_trained
from retentionrl.training.run import RunDir, build_agent
from retentionrl.utils.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def finished_runs(roots: list[str | Path], tasks: list[str]) -> list[Path]:
    """Run directories with a ``summary.json`` under ``roots`` whose config's task is in ``tasks`` ('none' = no
    task), sorted."""
    out = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise RetentionRLError(f"--roots: {root} is not a directory")
        for summary in sorted(root.rglob("summary.json")):
            raw, _ = RunDir(summary.parent).read_config()
            if (raw.get("task") or "none") in tasks:
                out.append(summary.parent)
    return out


def _parse_reference(text: str) -> tuple[str, Agent]:
    name, _, weights = text.partition("=")
    try:
        w = [float(x) for x in weights.split(",")]
    except ValueError:
        w = []
    if not name or len(w) != 7:
        raise RetentionRLError(f"--reference must be NAME=w1,...,w7 (seven fusion weights), got {text!r}")
    return name, FixedWeightsAgent(w)


def _sigma_of(behaviour: Agent, given: float | None, where: str) -> float | list[float]:
    if given is not None:
        return given
    if not isinstance(behaviour, GaussianBehaviour):
        raise RetentionRLError(f"{where}: the behaviour is not a Gaussian one; give the target σ with --sigma")
    s = behaviour.sigma
    return round(float(s), 6) if s.dim() == 0 else [round(float(x), 6) for x in s]


def group_runs(run_dirs: list[Path], simulator: str | None) -> dict[str, dict[str, Any]]:
    """key -> {sim, cfg (the first run's config), behaviour, targets {label: agent}, dirs {label: run dir}}; the key
    names what the group's runs share (bundle, preset, env, task, behaviour)."""
    groups: dict[str, dict[str, Any]] = {}
    for d in run_dirs:
        run = RunDir(d)
        run.read_config()
        sim = load_bundle(simulator or run.simulator_path())
        cfg, agent = load_trained(str(d), sim)
        if not hasattr(cfg, "behaviour"):
            print(f"skipping {d}: not an offline run (no behaviour policy logged its data)", file=sys.stderr)
            continue
        key = json.dumps({"bundle": sim.fingerprint, "preset": cfg.preset, "env": cfg.env_overrides(), "task": cfg.task,
                          "behaviour": cfg.behaviour, "behaviour_agent": cfg.behaviour_agent,
                          "explore": cfg.behaviour_explore}, sort_keys=True, default=str)
        if key not in groups:
            behaviour = build_agent(cfg.behaviour, sim, cfg.behaviour_agent, cfg.seed + 1, cfg.env_config(),
                                    str(run.config), key="behaviour_agent")
            groups[key] = {"sim": sim, "cfg": cfg, "behaviour": behaviour, "targets": {}, "dirs": {}}
        g = groups[key]
        label = f"{cfg.label or cfg.algo} s{cfg.seed}"
        if label in g["targets"]:
            label = f"{label} ({Path(d).name})"
        g["targets"][label], g["dirs"][label] = agent, Path(d)
    return groups


def group_section(k: int, g: dict[str, Any], res: OPETruthResult, out: Path) -> str:
    cfg, sim, info = g["cfg"], g["sim"], res.info
    env = json.dumps(cfg.env_overrides(), sort_keys=True) if cfg.env_overrides() else "none"
    plot = f"ope_truth_{k}.png"
    scatter_plot(res, out / plot, f"bundle {sim.short_fingerprint} · {cfg.preset} · task {cfg.task}")
    stats = {"separate": "a second held-out behaviour log", "logs": "the estimators' own held-out logs"}
    reward = (f"ResAct task `{cfg.task}` (per-user statistics from {stats.get(info['task_stats'])}, for the logs and "
              f"the rollouts alike; {info['pool_users']} held-out users have them)" if cfg.task else
              f"{info['retention_weight']} × retention reward + {info['immediate_weight']} × immediate reward")
    lines = [
        f"## Group {k}: bundle `{sim.short_fingerprint}`, preset `{cfg.preset}`, env overrides `{env}`, "
        f"task `{cfg.task}`", "",
        f"Behaviour `{cfg.behaviour}` {json.dumps(cfg.behaviour_agent, sort_keys=True)}; target σ {info['sigma']}. "
        f"Held-out logs: {info['log_users']} test users × {info['log_steps']} requests (seed {info['log_seed']}), "
        f"{info['log_trajectories']} complete {info['split']}s (mean length {info['mean_trajectory_length']:.2f}). "
        f"Truth: rollouts of each smoothed target, {info['truth_users']} × {info['truth_steps']} per seed, seeds "
        f"{info['truth_seeds']}. Reward: {reward}. The behaviour's own value on its logs: mean reward/step "
        f"{info['behaviour_mean']:.4f} ± {info['behaviour_mean_se']:.4f}, return {info['behaviour_return']:.4f} ± "
        f"{info['behaviour_return_se']:.4f}.", "",
        "Runs: " + ", ".join(f"{label} = `{d}`" for label, d in g["dirs"].items()), "",
        markdown_tables(res), f"![estimate against truth]({plot})", "",
    ]
    return "\n".join(lines)


HEADER = """# Off-policy evaluation against the simulator's truth

Each policy's value estimated from held-out logs of the behaviour (`bench/ope_truth.py`) beside its true value from
rollouts of the same smoothed policy (a Gaussian of the target σ around its action) on the same held-out users.
NCIS is compared with the mean over trajectories of the per-trajectory *mean* reward (what it estimates exactly
when π = β); trajectory IS and PDWIS with the mean per-trajectory return. `ESS`: Kish effective sample size of
the uncapped trajectory weights, as a fraction of the logged trajectories. `±`: standard errors (truth: clustered
by env row; estimates: delete-a-block jackknife over env rows). Bias = mean(estimate − truth) over the policies,
RMSE likewise, Spearman = rank correlation of estimates and truths (– when one side is constant).

"""


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roots", nargs="+", default=[str(REPO / "runs" / "resact-kuaisim")])
    ap.add_argument("--tasks", nargs="+", default=["return_time"],
                    choices=["return_time", "session_length", "both", "none"])
    ap.add_argument("--simulator", default=None, help="bundle directory (default: each run's own)")
    ap.add_argument("--reference", action="append", default=[], help="NAME=w1,...,w7: a fixed fusion policy")
    ap.add_argument("--no-behaviour-mean", action="store_true", help="leave out the behaviour's own mean action")
    ap.add_argument("--sigma", type=float, default=None, help="target σ (default: the Gaussian behaviour's)")
    ap.add_argument("--caps", nargs="+", type=float, default=list(DEFAULT_CAPS))
    ap.add_argument("--estimators", nargs="+", default=list(DEFAULT_ESTIMATORS), choices=list(ESTIMATORS))
    ap.add_argument("--split", default="session", choices=["session", "episode"])
    ap.add_argument("--n-users", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--truth-users", type=int, default=None)
    ap.add_argument("--truth-steps", type=int, default=None)
    ap.add_argument("--truth-seeds", nargs="+", type=int, default=[30_000, 30_001, 30_002])
    ap.add_argument("--log-seed", type=int, default=20_000)
    ap.add_argument("--retention-weight", type=float, default=1.0, help="reward mix of runs without a task")
    ap.add_argument("--immediate-weight", type=float, default=0.0)
    ap.add_argument("--jackknife", type=int, default=20)
    ap.add_argument("--task-stats", default="separate", choices=["separate", "logs"],
                    help="which held-out behaviour log gives the task's per-user statistics")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "ope_truth"))
    args = ap.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(1)
    references = dict(_parse_reference(r) for r in args.reference)
    runs = finished_runs(args.roots, args.tasks)
    if not runs:
        raise RetentionRLError(f"no finished run with task in {args.tasks} under {', '.join(args.roots)}")
    groups = group_runs(runs, args.simulator)
    out = Path(args.out)
    sections = []
    for k, g in enumerate(groups.values(), 1):
        cfg, behaviour = g["cfg"], g["behaviour"]
        targets = dict(g["targets"])
        if not args.no_behaviour_mean and isinstance(behaviour, GaussianBehaviour):
            targets[f"behaviour mean ({cfg.behaviour_agent.get('base', cfg.behaviour)})"] = behaviour.base
        targets.update(references)
        res = ope_against_truth(
            g["sim"], behaviour, targets, _sigma_of(behaviour, args.sigma, str(g["dirs"][next(iter(g["dirs"]))])),
            cfg.preset, cfg.env_overrides(), cfg.task, args.retention_weight, args.immediate_weight, args.estimators,
            args.caps, args.n_users, args.steps, args.log_seed,
            args.truth_users, args.truth_steps, args.truth_seeds, args.split, jackknife=args.jackknife,
            task_stats=args.task_stats)
        sections.append(group_section(k, g, res, out))
    seconds = time.time() - t0
    md = HEADER + f"{len(runs)} runs in {len(groups)} group(s); {seconds:.0f} s.\n\n" + "\n".join(sections)
    write_text_atomic(out / "report.md", md)
    print(md)
    print(f"ope_truth: {len(runs)} runs, {len(groups)} group(s), {seconds:.1f} s -> {out / 'report.md'}")
    return md


if __name__ == "__main__":
    try:
        main()
    except RetentionRLError as e:  # bad input: one line, as the CLI does
        raise SystemExit(f"error: {e}") from None
