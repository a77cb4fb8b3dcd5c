"""The offline loop: log transitions with a behaviour policy, then train an agent from the logs only.

:func:`generate_logs` runs a behaviour policy (e.g. the ranking model) in the simulator and returns the
transitions as a dict of tensors in the :class:`~retentionrl.training.buffer.ReplayBuffer` layout, plus what was
shown and how the user reacted (``slate`` (N, K), ``responses`` (N, K, 7), ``watch_time`` (N, K)), so that both
imitation / offline-RL agents (which read ``action``) and supervised click models (which read ``slate`` and
``responses``) learn from the same data.

:func:`train_offline` fits ``cfg.algo`` on such logs with epoch-wise shuffled minibatches (``agent.update(batch)``;
offline agents implement it as ``fit_batch``), evaluates the frozen policy with
:func:`~retentionrl.evaluation.protocol.evaluate_policy` every ``eval_every`` updates and at the end, and writes the
same run directory as the online loop: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt``,
``summary.json``. Metrics records use ``step`` = number of updates done. The logs are not checkpointed: they are
regenerated from the config (same seed ⇒ same logs), so a checkpoint holds only the agent, the update counter, the
sampler's generator and permutation, and the global RNG streams, and a resumed run continues identically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from retentionrl.agents import Agent
from retentionrl.config import OMIT_IF_DEFAULT, ConfigError, check_counts, to_dict
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import evaluate_policy
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.env import EnvConfig
from retentionrl.simulator.env import preset as make_preset
from retentionrl.training.buffer import ReplayBuffer
from retentionrl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from retentionrl.training.run import RunConfig, RunDir, build_agent, check_stop_after
from retentionrl.training.tasks import apply_task
from retentionrl.utils.io import write_json_atomic

#: Keys :func:`generate_logs` adds to the replay-buffer layout.
LOG_EXTRA = ("slate", "responses", "watch_time")


@torch.no_grad()
def generate_logs(sim: Simulator, behaviour_agent: Agent, preset: str | EnvConfig = "kuaisim",
                  n_users: int = 64, steps: int = 100, seed: int = 0, env: dict[str, Any] | None = None,
                  users: str = "train", explore: bool = False) -> dict[str, Tensor]:
    """Run ``behaviour_agent`` for ``steps`` requests of ``n_users`` parallel (training) users.

    Returns N = n_users * steps rows, step-major (row ``t * n_users + b``), with every key of the replay buffer —
    ``<f>`` / ``next_<f>`` for the per-row :class:`~retentionrl.simulator.env.Obs` fields (e.g. ``hist_items``
    (N, H) long, ``hist_resp`` (N, H, 8)), ``action``, ``reward``, ``retention_reward`` (N,) float,
    ``session_end``, ``episode_end`` (N,) bool, ``return_day`` (N,) long — plus ``slate`` (N, K) long item ids,
    ``responses`` (N, K, 7) float 0/1 and ``watch_time`` (N, K) float. ``action`` is the (N, 7) fusion weights
    for a fusion-mode behaviour and the (N, K) shown slate for an items-mode one (its (C,) score vectors would be
    ~C/K times larger and are not needed: the slate is what was decided). A behaviour that knows the density of
    its actions (``act_log_prob`` returns one, e.g. :class:`~retentionrl.agents.base.GaussianBehaviour`) adds
    ``behaviour_log_prob`` (N,) float, the log-density of each logged action: the propensity for off-policy
    evaluation.

    ``preset`` is a preset name (with ``env`` overrides) or an :class:`EnvConfig` (``n_users``/``users``/
    ``action_mode`` are set here). The environment is seeded with ``seed`` and the behaviour agent acts under a
    forked global RNG seeded from it, so the same seed gives the same logs and the caller's RNG is untouched.
    """
    if n_users < 1 or steps < 1:
        raise RetentionRLError(f"generate_logs needs n_users >= 1 and steps >= 1, got {n_users} and {steps}")
    mode = getattr(behaviour_agent, "action_mode", "fusion")
    base = make_preset(preset, **(env or {})) if isinstance(preset, str) else preset
    if env and not isinstance(preset, str):
        raise RetentionRLError("env overrides go with a preset name, not with an EnvConfig")
    e = sim.make_env(replace(base, n_users=n_users, users=users, action_mode=mode))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # not `seed`: the agent's stream should not mirror the env's generator
        obs = e.reset(seed=seed)
        action_shape = (7,) if mode == "fusion" else (e.K,)
        buffer = ReplayBuffer(n_users * steps, obs, action_shape, torch.float32 if mode == "fusion" else torch.long)
        extra: dict[str, list[Tensor]] = {k: [] for k in LOG_EXTRA}
        log_probs: list[Tensor | None] = []
        for _ in range(steps):
            if hasattr(behaviour_agent, "act_log_prob"):  # an Agent; a bare act() policy has no density
                action, log_prob = behaviour_agent.act_log_prob(obs, explore=explore)
            else:
                action, log_prob = behaviour_agent.act(obs, explore=explore), None
            log_probs.append(log_prob)
            out = e.step(action)
            buffer.add(obs, action if mode == "fusion" else out.slate, out)
            extra["slate"].append(out.slate)
            extra["responses"].append(out.responses)
            extra["watch_time"].append(out.watch_time)
            obs = out.obs
    logs = dict(buffer.data)  # filled exactly (capacity = rows), oldest first
    logs.update({k: torch.cat(v, 0) for k, v in extra.items()})
    known = [lp is not None for lp in log_probs]
    if any(known) and not all(known):
        raise RetentionRLError(f"generate_logs: the behaviour agent gave a log-density at {sum(known)} of {steps} "
                               "steps (all or none)")
    if all(known):
        if mode != "fusion":  # a density of candidate scores is not the propensity of the logged slate
            raise RetentionRLError("generate_logs: an items-mode behaviour's log-density is not stored (not a slate's)")
        logs["behaviour_log_prob"] = torch.cat(log_probs, 0).float()
    return logs


class EpochSampler:
    """Shuffled minibatch indices over N rows, epoch after epoch (the last batch of an epoch may be smaller).

    State = generator + the current epoch's permutation + position, so a restored sampler continues exactly.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        if n_rows < 1 or batch_size < 1:
            raise RetentionRLError(f"sampler needs rows and a positive batch size, got {n_rows} rows, batch {batch_size}")
        self.n, self.bs = int(n_rows), int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.bs)

    def next(self) -> Tensor:
        """(≤ batch_size,) long row indices."""
        if self.pos >= self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.bs]
        self.pos += len(idx)
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["perm"]) != self.n:
            raise RetentionRLError(f"sampler state covers {len(state['perm'])} rows, the logs have {self.n}")
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


@dataclass
class OfflineTrainConfig(RunConfig):
    algo: str = "bc"
    behaviour: str = "ranking"  # any registered agent name: "ranking", "random", ...
    behaviour_agent: dict[str, Any] = field(default_factory=dict)  # its config (e.g. ranking's weights)
    behaviour_explore: bool = False  # log act(explore=True) of the behaviour policy
    n_log_users: int = 64  # parallel users while logging
    log_steps: int = 100  # requests per logging user: N = n_log_users * log_steps transitions
    epochs: int = 5  # passes over the logs, unless total_updates is set
    total_updates: int | None = None  # overrides epochs
    batch_size: int | None = None  # None: the agent's own batch_size
    # ResAct's tasks (training/tasks.py): the session-end reward becomes r(δ), r(η) or both (per-user statistics
    # from these logs) and the immediate reward 0. None: the logs' own rewards. Saved only when set.
    task: Literal["return_time", "session_length", "both"] | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})

    def validate(self, where: str = "train config") -> None:
        super().validate(where)
        if self.loop == "online":
            raise ConfigError(f"{where}.loop: '{self.algo}' with 'online' is trained by the online loop, not this one")
        check_counts(self, where, ("n_log_users", "log_steps", "epochs"))
        check_counts(self, where, ("total_updates", "batch_size"), optional=True)


def _log_stats(logs: dict[str, Tensor]) -> dict[str, float]:
    """Scalar description of the logged data (for metrics.jsonl)."""
    ended = logs["session_end"]
    return {"rows": int(len(logs["reward"])), "reward": float(logs["reward"].mean()),
            "click_rate": float(logs["responses"][..., 0].mean()),
            "return_time": float(logs["return_day"][ended].float().mean()) if ended.any() else None}


def train_offline(cfg: OfflineTrainConfig, sim: Simulator, run_dir: str | Path, resume: bool = False,
                  progress: bool = True, stop_after: int | None = None,
                  where: str = "train config", tensorboard: bool = False) -> dict[str, Any] | None:
    """Fit ``cfg.algo`` on logs of ``cfg.behaviour``; returns the summary, or None when ``stop_after`` (an update
    count) ends the call early with a checkpoint to ``resume`` from. Resuming on a simulator with another
    fingerprint than the run's is refused. Config errors start with ``where`` (the config file).
    ``tensorboard``: also write the scalars as TensorBoard event files (:class:`~retentionrl.training.run.RunDir`)."""
    # The agent from a freshly seeded global RNG; logging draws from its own streams (fork_rng), so neither
    # depends on the other. Everything is validated before the run directory is written.
    cfg.validate(where)
    check_stop_after(stop_after)
    torch.manual_seed(cfg.seed)
    env = cfg.env_config()  # what the agent acts in: its features' scales
    agent = build_agent(cfg.algo, sim, cfg.agent, cfg.seed, env, where, compile=cfg.compile)
    if not agent.learns:
        raise RetentionRLError(f"algorithm '{cfg.algo}' does not learn from data (nothing to train offline)")
    behaviour = build_agent(cfg.behaviour, sim, cfg.behaviour_agent, cfg.seed + 1, env, where, key="behaviour_agent")
    eval_cfg = cfg.eval_config()
    logs = generate_logs(sim, behaviour, cfg.preset, cfg.n_log_users, cfg.log_steps, seed=cfg.seed, env=cfg.env,
                         explore=cfg.behaviour_explore)
    agent.check_logs(logs, f"logs of '{cfg.behaviour}' on simulator '{sim.meta.get('dataset')}' "
                           f"({cfg.n_log_users} users x {cfg.log_steps} requests, seed {cfg.seed})")
    raw_stats = _log_stats(logs)
    if cfg.task is not None:
        logs = apply_task(logs, cfg.task)
        raw_stats["task_reward"] = float(logs["retention_reward"][logs["session_end"]].mean())
    n_rows = len(logs["reward"])
    logs = agent.prepare_logs(logs)
    run = RunDir.open(run_dir, to_dict(cfg), resume, sim, tensorboard)
    batch_size = cfg.batch_size or agent.batch_size or 256
    n_train = len(logs["reward"])
    sampler = EpochSampler(n_train, batch_size, seed=cfg.seed + 3)
    total = cfg.total_updates if cfg.total_updates is not None else cfg.epochs * sampler.batches_per_epoch
    if total < 1:
        raise RetentionRLError(f"offline training needs at least one update (epochs/total_updates give {total})")

    start, elapsed = 0, 0.0
    window: dict[str, float] = {}
    n_window = 0
    if resume and run.checkpoint.is_file():
        ck = load_checkpoint(run.checkpoint)
        agent.load_state_dict(ck["agent"])
        sampler.load_state_dict(ck["sampler"])
        set_rng_state(ck["rng"])
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
        window, n_window = {k: float(v) for k, v in ck["window"].items()}, int(ck["n_window"])
        run.truncate_metrics(start)
    else:
        if resume:
            run.truncate_metrics(-1)  # nothing was checkpointed: replay from scratch, including the logs record
        run.log({"step": 0, "event": "logs", "behaviour": cfg.behaviour, **raw_stats, "train_rows": n_train})

    t0 = time.time() - elapsed
    bar = tqdm(range(start, total), desc=f"{cfg.algo} offline seed {cfg.seed}", disable=None if progress else True,
               initial=start, total=total)
    last_eval: dict[str, Any] | None = None
    for step in bar:
        idx = sampler.next()
        info = agent.update({k: v[idx] for k, v in logs.items()})
        for k, v in info.items():  # average the diagnostics over the logging window
            window[k] = window.get(k, 0.0) + float(v)
        n_window += 1
        done = step + 1
        if done % cfg.log_every == 0:
            run.log({"step": done, "event": "train", "time": round(time.time() - t0, 2),
                     "epoch": round(done / sampler.batches_per_epoch, 3),
                     **{k: v / n_window for k, v in window.items()}})
            window, n_window = {}, 0
        if done % cfg.eval_every == 0 or done == total:
            res = evaluate_policy(agent, sim, eval_cfg)
            last_eval = res["mean"]
            run.log({"step": done, "event": "eval", "time": round(time.time() - t0, 2), **res["mean"]})
            bar.set_postfix(return_time=f"{res['mean']['return_time']:.3f}")
        stopping = stop_after is not None and done >= stop_after and done < total
        if done % cfg.checkpoint_every == 0 or done == total or stopping:
            save_checkpoint(run.checkpoint, {
                "step": done, "elapsed": time.time() - t0, "agent": agent.state_dict(),
                "sampler": sampler.state_dict(), "rng": rng_state(), "window": dict(window), "n_window": n_window,
            })
        if stopping:
            bar.close()
            return None
    bar.close()
    if last_eval is None:  # resumed a finished run
        last_eval = evaluate_policy(agent, sim, eval_cfg)["mean"]
    summary = {"algo": cfg.algo, "seed": cfg.seed, "behaviour": cfg.behaviour, "log_rows": n_rows,
               "train_rows": n_train, "updates": total,
               "train_seconds": round(time.time() - t0, 1), "simulator": sim.meta.get("dataset"), "eval": last_eval,
               **run.provenance(sim, eval_cfg)}
    write_json_atomic(run.summary, summary)
    return summary
