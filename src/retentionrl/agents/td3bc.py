"""TD3+BC (Fujimoto & Gu, 2021, "A Minimalist Approach to Offline Reinforcement Learning"), from logs only.

TD3 (``agents/td3.py``: twin critics, target policy smoothing, delayed actor and target updates) with one change,
a behaviour-cloning term in the actor loss whose Q part is normalised by the batch's mean |Q|. For a batch of N
logged transitions (obs, action a (N, 7), reward r (N,), done d (N,)):

    a'          = clamp(mu'(s') + clip(sigma * eps, -c, c), -1, 1)                   eps ~ N(0, I)
    y           = r + gamma * (1 - d) * min_i Q'_i(s', a')                            (N,)  no gradient
    critic_loss = sum_i mean((Q_i(s, a) - y)^2)
    lambda      = alpha / mean_N |Q_1(s, mu(s))|                                      detached
    actor_loss  = -lambda * mean(Q_1(s, mu(s))) + mean((mu(s) - a)^2)                every policy_delay updates

``alpha`` trades RL against imitation: alpha = 0 is behaviour cloning through a tanh actor, a large alpha is TD3
on the logs. The normalisation makes alpha independent of the reward's scale (the paper's 2.5 on D4RL fits our
retention reward too). The paper also standardises the state features; our states are the encoder's learnt
features, so there is nothing to standardise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import agent_spec
from retentionrl.agents.td3 import TD3, TD3Config
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    AgentSpec, critic_step, done_mask, gradient_step, mixed_reward, soft_update, time_aware,
)
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import obs_from_batch


@dataclass
class TD3BCConfig(TD3Config):
    """TD3's fields (policy noise 0.2, clip 0.5, delay 2: the paper's) plus ``alpha``; learning rates 3e-4 and
    batch 256 as in the paper and CORL. gamma, the reward mix and the networks are ours (ActorCriticConfig)."""

    alpha: float = 2.5
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256


def td3bc_actor_loss(q: Tensor, pi: Tensor, action: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(loss, lambda): ``-lambda * mean(q) + mean((pi - action)^2)``, ``lambda = alpha / mean|q|`` detached;
    q (N,) = Q_1(s, pi), pi and action (N, 7)."""
    lam = alpha / q.abs().mean().detach().clamp(min=1e-8)
    return -lam * q.mean() + (pi - action).square().mean(), lam


class TD3BC(TD3):
    """TD3 networks and ``act`` (``explore=False``: mu(s)); the update below."""

    cfg: TD3BCConfig

    def __init__(self, spec: AgentSpec, cfg: TD3BCConfig, seed: int = 0) -> None:
        if cfg.alpha < 0:
            raise RetentionRLError(f"agent.alpha must be >= 0 (0: behaviour cloning), got {cfg.alpha}")
        super().__init__(spec, cfg, seed)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        a, done = batch["action"], done_mask(batch, cfg.terminal)  # (N, 7), (N,)
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)  # (N,)
        with torch.no_grad():
            noise = (torch.randn(a.shape, generator=self.gen) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (self.actor_t(nxt) + noise).clamp(-1.0, 1.0)
            target = r + cfg.gamma * (1 - done) * torch.min(self.q1_t(nxt, a2), self.q2_t(nxt, a2))  # (N,)
        critic_loss, q1 = critic_step([self.q1, self.q2], self.critic_opt, obs, a, target)
        self.n_updates += 1
        info = {"critic_loss": critic_loss, "q": float(q1.mean())}
        if self.n_updates % cfg.policy_delay == 0:
            pi = self.actor(obs)
            loss, lam = td3bc_actor_loss(self.q1.for_actor(obs, pi), pi, a, cfg.alpha)
            info["actor_loss"], info["lambda"] = gradient_step(self.actor_opt, loss), float(lam)
            info["bc_mse"] = float((pi.detach() - a).square().mean())
            for net, tgt in ((self.actor, self.actor_t), (self.q1, self.q1_t), (self.q2, self.q2_t)):
                soft_update(net, tgt, cfg.tau)
        return info


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> TD3BC:
    """Registry entry: ``AGENTS["td3bc"] = td3bc.build``."""
    from retentionrl.config import from_dict

    c = from_dict(TD3BCConfig, cfg, "agent")
    return TD3BC(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
