"""Return models: after a session ends, on which day (1..D) does the user come back?

* :class:`GeometricReturn` (KuaiSim-compatible): ``P = clip(bias + personal(u) + kappa * r_session, eps, 1-eps)``
  and ``d ~ TruncGeom(P)`` on ``1..D``: ``Pr(d) ∝ P (1-P)^(d-1)``. KuaiSim's personal term is an *untrained*
  random linear layer of the state; ours is fitted per user from the logs (:func:`fit_personal_term`) or
  switched off (``personal="none"``). ``r_session`` is the mean immediate reward over the session's requests
  (KuaiSim uses the last request only; the session mean is less noisy and is what "session feedback" means).
* :class:`LearnedReturn`: an MLP classifier over ``1..D`` on end-of-session features
  (:func:`session_features`, measured in exposures, so they mean the same at any slate size), trained on real
  sessions with right-censoring: a censored session that was
  watched for ``c`` days without a return contributes ``log Pr(d > c)``. Gaps ``>= D`` fall in class ``D``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from retentionrl.data.sessions import Sessions
from retentionrl.nets.encoders import mlp

EPS = 1e-3


def truncated_geometric_probs(p: Tensor, max_day: int) -> Tensor:
    """p (B,) -> (B, D) with ``Pr(d) = p (1-p)^(d-1) / (1 - (1-p)^D)`` for d = 1..D."""
    d = torch.arange(max_day, dtype=p.dtype, device=p.device)
    logw = torch.log(p)[:, None] + d[None] * torch.log1p(-p)[:, None]
    return torch.softmax(logw, dim=-1)


def truncated_geometric_mean(p: Tensor, max_day: int) -> Tensor:
    """Closed form of E[d]: ``1/p - D (1-p)^D / (1 - (1-p)^D)``."""
    q = (1 - p) ** max_day
    return 1 / p - max_day * q / (1 - q)


def fit_personal_term(sessions: Sessions, n_users: int, prior_strength: float = 2.0) -> Tensor:
    """(n_users,) per-user deviation of the geometric return probability from the population's.

    Each user's MLE under censoring is ``p_u = n_u / (n_u + sum(g - 1) + c_u)`` (n_u observed gaps g, and
    c_u days watched after the last session); we shrink it with a Beta prior of ``prior_strength`` pseudo-returns
    at the population rate, then centre it so that ``bias`` keeps its meaning as the population level.
    """
    t = sessions.table
    users = t["user_id"].to_numpy()
    obs = ~t["censored"].to_numpy()
    gap = np.nan_to_num(t["return_gap"].to_numpy())
    n = np.bincount(users, weights=obs.astype(float), minlength=n_users)
    fails = np.bincount(users, weights=np.where(obs, gap - 1, t["observed_days"].to_numpy()), minlength=n_users)
    p_pop = n.sum() / max(n.sum() + fails.sum(), 1e-9)
    alpha, beta = prior_strength * p_pop, prior_strength * (1 - p_pop)
    p_user = (n + alpha) / (n + fails + alpha + beta)
    return torch.tensor(p_user - p_user.mean(), dtype=torch.float32)


class GeometricReturn:
    """``P = clip(bias + personal + kappa * r)``; ``personal`` is per user (``personal[u]``, (N_users,)), or with
    ``state_weights`` (D_state,) a linear function of the end-of-session state, ``state @ w`` (KuaiSim-like)."""

    def __init__(self, max_day: int, bias: float, feedback_influence: float, personal: Tensor | None,
                 state_weights: Tensor | None = None) -> None:
        self.max_day, self.bias, self.kappa, self.personal = max_day, bias, feedback_influence, personal
        self.state_weights = state_weights

    def probability(self, users: Tensor, session_reward: Tensor, state: Tensor | None = None) -> Tensor:
        """(B,) next-day return probability P; ``state`` (B, D_state) is needed with state weights."""
        p = self.bias + self.kappa * session_reward
        if self.personal is not None:
            p = p + self.personal[users]
        if self.state_weights is not None:
            p = p + state @ self.state_weights
        return p.clamp(EPS, 1 - EPS)

    def distribution(self, users: Tensor, session_reward: Tensor, features: Tensor | None = None) -> Tensor:
        """(B, D) distribution of the return day; ``features`` from :func:`session_features` (state first)."""
        state = None if self.state_weights is None else features[:, : len(self.state_weights)]
        return truncated_geometric_probs(self.probability(users, session_reward, state), self.max_day)


N_SESSION_FEATURES = 7 + 5


def session_features(
    state: Tensor, n_exposures: Tensor, resp_sums: Tensor, watch_sum: Tensor, session_index: Tensor,
    prev_gap: Tensor,
) -> Tensor:
    """End-of-session features, computed the same way from logs and in the simulator, all in exposures (a
    logged row is one exposure; a simulated request of K items is K): the session's length in exposures, its
    per-exposure behaviour rates and watch seconds per exposure, so a slate size changes none of their ranges.

    state (B, D) user state after the session's last exposure; n_exposures, watch_sum (seconds), session_index
    (0-based), prev_gap (days since the previous session, 0 for the first): (B,); resp_sums (B, 7).
    Returns (B, D + 12).
    """
    n_exp = n_exposures.clamp(min=1).float()
    rates = resp_sums.float() / n_exp[:, None]
    extra = torch.stack(
        [
            torch.log1p(n_exp),
            torch.log1p(watch_sum.float() / n_exp) / 5.0,
            torch.log1p(session_index.float()),
            torch.log1p(prev_gap.float()),
            (prev_gap > 0).float(),
        ],
        dim=1,
    )
    return torch.cat([state, rates, extra], dim=1)


class LearnedReturn(nn.Module):
    def __init__(self, in_dim: int, max_day: int, hidden: int = 64) -> None:
        super().__init__()
        self.max_day = max_day
        self.net = mlp([in_dim, hidden, hidden, max_day])
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def forward(self, features: Tensor) -> Tensor:
        """(B, F) -> (B, D) logits."""
        return self.net((features - self.mean) / self.std)

    def distribution(self, users: Tensor, session_reward: Tensor, features: Tensor) -> Tensor:
        return torch.softmax(self(features), dim=-1)


def censored_nll(logits: Tensor, gap: Tensor, censored: Tensor, observed_days: Tensor) -> Tensor:
    """Mean negative log-likelihood. logits (B, D); gap (B,) days (>= 1, ignored when censored);
    censored (B,) bool; observed_days (B,): a censored session only tells us ``d > observed_days``."""
    max_day = logits.shape[1]
    logp = torch.log_softmax(logits, dim=-1)
    cls = (gap.clamp(1, max_day) - 1).long()
    ll_obs = logp.gather(1, cls[:, None]).squeeze(1)
    # log Pr(d > c) = logsumexp over classes c+1..D (classes are 1-based days); c >= D leaves only class D.
    first = observed_days.clamp(0, max_day - 1).long()  # 0-based index of day c+1
    days = torch.arange(max_day, device=logits.device)[None]
    ll_cens = torch.logsumexp(logp.masked_fill(days < first[:, None], float("-inf")), dim=1)
    return -torch.where(censored, ll_cens, ll_obs).mean()


@dataclass
class ReturnFit:
    model: LearnedReturn
    heldout_nll: float
    constant_nll: float
    constant_probs: list[float]
    n_train: int
    n_test: int


def fit_learned_return(
    features: Tensor, gap: Tensor, censored: Tensor, observed_days: Tensor, test: Tensor, max_day: int,
    seed: int = 0, epochs: int = 60, lr: float = 3e-3, batch_size: int = 2048, train_index: Tensor | None = None,
) -> ReturnFit:
    """Fit on ``~test`` sessions; compare held-out NLL with the best constant distribution (also censoring-aware).
    ``train_index`` (n,) long: the training sessions of one epoch, repeats allowed (a bootstrap resample of
    an ensemble member); None: every ``~test`` session once."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train = ~test
    model = LearnedReturn(features.shape[1], max_day)
    model.mean.copy_(features[train].mean(0))
    model.std.copy_(features[train].std(0).clamp(min=1e-4))
    const = torch.zeros(max_day, requires_grad=True)
    opt = torch.optim.Adam([*model.parameters(), const], lr=lr, weight_decay=1e-5)
    idx = torch.nonzero(train).squeeze(1) if train_index is None else train_index
    for _ in range(epochs):
        perm = idx[torch.randperm(len(idx), generator=g)]
        for k in range(0, len(perm), batch_size):
            b = perm[k : k + batch_size]
            loss = censored_nll(model(features[b]), gap[b], censored[b], observed_days[b])
            loss = loss + censored_nll(const.expand(len(b), -1), gap[b], censored[b], observed_days[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        te = test
        nll = float(censored_nll(model(features[te]), gap[te], censored[te], observed_days[te]))
        cnll = float(censored_nll(const.detach().expand(int(te.sum()), -1), gap[te], censored[te], observed_days[te]))
    return ReturnFit(model, nll, cnll, torch.softmax(const.detach(), 0).tolist(), int(train.sum()), int(test.sum()))
