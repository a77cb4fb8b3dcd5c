"""Behaviour cloning (BC / IL) of logged fusion actions: ``a = MLP(StateEncoder(obs))``, trained with MSE on the
logged ``action`` (N, 7) of a fusion-mode behaviour policy; a deterministic fusion-mode policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from retentionrl.agents.base import Agent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import AgentSpec, encoder
from retentionrl.nets.encoders import mlp
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class BCConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    state_dim: int = 64
    token_dim: int = 32
    bound: float | None = None  # clamp actions to [-bound, bound] at act time (None: unbounded regression)


class BCNet(nn.Module):
    """Obs -> (B, 7) action; a linear output so any logged action range can be matched."""

    def __init__(self, spec: AgentSpec, cfg: BCConfig) -> None:
        super().__init__()
        self.enc = encoder(spec, cfg.state_dim, cfg.token_dim)
        self.head = mlp([cfg.state_dim, *cfg.hidden, spec.n_behaviours])

    def forward(self, obs: Obs) -> Tensor:
        return self.head(self.enc(obs))


class BC(Agent):
    """Behaviour cloning; ``update`` = :meth:`fit_batch` (supervised, offline)."""

    action_mode = "fusion"
    learns = True

    def __init__(self, spec: AgentSpec, cfg: BCConfig, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.batch_size, self.spec = cfg, cfg.batch_size, spec
        self.net = BCNet(spec, cfg)
        self.opt = adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, 7) cloned fusion weights (deterministic; ``explore`` is ignored: BC has no exploration of its own)."""
        self.net.eval()
        a = self.net(obs)
        return a.clamp(-self.cfg.bound, self.cfg.bound) if self.cfg.bound is not None else a

    def fit_batch(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One MSE step: obs fields of the batch -> logged ``action`` (M, 7) float."""
        target = batch["action"]
        if not target.is_floating_point() or target.shape[1:] != (self.spec.n_behaviours,):
            raise RetentionRLError(
                f"bc clones fusion actions (M, {self.spec.n_behaviours}) float; the logs hold {tuple(target.shape)} "
                f"{target.dtype} (an items-mode behaviour logs slates, which BC cannot regress)")
        self.net.train()
        loss = ((self.net(obs_from_batch(batch)) - target) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.n_updates += 1
        return {"mse": float(loss.detach())}

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return self.fit_batch(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "n_updates": self.n_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.n_updates = int(state["n_updates"])


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> BC:
    """Registry entry: ``cfg`` holds :class:`BCConfig` fields (unknown keys are errors)."""
    from retentionrl.config import from_dict

    return BC(agent_spec(sim, env), from_dict(BCConfig, cfg, "agent"), seed=seed)
