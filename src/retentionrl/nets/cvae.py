"""A conditional VAE over actions: the generative model of the logging policy that BCQ, IL-CVAE and ResAct share.

Encoder ``E(c | s, a) = N(mu(s, a), diag sigma(s, a)^2)``, decoder ``D(a | s, c)``, prior ``c ~ N(0, I)``; ``s`` is
a state vector (an agent's state-encoder output, (B, D)) or, when the CVAE owns a state encoder, an ``Obs``. For
a batch of N logged pairs (s, a) (N, A), with ``c = mu + sigma * eps`` (reparameterised, eps ~ N(0, I)):

    recon = mean((D(s, c) - a)^2)                                   (mean over the N x A elements)
    kl    = mean(0.5 * (mu^2 + sigma^2 - 1) - log sigma)            (KL(E || N(0, I)), mean over the N x L elements)
    loss  = recon + kl_weight * kl

Both terms are means over elements, as in BCQ's reference code (Fujimoto et al., 2019), so ``kl_weight = 0.5`` is
BCQ's. Sampling from the prior clips the latent to ``[-latent_clip, latent_clip]`` (BCQ's 0.5): the decoder is
only asked about latents near the mode, where it reproduces likely logged actions. ``decode(s, c=0)`` is the
deterministic reconstruction IL-CVAE acts with (for a conditional Gaussian it is ``E[a | s]``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import mlp
from retentionrl.spaces import Obs

#: BCQ's clamp of the encoder's log-std (a very small sigma would make the KL and the sample explode)
LATENT_LOG_STD = (-4.0, 15.0)


def standard_normal_kl(mu: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - 1) - log sigma, (..., L) -> (..., L)."""
    return 0.5 * (mu.square() + (2 * log_std).exp() - 1.0) - log_std


class CVAE(nn.Module):
    """``E(c | s, a)`` and ``D(a | s, c)`` as MLPs of widths ``hidden`` on ``[s, a]`` and ``[s, c]``.

    Args:
        state_dim: width D of the state vectors (ignored when ``encoder`` is given: its ``out_dim`` is used).
        action_dim: A (7 fusion weights).
        hidden: hidden widths of both MLPs.
        latent_dim: L (None: 2 A, BCQ's choice).
        bounded: decoder output ``tanh`` in [-1, 1]^A (BCQ) or linear (logged actions of any range).
        kl_weight: beta in ``recon + beta * kl``.
        latent_clip: prior samples are clamped to ±this (None: not clipped).
        encoder: an optional state encoder Obs -> (B, D) the CVAE owns (then inputs may be an ``Obs``).
    """

    def __init__(self, state_dim: int, action_dim: int = 7, hidden: list[int] | tuple[int, ...] = (750, 750),
                 latent_dim: int | None = None, bounded: bool = True, kl_weight: float = 0.5,
                 latent_clip: float | None = 0.5, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.enc = encoder
        d = int(encoder.out_dim) if encoder is not None else state_dim
        self.action_dim, self.latent_dim = action_dim, latent_dim or 2 * action_dim
        self.kl_weight, self.latent_clip = kl_weight, latent_clip
        self.posterior = mlp([d + action_dim, *hidden, 2 * self.latent_dim])
        self.decoder = mlp([d + self.latent_dim, *hidden, action_dim], out_act=nn.Tanh() if bounded else None)

    def state(self, x: Obs | Tensor) -> Tensor:
        """(..., D): ``x`` itself when it is already a state vector, else the own encoder's output for the Obs."""
        if isinstance(x, Tensor):
            return x
        if self.enc is None:
            raise TypeError("this CVAE has no state encoder: pass state vectors (B, D), not an Obs")
        return self.enc(x)

    def encode(self, s: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """State (..., D), action (..., A) -> mean and clamped log-std (..., L) of E(c | s, a)."""
        mu, log_std = self.posterior(torch.cat([s, a], -1)).chunk(2, dim=-1)
        return mu, log_std.clamp(*LATENT_LOG_STD)

    def sample_latent(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """(*shape, L) prior draws ``N(0, I)``, clamped to ±latent_clip."""
        c = torch.randn((*shape, self.latent_dim), generator=generator)
        return c if self.latent_clip is None else c.clamp(-self.latent_clip, self.latent_clip)

    def decode(self, x: Obs | Tensor, c: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """(..., A) = D(s, c) for a state or Obs ``x`` (leading dims ...); ``c`` (..., L), None: a clipped prior
        draw from ``generator``. ``decode(s, torch.zeros(...))`` is the deterministic reconstruction."""
        s = self.state(x)
        if c is None:
            c = self.sample_latent(tuple(s.shape[:-1]), generator)
        return self.decoder(torch.cat([s.expand(*c.shape[:-1], s.shape[-1]), c], -1))

    def forward(self, x: Obs | Tensor, a: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(recon (N, A), mu (N, L), log_std (N, L)): decode a reparameterised posterior sample of (s, a)."""
        s = self.state(x)
        mu, log_std = self.encode(s, a)
        c = mu + log_std.exp() * torch.randn(mu.shape, generator=generator)
        return self.decoder(torch.cat([s, c], -1)), mu, log_std

    def loss(self, x: Obs | Tensor, a: Tensor, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, recon, kl) scalars: ``recon + kl_weight * kl`` on logged pairs (x, a (N, A)); see the module
        docstring."""
        recon, mu, log_std = self(x, a, generator)
        rec = (recon - a).square().mean()
        kl = standard_normal_kl(mu, log_std).mean()
        return rec + self.kl_weight * kl, rec, kl
