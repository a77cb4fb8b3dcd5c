"""Actors and critics shared by the actor-critic methods (TD3, DDPG, SAC, and the retention methods built on
them). Each network owns its :class:`~retentionrl.nets.state.StateEncoder` (CleanRL style: no shared trunk)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import mlp
from retentionrl.nets.state import StateEncoder
from retentionrl.simulator.env import Obs


@dataclass
class AgentSpec:
    """What an agent's networks need to know about the simulator (sizes only)."""

    user_cards: list[int]
    n_user_num: int
    n_items: int
    window: int
    n_behaviours: int = 7

    @classmethod
    def from_simulator(cls, sim) -> "AgentSpec":
        return cls(list(sim.meta["user_cardinalities"]), int(sim.response.user_num.shape[1]), sim.n_items,
                   int(sim.response.cfg.window))


@dataclass
class ActorCriticConfig:
    """Hyper-parameters every actor-critic method shares (defaults: KuaiSim's cross-session TD3 script)."""

    gamma: float = 0.9
    tau: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch_size: int = 128
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    state_dim: int = 64
    token_dim: int = 32
    retention_weight: float = 1.0
    immediate_weight: float = 0.0
    terminal: Literal["none", "session", "episode"] = "none"


def noisy_action(actor: nn.Module, obs: Obs, noise: float, generator: torch.Generator | None) -> Tensor:
    """(B, 7) deterministic action, plus Gaussian exploration noise when ``generator`` is given, in [-1, 1]."""
    a = actor(obs)
    if generator is not None:
        a = a + noise * torch.randn(a.shape, generator=generator)
    return a.clamp(-1.0, 1.0)


def mixed_reward(batch: dict[str, Tensor], retention_weight: float, immediate_weight: float) -> Tensor:
    """(N,) the reward an agent learns from."""
    return retention_weight * batch["retention_reward"] + immediate_weight * batch["reward"]


def done_mask(batch: dict[str, Tensor], terminal: str) -> Tensor:
    """(N,) 1.0 where the value should not bootstrap."""
    if terminal == "session":
        return batch["session_end"].float()
    if terminal == "episode":
        return batch["episode_end"].float()
    return torch.zeros_like(batch["reward"])


def encoder(spec: AgentSpec, state_dim: int, token_dim: int) -> StateEncoder:
    return StateEncoder(spec.user_cards, spec.n_user_num, spec.n_items, token_dim, spec.window, out_dim=state_dim)


class DeterministicActor(nn.Module):
    """a = tanh(MLP(s)) in [-1, 1]^7 (TD3, DDPG)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim)
        self.net = mlp([state_dim, *hidden, spec.n_behaviours], out_act=nn.Tanh())

    def forward(self, obs: Obs) -> Tensor:
        return self.net(self.enc(obs))  # (B, 7)


class GaussianActor(nn.Module):
    """Squashed Gaussian policy a = tanh(u), u ~ N(mu(s), sigma(s)) (SAC; RLUR and GFN4Retention build on it)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim)
        self.trunk = mlp([state_dim, *hidden]) if hidden else nn.Identity()
        width = hidden[-1] if hidden else state_dim
        self.mu = nn.Linear(width, spec.n_behaviours)
        self.log_std = nn.Linear(width, spec.n_behaviours)

    def forward(self, obs: Obs) -> tuple[Tensor, Tensor]:
        """(B, 7) mean and log-std of the pre-squash Gaussian."""
        h = torch.relu(self.trunk(self.enc(obs)))
        return self.mu(h), self.log_std(h).clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, obs: Obs, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised action (B, 7) and its log-probability (B,) with the tanh correction."""
        mu, log_std = self(obs)
        std = log_std.exp()
        u = mu + std * torch.randn(mu.shape, generator=generator)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(1)
        logp = logp - torch.log(1 - a.pow(2) + 1e-6).sum(1)
        return a, logp


class Critic(nn.Module):
    """Q(s, a) -> (B,)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim)
        self.net = mlp([state_dim + spec.n_behaviours, *hidden, 1])

    def forward(self, obs: Obs, action: Tensor) -> Tensor:
        return self.net(torch.cat([self.enc(obs), action], dim=1)).squeeze(1)


def gradient_step(opt: torch.optim.Optimizer, loss: Tensor) -> float:
    """One optimiser step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def critic_step(critics: list[Critic], opt: torch.optim.Optimizer, obs: Obs, action: Tensor, target: Tensor
                ) -> tuple[float, Tensor]:
    """Regress every critic on the same TD target: loss Σ_i mean((Q_i(s, a) - y)^2), action (N, 7), target (N,).
    Returns the loss and Q_1(s, a) (N,) for diagnostics."""
    qs = [c(obs, action) for c in critics]
    loss = sum(((q - target) ** 2).mean() for q in qs)
    return gradient_step(opt, loss), qs[0].detach()


def soft_update(net: nn.Module, target: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for p, pt in zip(net.parameters(), target.parameters()):
            pt.lerp_(p, tau)


