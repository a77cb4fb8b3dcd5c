"""Actors, critics and value networks of the actor-critic baselines (TD3, DDPG, SAC and the offline TD3+BC, IQL,
CQL, BCQ), and the Gaussian-policy helpers
(:func:`gaussian_head`, :func:`gaussian_log_density`, :func:`squashed_sample`, :func:`gaussian_kl`) that RLUR and
GFN4Retention share with SAC. Here each network owns its :class:`~retentionrl.nets.state.StateEncoder` (CleanRL
style: no shared trunk); RLUR's critics and GFN4Retention's heads share one encoder each (see their modules)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import mlp
from retentionrl.nets.state import ContextScales, FlatEncoder, StateEncoder
from retentionrl.spaces import STEP_SCALE, FlatLayout, Obs

EncoderKind = Literal["transformer", "flat"]


@dataclass
class AgentSpec:
    """What an agent's networks need to know: the simulator's sizes (from the bundle) and the scales of the env
    the agent acts in (its :class:`~retentionrl.simulator.env.EnvConfig`), which set the state features."""

    user_cards: list[int]
    n_user_num: int
    n_items: int
    window: int
    n_behaviours: int = 7
    user_features: dict[str, list] = field(default_factory=dict)  # categorical column -> raw value of code c at c-1
    # The env's scales: K, the episode length in sessions, D (the env's max_return_day, else the bundle's).
    slate_size: int = 6
    max_sessions: int = 6
    max_return_day: int = 10
    step_scale: float = STEP_SCALE  # step_in_session / step_scale, clipped to 1
    clock: bool = False  # the episode clock session_index / max_sessions is a state feature (see time_aware)

    @classmethod
    def from_env(cls, sim, env, clock: bool = False) -> AgentSpec:
        """``sim`` the :class:`~retentionrl.simulator.bundle.Simulator`, ``env`` the ``EnvConfig`` the agent will
        act in (``max_return_day = None`` is the bundle's D, as in the env)."""
        return cls(list(sim.meta["user_cardinalities"]), int(sim.response.user_num.shape[1]), sim.n_items,
                   int(sim.response.cfg.window), user_features=dict(sim.meta.get("user_features", {})),
                   slate_size=int(env.slate_size), max_sessions=int(env.max_sessions),
                   max_return_day=int(env.max_return_day or sim.max_return_day), clock=clock)

    def context(self) -> ContextScales:
        """The scales of the transformer encoders' context features."""
        return ContextScales(self.max_sessions, self.max_return_day, self.step_scale, self.clock)

    def flat_layout(self) -> FlatLayout:
        """The gymnasium adapter's observation layout for this simulator and env."""
        return FlatLayout.from_meta(self.user_cards, self.n_user_num, self.slate_size, self.max_sessions,
                                    self.max_return_day, self.clock)


@dataclass
class NetConfig:
    """Optimisation and network sizes every actor-critic method shares (defaults: KuaiSim's cross-session TD3
    script): Polyak rate, learning rates, batch, MLP widths, state and history-token widths."""

    tau: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    batch_size: int = 128
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    state_dim: int = 64
    token_dim: int = 32


@dataclass
class ActorCriticConfig(NetConfig):
    """TD3 / DDPG / SAC: one discount and one reward mix."""

    gamma: float = 0.9
    retention_weight: float = 1.0
    immediate_weight: float = 0.0
    terminal: Literal["none", "session", "episode"] = "none"
    # "flat": every network is a plain MLP on the gymnasium adapter's flat observation (state_dim and token_dim
    # are then unused) — the networks stable-baselines3 builds with net_arch=hidden.
    encoder: EncoderKind = "transformer"


def noisy_action(actor: nn.Module, obs: Obs, noise: float, generator: torch.Generator | None) -> Tensor:
    """(B, 7) deterministic action, plus Gaussian exploration noise when ``generator`` is given, in [-1, 1]."""
    a = actor(obs)
    if generator is not None:
        a = a + noise * torch.randn(a.shape, generator=generator)
    return a.clamp(-1.0, 1.0)


def mixed_reward(batch: dict[str, Tensor], retention_weight: float, immediate_weight: float) -> Tensor:
    """(N,) the reward an agent learns from."""
    return retention_weight * batch["retention_reward"] + immediate_weight * batch["reward"]


def time_aware(terminal: str) -> bool:
    """Whether an agent's state shows the episode clock ``session_index / max_sessions``. The episode end is a
    time limit, and Pardo et al. (2018, "Time Limits in Reinforcement Learning") give two consistent treatments:
    a time-unaware state, bootstrapping through the cut (``terminal: none`` or ``session``: the successor at the
    cut then looks like any session start with the same history and gap, a state the critic is trained on), or a
    time-aware state with the cut terminal (``terminal: episode``). Bootstrapping from a clock value seen only
    at the cut (session_index = max_sessions) would be pure extrapolation."""
    return terminal == "episode"


def done_mask(batch: dict[str, Tensor], terminal: str) -> Tensor:
    """(N,) 1.0 where the value should not bootstrap (the state's clock follows :func:`time_aware`)."""
    if terminal == "session":
        return batch["session_end"].float()
    if terminal == "episode":
        return batch["episode_end"].float()
    return torch.zeros_like(batch["reward"])


def encoder(spec: AgentSpec, state_dim: int, token_dim: int, kind: EncoderKind = "transformer"
            ) -> StateEncoder | FlatEncoder:
    """A network's own state encoder, Obs -> (B, enc.out_dim): the transformer :class:`StateEncoder`
    (``out_dim = state_dim``) or the parameter-free :class:`FlatEncoder` (``out_dim`` = the flat observation's
    length; ``state_dim`` and ``token_dim`` unused)."""
    if kind == "flat":
        return FlatEncoder(spec.flat_layout())
    if kind != "transformer":
        raise RetentionRLError(f"unknown state encoder '{kind}' (known: transformer, flat)")
    return StateEncoder(spec.user_cards, spec.n_user_num, spec.n_items, token_dim, spec.window, out_dim=state_dim,
                        context=spec.context())


class DeterministicActor(nn.Module):
    """a = tanh(MLP(s)) in [-1, 1]^7 (TD3, DDPG)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int],
                 kind: EncoderKind = "transformer") -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim, kind)
        self.net = mlp([self.enc.out_dim, *hidden, spec.n_behaviours], out_act=nn.Tanh())

    def forward(self, obs: Obs) -> Tensor:
        return self.net(self.enc(obs))  # (B, 7)


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # bounds of every Gaussian policy's log-std


def gaussian_head(out: Tensor) -> tuple[Tensor, Tensor]:
    """Split a (B, 2A) network output into the mean and the clamped log-std (B, A) of a Gaussian policy."""
    mu, log_std = out.chunk(2, dim=1)
    return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class GaussianActor(nn.Module):
    """Squashed Gaussian policy a = tanh(u), u ~ N(mu(s), sigma(s)) (SAC)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int],
                 kind: EncoderKind = "transformer") -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim, kind)
        self.trunk = mlp([self.enc.out_dim, *hidden]) if hidden else nn.Identity()
        width = hidden[-1] if hidden else self.enc.out_dim
        self.mu = nn.Linear(width, spec.n_behaviours)
        self.log_std = nn.Linear(width, spec.n_behaviours)

    def forward(self, obs: Obs) -> tuple[Tensor, Tensor]:
        """(B, 7) mean and log-std of the pre-squash Gaussian."""
        h = torch.relu(self.trunk(self.enc(obs)))
        return self.mu(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Obs, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised action (B, 7) and its log-probability (B,) with the tanh correction."""
        return squashed_sample(*self(obs), generator)


def squashed_sample(mu: Tensor, log_std: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """a = tanh(mu + sigma * eps), eps ~ N(0, I): reparameterised sample (B, A) and log pi(a) (B,)."""
    u = mu + log_std.exp() * torch.randn(mu.shape, generator=generator)
    return torch.tanh(u), _squashed_logp(u, mu, log_std)


def gaussian_log_density(u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """Per-dimension log N(u; mu, sigma^2), all (B, A) -> (B, A)."""
    return -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


def _squashed_logp(u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """Density of a = tanh(u): N(u; mu, sigma) / prod(1 - a^2) -> (B,)."""
    return gaussian_log_density(u, mu, log_std).sum(1) - torch.log(1 - torch.tanh(u).pow(2) + 1e-6).sum(1)


def gaussian_kl(mu: Tensor, log_std: Tensor, mu_ref: Tensor, log_std_ref: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(mu_ref, sigma_ref^2)) of diagonal Gaussians (B, A) -> (B,). tanh is a bijection,
    so this is also the KL between the squashed policies."""
    var, var_ref = (2 * log_std).exp(), (2 * log_std_ref).exp()
    return (log_std_ref - log_std + (var + (mu - mu_ref) ** 2) / (2 * var_ref) - 0.5).sum(1)


class Critic(nn.Module):
    """Q(s, a) -> (B,)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int],
                 kind: EncoderKind = "transformer") -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim, kind)
        self.net = mlp([self.enc.out_dim + spec.n_behaviours, *hidden, 1])

    def forward(self, obs: Obs, action: Tensor) -> Tensor:
        return self.value(self.enc(obs), action)

    def value(self, z: Tensor, action: Tensor) -> Tensor:
        """Q from an encoded state ``z = self.enc(obs)``: z (..., D) broadcast to the action's leading dims,
        action (..., 7) -> (...). Scoring n candidate actions per state encodes each state once:
        ``value(z[:, None], actions (B, n, 7)) -> (B, n)``."""
        z = z.expand(*action.shape[:-1], z.shape[-1])
        return self.net(torch.cat([z, action], dim=-1)).squeeze(-1)

    def for_actor(self, obs: Obs, action: Tensor) -> Tensor:
        """Q(s, a) (B,) for an actor loss: the same value as ``forward``, but the state encoder runs without
        autograd. The actor step only needs dQ/da; the critic's own gradients from it were discarded anyway
        (its optimiser zeroes them first), so the numbers are unchanged and two encoder backward passes saved."""
        with torch.no_grad():
            z = self.enc(obs)
        return self.value(z, action)


class StateValue(nn.Module):
    """V(s) -> (B,) (IQL's value network)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int],
                 kind: EncoderKind = "transformer") -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim, kind)
        self.net = mlp([self.enc.out_dim, *hidden, 1])

    def forward(self, obs: Obs) -> Tensor:
        return self.net(self.enc(obs)).squeeze(-1)


def best_candidate(candidates: Tensor, q: Tensor) -> Tensor:
    """The candidate with the largest value per row: candidates (B, n, A), q (B, n) -> (B, A) (BCQ's and
    ResAct's selection by Q1; ties go to the first)."""
    return candidates[torch.arange(candidates.shape[0]), q.argmax(dim=1)]


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
    """Polyak step ``target <- target + tau * (net - target)``, every tensor in one multi-tensor kernel."""
    t, p = list(target.parameters()), list(net.parameters())
    if not t:  # (tests swap in parameter-free targets)
        return
    if len(t) != len(p) or any(a.shape != b.shape for a, b in zip(t, p)):
        raise ValueError(f"soft_update: the target has {len(t)} parameter tensors, the network {len(p)} (or their "
                         "shapes differ): not a copy of it")
    with torch.no_grad():
        torch._foreach_lerp_(t, p, tau)


