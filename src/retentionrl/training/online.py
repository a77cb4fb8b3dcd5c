"""The online training loop: act in the simulator, store transitions, update, evaluate, checkpoint, resume.

A run directory (:class:`~retentionrl.training.run.RunDir`) holds ``config.yaml`` (the full config and the
simulator's fingerprint and path), ``metrics.jsonl`` (one JSON object per log / eval event),
``checkpoints/last.pt`` (agent, replay buffer, environment and RNG states; atomic) and ``summary.json`` (results,
simulator, resolved evaluation protocol). Paths inside are relative, so a run directory can be moved between
machines. ``resume`` continues from the last checkpoint and reaches the same result as an uninterrupted run with
the same seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from retentionrl.config import ConfigError, check_counts, to_dict
from retentionrl.evaluation.protocol import evaluate_policy
from retentionrl.simulator.bundle import Simulator
from retentionrl.training.buffer import ReplayBuffer
from retentionrl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from retentionrl.training.run import RunConfig, RunDir, build_agent, check_stop_after
from retentionrl.utils.io import write_json_atomic

__all__ = ["RunConfig", "RunDir", "TrainConfig", "train"]  # RunConfig / RunDir live in training.run


@dataclass
class TrainConfig(RunConfig):
    n_users: int = 32
    total_steps: int = 2000  # environment steps (each moves n_users users one request)
    warmup_steps: int = 100  # uniform random actions before the agent acts
    updates_per_step: int = 1
    buffer_size: int = 100_000

    def validate(self, where: str = "train config") -> None:
        super().validate(where)
        if self.loop == "offline":
            raise ConfigError(f"{where}.loop: 'offline' is trained by the offline loop (training.trainer_for picks "
                              "it), not by the online one")
        check_counts(self, where, ("n_users", "total_steps", "updates_per_step", "buffer_size"))
        check_counts(self, where, ("warmup_steps",), minimum=0)


def train(cfg: TrainConfig, sim: Simulator, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, where: str = "train config", tensorboard: bool = False
          ) -> dict[str, Any] | None:
    """Train ``cfg.algo`` in ``sim``; returns the summary, or None when ``stop_after`` (a step count, e.g. to fit
    a job's time limit) ends the call early with a checkpoint to ``resume`` from. Resuming on a simulator with
    another fingerprint than the run's is refused. Config errors start with ``where`` (the config file).
    ``tensorboard``: also write the scalars as TensorBoard event files (:class:`~retentionrl.training.run.RunDir`)."""
    cfg.validate(where)
    check_stop_after(stop_after)
    torch.manual_seed(cfg.seed)
    agent = build_agent(cfg.algo, sim, cfg.agent, cfg.seed, cfg.env_config(), where, compile=cfg.compile)
    env = sim.make_env(cfg.preset, n_users=cfg.n_users, users="train", action_mode=agent.action_mode,
                       **cfg.env_overrides())
    eval_cfg = cfg.eval_config()
    # Only now, with the config known to be good, does anything get written (a bad config leaves no run dir).
    run = RunDir.open(run_dir, to_dict(cfg), resume, sim, tensorboard)
    obs = env.reset(seed=cfg.seed)
    action_shape = (7,) if env.cfg.action_mode == "fusion" else (len(obs.candidates),)
    # Only agents that learn from replay batches get the loop's buffer (on-policy / own-buffer agents do not).
    buffer = ReplayBuffer(cfg.buffer_size, obs, action_shape, seed=cfg.seed) if agent.learns else None
    explore_gen = torch.Generator().manual_seed(cfg.seed + 7)
    start, elapsed = 0, 0.0
    window: dict[str, float] = {"reward": 0.0, "retention_reward": 0.0, "sessions": 0.0, "return_days": 0.0}
    if resume and run.checkpoint.is_file():
        ck = load_checkpoint(run.checkpoint)
        agent.load_state_dict(ck["agent"])
        if buffer is not None:
            buffer.load_state_dict(ck["buffer"])
        env.load_state_dict(ck["env"])
        explore_gen.set_state(ck["explore_gen"])
        set_rng_state(ck["rng"])
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
        window = {k: float(v) for k, v in ck["window"].items()}
        obs = env.obs
        run.truncate_metrics(start)
    elif resume:
        run.truncate_metrics(0)

    t0 = time.time() - elapsed
    bar = tqdm(range(start, cfg.total_steps), desc=f"{cfg.algo} seed {cfg.seed}", disable=None if progress else True,
               initial=start, total=cfg.total_steps)
    last_eval: dict[str, Any] | None = None
    for step in bar:
        if step < cfg.warmup_steps:
            width = action_shape[0]
            action = torch.rand(cfg.n_users, width, generator=explore_gen) * 2 - 1
        else:
            action = agent.act(obs, explore=True)
        out = env.step(action)
        if buffer is not None:
            buffer.add(obs, action, out)
        observed = agent.observe(obs, action, out)
        obs = out.obs
        window["reward"] += float(out.reward.mean())
        window["retention_reward"] += float(out.retention_reward.sum())
        window["sessions"] += float(out.session_end.sum())
        window["return_days"] += float(out.return_day.sum())
        info: dict[str, float] = dict(observed)
        if step >= cfg.warmup_steps and agent.learns:
            for _ in range(cfg.updates_per_step):
                info = agent.update(buffer.sample(agent.batch_size))
        done = step + 1
        if done % cfg.log_every == 0:
            n = cfg.log_every
            run.log({"step": done, "event": "train", "time": round(time.time() - t0, 2),
                     "reward": window["reward"] / n,
                     "return_time": window["return_days"] / window["sessions"] if window["sessions"] else None,
                     **info})
            window = dict.fromkeys(window, 0.0)
        if done % cfg.eval_every == 0 or done == cfg.total_steps:
            res = evaluate_policy(agent, sim, eval_cfg)
            last_eval = res["mean"]
            run.log({"step": done, "event": "eval", "time": round(time.time() - t0, 2), **res["mean"]})
            bar.set_postfix(return_time=f"{res['mean']['return_time']:.3f}")
        stopping = stop_after is not None and done >= stop_after and done < cfg.total_steps
        if done % cfg.checkpoint_every == 0 or done == cfg.total_steps or stopping:
            save_checkpoint(run.checkpoint, {
                "step": done, "elapsed": time.time() - t0, "agent": agent.state_dict(), "buffer": buffer.state_dict() if buffer is not None else {},
                "env": env.state_dict(), "explore_gen": explore_gen.get_state(), "rng": rng_state(),
                "window": dict(window),
            })
        if stopping:
            bar.close()
            return None
    bar.close()
    if last_eval is None:  # resumed a finished run
        last_eval = evaluate_policy(agent, sim, eval_cfg)["mean"]
    summary = {"algo": cfg.algo, "seed": cfg.seed, "steps": cfg.total_steps, "train_seconds": round(time.time() - t0, 1),
               "simulator": sim.meta.get("dataset"), "eval": last_eval, **run.provenance(sim, eval_cfg)}
    write_json_atomic(run.summary, summary)
    return summary
