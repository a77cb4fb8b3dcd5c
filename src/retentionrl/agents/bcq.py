"""Continuous BCQ (Fujimoto, Meger & Precup, 2019, "Off-Policy Deep Reinforcement Learning without Exploration"),
from logs only.

A conditional VAE ``G`` (``nets/cvae.py``) models the logged actions; a perturbation network ``xi`` may move a
generated action by at most ``phi`` per weight; the policy is the best of n perturbed generated actions by Q_1.
For a batch of N logged transitions (obs, action a (N, 7), reward r (N,), done d (N,)), with latents
``c ~ N(0, I)`` clipped to ±0.5:

    vae_loss    = mean((G(s, c_post) - a)^2) + 0.5 * KL(E(c | s, a) || N(0, I))              (nets/cvae.py)
    a'_j        = clamp(a~_j + phi * tanh(xi'(s', a~_j)), -1, 1),  a~_j = G(s', c_j), j = 1..n      (N, n, 7)
    q'_j        = lam * min_i Q'_i(s', a'_j) + (1 - lam) * max_i Q'_i(s', a'_j)              soft clipped double Q
    y           = r + gamma * (1 - d) * max_j q'_j                                         (N,)  no gradient
    critic_loss = sum_i mean((Q_i(s, a) - y)^2)
    actor_loss  = -mean(Q_1(s, clamp(a~ + phi * tanh(xi(s, a~)), -1, 1))),  a~ = G(s, c)     (G not trained by it)
    act(s)      = the candidate of largest Q_1 among n perturbed G(s, c_j)
    theta'      <- tau * theta + (1 - tau) * theta'                                        (xi', Q'_i, every update)

phi = 0.05 (of the action range [-1, 1], as the paper's 0.05 of max_action), n = 10, lam = 0.75, KL weight 0.5,
latent dim 14 = 2 * 7, learning rates 1e-3 and batch 100: the paper's. The generator's decoder is tanh-bounded.
``act(explore=False)`` scores n latents drawn once from the agent's seed and kept (``eval_latents``), so that the
frozen policy is deterministic; ``explore=True`` draws fresh ones from ``self.gen``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retentionrl.agents.base import TorchAgent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import (
    ActorCriticConfig, AgentSpec, Critic, EncoderKind, best_candidate, critic_step, done_mask, encoder, gradient_step,
    mixed_reward, soft_update, time_aware,
)
from retentionrl.nets.cvae import CVAE
from retentionrl.nets.encoders import mlp
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class BCQConfig(ActorCriticConfig):
    """The paper's values (see the module docstring); gamma, the reward mix and the networks are ours (the VAE
    uses ``hidden`` too: BCQ's 750-wide VAE would dominate the cost of an update)."""

    phi: float = 0.05
    n_candidates: int = 10
    lam: float = 0.75
    kl_weight: float = 0.5
    latent_dim: int | None = None  # None: 2 * 7
    latent_clip: float = 0.5
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    vae_lr: float = 1e-3
    batch_size: int = 100


class Perturbation(nn.Module):
    """``clamp(a + phi * tanh(MLP([s, a])), -1, 1)``: a state (own encoder) and a generated action (..., 7) ->
    (..., 7)."""

    def __init__(self, spec: AgentSpec, state_dim: int, token_dim: int, hidden: list[int], phi: float,
                 kind: EncoderKind = "transformer") -> None:
        super().__init__()
        self.enc = encoder(spec, state_dim, token_dim, kind)
        self.net = mlp([self.enc.out_dim + spec.n_behaviours, *hidden, spec.n_behaviours], out_act=nn.Tanh())
        self.phi = phi

    def perturb(self, z: Tensor, a: Tensor) -> Tensor:
        """z (..., D) = self.enc(obs) broadcast to a (..., 7) -> (..., 7)."""
        xi = self.net(torch.cat([z.expand(*a.shape[:-1], z.shape[-1]), a], -1))
        return (a + self.phi * xi).clamp(-1.0, 1.0)

    def forward(self, obs: Obs, a: Tensor) -> Tensor:
        return self.perturb(self.enc(obs), a)


def soft_clipped_double_q(q1: Tensor, q2: Tensor, lam: float) -> Tensor:
    """``lam * min(q1, q2) + (1 - lam) * max(q1, q2)``, elementwise."""
    return lam * torch.minimum(q1, q2) + (1 - lam) * torch.maximum(q1, q2)


def bcq_target(r: Tensor, done: Tensor, gamma: float, q1: Tensor, q2: Tensor, lam: float) -> Tensor:
    """(N,) ``r + gamma * (1 - d) * max_j soft_clipped_double_q(q1, q2)_j``: r, done (N,); q1, q2 (N, n) the target
    twins' values of the n perturbed candidates at s'."""
    return r + gamma * (1 - done) * soft_clipped_double_q(q1, q2, lam).max(dim=1).values


class BCQ(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("vae", "actor", "q1", "q2", "actor_t", "q1_t", "q2_t", "vae_opt", "actor_opt", "critic_opt")

    def __init__(self, spec: AgentSpec, cfg: BCQConfig, seed: int = 0) -> None:
        if cfg.n_candidates < 1 or not 0 <= cfg.lam <= 1 or cfg.phi < 0:
            raise RetentionRLError(f"agent: n_candidates must be >= 1, lam in [0, 1] and phi >= 0, got "
                                   f"{cfg.n_candidates}, {cfg.lam}, {cfg.phi}")
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.vae = CVAE(cfg.state_dim, spec.n_behaviours, cfg.hidden, cfg.latent_dim, bounded=True,
                        kl_weight=cfg.kl_weight, latent_clip=cfg.latent_clip,
                        encoder=encoder(spec, cfg.state_dim, cfg.token_dim, cfg.encoder))
        self.actor = Perturbation(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.phi, cfg.encoder)
        self.q1, self.q2 = (Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder) for _ in range(2))
        self.actor_t, self.q1_t, self.q2_t = (copy.deepcopy(m) for m in (self.actor, self.q1, self.q2))
        self.vae_opt = adam(self.vae.parameters(), cfg.vae_lr)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = adam([*self.q1.parameters(), *self.q2.parameters()], cfg.critic_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.eval_latents = self.vae.sample_latent((cfg.n_candidates,), self.gen)  # (n, L), fixed
        self.n_updates = 0

    def candidates(self, obs: Obs, latents: Tensor, actor: Perturbation | None = None) -> Tensor:
        """(B, n, 7) perturbed generated actions for latents (B, n, L) or (n, L) (``actor``: default the online xi)."""
        actor = actor or self.actor
        zv, za = self.vae.state(obs)[:, None], actor.enc(obs)[:, None]  # (B, 1, D): one encoding per state
        latents = latents.expand(zv.shape[0], *latents.shape[-2:])
        return actor.perturb(za, self.vae.decode(zv, latents))

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) the candidate of largest Q_1 (fixed latents unless ``explore``)."""
        n = self.cfg.n_candidates
        latents = self.vae.sample_latent((obs.user.shape[0], n), self.gen) if explore else self.eval_latents
        cand = self.candidates(obs, latents)
        return best_candidate(cand, self.q1.value(self.q1.enc(obs)[:, None], cand))

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        a, done = batch["action"], done_mask(batch, cfg.terminal)  # (N, 7), (N,)
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)  # (N,)
        N = a.shape[0]
        vae_loss, recon, kl = self.vae.loss(obs, a, self.gen)
        info = {"vae_loss": gradient_step(self.vae_opt, vae_loss), "recon": float(recon.detach()),
                "kl": float(kl.detach())}
        with torch.no_grad():
            cand = self.candidates(nxt, self.vae.sample_latent((N, cfg.n_candidates), self.gen), self.actor_t)
            q1, q2 = (q.value(q.enc(nxt)[:, None], cand) for q in (self.q1_t, self.q2_t))  # (N, n)
            target = bcq_target(r, done, cfg.gamma, q1, q2, cfg.lam)
        info["critic_loss"], q = critic_step([self.q1, self.q2], self.critic_opt, obs, a, target)
        with torch.no_grad():
            generated = self.vae.decode(obs, generator=self.gen)  # (N, 7)
        info["actor_loss"] = gradient_step(self.actor_opt, -self.q1.for_actor(obs, self.actor(obs, generated)).mean())
        for net, tgt in ((self.actor, self.actor_t), (self.q1, self.q1_t), (self.q2, self.q2_t)):
            soft_update(net, tgt, cfg.tau)
        self.n_updates += 1
        info["q"] = float(q.mean())
        return info

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "eval_latents": self.eval_latents.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.eval_latents = state["eval_latents"].clone()


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> BCQ:
    """Registry entry: ``AGENTS["bcq"] = bcq.build``."""
    from retentionrl.config import from_dict

    c = from_dict(BCQConfig, cfg, "agent")
    return BCQ(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
