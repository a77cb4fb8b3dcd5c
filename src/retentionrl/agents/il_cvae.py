"""IL-CVAE: behaviour cloning with a conditional VAE (ResAct's imitation baseline; BCQ's generator alone).

The CVAE of ``nets/cvae.py`` (own state encoder) is fitted to the logged (s, a) pairs,
``loss = mean((D(s, c_post) - a)^2) + kl_weight * KL(E(c | s, a) || N(0, I))``, and the policy is its deterministic
reconstruction ``act(s) = D(s, c = 0)``, the decoder at the prior's mode (``explore=True``: a clipped prior draw
instead). Against BC (``agents/bc.py``, one regression head) it differs only in the latent: the decoder can
represent a multi-modal logging policy, and c = 0 picks the action of its central mode.

Choices: a linear decoder by default (``bounded: false``, as BC's head: logged fusion weights may lie outside
[-1, 1]); KL weight 0.5 and latent dim 2 * 7 as BCQ's VAE; Adam 1e-3, batch 256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from retentionrl.agents.base import TorchAgent, agent_spec
from retentionrl.nets.actor_critic import AgentSpec, EncoderKind, encoder, gradient_step
from retentionrl.nets.cvae import CVAE
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class ILCVAEConfig:
    lr: float = 1e-3
    batch_size: int = 256
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    state_dim: int = 64
    token_dim: int = 32
    encoder: EncoderKind = "transformer"
    latent_dim: int | None = None  # None: 2 * 7
    kl_weight: float = 0.5
    latent_clip: float = 0.5
    bounded: bool = False  # tanh decoder output in [-1, 1] (BCQ's) instead of a linear one
    bound: float | None = None  # clamp actions to [-bound, bound] at act time (None: as decoded)


class ILCVAE(TorchAgent):
    action_mode = "fusion"
    learns = True
    _STATE = ("vae", "opt")

    def __init__(self, spec: AgentSpec, cfg: ILCVAEConfig, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.vae = CVAE(cfg.state_dim, spec.n_behaviours, cfg.hidden, cfg.latent_dim, bounded=cfg.bounded,
                        kl_weight=cfg.kl_weight, latent_clip=cfg.latent_clip,
                        encoder=encoder(spec, cfg.state_dim, cfg.token_dim, cfg.encoder))
        self.opt = adam(self.vae.parameters(), cfg.lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) D(s, 0) (``explore``: D(s, c), c a clipped prior draw)."""
        s = self.vae.state(obs)
        c = self.vae.sample_latent((s.shape[0],), self.gen) if explore else torch.zeros(s.shape[0], self.vae.latent_dim)
        a = self.vae.decode(s, c)
        return a.clamp(-self.cfg.bound, self.cfg.bound) if self.cfg.bound is not None else a

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        loss, recon, kl = self.vae.loss(obs_from_batch(batch), batch["action"], self.gen)
        self.n_updates += 1
        return {"vae_loss": gradient_step(self.opt, loss), "recon": float(recon.detach()), "kl": float(kl.detach())}


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> ILCVAE:
    """Registry entry: ``AGENTS["il_cvae"] = il_cvae.build``."""
    from retentionrl.config import from_dict

    return ILCVAE(agent_spec(sim, env), from_dict(ILCVAEConfig, cfg, "agent"), seed=seed)
