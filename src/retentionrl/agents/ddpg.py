"""DDPG (Lillicrap et al., 2016) over the fusion action, CleanRL-style.

Deterministic actor ``mu(s) = tanh(MLP(s))`` ∈ [-1, 1]^7, one critic ``Q(s, a)``, target copies ``mu'``, ``Q'``.
For a replay batch of N transitions (obs (N, ...), action a (N, 7), reward r (N,), done d (N,)):

    y           = r + gamma * (1 - d) * Q'(s', mu'(s'))                 (N,)  no gradient
    critic_loss = mean((Q(s, a) - y)^2)
    actor_loss  = -mean(Q(s, mu(s)))                                     (critic frozen by the actor optimiser)
    theta'      <- tau * theta + (1 - tau) * theta'                      (both targets, every update)

Exploration: ``clamp(mu(s) + sigma * eps, -1, 1)``, ``eps ~ N(0, I)`` drawn from the agent's own seeded
generator (so a resumed run draws the same noise). Reward and terminal handling are TD3's
(:func:`~retentionrl.nets.actor_critic.mixed_reward`, :func:`~retentionrl.nets.actor_critic.done_mask`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import Agent, TorchAgent, agent_spec
from retentionrl.nets.actor_critic import (
    ActorCriticConfig, AgentSpec, Critic, DeterministicActor, critic_step, done_mask, gradient_step, mixed_reward,
    noisy_action, soft_update, time_aware,
)
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class DDPGConfig(ActorCriticConfig):
    exploration_noise: float = 0.1


class DDPG(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("actor", "q", "actor_t", "q_t", "actor_opt", "critic_opt")

    def __init__(self, spec: AgentSpec, cfg: DDPGConfig, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.actor = DeterministicActor(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder)
        self.q = Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder)
        self.actor_t, self.q_t = copy.deepcopy(self.actor), copy.deepcopy(self.q)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam(self.q.parameters(), cfg.critic_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) fusion weights in [-1, 1]; ``explore`` adds Gaussian noise from ``self.gen``."""
        return noisy_action(self.actor, obs, self.cfg.exploration_noise, self.gen if explore else None)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)  # (N,)
        done = done_mask(batch, cfg.terminal)  # (N,)
        with torch.no_grad():
            target = r + cfg.gamma * (1 - done) * self.q_t(nxt, self.actor_t(nxt))  # (N,)
        critic_loss, q = critic_step([self.q], self.critic_opt, obs, batch["action"], target)
        actor_loss = gradient_step(self.actor_opt, -self.q.for_actor(obs, self.actor(obs)).mean())
        for net, tgt in ((self.actor, self.actor_t), (self.q, self.q_t)):
            soft_update(net, tgt, cfg.tau)
        self.n_updates += 1
        return {"critic_loss": critic_loss, "actor_loss": actor_loss, "q": float(q.mean())}


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> Agent:
    """Registry entry: ``AGENTS["ddpg"] = ddpg.build``."""
    from retentionrl.config import from_dict

    c = from_dict(DDPGConfig, cfg, "agent")
    return DDPG(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
