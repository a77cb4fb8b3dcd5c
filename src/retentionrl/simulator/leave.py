"""Leave models: does the user end the session after this request?

* ``temper`` (KuaiSim's cross-session env): temper starts at ``initial_temper`` and drops by 1 per request; the
  user leaves when it falls below 1, so every session has exactly ``ceil(initial_temper)`` requests.
* ``satisfaction`` (KuaiSim's whole-session env, made explicit): a disappointing slate costs extra temper,
  ``temper -= 1 + drop * clamp((r_ref - r) / r_ref, 0, 1)``, where ``r`` is the request's immediate reward and
  ``r_ref`` the reward of an average logged exposure. Good slates keep users longer. With ``satisfaction_gain``
  g > 0 a better-than-average slate also costs less, ``- g * clamp((r - r_ref) / r_ref, 0, 1)`` (a session is then
  no longer capped at ``initial_temper`` requests; ``max_requests`` caps it), so session length can respond in
  both directions — the quitting mechanism of RLIV-UA's simulator (UNEX-RL's), where sessions run from 2 to 13.
* ``learned``: a per-*exposure* hazard ``h = P(session ends after this exposure | state after it, its position
  in the session in exposures, its 7 responses)``, an MLP fitted on the logs' session ends (one example per
  logged exposure). A request of K items is K exposures: the env evaluates ``h_k`` for each shown item (position
  = exposures so far in the session, that item's responses, the state after it) and ends the session after
  the request with ``P(end) = 1 - prod_k (1 - h_k)``, so the features mean the same at any slate size and a
  slate of K is K requests of 1 with the session end checked only at the slate's boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from retentionrl.nets.encoders import mlp
from retentionrl.utils.scores import roc_auc


def leave_features(state: Tensor, position: Tensor, resp: Tensor) -> Tensor:
    """Features of one exposure; leading dims ``...`` are (N,) log rows or (B, K) shown items.

    state (..., D) after the exposure, position (...) exposures so far in the session incl. this one (>= 1),
    resp (..., 7) the exposure's responses -> (..., D + 9).
    """
    s = position.float()[..., None]
    return torch.cat([state, resp.float(), torch.log(s), (s == 1).float()], dim=-1)


class TemperLeave:
    """Stateful over a batch of B users; ``drop = 0`` is the fixed-length KuaiSim variant."""

    def __init__(self, n: int, initial_temper: float, drop: float = 0.0, reference_reward: float = 1.0,
                 gain: float = 0.0, max_requests: int | None = None) -> None:
        self.initial, self.drop, self.ref = initial_temper, drop, max(reference_reward, 1e-6)
        self.gain, self.max_requests = gain, max_requests
        self.temper = torch.full((n,), float(initial_temper))
        self.requests = torch.zeros(n, dtype=torch.long)  # in this session (for max_requests)

    def reset(self, mask: Tensor) -> None:
        self.temper[mask] = self.initial
        self.requests[mask] = 0

    def sample(self, reward: Tensor, features: Tensor, generator: torch.Generator) -> Tensor:
        """reward (B,) -> leave (B,) bool. Deterministic."""
        rel = (reward - self.ref) / self.ref
        cost = 1.0 + self.drop * (-rel).clamp(0.0, 1.0) - self.gain * rel.clamp(0.0, 1.0)
        self.temper -= cost
        self.requests += 1
        end = self.temper < 1.0
        return end if self.max_requests is None else end | (self.requests >= self.max_requests)


class LearnedLeave(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = mlp([in_dim, hidden, 1])
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def forward(self, features: Tensor) -> Tensor:
        """(..., F) -> (...) per-exposure leave logits."""
        return self.net((features - self.mean) / self.std).squeeze(-1)

    def reset(self, mask: Tensor) -> None:  # stateless; same interface as TemperLeave
        return None

    def end_probability(self, features: Tensor) -> Tensor:
        """features (B, K, F) of a request's K exposures -> (B,) ``P(end) = 1 - prod_k (1 - h_k)``."""
        log_stay = nn.functional.logsigmoid(-self(features)).sum(-1)  # log prod_k (1 - h_k), stable
        return -torch.expm1(log_stay)

    @torch.no_grad()
    def sample(self, reward: Tensor, features: Tensor, generator: torch.Generator) -> Tensor:
        """features (B, K, F) from :func:`leave_features` -> leave (B,) bool ~ Bernoulli(P(end))."""
        p = self.end_probability(features)
        return torch.rand(p.shape, generator=generator) < p


@dataclass
class LeaveFit:
    model: LearnedLeave
    heldout_nll: float
    constant_nll: float
    heldout_auc: float


def fit_learned_leave(features: Tensor, label: Tensor, test: Tensor, seed: int = 0, epochs: int = 8,
                      lr: float = 3e-3, batch_size: int = 4096) -> LeaveFit:
    """label (N,) 1 = the session ended after this exposure. Held-out comparison with the constant rate."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train = ~test
    model = LearnedLeave(features.shape[1])
    model.mean.copy_(features[train].mean(0))
    model.std.copy_(features[train].std(0).clamp(min=1e-4))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    bce = nn.functional.binary_cross_entropy_with_logits
    idx = torch.nonzero(train).squeeze(1)
    for _ in range(epochs):
        perm = idx[torch.randperm(len(idx), generator=g)]
        for k in range(0, len(perm), batch_size):
            b = perm[k : k + batch_size]
            loss = bce(model(features[b]), label[b].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits = model(features[test])
        y = label[test].float()
        rate = label[train].float().mean().clamp(1e-6, 1 - 1e-6)
        const = torch.full_like(y, float(torch.log(rate / (1 - rate))))
        return LeaveFit(model, float(bce(logits, y)), float(bce(const, y)), roc_auc(logits, y))
