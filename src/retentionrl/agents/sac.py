"""SAC (Haarnoja et al., 2018) over the fusion action, CleanRL-style, with automatic entropy tuning.

Squashed Gaussian policy ``a = tanh(u)``, ``u ~ N(mu(s), sigma(s))`` (:class:`GaussianActor`), twin critics
``Q_1, Q_2`` with target copies ``Q'_1, Q'_2``, temperature ``alpha = exp(log_alpha)``. For a replay batch of N
transitions (obs (N, ...), action a (N, 7), reward r (N,), done d (N,)); ``a~``, ``log pi`` are fresh
reparameterised samples (N, 7), (N,):

    y           = r + gamma * (1 - d) * (min_i Q'_i(s', a~') - alpha * log pi(a~' | s'))     (N,)  no gradient
    critic_loss = mean((Q_1(s, a) - y)^2) + mean((Q_2(s, a) - y)^2)
    actor_loss  = mean(alpha * log pi(a~ | s) - min_i Q_i(s, a~))
    alpha_loss  = -mean(log_alpha * (log pi(a~ | s) + H_target))     (autotune; H_target = -7 = -dim A)
    theta'_i    <- tau * theta_i + (1 - tau) * theta'_i                (every update)

``act(explore=True)`` samples ``a~`` from the policy with the agent's own seeded generator (also used for the
update's samples, so a resumed run continues identically); ``act(explore=False)`` is ``tanh(mu(s))``. Reward
and terminal handling are TD3's (:func:`~retentionrl.nets.actor_critic.mixed_reward`,
:func:`~retentionrl.nets.actor_critic.done_mask`). ``autotune: false`` keeps ``alpha`` fixed at its initial value.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import Agent, TorchAgent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    ActorCriticConfig, AgentSpec, Critic, GaussianActor, critic_step, done_mask, gradient_step, mixed_reward,
    soft_update, time_aware,
)
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class SACConfig(ActorCriticConfig):
    alpha_lr: float = 1e-3
    alpha: float = 0.2  # initial temperature (the fixed one when autotune is off)
    autotune: bool = True
    target_entropy: float = -7.0  # -dim(action)


class SAC(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("actor", "q1", "q2", "q1_t", "q2_t", "actor_opt", "critic_opt")

    def __init__(self, spec: AgentSpec, cfg: SACConfig, seed: int = 0) -> None:
        if cfg.alpha <= 0:
            raise RetentionRLError(f"agent.alpha must be positive, got {cfg.alpha}")
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.actor = GaussianActor(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder)
        self.q1, self.q2 = (Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder) for _ in range(2))
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam([*self.q1.parameters(), *self.q2.parameters()], cfg.critic_lr)
        self.log_alpha = torch.tensor(math.log(cfg.alpha), requires_grad=cfg.autotune)  # scalar
        self.alpha_opt = adam([self.log_alpha], cfg.alpha_lr) if cfg.autotune else None
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) fusion weights in [-1, 1]: a policy sample when exploring, else ``tanh(mu(s))``."""
        if explore:
            return self.actor.sample(obs, self.gen)[0]
        return torch.tanh(self.actor(obs)[0])

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)  # (N,)
        done = done_mask(batch, cfg.terminal)  # (N,)
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            a2, logp2 = self.actor.sample(nxt, self.gen)  # (N, 7), (N,)
            v2 = torch.min(self.q1_t(nxt, a2), self.q2_t(nxt, a2)) - alpha * logp2
            target = r + cfg.gamma * (1 - done) * v2  # (N,)
        critic_loss, q1 = critic_step([self.q1, self.q2], self.critic_opt, obs, batch["action"], target)
        return {"critic_loss": critic_loss, "q": float(q1.mean()), **self.policy_step(obs, alpha)}

    def policy_step(self, obs: Obs, alpha: Tensor) -> dict[str, float]:
        """After the critics' step: the actor (``α log π − min Q``), the temperature (towards the target entropy),
        the Polyak target update and the update count (shared with CQL)."""
        cfg = self.cfg
        pi, logp = self.actor.sample(obs, self.gen)
        actor_loss = gradient_step(self.actor_opt, (alpha * logp - torch.min(self.q1.for_actor(obs, pi), self.q2.for_actor(obs, pi))).mean())
        info = {"actor_loss": actor_loss, "entropy": float(-logp.detach().mean())}
        if self.alpha_opt is not None:
            alpha_loss = -(self.log_alpha * (logp.detach() + cfg.target_entropy)).mean()
            info["alpha_loss"] = gradient_step(self.alpha_opt, alpha_loss)
        info["alpha"] = self.alpha
        for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
            soft_update(net, tgt, cfg.tau)
        self.n_updates += 1
        return info

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "log_alpha": self.log_alpha.detach().clone()}
        if self.alpha_opt is not None:
            state["alpha_opt"] = self.alpha_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if self.alpha_opt is not None:
            self.alpha_opt.load_state_dict(state["alpha_opt"])


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> Agent:
    """Registry entry: ``AGENTS["sac"] = sac.build``."""
    from retentionrl.config import from_dict

    c = from_dict(SACConfig, cfg, "agent")
    return SAC(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
