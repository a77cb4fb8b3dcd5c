"""RLIV-UA (Li et al., 2025): the lifelong interaction value of user–author pairs — the multi-task LIV networks.

State of a pair ``s_ua = {f_u, f_a, f_ua^t}`` (``data/ua_pairs.py``: the pair's counts, ASA's successor), embedded
by one layer shared by every tower into ``H = concat(h_u, h_a, h_ua)``. One tower per task ``l`` (click, watch
time, follow, and gift where the data has it)::

    Q_l,k(H) = r̂_l(H) + γ · V̂_l,k(H)             k = 1, 2 (Eq. 8: the auxiliary reward head r̂ and two value heads)
    y_l      = r_l + γ · max_j min_k Q'_l,k(Ĥ'_j)   over the author's items j, target networks Q' (Eq. 5, 7)
    L_l      = huber(r̂_l(H), r_l) + Σ_k huber(Q_l,k(H), y_l)                                  (Eq. 9)
    L        = Σ_l L_l + BCE(gift assistance(h_u, h_a), gift)                                (Eq. 10)

The gift tower's assistance network (two layers on the user and author embeddings) predicts whether this
interaction carries a gift; KuaiRand has no gift label, so it is off there and tested on a synthetic label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import mlp

@dataclass
class LIVConfig:
    """Table 1's hyper-parameters: γ 0.9, τ 0.005, lr 1e-3, batch 1024, hidden [64, 64], embedding 32."""

    tasks: tuple[str, ...] = ("click", "watch_time", "follow")
    gamma: float = 0.9
    tau: float = 0.005
    lr: float = 1e-3
    batch_size: int = 1024
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    embed_dim: int = 32
    huber_delta: float = 1.0
    auxiliary: bool = True  # the auxiliary reward head r̂ (w/o SL: Q = V̂ alone, no supervised term)


class LIVTower(nn.Module):
    """``H (B, F) -> (r̂ (B,), V̂ (B, 2))`` for one task; ``q = r̂ + γ V̂`` (B, 2)."""

    def __init__(self, in_dim: int, hidden: list[int], auxiliary: bool) -> None:
        super().__init__()
        self.reward = mlp([in_dim, *hidden, 1]) if auxiliary else None
        self.values = nn.ModuleList(mlp([in_dim, *hidden, 1]) for _ in range(2))

    def forward(self, h: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
        """(r̂ (B,) — zeros without the auxiliary head —, Q (B, 2))."""
        v = torch.cat([net(h) for net in self.values], dim=-1)  # (B, 2)
        r_hat = self.reward(h)[..., 0] if self.reward is not None else v.new_zeros(v.shape[:-1])
        return r_hat, r_hat[..., None] + gamma * v


def liv_target(q_next: Tensor, reward: Tensor, gamma: float, valid: Tensor | None = None) -> Tensor:
    """Eq. 7 with the clipped double Q of Eq. 5: ``y = r + γ max_j min_k Q'_k(Ĥ'_j)``.

    q_next: (B, J, 2) the target towers' two Q values of the successor state with each of the author's J items;
    reward: (B,); valid: (B, J) False for padding (authors with fewer items). Returns (B,)."""
    best = q_next.min(dim=-1).values  # (B, J)
    if valid is not None:
        best = best.masked_fill(~valid, float("-inf"))
    return reward + gamma * best.max(dim=-1).values


def tower_loss(r_hat: Tensor, q: Tensor, reward: Tensor, target: Tensor, delta: float, auxiliary: bool) -> Tensor:
    """Eq. 9: ``huber(r̂, r) + Σ_k huber(Q_k, y)`` (batch means); r_hat, reward, target (B,), q (B, 2)."""
    loss = sum(nn.functional.huber_loss(q[:, k], target, delta=delta) for k in range(q.shape[1]))
    if auxiliary:
        loss = loss + nn.functional.huber_loss(r_hat, reward, delta=delta)
    return loss


class GiftAssistance(nn.Module):
    """Two fully connected layers on the user and author embeddings -> the logit that this interaction gifts."""

    def __init__(self, embed_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = mlp([2 * embed_dim, hidden, 1])

    def forward(self, h_user: Tensor, h_author: Tensor) -> Tensor:
        """(B, E), (B, E) -> (B,) logits."""
        return self.net(torch.cat([h_user, h_author], dim=-1))[..., 0]


def total_loss(tower_losses: dict[str, Tensor], gift_logit: Tensor | None = None, gift: Tensor | None = None) -> Tensor:
    """Eq. 10: the towers' losses summed, plus the gift assistance BCE when there is a gift label."""
    loss = sum(tower_losses.values())
    if gift_logit is not None and gift is not None:
        loss = loss + nn.functional.binary_cross_entropy_with_logits(gift_logit, gift.float())
    return loss
