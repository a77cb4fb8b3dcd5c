"""IQL (Kostrikov, Nair & Levine, 2022, "Offline Reinforcement Learning with Implicit Q-Learning"), from logs only.

The value never queries an action outside the logs: V(s) is an upper expectile of Q(s, a) over the logged actions,
Q regresses on ``r + gamma V(s')``, and the policy is extracted by advantage-weighted regression. For a batch of N
logged transitions (obs, action a (N, 7), reward r (N,), done d (N,)):

    u           = min_i Q'_i(s, a) - V(s)                                        (N,)  Q' the target twins
    value_loss  = mean(|tau - 1(u < 0)| * u^2)                                   expectile tau (0.7)
    y           = r + gamma * (1 - d) * V(s')                                    (N,)  no gradient
    critic_loss = sum_i mean((Q_i(s, a) - y)^2)
    w           = min(exp(beta * u), w_max)                                      (N,)  detached; beta 3, w_max 100
    actor_loss  = mean(w * sum_j (mu(s)_j - a_j)^2)
    theta'_i    <- tau_polyak * theta_i + (1 - tau_polyak) * theta'_i            (every update)

tau = 0.5 makes V the mean of Q under the logging policy (SARSA); tau -> 1 approaches max over the logged actions.
beta = 0 makes every weight 1: the actor is then behaviour cloning.

Our choices: a deterministic tanh actor with the weighted squared error (CORL's ``iql_deterministic``). The paper's
Gaussian actor has a state-independent std, so its weighted log-likelihood has the same minimiser for the mean,
and we act with the mean anyway. No cosine learning-rate decay of the actor (CORL's; it needs the run's length,
which the agent does not know). ``act`` ignores ``explore`` (an offline policy has no exploration of its own).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import TorchAgent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    ActorCriticConfig, AgentSpec, Critic, DeterministicActor, StateValue, critic_step, done_mask, gradient_step,
    mixed_reward, soft_update, time_aware,
)
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class IQLConfig(ActorCriticConfig):
    """The paper's locomotion values (CORL's defaults): expectile 0.7, inverse temperature 3, weights clipped at
    100, learning rates 3e-4, batch 256, Polyak 0.005. gamma, the reward mix and the networks are ours."""

    expectile: float = 0.7  # the paper's tau
    beta: float = 3.0  # AWR inverse temperature
    max_weight: float = 100.0  # exp(beta * u) is clipped here
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    batch_size: int = 256


def expectile_loss(u: Tensor, expectile: float) -> Tensor:
    """``mean(|tau - 1(u < 0)| * u^2)`` over residuals u = Q - V (N,): positive ones weigh tau, negative 1 - tau."""
    return ((expectile - (u < 0).float()).abs() * u.square()).mean()


def awr_weights(u: Tensor, beta: float, max_weight: float) -> Tensor:
    """(N,) ``min(exp(beta * u), max_weight)`` of advantages u (N,), without gradient."""
    return torch.exp(beta * u.detach()).clamp(max=max_weight)


class IQL(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("actor", "q1", "q2", "q1_t", "q2_t", "v", "actor_opt", "critic_opt", "value_opt")

    def __init__(self, spec: AgentSpec, cfg: IQLConfig, seed: int = 0) -> None:
        if not 0 < cfg.expectile < 1:
            raise RetentionRLError(f"agent.expectile must lie in (0, 1), got {cfg.expectile}")
        if cfg.beta < 0 or cfg.max_weight <= 0:
            raise RetentionRLError(f"agent.beta must be >= 0 and agent.max_weight > 0, got {cfg.beta}, "
                                   f"{cfg.max_weight}")
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.actor = DeterministicActor(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder)
        self.q1, self.q2 = (Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder) for _ in range(2))
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = StateValue(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam([*self.q1.parameters(), *self.q2.parameters()], cfg.critic_lr)
        self.value_opt = adam(self.v.parameters(), cfg.value_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)  # unused by the update; kept for the TorchAgent state
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) mu(s) in [-1, 1] (deterministic, whatever ``explore`` says)."""
        return self.actor(obs)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        a, done = batch["action"], done_mask(batch, cfg.terminal)  # (N, 7), (N,)
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)  # (N,)
        with torch.no_grad():
            q_t = torch.min(self.q1_t(obs, a), self.q2_t(obs, a))  # (N,)
            target = r + cfg.gamma * (1 - done) * self.v(nxt)  # (N,)
        u = q_t - self.v(obs)  # (N,)
        value_loss = gradient_step(self.value_opt, expectile_loss(u, cfg.expectile))
        critic_loss, q1 = critic_step([self.q1, self.q2], self.critic_opt, obs, a, target)
        w = awr_weights(u, cfg.beta, cfg.max_weight)
        actor_loss = gradient_step(self.actor_opt, (w * (self.actor(obs) - a).square().sum(1)).mean())
        for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
            soft_update(net, tgt, cfg.tau)
        self.n_updates += 1
        return {"value_loss": value_loss, "critic_loss": critic_loss, "actor_loss": actor_loss, "q": float(q1.mean()),
                "adv": float(u.detach().mean()), "weight": float(w.mean())}


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> IQL:
    """Registry entry: ``AGENTS["iql"] = iql.build``."""
    from retentionrl.config import from_dict

    c = from_dict(IQLConfig, cfg, "agent")
    return IQL(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
