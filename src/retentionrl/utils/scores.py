"""Score primitives used by the simulator's fit reports and by evaluation (below both, so neither imports the
other); :mod:`retentionrl.evaluation.metrics` re-exports them."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties). scores, labels: (N,)."""
    s = scores.detach().double().flatten()
    y = labels.detach().flatten().bool()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = torch.argsort(s)
    _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def total_variation(p: np.ndarray | list[float], q: np.ndarray | list[float]) -> float:
    """TV distance between two distributions on the same support (each renormalised to sum 1)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"supports differ: {p.shape} vs {q.shape}")
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())
