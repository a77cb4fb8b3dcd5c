"""The interface every method implements, so that training, evaluation and serving treat them alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import AgentSpec
from retentionrl.simulator.env import EnvConfig, preset
from retentionrl.spaces import Obs, StepOutput


def agent_spec(sim, env: EnvConfig | None = None, clock: bool = False) -> AgentSpec:
    """The :class:`AgentSpec` of an agent acting in ``env`` of simulator ``sim`` (None: the KuaiSim preset, the
    default of every ``build`` and of ``make_agent``). ``clock``: the episode clock is a state feature."""
    return AgentSpec.from_env(sim, env if env is not None else preset("kuaisim"), clock)


class Agent(ABC):
    """A policy over the simulator's batched observations.

    ``act`` maps a batch of observations to actions: (B, 7) fusion weights, or (B, C) candidate scores for
    item-level agents (``action_mode = "items"``). ``explore=False`` must be deterministic (the evaluation
    protocol freezes the policy). ``update`` takes a batch of transitions (a dict of tensors from the replay
    buffer) and returns scalar diagnostics. ``state_dict``/``load_state_dict`` hold everything needed to resume
    (networks, optimisers, counters) as tensors and plain values, so checkpoints load with ``weights_only``.
    """

    action_mode: str = "fusion"
    learns: bool = False  # whether the training loop should call update()
    batch_size: int = 0

    @abstractmethod
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        ...

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One gradient step from a replay batch (off-policy agents; called when ``learns``)."""
        return {}

    def check_logs(self, logs: dict[str, Tensor], source: str) -> None:
        """Refuse, with an error naming ``source``, logs this agent cannot learn from (offline agents; called
        once on the whole logs before training, so a per-batch accident is not mistaken for the data)."""

    def prepare_logs(self, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The rows this agent trains on, called once on the whole logs after :meth:`check_logs` (and again on
        resume: logs are regenerated, not checkpointed). Default: all of them. SEC keeps the expert rows."""
        return logs

    def observe(self, obs: Obs, action: Tensor, out: StepOutput) -> dict[str, float]:
        """Called after every training step with what happened (on-policy / black-box agents such as CEM learn
        here). ``out.obs`` is the next observation after auto-reset."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class TorchAgent(Agent):
    """An agent whose state is the modules and optimisers named in ``_STATE``, a generator ``gen`` and an update
    counter ``n_updates`` — enough for an exact resume."""

    _STATE: tuple[str, ...] = ()
    gen: torch.Generator
    n_updates: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k).state_dict() for k in self._STATE}, "gen": self.gen.get_state(),
                "n_updates": self.n_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            getattr(self, k).load_state_dict(state[k])
        self.gen.set_state(state["gen"])
        self.n_updates = int(state["n_updates"])


class FixedWeightsAgent(Agent):
    """Constant fusion weights. ``RankingModel``: rank by the predicted click probability, ``[1, 0, ..., 0]``."""

    def __init__(self, weights: list[float] | None = None) -> None:
        self.w = torch.tensor(weights if weights is not None else [1.0, 0, 0, 0, 0, 0, 0])

    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        return self.w.expand(obs.user.shape[0], -1).clone()


class RandomAgent(Agent):
    """Uniform fusion weights in [0, 1]^7 (or uniform candidate scores); seeded for reproducibility.

    ``n_users`` (fusion mode): a population of fixed random policies instead, one per user — user u is always
    served the same weights ``W[u]`` ~ U[0, 1]^7 — so that a user's logged return time reflects the policy it got
    (the behaviour SEC's logs use: stratifying users by retention then also stratifies the policies)."""

    def __init__(self, action_mode: str = "fusion", n_behaviours: int = 7, seed: int = 0,
                 n_users: int | None = None) -> None:
        self.action_mode, self.nb = action_mode, n_behaviours
        self.gen = torch.Generator().manual_seed(seed)
        if n_users is not None and action_mode != "fusion":
            raise RetentionRLError("random: per_user needs action_mode fusion")
        self.table = None if n_users is None else torch.rand(n_users, n_behaviours, generator=self.gen)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "table": self.table}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.table = state.get("table")

    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        B = obs.user.shape[0]
        if self.table is not None:
            return self.table[obs.user].clone()
        width = self.nb if self.action_mode == "fusion" else obs.candidates.shape[0]
        return torch.rand(B, width, generator=self.gen)


def build_ranking(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> FixedWeightsAgent:
    unknown = sorted(set(cfg) - {"weights"})
    if unknown:
        raise RetentionRLError(f"agent: unknown key '{unknown[0]}' (allowed: weights)")
    return FixedWeightsAgent(cfg.get("weights"))


def build_random(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> RandomAgent:
    unknown = sorted(set(cfg) - {"action_mode", "per_user"})
    if unknown:
        raise RetentionRLError(f"agent: unknown key '{unknown[0]}' (allowed: action_mode, per_user)")
    per_user = cfg.get("per_user", False)
    if not isinstance(per_user, bool):
        raise RetentionRLError(f"agent: per_user must be true or false, got {per_user!r}")
    return RandomAgent(action_mode=cfg.get("action_mode", "fusion"), seed=seed,
                       n_users=sim.n_users if per_user else None)
