"""Continuous CQL (Kumar et al., 2020, "Conservative Q-Learning for Offline Reinforcement Learning", CQL(H)) on top
of SAC (``agents/sac.py``), from logs only.

SAC's actor, temperature and twin critics; each critic's loss adds a penalty that pushes Q down on actions the
policy or a uniform sampler proposes and up on the logged ones. For a batch of N logged transitions (obs, action a
(N, 7), reward r (N,), done d (N,)), with M = 3n sampled actions per state (n uniform in [-1, 1]^7, n from pi(.|s),
n from pi(.|s'), all scored at s, detached) and their sampling log-densities log p_k (-7 log 2 for the uniform):

    y           = r + gamma * (1 - d) * min_i Q'_i(s', a~'),  a~' ~ pi(.|s')          (N,)  no gradient
    penalty_i   = mean_N( T * logsumexp_k((Q_i(s, a_k) - log p_k) / T) - Q_i(s, a) )   importance-sampled log-integral
    critic_loss = sum_i [ mean((Q_i(s, a) - y)^2) + alpha_cql * penalty_i ]
    actor_loss  = mean(alpha * log pi(a~ | s) - min_i Q_i(s, a~))                       SAC's, alpha autotuned

``lagrange: true`` (off by default) replaces the fixed weight by ``alpha' * alpha_cql * (penalty_i - gap)`` with
``alpha' = exp(log_alpha')`` trained to maximise it: the penalty is then held near ``target_action_gap``.
``backup_entropy`` (off, as in CORL and d3rlpy) adds SAC's ``- alpha log pi(a~' | s')`` to the target.
``act(explore=False)`` is ``tanh(mu(s))``, as SAC's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import agent_spec
from retentionrl.agents.sac import SAC, SACConfig
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    AgentSpec, done_mask, gradient_step, mixed_reward, squashed_sample, time_aware,
)
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import obs_from_batch


@dataclass
class CQLConfig(SACConfig):
    """CQL(H) with importance-sampled log-sum-exp, n = 10 actions per sampler, temperature 1 (the paper's and
    CORL's); alpha_cql 5 (the paper's MuJoCo value and d3rlpy's conservative_weight at its initial alpha 1; CORL
    uses 10); learning rates actor 1e-4, critics 3e-4, temperature 1e-4, initial temperature 1 (paper, d3rlpy);
    batch 256. gamma, the reward mix and the networks are ours."""

    alpha_cql: float = 5.0
    n_action_samples: int = 10
    cql_temperature: float = 1.0
    lagrange: bool = False
    target_action_gap: float = 10.0  # the Lagrange threshold (d3rlpy's alpha_threshold)
    alpha_prime_lr: float = 3e-4
    backup_entropy: bool = False
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    alpha: float = 1.0
    batch_size: int = 256


def conservative_penalty(q_sampled: Tensor, log_density: Tensor, q_data: Tensor, temperature: float = 1.0) -> Tensor:
    """(N,) ``T * logsumexp((q_sampled - log_density) / T, dim=1) - q_data``: q_sampled (N, M) values of M sampled
    actions, log_density (N, M) or a scalar their sampling log-densities, q_data (N,) values of the logged actions."""
    return temperature * torch.logsumexp((q_sampled - log_density) / temperature, dim=1) - q_data


class CQL(SAC):
    """SAC's networks, temperature and ``act``; the conservative critic update below."""

    cfg: CQLConfig

    def __init__(self, spec: AgentSpec, cfg: CQLConfig, seed: int = 0) -> None:
        if cfg.alpha_cql < 0 or cfg.n_action_samples < 1 or cfg.cql_temperature <= 0:
            raise RetentionRLError("agent: alpha_cql must be >= 0, n_action_samples >= 1 and cql_temperature > 0, got "
                                   f"{cfg.alpha_cql}, {cfg.n_action_samples}, {cfg.cql_temperature}")
        super().__init__(spec, cfg, seed)
        self.log_alpha_prime = torch.zeros((), requires_grad=cfg.lagrange)  # alpha' = 1 (scalar)
        self.alpha_prime_opt = adam([self.log_alpha_prime], cfg.alpha_prime_lr) if cfg.lagrange else None

    @torch.no_grad()
    def policy_samples(self, obs) -> tuple[Tensor, Tensor]:
        """n actions per state from pi(.|s) (N, n, 7) and their log-densities (N, n), from ``self.gen``."""
        n = self.cfg.n_action_samples
        mu, log_std = self.actor(obs)  # (N, 7) each: one encoding per state
        pi, logp = squashed_sample(mu.repeat_interleave(n, 0), log_std.repeat_interleave(n, 0), self.gen)
        return pi.view(mu.shape[0], n, -1), logp.view(mu.shape[0], n)

    def sampled_actions(self, obs, nxt) -> tuple[Tensor, Tensor]:
        """(N, 3n, 7) uniform, pi(.|s) and pi(.|s') actions and their (N, 3n) sampling log-densities."""
        pi, logp = self.policy_samples(obs)
        pi2, logp2 = self.policy_samples(nxt)
        N, n, A = pi.shape
        uniform = torch.rand((N, n, A), generator=self.gen) * 2 - 1
        return torch.cat([uniform, pi, pi2], 1), torch.cat([torch.full((N, n), -A * math.log(2.0)), logp, logp2], 1)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        a, done = batch["action"], done_mask(batch, cfg.terminal)  # (N, 7), (N,)
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)  # (N,)
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            a2, logp2 = self.actor.sample(nxt, self.gen)  # (N, 7), (N,)
            v2 = torch.min(self.q1_t(nxt, a2), self.q2_t(nxt, a2)) - (alpha * logp2 if cfg.backup_entropy else 0.0)
            target = r + cfg.gamma * (1 - done) * v2  # (N,)
        sampled, log_density = self.sampled_actions(obs, nxt)
        mse, penalties, q_data = [], [], []
        for q in (self.q1, self.q2):
            z = q.enc(obs)  # (N, D): one encoding for the logged and the 3n sampled actions
            qd = q.value(z, a)
            mse.append((qd - target).square().mean())
            q_sampled = q.value(z[:, None], sampled)  # (N, 3n)
            penalties.append(conservative_penalty(q_sampled, log_density, qd, cfg.cql_temperature).mean())
            q_data.append(qd.detach())
        alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6) if cfg.lagrange else torch.ones(())
        shift = cfg.target_action_gap if cfg.lagrange else 0.0
        conservative = sum(alpha_prime.detach() * cfg.alpha_cql * (p - shift) for p in penalties)
        critic_loss = gradient_step(self.critic_opt, sum(mse) + conservative)
        info = {"critic_loss": critic_loss, "td_loss": float(sum(mse).detach()),
                "penalty": float(sum(penalties).detach()) / 2, "q": float(q_data[0].mean())}
        if cfg.lagrange:  # gradient ascent on alpha' * (penalty - gap)
            gap = sum(float(p.detach()) - shift for p in penalties) / 2
            info["alpha_prime_loss"] = gradient_step(self.alpha_prime_opt, -alpha_prime * cfg.alpha_cql * gap)
            info["alpha_prime"] = float(self.log_alpha_prime.detach().exp())

        info.update(self.policy_step(obs, alpha))  # SAC's actor, temperature and target steps
        return info

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "log_alpha_prime": self.log_alpha_prime.detach().clone()}
        if self.alpha_prime_opt is not None:
            state["alpha_prime_opt"] = self.alpha_prime_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha_prime.copy_(state["log_alpha_prime"])
        if self.alpha_prime_opt is not None:
            self.alpha_prime_opt.load_state_dict(state["alpha_prime_opt"])


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> CQL:
    """Registry entry: ``AGENTS["cql"] = cql.build``."""
    from retentionrl.config import from_dict

    c = from_dict(CQLConfig, cfg, "agent")
    return CQL(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
