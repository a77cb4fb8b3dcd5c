"""ResAct (Xue et al., "ResAct: Reinforcing Long-term Engagement in Sequential Recommendation with Residual
Actor"; ``papers/resact-slides.md``), offline, over the fusion action.

Learn a policy "broadly consistent with, but better than" the logging (online-serving) policy:

* **Reconstruction.** A CVAE, encoder ``E(c | s, a_on)`` and decoder ``D(a | s, c)``, reconstructs the logged
  actions: ``L_rec = ‖D(s, c) − a_on‖² + β·KL(E(c | s, a_on) ‖ N(0, I))``, c drawn from E.
* **Residual.** ``f(Δ | s, a)`` on the bi-level state (:class:`~retentionrl.nets.state.SplitStateEncoder`:
  ``z_h = f_h(s_h)``, session level; ``z_l = f_l(s_l)``, request level), ``Δ = φ·tanh(f_a([z_h, z_l, a]))``;
  the policy is ``π̂(s, c) = D(s, c) + f(Δ | s, D(s, c))``.
* **Critics.** Twin ``Q_j(s, a)`` with TD3's target ``y = r + γ·min_j Q'_j(s', π̂'(s') + ε)``, ε the clipped
  target-smoothing noise, π̂' the target networks' policy with the same candidate selection as at inference.
* **Actor.** Every ``policy_delay`` updates, ``−Q_1(s, π̂(s, c))`` with ``c ~ N(0, I)`` flows into f (all of
  f_h, f_l, f_a) and into D; D keeps its reconstruction loss (``θ_d ← θ_d + ∇J − ∇L_rec``), E has only L_rec.
* **State features.** Expressiveness: predict the reward from z_h (a Gaussian ``o(r | z_h)``, so the slides'
  cross-entropy ``H(p(r | s) ‖ o(r | z_h))`` is a squared error up to constants); conciseness:
  ``KL(p(z_h | s_h) ‖ N(0, I))``. Both switchable.
* **Selection.** ``n_candidates`` latents plus ``c = 0``: candidates ``D(s, c^i) + f(Δ | s, D(s, c^i))``, the one
  with the largest Q_1 is played. The latents are drawn once (seeded) and fixed, so the frozen policy is
  deterministic, as the evaluation protocol requires.

Choices the slides leave open (documented in ``docs/methods.md``): φ (``residual_scale``; the slides do not bound
Δ), the latent width (2 × the action's, BCQ's convention), β, the loss weights, the selection in the target.
``residual: false`` is the ablation "w/o residual": Δ ≡ 0, the critic still selects among the CVAE's candidates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retentionrl.agents.base import TorchAgent, agent_spec
from retentionrl.nets.actor_critic import (
    ActorCriticConfig, AgentSpec, Critic, best_candidate, critic_step, done_mask, encoder, mixed_reward, soft_update,
    time_aware,
)
from retentionrl.nets.cvae import CVAE, standard_normal_kl
from retentionrl.nets.encoders import mlp
from retentionrl.nets.optim import adam
from retentionrl.nets.state import SplitStateEncoder
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class ResActConfig(ActorCriticConfig):
    batch_size: int = 256
    vae_lr: float = 1e-3
    latent_dim: int = 14  # 2 x the action's width (BCQ's convention)
    vae_beta: float = 0.5  # KL weight of L_rec (BCQ's)
    residual: bool = True  # False: Δ = 0 (the CVAE's candidates, selected by Q_1)
    residual_scale: float = 0.5  # φ: |Δ_j| <= φ
    z_dim: int = 32  # width of z_h and of z_l
    n_candidates: int = 10  # latents sampled at inference (plus c = 0)
    expressiveness: bool = True
    expressiveness_weight: float = 1.0
    conciseness: bool = True
    conciseness_weight: float = 1e-2
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2


class Residual(nn.Module):
    """f(Δ | s, a): SplitStateEncoder -> (mu_h, log_std_h, z_l); Δ = φ·tanh(f_a([z_h, z_l, a])); o(r | z_h)."""

    def __init__(self, spec: AgentSpec, cfg: ResActConfig) -> None:
        super().__init__()
        self.split = SplitStateEncoder(spec.user_cards, spec.n_user_num, spec.n_items, cfg.token_dim, spec.window,
                                       cfg.z_dim, context=spec.context())
        self.f_a = mlp([2 * cfg.z_dim + spec.n_behaviours, *cfg.hidden, spec.n_behaviours])
        self.reward_head = nn.Linear(cfg.z_dim, 1)  # o(r | z_h): the mean of a unit-variance Gaussian
        self.scale = cfg.residual_scale

    def delta(self, z: Tensor, a: Tensor) -> Tensor:
        """z (..., 2 z_dim), a (..., 7) -> Δ (..., 7) in [-φ, φ]."""
        return self.scale * torch.tanh(self.f_a(torch.cat([z, a], -1)))


class ResAct(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("vae", "res", "q1", "q2", "vae_t", "res_t", "q1_t", "q2_t", "vae_opt", "res_opt", "critic_opt")

    def __init__(self, spec: AgentSpec, cfg: ResActConfig, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.batch_size, self.spec = cfg, cfg.batch_size, spec
        A = spec.n_behaviours
        # The CVAE owns its state encoder; decoder output linear (logged weights of any range), prior not clipped.
        self.vae = CVAE(0, A, cfg.hidden, cfg.latent_dim, bounded=False, kl_weight=cfg.vae_beta, latent_clip=None,
                        encoder=encoder(spec, cfg.state_dim, cfg.token_dim, cfg.encoder))
        self.res = Residual(spec, cfg)
        self.q1, self.q2 = (Critic(spec, cfg.state_dim, cfg.token_dim, cfg.hidden, cfg.encoder) for _ in range(2))
        self.vae_t, self.res_t, self.q1_t, self.q2_t = (copy.deepcopy(m) for m in (self.vae, self.res, self.q1, self.q2))
        self.vae_opt = adam(self.vae.parameters(), cfg.vae_lr)
        self.res_opt = adam(self.res.parameters(), cfg.actor_lr)
        self.critic_opt = adam([*self.q1.parameters(), *self.q2.parameters()], cfg.critic_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        # Fixed inference latents: c = 0 and n draws of N(0, I), so the frozen policy is deterministic.
        self.latents = torch.cat([torch.zeros(1, cfg.latent_dim),
                                  torch.randn(cfg.n_candidates, cfg.latent_dim, generator=self.gen)])
        self.n_updates = 0

    # --- the policy ------------------------------------------------------------------------------------------
    def policy(self, obs: Obs, c: Tensor, target: bool = False) -> Tensor:
        """π̂(s, c) for every state and each of its latents: c (B, n, L) -> actions (B, n, 7)."""
        vae, res = (self.vae_t, self.res_t) if target else (self.vae, self.res)
        a_on = vae.decode(vae.state(obs)[:, None], c)  # (B, n, 7)
        if not self.cfg.residual:
            return a_on
        mu_h, _, z_l = res.split(obs)
        z = torch.cat([mu_h, z_l], 1)[:, None].expand(-1, c.shape[1], -1)  # the mean z_h at acting time
        return a_on + res.delta(z, a_on)

    def select(self, obs: Obs, target: bool = False, z_q: Tensor | None = None) -> Tensor:
        """(B, 7): the candidate with the largest Q_1 (the target networks' Q_1 and policy when ``target``);
        ``z_q`` (B, d) that Q_1's encoding of ``obs`` when the caller has it."""
        q1 = self.q1_t if target else self.q1
        cand = self.policy(obs, self.latents.expand(obs.user.shape[0], -1, -1), target)  # (B, n + 1, 7)
        z_q = q1.enc(obs) if z_q is None else z_q
        return best_candidate(cand, q1.value(z_q[:, None], cand))  # each state encoded once

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) the selected candidate (offline: ``explore`` is ignored)."""
        return self.select(obs)

    # --- the update ------------------------------------------------------------------------------------------
    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, nxt, a_on = obs_from_batch(batch), obs_from_batch(batch, "next_"), batch["action"]
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)
        done = done_mask(batch, cfg.terminal)
        with torch.no_grad():
            z1 = self.q1_t.enc(nxt)  # shared by the selection and the target value
            a2 = self.select(nxt, target=True, z_q=z1)
            noise = (torch.randn(a2.shape, generator=self.gen) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = a2 + noise
            target = r + cfg.gamma * (1 - done) * torch.min(self.q1_t.value(z1, a2), self.q2_t(nxt, a2))
        critic_loss, q1 = critic_step([self.q1, self.q2], self.critic_opt, obs, a_on, target)
        self.n_updates += 1

        # L_rec (every update) and, every policy_delay updates, the actor term through f and D.
        s = self.vae.state(obs)
        loss, rec_mse, kl = self.vae.loss(s, a_on, self.gen)
        info = {"critic_loss": critic_loss, "q": float(q1.mean()), "rec_mse": float(rec_mse.detach()), "vae_kl": float(kl.detach())}
        actor_step = self.n_updates % cfg.policy_delay == 0
        if actor_step:
            c = torch.randn(len(a_on), cfg.latent_dim, generator=self.gen)  # c ~ N(0, I), as at inference
            a_dec = self.vae.decode(s, c)
            if cfg.residual:
                mu_h, log_std_h, z_l = self.res.split(obs)
                z_h = mu_h + log_std_h.exp() * torch.randn(mu_h.shape, generator=self.gen)  # reparameterised
                a = a_dec + self.res.delta(torch.cat([z_h, z_l], 1), a_dec)
                if cfg.expressiveness:
                    exp_loss = ((self.res.reward_head(z_h).squeeze(1) - r) ** 2).mean()
                    loss = loss + cfg.expressiveness_weight * exp_loss
                    info["expressiveness"] = float(exp_loss.detach())
                if cfg.conciseness:
                    con = standard_normal_kl(mu_h, log_std_h).sum(1).mean()
                    loss = loss + cfg.conciseness_weight * con
                    info["conciseness"] = float(con.detach())
            else:
                a = a_dec
            actor_loss = -self.q1.for_actor(obs, a).mean()
            loss = loss + actor_loss
            info["actor_loss"] = float(actor_loss.detach())
        self.vae_opt.zero_grad(set_to_none=True)
        self.res_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        if actor_step and cfg.residual:
            self.res_opt.step()
        if actor_step:
            for net, tgt in ((self.vae, self.vae_t), (self.res, self.res_t), (self.q1, self.q1_t), (self.q2, self.q2_t)):
                soft_update(net, tgt, cfg.tau)
        return info

    def fit_batch(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return self.update(batch)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latents": self.latents.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.latents = state["latents"].clone()


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> ResAct:
    from retentionrl.config import from_dict

    c = from_dict(ResActConfig, cfg, "agent")
    return ResAct(agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
