"""The item-level Q-network shared by DQN and discrete CQL: ``Q(s, i) = <f(s), e(i)> + b(i)``.

``f(s) = MLP(StateEncoder(s))`` (B, D); ``e(i) = id_embedding(i) + FeatureEncoder(item_cat[i], item_num[i])``
(N, D), with the item feature tables copied from the simulator; scoring every candidate of a batch is one
(B, D) @ (D, C) matmul (per-row candidates (B, C): one batched inner product).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retentionrl.nets.actor_critic import AgentSpec, encoder
from retentionrl.nets.encoders import FeatureEncoder, mlp
from retentionrl.spaces import Obs


class TwoTowerQ(nn.Module):
    """Q(s, i) = <f(s), e(i)> + b(i). Item feature tables are non-persistent buffers (they come from the simulator)."""

    def __init__(self, spec: AgentSpec, item_cat: Tensor, item_num: Tensor, item_cards: list[int], state_dim: int,
                 token_dim: int, hidden: list[int], dim: int, item_ids: bool = True) -> None:
        super().__init__()
        self.register_buffer("item_cat", item_cat.clone(), persistent=False)
        self.register_buffer("item_num", item_num.clone(), persistent=False)
        self.enc = encoder(spec, state_dim, token_dim)
        self.head = mlp([state_dim, *hidden, dim])
        self.item_id = nn.Embedding(item_cat.shape[0], dim) if item_ids else None
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.05)
        self.item_feat = FeatureEncoder(item_cards, item_num.shape[1], dim)
        self.item_bias = nn.Embedding(item_cat.shape[0], 1)
        nn.init.zeros_(self.item_bias.weight)

    def state(self, obs: Obs) -> Tensor:
        """(B, D) f(s)."""
        return self.head(self.enc(obs))

    def items(self, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Embeddings (..., D) and biases (...) of ``ids`` (any shape; None: every item, (N, D) and (N,))."""
        if ids is None:
            cat, num = self.item_cat, self.item_num
        else:
            cat, num = self.item_cat[ids], self.item_num[ids]
        e = self.item_feat(cat, num)
        if self.item_id is not None:
            e = e + (self.item_id.weight if ids is None else self.item_id(ids))
        b = self.item_bias.weight[:, 0] if ids is None else self.item_bias(ids)[..., 0]
        return e, b

    def score(self, obs: Obs, candidates: Tensor | None = None) -> Tensor:
        """(B, C) Q(s, ·) of shared candidates (C,), per-row candidates (B, C), or every item (None)."""
        if candidates is not None and candidates.dim() == 2:
            return self.q_of(obs, candidates)
        e, b = self.items(candidates)
        return self.state(obs) @ e.T + b

    def q_of(self, obs: Obs, items: Tensor) -> Tensor:
        """(B, K) Q(s, items[b, k]) of per-row items (B, K)."""
        e, b = self.items(items)
        return torch.einsum("bd,bkd->bk", self.state(obs), e) + b
