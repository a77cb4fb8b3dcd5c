"""TD3 (Fujimoto et al., 2018) over the fusion action, CleanRL-style.

Actor ``a = tanh(MLP(s))`` ∈ [-1, 1]^7; twin critics ``Q_i(s, a)``; target policy smoothing; delayed actor and
target updates. Cross-session: the reward mixes the retention reward (non-zero at session ends) and the
immediate reward; by default nothing is terminal (a session end is a step of the user's life, an episode end a
time limit), ``terminal: session`` reproduces KuaiSim's cut at every session end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from retentionrl.agents.base import Agent
from retentionrl.nets.actor_critic import AgentSpec, Critic, DeterministicActor, done_mask, mixed_reward, soft_update
from retentionrl.simulator.env import Obs


@dataclass
class TD3Config:
    gamma: float = 0.9
    tau: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch_size: int = 128
    exploration_noise: float = 0.1
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    state_dim: int = 64
    token_dim: int = 32
    retention_weight: float = 1.0
    immediate_weight: float = 0.0
    terminal: Literal["none", "session", "episode"] = "none"


class TD3(Agent):
    action_mode = "fusion"
    learns = True

    def __init__(self, spec: AgentSpec, cfg: TD3Config, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.actor = DeterministicActor(spec, cfg.state_dim, cfg.token_dim, cfg.hidden)
        self.q1, self.q2 = (Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden) for _ in range(2))
        self.actor_t, self.q1_t, self.q2_t = (copy.deepcopy(m) for m in (self.actor, self.q1, self.q2))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.critic_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        a = self.actor(obs)
        if explore:
            a = a + self.cfg.exploration_noise * torch.randn(a.shape, generator=self.gen)
        return a.clamp(-1.0, 1.0)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        from retentionrl.training.buffer import obs_from_batch

        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)
        done = done_mask(batch, cfg.terminal)
        with torch.no_grad():
            noise = (torch.randn(batch["action"].shape, generator=self.gen) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (self.actor_t(nxt) + noise).clamp(-1.0, 1.0)
            target = r + cfg.gamma * (1 - done) * torch.min(self.q1_t(nxt, a2), self.q2_t(nxt, a2))
        a = batch["action"]
        q1, q2 = self.q1(obs, a), self.q2(obs, a)
        critic_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.n_updates += 1
        info = {"critic_loss": float(critic_loss.detach()), "q": float(q1.detach().mean())}
        if self.n_updates % cfg.policy_delay == 0:
            actor_loss = -self.q1(obs, self.actor(obs)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            for net, tgt in ((self.actor, self.actor_t), (self.q1, self.q1_t), (self.q2, self.q2_t)):
                soft_update(net, tgt, cfg.tau)
            info["actor_loss"] = float(actor_loss.detach())
        return info

    def state_dict(self) -> dict[str, Any]:
        nets = {k: getattr(self, k).state_dict() for k in ("actor", "q1", "q2", "actor_t", "q1_t", "q2_t",
                                                           "actor_opt", "critic_opt")}
        return {**nets, "gen": self.gen.get_state(), "n_updates": self.n_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("actor", "q1", "q2", "actor_t", "q1_t", "q2_t", "actor_opt", "critic_opt"):
            getattr(self, k).load_state_dict(state[k])
        self.gen.set_state(state["gen"])
        self.n_updates = int(state["n_updates"])


def build(sim, cfg: dict[str, Any], seed: int) -> TD3:
    from retentionrl.config import from_dict

    return TD3(AgentSpec.from_simulator(sim), from_dict(TD3Config, cfg, "agent"), seed=seed)
