"""RLUR (Cai et al., WWW'23, "Reinforcing User Retention in a Billion Scale Short Video Recommender System").

Request-level, infinite-horizon MDP; the objective is to *minimise* the cumulative returning time. The action
is the fusion-weight vector, drawn from a squashed Gaussian actor. Five parts; RND, normalisation, groups and
soft regularisation are switchable for ablations (the critics always train; their weights set the actor's mix):

1. **Retention critic** ``Q_T`` (twin): TD on the returning time ``d``, a cost earned at the session's last
   request. Discounted once per session (``gamma_T`` at a session end, 1 inside a session), because the cost is
   time *between* sessions.
2. **Immediate critic** ``Q_I``: TD on the heuristic immediate reward plus an RND intrinsic bonus (scaled by its
   running mean, so ~1 on a typical state; ``rnd: false`` drops it), discounted per request.
3. **Normalisation** (uncertainty): a classifier ``p(s) = P(d <= eta | s)`` is learned on session ends; by
   Markov's inequality ``E[d] >= (eta + 1) * P(d >= eta + 1) = (eta + 1)(1 - p(s))`` and ``d >= 1``, so the
   cost is divided by ``T(s) = max(1, (eta + 1)(1 - p(s)))`` — a lower bound of the user's expected return time.
4. **Groups** (bias): separate actor and critic heads per user-activity group (KuaiRand ``user_active_degree``),
   so the heavy users do not dominate one policy. ``group_feature: null`` is one group.
5. **Soft regularisation** (long delay): the actor is pulled toward its slowly moving Polyak copy by a KL
   penalty instead of a hard trust region; ``soft_regularization: 0`` removes it.

With a replay batch of N transitions, ``g`` the group of ``s``, ``a'`` a sample of the target actor at ``s'``
and ``a~`` a reparameterised sample of the actor at ``s``::

    c_T    = d / T(s) at a session end, else 0                       (N,)  [d without normalisation]
    y_T    = c_T + gamma_T^{end} * max_i Q'_Ti(s', a')               (N,)  max: pessimistic for a cost
    y_I    = r + beta * RND(s) / scale + gamma_I * Q'_I(s', a')       (N,)
    L_crit = sum_i mean(Q_Ti(s, a) - y_T)^2 + mean(Q_I(s, a) - y_I)^2 + BCE(p(s), 1[d <= eta]) over session ends
    L_act  = mean(w_T * Q_T1(s, a~) - w_I * Q_I(s, a~)) + kappa * mean KL(pi(.|s) || pi'(.|s))

Choices where the paper (and the reading notes we have) are silent, documented in ``docs/methods.md``: the
critics share one state encoder (heads are separate), groups share the encoders and own their heads, the
RND input is a frozen random state encoder's output, and the soft regularisation is the KL penalty above.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retentionrl.agents.base import Agent, TorchAgent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    AgentSpec,
    NetConfig,
    encoder,
    gaussian_head,
    gaussian_kl,
    gradient_step,
    soft_update,
    squashed_sample,
)
from retentionrl.nets.encoders import GroupedMLP
from retentionrl.nets.optim import adam
from retentionrl.nets.rnd import RND
from retentionrl.nets.state import UserGroups
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, cat_obs, obs_from_batch


@dataclass
class RLURConfig(NetConfig):
    retention_gamma: float = 0.9  # per session
    immediate_gamma: float = 0.9  # per request
    retention_weight: float = 1.0  # w_T
    immediate_weight: float = 0.1  # w_I
    rnd: bool = True
    rnd_weight: float = 0.1  # beta, on the RND bonus scaled to ~1 for a typical state
    rnd_lr: float = 1e-3
    normalize: bool = True
    eta: int = 1  # "returns within eta days" for the classifier
    group_feature: str | None = None  # KuaiRand preset: user_active_degree
    groups: list[list] = field(default_factory=list)  # raw values per group; the rest form the last group
    soft_regularization: float = 1.0  # kappa


def normalized_cost(day: Tensor, p_within: Tensor, eta: int) -> Tensor:
    """Returning time divided by its Markov lower bound: d / max(1, (eta + 1)(1 - p)). day, p_within: (N,)."""
    return day / torch.clamp((eta + 1) * (1 - p_within), min=1.0)


def retention_target(cost: Tensor, end: Tensor, q1_next: Tensor, q2_next: Tensor, gamma: float) -> Tensor:
    """y_T = end * cost + gamma^end * max(Q'_T1, Q'_T2), all (N,) (end 0/1): the cost is paid at the session's last
    request, the discount applies once per session (between sessions), and the max is pessimistic for a cost."""
    return end * cost + torch.where(end > 0, gamma, 1.0) * torch.max(q1_next, q2_next)


def immediate_target(reward: Tensor, bonus: Tensor, q_next: Tensor, rnd_weight: float, gamma: float) -> Tensor:
    """y_I = r + beta * RND bonus + gamma_I * Q'_I(s', a'), all (N,); discounted per request."""
    return reward + rnd_weight * bonus + gamma * q_next


class GroupedGaussianActor(nn.Module):
    """Obs, group (B,) -> mean and log-std (B, 7) of the pre-squash Gaussian, one head per group."""

    def __init__(self, spec: AgentSpec, cfg: RLURConfig, groups: int) -> None:
        super().__init__()
        self.enc = encoder(spec, cfg.state_dim, cfg.token_dim)
        self.head = GroupedMLP([cfg.state_dim, *cfg.hidden, 2 * spec.n_behaviours], groups)

    def forward(self, obs: Obs, group: Tensor) -> tuple[Tensor, Tensor]:
        return gaussian_head(self.head(self.enc(obs), group))


class RLURCritic(nn.Module):
    """One state encoder; per-group heads Q_T1, Q_T2, Q_I (on [z, a]) and the return classifier (on z)."""

    def __init__(self, spec: AgentSpec, cfg: RLURConfig, groups: int) -> None:
        super().__init__()
        S, A = cfg.state_dim, spec.n_behaviours
        self.enc = encoder(spec, S, cfg.token_dim)
        self.q_t1, self.q_t2, self.q_i = (GroupedMLP([S + A, *cfg.hidden, 1], groups) for _ in range(3))
        self.p_within = GroupedMLP([S, cfg.hidden[-1], 1], groups)

    def q(self, z: Tensor, a: Tensor, group: Tensor, heads: tuple[str, ...] = ("q_t1", "q_t2", "q_i")
          ) -> tuple[Tensor, ...]:
        """z (N, S), a (N, 7) -> the named heads' values, each (N,) (default Q_T1, Q_T2, Q_I)."""
        x = torch.cat([z, a], 1)
        return tuple(getattr(self, h)(x, group).squeeze(1) for h in heads)


class RLUR(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("actor", "actor_t", "critic", "critic_t", "rnd", "actor_opt", "critic_opt", "rnd_opt")

    def __init__(self, spec: AgentSpec, cfg: RLURConfig, seed: int = 0) -> None:
        if cfg.eta < 1:
            raise RetentionRLError(f"agent.eta must be at least 1 day, got {cfg.eta}")
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.groups = UserGroups(spec.user_features, cfg.group_feature, cfg.groups)
        G = self.groups.n
        self.actor, self.critic = GroupedGaussianActor(spec, cfg, G), RLURCritic(spec, cfg, G)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.novelty = encoder(spec, cfg.state_dim, cfg.token_dim).requires_grad_(False)  # RND input, frozen
        self.rnd = RND(cfg.state_dim)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr)
        self.rnd_opt = adam(self.rnd.predictor.parameters(), cfg.rnd_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "novelty": self.novelty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.novelty.load_state_dict(state["novelty"])

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) fusion weights: a sample of the user's group policy when exploring, else ``tanh(mu)``."""
        mu, log_std = self.actor(obs, self.groups(obs))
        return squashed_sample(mu, log_std, self.gen)[0] if explore else torch.tanh(mu)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        g, g2 = self.groups(obs), self.groups(nxt)
        end = batch["session_end"].float()  # (N,)
        day = batch["return_day"].float()  # (N,) 0 inside a session

        z = self.critic.enc(obs)  # (N, S)
        p_logit = self.critic.p_within(z, g).squeeze(1)  # (N,)
        cost = normalized_cost(day, torch.sigmoid(p_logit.detach()), cfg.eta) if cfg.normalize else day
        novel = self.novelty(obs) if cfg.rnd else None  # (N, S) frozen: one pass for the bonus and the RND loss
        bonus = self.rnd.scaled_bonus(novel) if cfg.rnd else torch.zeros_like(day)
        n, kl_ref = len(end), cfg.soft_regularization > 0
        with torch.no_grad():  # the target actor at s' (for a') and, for the KL penalty, at s: one pass
            mu_t, log_std_t = self.actor_t(cat_obs(nxt, obs), torch.cat([g2, g])) if kl_ref else self.actor_t(nxt, g2)
            a2, _ = squashed_sample(mu_t[:n], log_std_t[:n], self.gen)
            qt1, qt2, qi = self.critic_t.q(self.critic_t.enc(nxt), a2, g2)
            y_t = retention_target(cost, end, qt1, qt2, cfg.retention_gamma)
            y_i = immediate_target(batch["reward"], bonus, qi, cfg.rnd_weight, cfg.immediate_gamma)
        q_t1, q_t2, q_i = self.critic.q(z, batch["action"], g)
        within = (day <= cfg.eta).float()
        cls = (F.binary_cross_entropy_with_logits(p_logit, within, reduction="none") * end).sum() / end.sum().clamp(min=1)
        critic_loss = ((q_t1 - y_t) ** 2).mean() + ((q_t2 - y_t) ** 2).mean() + ((q_i - y_i) ** 2).mean() + cls
        info = {"critic_loss": gradient_step(self.critic_opt, critic_loss), "classifier_loss": float(cls.detach()),
                "q_retention": float(q_t1.detach().mean()), "q_immediate": float(q_i.detach().mean()), "rnd_bonus": float(bonus.mean())}
        if cfg.rnd:
            info["rnd_loss"] = gradient_step(self.rnd_opt, self.rnd.loss(novel))

        mu, log_std = self.actor(obs, g)
        pi, _ = squashed_sample(mu, log_std, self.gen)
        qa_t, qa_i = self.critic.q(z.detach(), pi, g, heads=("q_t1", "q_i"))  # the loss does not use Q_T2
        actor_loss = (cfg.retention_weight * qa_t - cfg.immediate_weight * qa_i).mean()
        if kl_ref:  # the target actor has not moved since the pass above (Polyak steps come last)
            kl = gaussian_kl(mu, log_std, mu_t[n:], log_std_t[n:]).mean()
            actor_loss = actor_loss + cfg.soft_regularization * kl
            info["kl"] = float(kl.detach())
        info["actor_loss"] = gradient_step(self.actor_opt, actor_loss)
        for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
            soft_update(net, tgt, cfg.tau)
        self.n_updates += 1
        return info


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> Agent:
    """Registry entry: ``AGENTS["rlur"] = rlur.build``."""
    from retentionrl.config import from_dict

    return RLUR(agent_spec(sim, env), from_dict(RLURConfig, cfg, "agent"), seed=seed)
