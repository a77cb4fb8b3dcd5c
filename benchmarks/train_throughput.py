"""Training speed: environment steps per second of the online loop, and where an update's time goes.

    python benchmarks/train_throughput.py [--bundle bundles/kuairand-pure] [--algos td3 sac rlur gfn4retention]
                                          [--steps 200] [--base COMMIT [--repeat N]] [--compile] [--threads 1]

For each algorithm, with its benchmark config (``configs/train/<algo>-kuaisim.yaml``: 32 users per step, one
update per step), the loop of ``retentionrl.training.online.train`` without its logging, evaluation and
checkpoints: act, ``env.step``, store, sample, update. The replay buffer is first filled by ``warmup_steps``
random steps; then ``--steps`` steps are timed (steps/s and the projected time of a 100,000-step run), and
``--steps`` more are profiled with hooks (slower; for the shares only): forward time of the state encoders
(with their pass count per update), of the critics and of the actors (each including its encoder), the backward
passes, and each optimiser's step.

``--base COMMIT`` measures that commit's code too, in the same run, on the same bundle (a detached git worktree,
imported through PYTHONPATH in a child process), so the before/after numbers share the machine's load;
``--repeat N`` alternates the two N times per algorithm and reports each side's median run. ``--compile`` also
measures this tree with the run option ``compile: true`` (its compilation falls in the untimed warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from retentionrl.bench.worktree import add_worktree, remove_worktree
from retentionrl.config import from_dict, load_config
from retentionrl.simulator.bundle import Simulator
from retentionrl.training.buffer import ReplayBuffer
from retentionrl.training.online import TrainConfig
from retentionrl.training.run import build_agent

REPO = Path(__file__).resolve().parents[1]
ENCODERS = {"StateEncoder", "SplitStateEncoder", "ContextDetector", "FlatEncoder"}
RUN_STEPS = 100_000


def role(module: torch.nn.Module) -> str | None:
    """Which part of the breakdown a module's forward belongs to (None: not a top-level part)."""
    name = type(module).__name__
    if name in ENCODERS:
        return "encoder"
    if "Critic" in name or name == "StateValue":
        return "critic"
    if "Actor" in name:
        return "actor"
    return None


class Profile:
    """Global module / autograd / optimiser hooks that add up wall time per part (ms)."""

    def __init__(self, agent) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.opt_names = {id(v): k for k, v in vars(agent).items() if isinstance(v, torch.optim.Optimizer)}
        self._starts: dict[int, list[float]] = defaultdict(list)
        self._handles: list = []
        self._backward = torch.autograd.backward

    def __enter__(self) -> "Profile":
        mm = torch.nn.modules.module
        self._handles = [mm.register_module_forward_pre_hook(self._pre), mm.register_module_forward_hook(self._post),
                         register_optimizer_step_pre_hook(self._opt_pre),
                         register_optimizer_step_post_hook(self._opt_post)]
        backward = self._backward

        def timed_backward(*args, **kwargs):
            t = time.perf_counter()
            backward(*args, **kwargs)
            self.ms["backward"] += 1e3 * (time.perf_counter() - t)
        torch.autograd.backward = timed_backward  # Tensor.backward calls torch.autograd.backward
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        torch.autograd.backward = self._backward

    def _pre(self, module, args) -> None:
        if role(module) is not None:
            self._starts[id(module)].append(time.perf_counter())

    def _post(self, module, args, out) -> None:
        r = role(module)
        if r is not None:
            self.ms[f"{r} fwd"] += 1e3 * (time.perf_counter() - self._starts[id(module)].pop())
            self.calls[r] += 1

    def _opt_pre(self, opt, args, kwargs) -> None:
        self._starts[id(opt)].append(time.perf_counter())

    def _opt_post(self, opt, args, kwargs) -> None:
        name = self.opt_names.get(id(opt), "optimiser")
        self.ms[f"{name} step"] += 1e3 * (time.perf_counter() - self._starts[id(opt)].pop())


def measure(bundle: str, algo: str, steps: int, seed: int = 0, compile: bool = False) -> dict:
    """steps/s of ``algo``'s online loop on ``bundle`` and the per-update breakdown (ms); ``compile``: with the
    run option ``compile: true`` (state encoders compiled; compilation happens in the warm-up steps)."""
    sim = Simulator.load(bundle)
    cfg = from_dict(TrainConfig, load_config(REPO / "configs" / "train" / f"{algo}-kuaisim.yaml"), algo)
    torch.manual_seed(seed)
    # (the keyword only when set: a --base commit's build_agent may predate it)
    agent = build_agent(cfg.algo, sim, cfg.agent, seed, cfg.env_config(), **({"compile": True} if compile else {}))
    env = sim.make_env(cfg.preset, n_users=cfg.n_users, users="train", action_mode=agent.action_mode,
                       **cfg.env_overrides())
    obs = env.reset(seed=seed)
    buffer = ReplayBuffer(cfg.buffer_size, obs, (7,), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.warmup_steps):
        action = torch.rand(cfg.n_users, 7, generator=gen) * 2 - 1
        out = env.step(action)
        buffer.add(obs, action, out)
        agent.observe(obs, action, out)
        obs = out.obs
    parts: dict[str, float] = defaultdict(float)

    def step() -> None:
        nonlocal obs
        t0 = time.perf_counter()
        action = agent.act(obs, explore=True)
        t1 = time.perf_counter()
        out = env.step(action)
        t2 = time.perf_counter()
        buffer.add(obs, action, out)
        agent.observe(obs, action, out)
        obs = out.obs
        if agent.learns:
            agent.update(buffer.sample(agent.batch_size))
        t3 = time.perf_counter()
        parts["act"] += 1e3 * (t1 - t0)
        parts["env.step"] += 1e3 * (t2 - t1)
        parts["store+update"] += 1e3 * (t3 - t2)

    for _ in range(10):  # warm the allocator and the update's first calls
        step()
    parts.clear()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - t) / steps
    timing = {k: v / steps for k, v in parts.items()}
    breakdown: dict[str, float] = {}
    if not compile:  # (the global hooks would be traced into the compiled encoders: timing only)
        with Profile(agent) as prof:
            for _ in range(steps):
                step()
        breakdown = {k: v / steps for k, v in sorted(prof.ms.items())}
        breakdown["encoder passes"] = prof.calls["encoder"] / steps
    return {"algo": algo, "ms_per_step": 1e3 * per_step, "steps_per_s": 1 / per_step,
            "run_minutes": RUN_STEPS * per_step / 60, **timing, "profiled": breakdown}


def measure_commit(commit: str, bundle: str, algos: list[str], steps: int, threads: int) -> list[dict]:
    """The same measurement with ``commit``'s package, in a child process on a detached worktree."""
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d) / "base"
        src = add_worktree(REPO, commit, tree)
        try:
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run([sys.executable, __file__, "--bundle", bundle, "--steps", str(steps), "--threads",
                                  str(threads), "--json", "--algos", *algos], env=env, check=True,
                                 stdout=subprocess.PIPE, text=True, cwd=tree).stdout
        finally:
            remove_worktree(REPO, tree)
    return json.loads(out.strip().splitlines()[-1])


def show(label: str, rows: list[dict]) -> None:
    print(f"\n{label}")
    print(f"{'algo':<14} {'ms/step':>8} {'steps/s':>8} {'100k-step run':>14} {'act':>6} {'env':>6} {'update':>7}  "
          "profiled ms per step (with hooks)")
    for r in rows:
        prof = ", ".join(f"{k} {v:.1f}" for k, v in r["profiled"].items())
        print(f"{r['algo']:<14} {r['ms_per_step']:>8.1f} {r['steps_per_s']:>8.1f} {r['run_minutes']:>10.1f} min "
              f"{r['act']:>6.1f} {r['env.step']:>6.1f} {r['store+update']:>7.1f}  {prof}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "kuairand-pure"))
    ap.add_argument("--algos", nargs="+", default=["td3", "sac", "rlur", "gfn4retention"])
    ap.add_argument("--steps", type=int, default=200, help="timed steps (and as many profiled ones) per algorithm")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the grids' workers use one each)")
    ap.add_argument("--base", default=None, help="also measure this commit's code, for before/after")
    ap.add_argument("--repeat", type=int, default=1, help="with --base: alternate before/after this many times")
    ap.add_argument("--compile", action="store_true",
                    help="also measure this tree with the run option compile: true (compiled state encoders)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode: one JSON line
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.json:
        print(json.dumps([measure(args.bundle, a, args.steps) for a in args.algos]))
        return
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"bundle {args.bundle}, {args.steps} timed steps per algorithm, {args.threads} thread(s); "
          f"'100k-step run' = 100,000 x ms/step (loop only: no evaluation or checkpoints)")
    if not args.base:
        show(f"{head} (working tree)", [measure(args.bundle, a, args.steps) for a in args.algos])
        if args.compile:
            show(f"{head} (working tree), compile: true", [measure(args.bundle, a, args.steps, compile=True)
                                                           for a in args.algos])
        return
    # Before and after alternate, per algorithm, --repeat times: a load change on a shared machine then hits
    # both, and the median of each side is reported.
    runs: dict[str, list[list[dict]]] = {"before": [], "after": [], "compiled": []}
    for _ in range(args.repeat):
        for algo in args.algos:
            runs["before"].append(measure_commit(args.base, args.bundle, [algo], args.steps, args.threads))
            runs["after"].append([measure(args.bundle, algo, args.steps)])
            if args.compile:
                runs["compiled"].append([measure(args.bundle, algo, args.steps, compile=True)])
    sides = [("before", f"before: {args.base}"), ("after", f"after: {head} (working tree)")]
    if args.compile:
        sides.append(("compiled", f"after: {head} (working tree), compile: true"))
    for side, label in sides:
        rows = [r for rs in runs[side] for r in rs]
        show(f"{label}, median of {args.repeat}", [median_row([r for r in rows if r["algo"] == a]) for a in args.algos])


def median_row(rows: list[dict]) -> dict:
    """The run with the median ms/step among ``rows`` (one algorithm's repeats), with its own breakdown."""
    rows = sorted(rows, key=lambda r: r["ms_per_step"])
    return rows[(len(rows) - 1) // 2]


if __name__ == "__main__":
    main()
