"""Reference check: our TD3 / SAC against stable-baselines3's on the gymnasium adapter, same budget, networks,
hyper-parameters and seeds; both frozen policies evaluated with the same protocol.

    python benchmarks/reference_check.py [--bundle bundles/kuairand-pure-sample] [--algos td3 sac]
                                         [--seeds 0 1 2 3 4] [--steps 1000] [--lr 1e-3] [--workers 1]

What is matched (one cell = one algorithm × implementation × training seed):

* State and networks: ours run with ``agent.encoder: flat`` — every network is a plain MLP on the gymnasium
  adapter's flat observation (:func:`retentionrl.spaces.flat_features`), which is exactly the vector
  :class:`~retentionrl.simulator.gym.RetentionGymEnv` gives SB3. ``hidden [128, 32]`` for ours and
  ``policy_kwargs=dict(net_arch=[128, 32])`` for SB3 give the same layer sizes (TD3: actor
  obs→128→32→7 + tanh, critics obs+7→128→32→1; SAC: trunk obs→128→32, mu and log-std heads). The parameter
  counts are recorded in each cell's JSON.
* Reward: the retention reward only — gym ``reward="retention"`` for SB3, and ours' defaults
  ``retention_weight 1, immediate_weight 0`` (asserted below and in tests/test_reference_check.py).
  Nothing is terminal on either side: a session end is a step of the user's life, an episode end is a time
  limit (ours: ``terminal: none``; SB3: ``TimeLimit.truncated`` → bootstrap from the true last observation).
  Neither state has the episode clock (``session_frac``; gym ``clock=False``, ours time-unaware with
  ``terminal: none``), so both bootstrap at the cut from a state they train on.
* Hyper-parameters: configs/train/{td3,sac}-kuaisim.yaml — gamma, tau, batch size, replay size, warm-up, users
  per step, evaluation protocol. Learning rate: SB3 has ONE ``learning_rate`` for every optimiser (actor,
  critics, and SAC's entropy coefficient) while the yaml uses actor 1e-4 / critic 1e-3; for the comparison
  both sides use the same single ``--lr`` (default 1e-3, SB3's TD3 default and the yaml's critic lr), i.e.
  ours runs with ``actor_lr = critic_lr (= alpha_lr) = lr``. TD3 exploration: Gaussian noise σ = 0.1 on both
  (SB3 ``NormalActionNoise``, vectorised per env), target smoothing 0.2 clipped at 0.5, policy delay 2. SAC:
  initial temperature 0.2 (SB3 ``ent_coef="auto_0.2"``), target entropy −7.
* Budget: our loop steps a batched env of ``n_users`` (32) users and does one gradient update per step after
  ``warmup`` steps of uniform random actions. SB3 gets a ``DummyVecEnv`` of 32 ``RetentionGymEnv`` copies (own
  seed each) with ``train_freq=1, gradient_steps=1, learning_starts = warmup × 32`` transitions and
  ``total_timesteps = steps × 32``: both see ``steps × 32`` user-transitions (``warmup × 32`` of them random)
  and make ``steps − warmup`` gradient updates (SB3's count is recorded and checked).
* Evaluation: :func:`~retentionrl.evaluation.protocol.evaluate_policy` with the yaml's eval config (held-out
  users, 3 eval seeds) for both; SB3's policy is wrapped in an ``Agent`` that builds the flat observation of
  the batch and calls ``model.predict(..., deterministic=True)``.

Known remaining differences (library internals, not settings): SB3 SAC clamps log σ to [−20, 2] (ours
[−5, 2]), scales its critic loss by 0.5 (irrelevant to Adam up to ε) and updates the temperature before the
critic; SB3 samples the replay buffer with numpy, ours with a torch generator. ``train seconds`` is not a like-
for-like cost: our env is one batched simulator, SB3 steps 32 single-user simulators one after another.

Each finished cell writes ``RUNS/<algo>-<impl>/seed<k>/result.json`` and is skipped on the next call (so the grid
can be filled over several sittings; an interrupted "ours" cell resumes from its checkpoint, an SB3 cell
restarts). A cell finished under different settings is an error (use another ``--runs`` folder). Writes
docs/results/reference_check.md from whatever cells have finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import yaml

from retentionrl.bench import reference
from retentionrl.bench.reference import Cell, eval_fields
from retentionrl.agents.base import Agent
from retentionrl.bench.grid import run_parallel
from retentionrl.evaluation.stats import mean_ci
from retentionrl.simulator.env import preset
from retentionrl.spaces import FlatLayout, Obs, flat_features
from retentionrl.utils.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
ALGOS = ("td3", "sac")
IMPLS = ("ours", "sb3")
PRESET = "kuaisim"
HIDDEN = [128, 32]
# TD3 / SAC constants shared by both implementations (ours' TD3Config / SACConfig defaults).
TD3_NOISE = {"exploration_noise": 0.1, "policy_noise": 0.2, "noise_clip": 0.5, "policy_delay": 2}
SAC_TEMP = {"alpha": 0.2, "autotune": True, "target_entropy": -7.0}


# --- settings --------------------------------------------------------------------------------------------------
def bundle_path(bundle: str | Path) -> Path:
    return reference.bundle_path(bundle, REPO)


def bundle_key(bundle: str | Path) -> str:
    return reference.bundle_key(bundle, REPO)


def settings_for(algo: str, bundle: str, steps: int = 1000, lr: float = 1e-3, **overrides: Any) -> dict[str, Any]:
    """Everything a cell depends on (JSON-able), read from configs/train/<algo>-kuaisim.yaml; ``overrides`` replace
    single entries (``n_users``, ``warmup``, ``batch_size``, ``buffer_size``, ``eval``, ...; tests use tiny ones)."""
    raw = yaml.safe_load((REPO / "configs" / "train" / f"{algo}-kuaisim.yaml").read_text())
    agent = raw["agent"]
    if (agent.get("retention_weight", 1.0), agent.get("immediate_weight", 0.0)) != (1.0, 0.0):
        raise SystemExit(f"{algo}-kuaisim.yaml does not learn from the retention reward alone; gym reward "
                         "'retention' would not match it")
    s = {
        "algo": algo, "bundle": str(bundle), "preset": raw.get("preset", PRESET), "steps": int(steps),
        "n_users": int(raw["n_users"]), "warmup": int(raw["warmup_steps"]), "lr": float(lr),
        "gamma": float(agent["gamma"]), "tau": float(agent["tau"]), "batch_size": int(agent["batch_size"]),
        "buffer_size": int(raw["buffer_size"]), "hidden": list(HIDDEN), "eval": dict(raw["eval"]),
        **(TD3_NOISE if algo == "td3" else SAC_TEMP),
    }
    unknown = sorted(set(overrides) - set(s))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    s.update(overrides)
    if s["preset"] != PRESET:
        raise SystemExit("the SB3 side is built from the preset alone (no env overrides); use preset kuaisim")
    return s


def train_config(s: dict[str, Any], seed: int, checkpoint_every: int | None = None):
    """Our :class:`TrainConfig` for a cell (also the source of the shared evaluation config)."""
    from retentionrl.training.online import TrainConfig

    agent = {"gamma": s["gamma"], "tau": s["tau"], "batch_size": s["batch_size"], "hidden": list(s["hidden"]),
             "actor_lr": s["lr"], "critic_lr": s["lr"], "retention_weight": 1.0, "immediate_weight": 0.0,
             "terminal": "none", "encoder": "flat"}
    agent.update({k: s[k] for k in (TD3_NOISE if s["algo"] == "td3" else SAC_TEMP)})
    if s["algo"] == "sac":
        agent["alpha_lr"] = s["lr"]  # SB3: one learning rate for the temperature too
    steps = s["steps"]
    return TrainConfig(
        algo=s["algo"], label=f"{s['algo']}-ours", seed=seed, preset=s["preset"], n_users=s["n_users"],
        total_steps=steps, warmup_steps=s["warmup"], updates_per_step=1, buffer_size=s["buffer_size"],
        log_every=math.gcd(steps, 100), eval_every=steps, checkpoint_every=checkpoint_every or steps,
        eval=dict(s["eval"]), agent=agent,
    )


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- one cell: ours ----------------------------------------------------------------------------------------------
def run_ours(s: dict[str, Any], seed: int, sim, run_dir: str | Path, checkpoint_every: int | None = None
             ) -> dict[str, Any]:
    """Train our agent with ``train`` (flat encoder) and evaluate it; returns the cell's result (not saved)."""
    from retentionrl.agents import make_agent
    from retentionrl.training.online import train

    cfg = train_config(s, seed, checkpoint_every)
    # the networks train() builds (same seed, same env)
    probe = make_agent(cfg.algo, sim, cfg.agent, seed=seed, env=preset(cfg.preset, **cfg.env_overrides()))
    assert (probe.cfg.retention_weight, probe.cfg.immediate_weight, probe.cfg.encoder) == (1.0, 0.0, "flat")
    # Our state is the very vector the gym adapter gives SB3 (same layout: K, sessions, D, user columns).
    gym_layout = FlatLayout.from_env(sim.make_env(cfg.preset, n_users=1, **cfg.env_overrides()))
    if probe.actor.enc.layout != gym_layout:
        raise RuntimeError(f"flat encoder layout {probe.actor.enc.layout} != gym adapter's {gym_layout}")
    nets = {"actor": _n_params(probe.actor), "critic": _n_params(probe.q1) + _n_params(probe.q2)}
    run_dir = Path(run_dir)
    summary = train(cfg, sim, run_dir, resume=(run_dir / "config.yaml").is_file(), progress=False)
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    t_train = next(r["time"] for r in records if r["event"] == "train" and r["step"] == s["steps"])
    t_eval = next(r["time"] for r in records if r["event"] == "eval" and r["step"] == s["steps"])
    return {"eval": summary["eval"], "eval_per_seed": None, "train_seconds": t_train,
            "eval_seconds": round(t_eval - t_train, 2), "transitions": s["steps"] * s["n_users"],
            "updates": max(s["steps"] - s["warmup"], 0), "params": nets}


# --- one cell: stable-baselines3 -----------------------------------------------------------------------------
class SB3Agent(Agent):
    """A frozen SB3 policy as one of our agents: the flat observation of the batch -> ``model.predict``."""

    action_mode = "fusion"

    def __init__(self, model, layout: FlatLayout) -> None:
        self.model, self.layout = model, layout

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> torch.Tensor:
        x = flat_features(obs, self.layout).numpy()  # (B, obs_dim)
        action, _ = self.model.predict(x, deterministic=not explore)
        return torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(len(x), -1))


def sb3_model(s: dict[str, Any], seed: int, sim):
    """The SB3 model of a cell on a DummyVecEnv of ``n_users`` RetentionGymEnv copies (env i seeded
    ``seed * n_users + i``, so no two cells or rows share a user stream)."""
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.vec_env import DummyVecEnv

    from retentionrl.simulator.gym import RetentionGymEnv

    B = s["n_users"]
    venv = DummyVecEnv([lambda: RetentionGymEnv(sim, s["preset"], reward="retention", users="train")] * B)
    common = {"learning_rate": s["lr"], "buffer_size": s["buffer_size"], "learning_starts": s["warmup"] * B,
              "batch_size": s["batch_size"], "tau": s["tau"], "gamma": s["gamma"], "train_freq": 1,
              "gradient_steps": 1, "policy_kwargs": {"net_arch": list(s["hidden"])}, "seed": seed,
              "device": "cpu", "verbose": 0}
    if s["algo"] == "td3":
        noise = NormalActionNoise(np.zeros(7), s["exploration_noise"] * np.ones(7))
        model = TD3("MlpPolicy", venv, action_noise=noise, policy_delay=s["policy_delay"],
                    target_policy_noise=s["policy_noise"], target_noise_clip=s["noise_clip"], **common)
    else:
        ent = f"auto_{s['alpha']}" if s["autotune"] else s["alpha"]
        model = SAC("MlpPolicy", venv, ent_coef=ent, target_entropy=s["target_entropy"], **common)
    venv.seed(seed * B)  # replaces the seeds SB3 set (seed + i) for the first reset
    model.set_logger(Logger(folder=None, output_formats=[]))  # else learn() leaves an empty /tmp/SB3-<time> dir
    return model


def run_sb3(s: dict[str, Any], seed: int, sim, run_dir: str | Path) -> dict[str, Any]:
    """Train SB3's agent for the same budget, save it to ``run_dir/model.zip`` and evaluate it."""
    from retentionrl.evaluation.protocol import evaluate_policy

    model = sb3_model(s, seed, sim)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model.learn(total_timesteps=s["steps"] * s["n_users"], progress_bar=False)
    t_train = time.perf_counter() - t0
    torch.set_num_threads(threads)  # in case the library changed it
    updates = int(model._n_updates)
    if updates != max(s["steps"] - s["warmup"], 0):
        raise RuntimeError(f"SB3 made {updates} updates, expected {s['steps'] - s['warmup']} (budget mismatch)")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    model.save(Path(run_dir) / "model.zip")
    layout = FlatLayout.from_env(model.get_env().envs[0].unwrapped.env)
    res = evaluate_policy(SB3Agent(model, layout), sim, train_config(s, seed).eval_config())
    nets = {"actor": _n_params(model.actor), "critic": _n_params(model.critic)}
    return {**eval_fields(res), "train_seconds": round(t_train, 2), "eval_seconds": round(res["wall_time"], 2),
            "transitions": int(model.num_timesteps), "updates": updates, "params": nets}


# --- grid --------------------------------------------------------------------------------------------------------
def run_cell(cell: Cell, checkpoint_every: int | None = None) -> dict[str, Any]:
    """Run one cell in this process (one torch thread) and save its result.json; returns the result."""
    from retentionrl.simulator.bundle import Simulator

    torch.set_num_threads(1)
    if cell.finished():
        return json.loads(cell.result_path.read_text())
    sim = Simulator.load(bundle_path(cell.settings["bundle"]))
    if cell.impl == "ours":
        res = run_ours(cell.settings, cell.seed, sim, cell.dir / "run", checkpoint_every)
    else:
        res = run_sb3(cell.settings, cell.seed, sim, cell.dir)
    out = {"algo": cell.algo, "impl": cell.impl, "seed": cell.seed, "settings": cell.settings,
           "torch_threads": torch.get_num_threads(), **res}
    write_json_atomic(cell.result_path, out)
    return out


def _run_cell_star(args: tuple[Cell, int | None]) -> str:
    cell, ck = args
    r = run_cell(cell, ck)
    return f"{cell.algo}-{cell.impl} seed {cell.seed}: return time {r['eval']['return_time']:.4f}, " \
           f"train {r['train_seconds']:.0f} s"


def run_grid(grid: list[Cell], workers: int = 1, checkpoint_every: int | None = None, log=print) -> None:
    todo = [c for c in grid if not c.finished()]
    log(f"[reference-check] {len(grid)} cells, {len(grid) - len(todo)} already finished, {len(todo)} to run")
    for msg in run_parallel(_run_cell_star, [(c, checkpoint_every) for c in todo], workers):
        log("  " + msg)


def report(grid: list[Cell]) -> str:
    """Markdown table of the finished cells: mean ± 95% CI over training seeds, Welch ours vs SB3."""
    done: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in grid:
        if c.result_path.is_file():
            done.setdefault((c.algo, c.impl), []).append(json.loads(c.result_path.read_text()))
    s0 = grid[0].settings if grid else {}
    lines = [
        "# Reference check: our TD3 / SAC vs stable-baselines3",
        "",
        (f"Simulator `{s0.get('bundle')}`, preset {s0.get('preset')}, retention reward only; "
        f"{s0.get('steps')} env steps × {s0.get('n_users')} users ({s0.get('warmup')} warm-up steps of random "
        f"actions), one gradient update per step after warm-up; networks `{s0.get('hidden')}` MLPs on the "
        f"gymnasium adapter's flat observation (ours: `encoder: flat`); one learning rate {s0.get('lr')} for every "
        f"optimiser (SB3 has a single one); gamma {s0.get('gamma')}, tau {s0.get('tau')}, batch "
        f"{s0.get('batch_size')}. Frozen deterministic policies evaluated with `evaluate_policy` on held-out "
        f"users ({s0.get('eval')}). Generated by `benchmarks/reference_check.py` (see its docstring for what is "
        "matched and what differs)."),
        "",
        ("Return time in days (lower is better); mean ± 95% CI (Student t) over training seeds. Train seconds "
         "exclude evaluation; ours steps one batched simulator, SB3 32 single-user ones."),
        "",
        f"| algo | method | seeds | {reference.metric_header()} | train s | updates |",
        "|---" * (3 + len(reference.METRICS) + 2) + "|",
    ]
    verdicts = []
    for algo in dict.fromkeys(c.algo for c in grid):
        return_times = {}
        for impl in IMPLS:
            rs = sorted(done.get((algo, impl), []), key=lambda r: r["seed"])
            if not rs:
                lines.append(f"| {algo} | {impl} | 0 | " + "– | " * len(reference.METRICS) + "– | – |")
                continue
            return_times[impl] = [r["eval"]["return_time"] for r in rs]
            secs = mean_ci([r["train_seconds"] for r in rs])
            seeds = ",".join(str(r["seed"]) for r in rs)
            lines.append(f"| {algo} | {impl} | {seeds} | " + " | ".join(reference.metric_cells(rs))
                         + f" | {secs['mean']:.0f} | {rs[0]['updates']} |")
        verdicts.append(reference.verdict(algo, "SB3", return_times.get("ours"), return_times.get("sb3")))
    lines += ["", "Ours vs SB3 (Welch's t-test on the per-seed return time):", "", *verdicts, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="bundles/kuairand-pure-sample", help="relative to the repository, or absolute")
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=1000, help="vector env steps (each moves n_users users)")
    ap.add_argument("--lr", type=float, default=1e-3, help="the single learning rate of every optimiser, both sides")
    ap.add_argument("--runs", default=str(REPO / "runs" / "reference-check"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "reference_check.md"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="ours: checkpoint every N steps (default: only at the end; checkpoint time counts as train time)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = bundle_key(bundle_path(args.bundle))
    grid = [Cell(a, i, s, settings_for(a, bundle, args.steps, args.lr), args.runs)
            for a in args.algos for i in args.impls for s in args.seeds]
    try:
        run_grid(grid, args.workers, args.checkpoint_every)
    finally:
        md = report(grid)
        write_text_atomic(args.out, md)
        print(md)


if __name__ == "__main__":
    main()
