"""The online training loop: act in the simulator, store transitions, update, evaluate, checkpoint, resume.

A run directory holds ``config.yaml`` (the full config), ``metrics.jsonl`` (one JSON object per log / eval
event), ``checkpoints/last.pt`` (agent, replay buffer, environment and RNG states; atomic) and ``summary.json``.
Paths inside are relative, so a run directory can be moved between machines. ``resume`` continues from the last
checkpoint and reaches the same result as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from tqdm.auto import tqdm

from retentionrl.config import from_dict, to_dict
from retentionrl.errors import RetentionRLError
from retentionrl.training.buffer import ReplayBuffer
from retentionrl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from retentionrl.utils.io import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from retentionrl.evaluation.protocol import EvalConfig


@dataclass
class RunConfig:
    """What every training run has, online or offline."""

    algo: str = "td3"
    label: str | None = None  # name in comparison tables (default: algo)
    seed: int = 0
    preset: str = "kuaisim"
    env: dict[str, Any] = field(default_factory=dict)  # EnvConfig overrides
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 500
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields
    agent: dict[str, Any] = field(default_factory=dict)  # the algorithm's own config

    def env_overrides(self) -> dict[str, Any]:
        """``env`` without ``action_mode``: the agent decides that, in training and in evaluation alike."""
        return {k: v for k, v in self.env.items() if k != "action_mode"}

    def eval_config(self) -> "EvalConfig":
        from retentionrl.evaluation.protocol import EvalConfig

        cfg = from_dict(EvalConfig, {"preset": self.preset, "env_overrides": self.env_overrides(), **self.eval}, "eval")
        cfg.validate()
        return cfg

    def validate(self, where: str = "train config") -> None:
        """Refuse, before anything is written, what would fail mid-run or be silently ignored; messages start
        with ``where`` (the config file) and the dotted key."""
        from retentionrl.config import ConfigError, check_counts, from_dict, merge
        from retentionrl.simulator.env import PRESETS, EnvConfig

        check_counts(self, where, ("log_every", "eval_every", "checkpoint_every"))
        if self.preset not in PRESETS:
            raise ConfigError(f"{where}.preset: unknown simulator preset {self.preset!r} (known: {', '.join(PRESETS)})")
        for key, source in _LOOP_SETS_ENV.items():
            if key in self.env:
                raise ConfigError(f"{where}.env.{key}: the training loop sets this itself; {source}")
        from_dict(EnvConfig, merge(PRESETS[self.preset], self.env), f"{where}.env")
        try:
            ev = self.eval_config()
            if ev.preset not in PRESETS:
                raise ConfigError(f"eval.preset: unknown simulator preset {ev.preset!r} (known: {', '.join(PRESETS)})")
            from_dict(EnvConfig, merge(PRESETS[ev.preset], ev.env_overrides), "eval.env_overrides")
        except RetentionRLError as exc:
            raise ConfigError(f"{where}: {exc}") from None


# Env fields the loops set themselves, and where the value really comes from.
_LOOP_SETS_ENV = {
    "n_users": "give the training users as the top-level 'n_users' ('n_log_users' offline), the evaluation users as "
               "'eval.n_users'",
    "users": "training draws the bundle's train users, evaluation draws 'eval.users' (default: test)",
    "action_mode": "the agent decides it (fusion weights or item scores), in training and evaluation alike",
}


@dataclass
class TrainConfig(RunConfig):
    n_users: int = 32
    total_steps: int = 2000  # environment steps (each moves n_users users one request)
    warmup_steps: int = 100  # uniform random actions before the agent acts
    updates_per_step: int = 1
    buffer_size: int = 100_000

    def validate(self, where: str = "train config") -> None:
        super().validate(where)
        from retentionrl.config import check_counts

        check_counts(self, where, ("n_users", "total_steps", "updates_per_step", "buffer_size"))
        check_counts(self, where, ("warmup_steps",), minimum=0)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / "checkpoints" / "last.pt"
        self.summary = self.path / "summary.json"

    @classmethod
    def open(cls, path: str | Path, cfg_dict: dict[str, Any], resume: bool) -> "RunDir":
        """A new run writes its config; a resumed one must have been started with the same config."""
        run = cls(path)
        if resume:
            run.check_is_run()
            saved = yaml.safe_load(run.config.read_text())
            if saved != cfg_dict:
                diff = sorted(k for k in set(saved) | set(cfg_dict) if saved.get(k) != cfg_dict.get(k))
                raise RetentionRLError(f"{run.path}: resuming with a different config (differs in: {', '.join(diff)})")
        else:
            if run.config.exists():
                raise RetentionRLError(f"{run.path}: already holds a run (use --resume to continue it)")
            run.path.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run.config, yaml.safe_dump(cfg_dict, sort_keys=False))
        return run

    def check_is_run(self) -> None:
        if not self.config.is_file():
            raise RetentionRLError(f"{self.path}: not a run directory (no config.yaml)")

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop records written after ``step`` (they belong to the part of the run being replayed)."""
        if not self.metrics.is_file():
            return
        keep = [ln for ln in self.metrics.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        write_text_atomic(self.metrics, "".join(k + "\n" for k in keep))


def train(cfg: TrainConfig, sim, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any] | None:
    """Train ``cfg.algo`` in ``sim``; returns the summary, or None when ``stop_after`` (a step count, e.g. to fit
    a job's time limit) ends the call early with a checkpoint to ``resume`` from."""
    from retentionrl.agents import make_agent
    from retentionrl.evaluation.protocol import evaluate_policy

    cfg.validate()
    torch.manual_seed(cfg.seed)
    agent = make_agent(cfg.algo, sim, cfg.agent, seed=cfg.seed)
    env = sim.make_env(cfg.preset, n_users=cfg.n_users, users="train", action_mode=agent.action_mode,
                       **cfg.env_overrides())
    eval_cfg = cfg.eval_config()
    # Only now, with the config known to be good, does anything get written (a bad config leaves no run dir).
    run = RunDir.open(run_dir, to_dict(cfg), resume)
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
               "simulator": sim.meta.get("dataset"), "eval": last_eval}
    write_json_atomic(run.summary, summary)
    return summary
