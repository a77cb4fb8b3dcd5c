"""Where the log-densities of :mod:`retentionrl.evaluation.ope` come from.

* The **behaviour** side, when the logs carry it: ``logs["behaviour_log_prob"]`` (N,), stored by
  :func:`~retentionrl.training.offline.generate_logs` for a behaviour that knows its density (e.g.
  :class:`~retentionrl.agents.base.GaussianBehaviour`). Exact.
* The behaviour side for logs **without** propensities (real logs): :func:`fit_behaviour`, a Gaussian regression
  of the logged action on state features, ``a | s ~ N(μ(x), diag σ(x)²)`` with x the flat state vector
  (:func:`flat_state`), fitted by maximum likelihood on a training part of the rows and reported with its held-out
  mean log-likelihood. It is a model: the estimate inherits its errors.
* The **target** side: :func:`policy_log_prob`, the target policy's log-density of the logged actions — its own
  (``agent.log_prob``) or, for a deterministic fusion policy, the Gaussian-around-its-action convention with a
  given σ (:class:`~retentionrl.agents.base.GaussianBehaviour`). Items-mode agents are not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from retentionrl.agents.base import Agent, GaussianBehaviour
from retentionrl.errors import RetentionRLError
from retentionrl.spaces import OBS_FIELDS, FlatLayout, flat_features, obs_from_batch


def _rows(logs: dict[str, Tensor], keys: tuple[str, ...], start: int, stop: int) -> dict[str, Tensor]:
    missing = [k for k in keys if k not in logs]
    if missing:
        raise RetentionRLError(f"logs have no '{missing[0]}' column")
    return {k: logs[k][start:stop] for k in keys}


@torch.no_grad()
def policy_log_prob(agent: Agent, logs: dict[str, Tensor], sigma: float | list[float] | None = None,
                    chunk: int = 4096) -> Tensor:
    """(N,) float32 log-density of the logged fusion actions ``logs["action"]`` (N, 7) under ``agent``.

    ``sigma`` None: the agent's own density (``agent.log_prob``; an error if it has none). ``sigma`` given: the
    target is the Gaussian N(agent.act(s, explore=False), diag σ²) — the usual convention for a deterministic
    continuous policy (TD3, DDPG, BC, ...), whose own density is a point mass; the estimate is then the value of that
    smoothed policy. Rows are scored ``chunk`` at a time."""
    if getattr(agent, "action_mode", "fusion") != "fusion":
        raise RetentionRLError("policy_log_prob: items-mode agents are not supported (fusion actions only)")
    if "action" not in logs or not logs["action"].is_floating_point() or logs["action"].shape[1:] != (7,):
        got = tuple(logs["action"].shape) if "action" in logs else "none"
        raise RetentionRLError(f"policy_log_prob: logs['action'] must be (N, 7) fusion weights, got {got}")
    scorer = agent if sigma is None else GaussianBehaviour(agent, sigma)
    N, out = len(logs["action"]), []
    for s in range(0, N, chunk):
        batch = _rows(logs, (*OBS_FIELDS, "action"), s, s + chunk)
        lp = scorer.log_prob(obs_from_batch(batch), batch["action"])
        if lp is None:
            raise RetentionRLError(f"policy_log_prob: {type(agent).__name__} has no log-density of its own; give sigma "
                                   "(a Gaussian around its action)")
        out.append(lp.float())
    return torch.cat(out)


@torch.no_grad()
def flat_state(logs: dict[str, Tensor], layout: FlatLayout, chunk: int = 16384) -> Tensor:
    """(N, layout.dim) flat state vectors (:func:`~retentionrl.spaces.flat_features`) of the logged states, e.g.
    with ``layout = agent_spec(sim, env).flat_layout()``."""
    N = len(logs["user"]) if "user" in logs else 0
    parts = [flat_features(obs_from_batch(_rows(logs, OBS_FIELDS, s, s + chunk)), layout) for s in range(0, N, chunk)]
    if not parts:
        raise RetentionRLError("flat_state: logs have no rows (or no 'user' column)")
    return torch.cat(parts)


class _GaussianNet(nn.Module):
    """x (N, D) -> mean (N, A), log σ (N, A) (a free (A,) vector unless ``heteroscedastic``); inputs standardised
    with the training rows' statistics."""

    LOG_STD = (-7.0, 2.0)

    def __init__(self, x_mean: Tensor, x_std: Tensor, n_actions: int, hidden: tuple[int, ...],
                 heteroscedastic: bool) -> None:
        super().__init__()
        self.register_buffer("x_mean", x_mean)
        self.register_buffer("x_std", x_std)
        layers: list[nn.Module] = []
        width = len(x_mean)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.n_actions = n_actions
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, (2 if heteroscedastic else 1) * n_actions)
        self.log_std = None if heteroscedastic else nn.Parameter(torch.zeros(n_actions))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.body((x - self.x_mean) / self.x_std))
        if self.log_std is None:
            mu, log_std = out.chunk(2, -1)
        else:
            mu, log_std = out, self.log_std.expand_as(out)
        return mu, log_std.clamp(*self.LOG_STD)

    def log_prob(self, x: Tensor, a: Tensor) -> Tensor:
        """(N,) Σ_j log N(a_j; μ_j(x), σ_j(x)²)."""
        mu, log_std = self(x)
        return (-0.5 * ((a - mu) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@dataclass
class FittedBehaviour:
    """A fitted Gaussian behaviour model. ``heldout_loglik`` / ``train_loglik``: mean log-likelihood per row
    (nats, summed over the action's dimensions) on the held-out / training rows, at the step kept (the best
    held-out one); ``heldout`` (N,) bool marks the held-out rows of the fitting data."""

    net: _GaussianNet
    heldout_loglik: float
    train_loglik: float
    n_train: int
    n_heldout: int
    steps: int
    heldout: Tensor

    @torch.no_grad()
    def log_prob(self, features: Tensor, actions: Tensor) -> Tensor:
        """(N, D) features, (N, A) actions -> (N,) float32 log-density under the fitted model."""
        _check_xy(features, actions, self.net.x_mean.shape[0], self.net.n_actions)
        return self.net.log_prob(features.float(), actions.float())


def _check_xy(x: Tensor, a: Tensor, dim: int | None = None, n_actions: int | None = None) -> None:
    for name, t in (("features", x), ("actions", a)):
        if not isinstance(t, Tensor) or t.dim() != 2 or len(t) == 0:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise RetentionRLError(f"{name} must be a non-empty (N, width) tensor, got {got}")
        bad = ~torch.isfinite(t.float()).all(1)
        if bad.any():
            raise RetentionRLError(f"{name} has a NaN or infinite value at row {int(bad.nonzero()[0])}")
    if len(x) != len(a):
        raise RetentionRLError(f"actions has {len(a)} rows, features has {len(x)}")
    if dim is not None and x.shape[1] != dim:
        raise RetentionRLError(f"features has {x.shape[1]} columns, the model was fitted on {dim}")
    if n_actions is not None and a.shape[1] != n_actions:
        raise RetentionRLError(f"actions has {a.shape[1]} columns, the model was fitted on {n_actions}")


def fit_behaviour(features: Tensor, actions: Tensor, groups: Tensor | None = None, holdout: float = 0.2,
                  hidden: tuple[int, ...] = (), heteroscedastic: bool = False, steps: int = 1000, lr: float = 1e-2,
                  weight_decay: float = 1e-4, eval_every: int = 10, seed: int = 0) -> FittedBehaviour:
    """Fit ``a | x ~ N(μ(x), diag σ²)`` (μ an MLP with ``hidden`` layers, () = linear; σ one value per action
    dimension, or σ(x) from the same network with ``heteroscedastic``) by full-batch Adam on the negative
    log-likelihood for ``steps`` steps, keeping the parameters of the best held-out log-likelihood (checked every
    ``eval_every`` steps). The default is linear and homoscedastic: on simulator logs of a few hundred users the
    state's user-level columns let an MLP or a σ(x) head memorise users, and their held-out likelihood collapses.

    features (N, D) float (e.g. :func:`flat_state`), actions (N, A) float. ``groups`` (N,) long, e.g.
    ``logs["user"]``: a fraction ``holdout`` of the *groups* is held out, so a user's rows are all on one side (rows
    of one user are correlated; a row split would flatter the held-out score); None: a row split. Seeded; the
    caller's global RNG is untouched."""
    _check_xy(features, actions)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 < holdout < 1.0:
        raise RetentionRLError(f"holdout must be in (0, 1), got {holdout!r}")
    for name, v in (("steps", steps), ("eval_every", eval_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RetentionRLError(f"{name} must be a positive integer, got {v!r}")
    x, a = features.float(), actions.float()
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        groups = torch.arange(len(x))
    elif not isinstance(groups, Tensor) or groups.shape != (len(x),):
        raise RetentionRLError(f"groups must be an ({len(x)},) tensor, one group id per row")
    ids, inverse = torch.unique(groups, return_inverse=True)
    held_ids = torch.randperm(len(ids), generator=gen)[: max(1, round(holdout * len(ids)))]
    held = torch.zeros(len(ids), dtype=torch.bool).index_fill_(0, held_ids, True)[inverse]
    if held.all() or (~held).sum() < 2:
        raise RetentionRLError(f"fit_behaviour: too few rows or groups to hold out {holdout:.0%} ({len(ids)} groups)")
    xt, at, xh, ah = x[~held], a[~held], x[held], a[held]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _GaussianNet(xt.mean(0), xt.std(0).clamp(min=1e-6), a.shape[1], tuple(hidden), bool(heteroscedastic))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_step = -math.inf, None, 0
    for step in range(1, steps + 1):
        loss = -net.log_prob(xt, at).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                ll = float(net.log_prob(xh, ah).mean())
            if ll > best:
                best, best_step = ll, step
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is None:
        raise RetentionRLError("fit_behaviour: the held-out log-likelihood was never finite (lower lr?)")
    net.load_state_dict(best_state)
    with torch.no_grad():
        train_ll = float(net.log_prob(xt, at).mean())
    return FittedBehaviour(net.eval(), best, train_ll, len(xt), len(xh), best_step, held)
