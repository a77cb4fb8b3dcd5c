"""The interface every method implements, so that training, evaluation and serving treat them alike."""

from __future__ import annotations

import math
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

    def act_log_prob(self, obs: Obs, explore: bool = False) -> tuple[Tensor, Tensor | None]:
        """``act`` plus the log-density (B,) of the drawn action under the distribution it was drawn from, for
        stochastic policies that know it (what :func:`~retentionrl.training.offline.generate_logs` stores as the
        propensity); None otherwise (the default)."""
        return self.act(obs, explore=explore), None

    def log_prob(self, obs: Obs, action: Tensor) -> Tensor | None:
        """Log-density (B,) of given actions (B, A) under this policy's action distribution (a target policy's
        side of importance sampling); None when the policy has none of its own (the default)."""
        return None

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

    def check_logs(self, logs: dict[str, Tensor], source: str) -> None:
        """Trained from logs (the offline RL agents, or TD3 / DDPG with ``loop: offline``), a fusion agent needs
        logged fusion weights (N, 7) float: an items-mode behaviour logs slates."""
        a = logs["action"]
        if self.action_mode == "fusion" and (not a.is_floating_point() or a.shape[1:] != (7,)):
            raise RetentionRLError(f"{type(self).__name__} learns from logged fusion actions (N, 7) float; {source} "
                                   f"hold {tuple(a.shape)} {a.dtype} (an items-mode behaviour logs slates)")


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
        width = self.nb if self.action_mode == "fusion" else obs.candidates.shape[-1]
        return torch.rand(B, width, generator=self.gen)


class GaussianBehaviour(Agent):
    """A stochastic ("online-serving") fusion policy: ``a = μ(s) + σ ⊙ ε``, ε ~ N(0, I_7), with μ(s) the base
    agent's deterministic action ``base.act(obs, explore=False)``; its log-density is known, so logs carry
    propensities.

    ``act`` always samples, whatever ``explore`` says: this policy *is* the stochastic one, and its value under
    :func:`~retentionrl.evaluation.protocol.evaluate_policy` is the value of the stochastic policy (what an
    off-policy estimate of it estimates). The noise comes from the global torch RNG, which ``generate_logs`` and
    ``evaluate_policy`` seed (fork_rng), so the same seed gives the same actions. The action is not clipped (the
    density is that of the drawn action; the env takes any finite weights).

    The same construction gives a deterministic policy (TD3, DDPG, BC, ...) a density for importance sampling:
    the target "Gaussian around its action with a chosen σ" (the usual convention for deterministic continuous
    targets; the estimate is then of that smoothed policy, close to the deterministic one for small σ).
    ``log_prob`` recomputes μ(s), so the base must be deterministic at ``explore=False`` (every learnt agent and
    ``FixedWeightsAgent`` are; a ``RandomAgent`` without ``n_users`` is not)."""

    def __init__(self, base: Agent, sigma: float | list[float]) -> None:
        if getattr(base, "action_mode", "fusion") != "fusion":
            raise RetentionRLError("GaussianBehaviour: base agent must be a fusion agent (action_mode 'fusion')")
        s = torch.as_tensor(sigma, dtype=torch.float32)
        if s.dim() > 1 or (s.dim() == 1 and len(s) != 7) or not (torch.isfinite(s) & (s > 0)).all():
            raise RetentionRLError(f"GaussianBehaviour: sigma must be a positive number or 7 of them, got {sigma!r}")
        self.base, self.sigma = base, s

    def mean(self, obs: Obs) -> Tensor:
        """(B, 7) μ(s): the base agent's deterministic action."""
        return self.base.act(obs, explore=False).float()

    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        return self.act_log_prob(obs, explore)[0]

    def act_log_prob(self, obs: Obs, explore: bool = False) -> tuple[Tensor, Tensor]:
        mu = self.mean(obs)
        eps = torch.randn(mu.shape)
        return mu + self.sigma * eps, self._log_density(eps)

    def log_prob(self, obs: Obs, action: Tensor) -> Tensor:
        return self._log_density((action.float() - self.mean(obs)) / self.sigma)

    def _log_density(self, z: Tensor) -> Tensor:
        """(B, 7) standardised residuals -> (B,) Σ_j log N(a_j; μ_j, σ_j²)."""
        log_norm = self.sigma.log() + 0.5 * math.log(2 * math.pi)
        return (-0.5 * z.square() - log_norm).sum(-1)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "sigma": self.sigma.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.sigma = state["sigma"].clone()


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


def build_gaussian(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> GaussianBehaviour:
    """``{base: ranking, base_agent: {weights: [...]}, sigma: 0.3}``: a Gaussian behaviour around a fixed fusion
    policy (``ranking`` or ``random`` with ``per_user: true``), the logging policy of the offline benchmarks."""
    unknown = sorted(set(cfg) - {"base", "base_agent", "sigma"})
    if unknown:
        raise RetentionRLError(f"agent: unknown key '{unknown[0]}' (allowed: base, base_agent, sigma)")
    base = cfg.get("base", "ranking")
    builders = {"ranking": build_ranking, "random": build_random}
    if base not in builders:
        raise RetentionRLError(f"agent: base must be one of {', '.join(builders)} (a fixed policy), got {base!r}")
    base_cfg = cfg.get("base_agent", {})
    if not isinstance(base_cfg, dict):
        raise RetentionRLError(f"agent: base_agent must be a mapping, got {type(base_cfg).__name__}")
    if base == "random" and not base_cfg.get("per_user", False):
        raise RetentionRLError("agent: a random base needs per_user: true (its mean action must be deterministic)")
    return GaussianBehaviour(builders[base](sim, dict(base_cfg), seed, env), cfg.get("sigma", 0.3))
