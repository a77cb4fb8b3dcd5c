"""Discrete CQL at item level (Kumar et al., 2020, CQL(H)): RLIV-UA's offline RL baseline, from logged slates.

The Q-network is DQN's two-tower ``Q(s, i) = <f(s), e(i)> + b(i)`` (``nets/item_q.py``); each shown item ``k`` of
a logged slate (``slate`` (M, K) of :func:`~retentionrl.training.offline.generate_logs`) gets DQN's target and
the conservative term pushes down the Q of items the logs did not show::

    y   = r + γ (1 - done) max_j Q'(s', j)                       (j over ``target_candidates`` items, as DQN)
    L   = huber(Q(s, slate_k), y) + α · [logsumexp_{i ∈ S ∪ slate} Q(s, i) − mean_k Q(s, slate_k)]

with ``r = retention_weight · retention_reward + immediate_weight · reward`` (slate-level, credited to every shown
item as in DQN) and ``S`` a uniform sample of ``cql_items`` catalogue items per update (None: every item); a
uniform sample shifts the logsumexp by the constant log(N / |S|) and leaves its softmax weights, i.e. the gradient,
those of the sampled support. ``alpha = 0`` is offline DQN. As a policy it is greedy and item-level.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from retentionrl.agents.base import TorchAgent, agent_spec
from retentionrl.config import from_dict
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import done_mask, mixed_reward, soft_update, time_aware
from retentionrl.nets.item_q import TwoTowerQ
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import Obs, obs_from_batch


@dataclass
class DiscreteCQLConfig:
    alpha: float = 1.0  # weight of the conservative term
    cql_items: int | None = 512  # catalogue items sampled per update for the logsumexp (None: every item)
    target_candidates: int | None = 512  # items of the target's max (None: every item)
    gamma: float = 0.9
    tau: float = 0.005
    lr: float = 1e-3
    batch_size: int = 128
    hidden: list[int] = field(default_factory=lambda: [64])
    state_dim: int = 64
    token_dim: int = 32
    dim: int = 32
    item_ids: bool = True
    huber_delta: float = 1.0
    grad_clip: float | None = 10.0
    retention_weight: float = 0.0
    immediate_weight: float = 1.0
    terminal: Literal["none", "session", "episode"] = "none"


class DiscreteCQL(TorchAgent):
    action_mode = "items"
    learns = True
    _STATE = ("q", "q_t", "opt")

    def __init__(self, sim, spec, cfg: DiscreteCQLConfig, seed: int = 0) -> None:
        if cfg.alpha < 0 or any(n is not None and n < 1 for n in (cfg.cql_items, cfg.target_candidates)):
            raise RetentionRLError("cql_discrete: alpha >= 0, cql_items and target_candidates positive or null")
        torch.manual_seed(seed)
        self.cfg, self.batch_size, self.n_items = cfg, cfg.batch_size, int(sim.n_items)
        r = sim.response
        self.q = TwoTowerQ(spec, r.item_cat, r.item_num, list(sim.meta["item_cardinalities"]), cfg.state_dim,
                           cfg.token_dim, cfg.hidden, cfg.dim, cfg.item_ids)
        self.q_t = copy.deepcopy(self.q).requires_grad_(False)
        self.opt = adam(self.q.parameters(), cfg.lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.n_updates = 0

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """(B, C) Q-values of the candidates ((C,) shared or (B, C) per row)."""
        return self.q.score(obs, obs.candidates)

    def check_logs(self, logs: dict[str, Tensor], source: str) -> None:
        if "slate" not in logs:
            raise RetentionRLError(f"cql_discrete learns from logged slates: {source} have no 'slate'")

    def _sample(self, n: int | None) -> Tensor | None:
        return None if n is None or n >= self.n_items else torch.randperm(self.n_items, generator=self.gen)[:n]

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        slate, obs = batch["slate"].long(), obs_from_batch(batch)
        r = mixed_reward(batch, cfg.retention_weight, cfg.immediate_weight)
        with torch.no_grad():
            v_next = self.q_t.score(obs_from_batch(batch, "next_"), self._sample(cfg.target_candidates)).max(1).values
            y = r + cfg.gamma * (1 - done_mask(batch, cfg.terminal)) * v_next
        f = self.q.state(obs)  # (M, D), shared by both terms
        e, b = self.q.items(slate)
        q = torch.einsum("md,mkd->mk", f, e) + b  # (M, K) the logged items
        td = nn.functional.huber_loss(q, y[:, None].expand_as(q), delta=cfg.huber_delta)
        loss, cql = td, torch.zeros(())
        if cfg.alpha > 0:
            e_s, b_s = self.q.items(self._sample(cfg.cql_items))
            q_s = f @ e_s.T + b_s  # (M, |S|)
            cql = (torch.logsumexp(torch.cat([q_s, q], 1), 1) - q.mean(1)).mean()
            loss = td + cfg.alpha * cql
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.q.parameters(), cfg.grad_clip)
        self.opt.step()
        soft_update(self.q, self.q_t, cfg.tau)
        self.n_updates += 1
        return {"loss": float(loss.detach()), "td": float(td.detach()), "cql": float(cql.detach()),
                "q": float(q.detach().mean())}


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> DiscreteCQL:
    """Registry entry: ``cfg`` holds :class:`DiscreteCQLConfig` fields (unknown keys are errors)."""
    c = from_dict(DiscreteCQLConfig, cfg, "agent")
    return DiscreteCQL(sim, agent_spec(sim, env, clock=time_aware(c.terminal)), c, seed=seed)
