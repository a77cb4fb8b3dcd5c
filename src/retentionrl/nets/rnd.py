"""Random Network Distillation (Burda et al., 2019): an exploration bonus that is large on novel inputs.

A frozen, randomly initialised target network ``f`` and a trained predictor ``g`` see the same input ``x``;
the bonus is the predictor's error ``b(x) = mean_j (g(x)_j - f(x)_j)^2``. The predictor is regressed on every
input it is shown, so the error — and the bonus — shrinks on inputs seen often and stays high on new ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import mlp


class RND(nn.Module):
    """``bonus(x (B, in)) -> (B,)``; ``loss(x)`` is the predictor's regression loss (mean of the bonus)."""

    def __init__(self, in_dim: int, hidden: int = 64, out_dim: int = 32) -> None:
        super().__init__()
        self.target = mlp([in_dim, hidden, out_dim])
        self.predictor = mlp([in_dim, hidden, hidden, out_dim])
        self.target.requires_grad_(False)

    def bonus(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._error(x)

    def loss(self, x: Tensor) -> Tensor:
        return self._error(x).mean()

    def _error(self, x: Tensor) -> Tensor:
        return (self.predictor(x) - self.target(x)).pow(2).mean(1)
