"""TD3 (Fujimoto et al., 2018) over the fusion action, CleanRL-style.

Actor ``a = tanh(MLP(s))`` ∈ [-1, 1]^7; twin critics ``Q_i(s, a)``; target policy smoothing; delayed actor and
target updates. Cross-session: the reward mixes the retention reward (non-zero at session ends) and the
immediate reward; by default nothing is terminal (a session end is a step of the user's life, an episode end a
time limit), ``terminal: session`` reproduces KuaiSim's cut at every session end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import TorchAgent, agent_spec
from retentionrl.nets.actor_critic import (
    ActorCriticConfig, AgentSpec, Critic, DeterministicActor, critic_step, done_mask, gradient_step, mixed_reward,
    noisy_action, soft_update, time_aware,
)
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class TD3Config(ActorCriticConfig):
    exploration_noise: float = 0.1
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2


class TD3(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("actor", "q1", "q2", "actor_t", "q1_t", "q2_t", "actor_opt", "critic_opt")

    def __init__(self, spec: AgentSpec, cfg: TD3Config, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.actor = DeterministicActor(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder)
        self.q1, self.q2 = (Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder) for _ in range(2))
        self.actor_t, self.q1_t, self.q2_t = (copy.deepcopy(m) for m in (self.actor, self.q1, self.q2))
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam([*self.q1.parameters(), *self.q2.parameters()], cfg.critic_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        return noisy_action(self.actor, obs, self.cfg.exploration_noise, self.gen if explore else None)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)
        done = done_mask(batch, cfg.terminal)
        with torch.no_grad():
            noise = (torch.randn(batch["action"].shape, generator=self.gen) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (self.actor_t(nxt) + noise).clamp(-1.0, 1.0)
            target = r + cfg.gamma * (1 - done) * torch.min(self.q1_t(nxt, a2), self.q2_t(nxt, a2))
        critic_loss, q1 = critic_step([self.q1, self.q2], self.critic_opt, obs, batch["action"], target)
        self.n_updates += 1
        info = {"critic_loss": critic_loss, "q": float(q1.mean())}
        if self.n_updates % cfg.policy_delay == 0:
            info["actor_loss"] = gradient_step(self.actor_opt, -self.q1.for_actor(obs, self.actor(obs)).mean())
            for net, tgt in ((self.actor, self.actor_t), (self.q1, self.q1_t), (self.q2, self.q2_t)):
                soft_update(net, tgt, cfg.tau)
        return info


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> TD3:
    from retentionrl.config import from_dict

    c = from_dict(TD3Config, cfg, "agent")
    return TD3(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
