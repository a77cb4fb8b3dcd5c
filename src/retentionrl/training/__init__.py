"""Training: replay buffer, online and offline loops, run directories (``training.run``), checkpoints."""

from __future__ import annotations

from typing import Any, Callable

from retentionrl.agents import Agent
from retentionrl.config import ConfigError, from_dict, merge
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.bundle import Simulator
from retentionrl.training.checkpoint import load_checkpoint
from retentionrl.training.offline import OfflineTrainConfig, train_offline
from retentionrl.training.online import TrainConfig, train
from retentionrl.training.run import RunConfig, RunDir, build_agent

#: algorithms trained from logs (supervised / offline RL) rather than by interacting with the simulator
OFFLINE_ALGOS = frozenset({"din", "deepfm", "bc", "sec", "td3bc", "iql", "cql", "cql_discrete", "bcq", "il_cvae", "resact"})
LOOPS = ("online", "offline")


def trainer_for(algo: str, loop: str | None = None, where: str = "train config") -> tuple[type, Callable[..., Any]]:
    """(config dataclass, train function) of a train config's ``algo`` and ``loop`` keys: ``loop`` None picks by
    algorithm (the offline loop for OFFLINE_ALGOS, else online); ``offline`` trains an online-capable learner (TD3,
    DDPG, SAC, ...) from a behaviour policy's logs alone; ``online`` for an offline-only algorithm is refused."""
    if loop is not None and loop not in LOOPS:
        raise ConfigError(f"{where}.loop: {loop!r} is not one of {', '.join(LOOPS)} (or leave it out: by algorithm)")
    if loop == "online" and algo in OFFLINE_ALGOS:
        raise ConfigError(f"{where}.loop: '{algo}' learns from logs only; it has no online loop")
    if loop == "offline" or algo in OFFLINE_ALGOS:
        return OfflineTrainConfig, train_offline
    return TrainConfig, train


def load_trained(run_dir: str, sim: Simulator, eval_overrides: Any = None, compiled: bool = True
                 ) -> tuple[RunConfig, Agent]:
    """(train config, agent) of a run directory: its ``config.yaml`` with ``eval_overrides`` (a mapping, e.g.
    ``{"n_users": 32, "n_episodes": 96}``) merged over its ``eval`` section, and the agent restored from its
    checkpoint (``weights_only``) if there is one — what ``retentionrl evaluate`` scores. ``sim`` must be the
    simulator the run was made on (same fingerprint; a run made before fingerprints were recorded is not
    checked). ``compiled``: a ``compile: true`` run's encoders are compiled as in training, so that evaluation
    reproduces its numbers; False for callers that need only the weights (export)."""
    run = RunDir(run_dir)
    raw, _ = run.read_config()
    run.check_simulator(sim)
    if eval_overrides is not None:
        if not isinstance(eval_overrides, dict):
            raise RetentionRLError(f"eval overrides for {run_dir} must be a mapping of eval keys, got {eval_overrides!r}")
        raw["eval"] = merge(raw.get("eval", {}), eval_overrides)
    where = str(run.config)
    cfg = from_dict(trainer_for(raw.get("algo", "td3"), raw.get("loop"), where)[0], raw, where)
    cfg.eval_config()  # a bad (merged) eval key fails here, naming the key, before the agent is built
    agent = build_agent(cfg.algo, sim, cfg.agent, cfg.seed, cfg.env_config(), str(run.config),
                        compile=cfg.compile and compiled)
    if run.checkpoint.is_file():
        state = load_checkpoint(run.checkpoint)
        try:
            agent.load_state_dict(state["agent"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # the networks' shapes or names changed
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise RetentionRLError(f"{run.checkpoint}: the checkpoint does not fit the agent this config builds (made by "
                                   f"another retentionrl version or config?): {first}") from None
    return cfg, agent
