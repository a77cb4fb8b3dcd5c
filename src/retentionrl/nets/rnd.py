"""Random Network Distillation (Burda et al., 2019): an exploration bonus that is large on novel inputs.

A frozen, randomly initialised target network ``f`` and a trained predictor ``g`` see the same input ``x``;
the bonus is the predictor's error ``b(x) = mean_j (g(x)_j - f(x)_j)^2``. The predictor is regressed on every
input it is shown, so the error — and the bonus — shrinks on inputs seen often and stays high on new ones.

The raw error's scale is arbitrary (it depends on the random target) and collapses as the predictor learns, so
a weight on it means nothing. :meth:`RND.scaled_bonus` divides it by a running scale: an exponential moving
average (rate ``ema``) of the mean error of the batches the predictor is trained on (our choice; Burda et al.
divide by a running std of the intrinsic returns, which needs the returns this off-policy critic never forms). A
typical state then gets a bonus near 1 whatever the networks, and a novel one a multiple of it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import mlp


class RND(nn.Module):
    """``bonus(x (B, in)) -> (B,)`` raw error; ``scaled_bonus`` divides it by the running scale; ``loss(x)`` is the
    predictor's regression loss (the batch mean error), and updates the running scale."""

    def __init__(self, in_dim: int, hidden: int = 64, out_dim: int = 32, ema: float = 0.05) -> None:
        super().__init__()
        self.target = mlp([in_dim, hidden, out_dim])
        self.predictor = mlp([in_dim, hidden, hidden, out_dim])
        self.target.requires_grad_(False)
        self.ema = ema
        self.register_buffer("scale", torch.zeros(()))  # 0 = not initialised yet

    def bonus(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._error(x)

    def scaled_bonus(self, x: Tensor) -> Tensor:
        b = self.bonus(x)
        return b / (self.scale if self.scale > 0 else b.mean()).clamp(min=1e-12)

    def loss(self, x: Tensor) -> Tensor:
        err = self._error(x).mean()
        with torch.no_grad():
            e = err.detach()
            self.scale.copy_(e if self.scale == 0 else (1 - self.ema) * self.scale + self.ema * e)
        return err

    def _error(self, x: Tensor) -> Tensor:
        return (self.predictor(x) - self.target(x)).pow(2).mean(1)
