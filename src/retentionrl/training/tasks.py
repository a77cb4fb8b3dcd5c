"""ResAct's offline tasks: the session-end rewards of return time, session length, or both, from the logs.

ResAct (``papers/resact-slides.md``) turns each user's own history into a bounded, per-user-relative reward at
every session end:

* return time ``r(δ) = clip(⌊min(δ_avg, δ_75%) / δ⌋, 0, 5)`` — a return sooner than the user's usual gap scores
  more (δ the gap in days to the next session; ``δ_avg`` and ``δ_75%`` the mean and the 75th percentile of the
  user's logged gaps);
* session length ``r(η) = clip(⌊η / (0.8 · η_avg)⌋, 0, 5)`` — a session longer than 0.8 of the user's average
  scores more (η requests in the session, ``η_avg`` the user's logged mean);
* both: ``r(δ) + r(η)``.

:func:`apply_task` writes the task's reward into a log's ``retention_reward`` (N,) at the session-end rows (0
elsewhere) and zeroes the immediate ``reward``, so every agent trained with its defaults (``retention_weight 1,
immediate_weight 0``) optimises exactly the task. The per-user statistics come from the logs being trained on
(:func:`user_session_stats`): the slides compute them from the serving logs, so do we.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from retentionrl.errors import RetentionRLError

TASKS = ("return_time", "session_length", "both")
REWARD_CAP = 5.0  # the slides' clip(., 0, 5)
LENGTH_FRACTION = 0.8  # r(η) counts sessions longer than 0.8 x the user's average


def return_time_reward(delta: Tensor, delta_avg: Tensor, delta_q75: Tensor) -> Tensor:
    """``clip(⌊min(δ_avg, δ_75%) / δ⌋, 0, 5)``, elementwise over (N,) gaps (> 0) and their users' statistics."""
    return torch.floor(torch.minimum(delta_avg, delta_q75) / delta.float()).clamp(0.0, REWARD_CAP)


def session_length_reward(eta: Tensor, eta_avg: Tensor) -> Tensor:
    """``clip(⌊η / (0.8 · η_avg)⌋, 0, 5)``, elementwise over (N,) session lengths and their users' means."""
    return torch.floor(eta.float() / (LENGTH_FRACTION * eta_avg)).clamp(0.0, REWARD_CAP)


@dataclass
class SessionStats:
    """Per-user statistics of the logged sessions, (n_users,) float each (NaN for a user with no session end)."""

    delta_avg: Tensor
    delta_q75: Tensor
    eta_avg: Tensor


def session_ends(logs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(rows, users, δ, η) of the logs' session ends: row indices (S,), user ids (S,), return gaps in days (S,)
    and session lengths in requests (S,) (``step_in_session`` counts the requests before the last one)."""
    for key in ("session_end", "user", "return_day", "step_in_session"):
        if key not in logs:
            raise RetentionRLError(f"ResAct's task rewards need the logs' '{key}' column (simulator logs have it)")
    rows = torch.nonzero(logs["session_end"], as_tuple=True)[0]
    if len(rows) == 0:
        raise RetentionRLError("the logs hold no session end: ResAct's task rewards need finished sessions")
    return rows, logs["user"][rows], logs["return_day"][rows].float(), logs["step_in_session"][rows].float() + 1


def user_session_stats(logs: dict[str, Tensor], n_users: int | None = None) -> SessionStats:
    """Mean and 75th percentile (linear interpolation, numpy's default) of each user's logged return gaps, and
    the mean of their session lengths."""
    _, users, delta, eta = session_ends(logs)
    n = int(n_users if n_users is not None else users.max() + 1)
    count = torch.zeros(n).index_add_(0, users, torch.ones_like(delta))
    mean = lambda x: torch.zeros(n).index_add_(0, users, x) / count  # noqa: E731 (NaN where count = 0)
    q75 = torch.full((n,), float("nan"))
    order = torch.argsort(users * (delta.max() + 1) + delta)  # by user, then gap: each user's gaps sorted
    u_sorted, d_sorted = users[order], delta[order]
    start = torch.searchsorted(u_sorted, torch.arange(n))
    for u in torch.nonzero(count, as_tuple=True)[0].tolist():  # per user: a few sessions each
        q75[u] = torch.quantile(d_sorted[start[u]: start[u] + int(count[u])], 0.75)
    return SessionStats(delta_avg=mean(delta), delta_q75=q75, eta_avg=mean(eta))


def task_rewards(logs: dict[str, Tensor], task: str, stats: SessionStats | None = None) -> Tensor:
    """(N,) float: the task's reward at each session-end row, 0 elsewhere."""
    if task not in TASKS:
        raise RetentionRLError(f"unknown ResAct task '{task}' (known: {', '.join(TASKS)})")
    stats = stats or user_session_stats(logs)
    rows, users, delta, eta = session_ends(logs)
    r = torch.zeros(len(logs["session_end"]))
    value = torch.zeros(len(rows))
    if task in ("return_time", "both"):
        value += return_time_reward(delta, stats.delta_avg[users], stats.delta_q75[users])
    if task in ("session_length", "both"):
        value += session_length_reward(eta, stats.eta_avg[users])
    r[rows] = value
    return r


def apply_task(logs: dict[str, Tensor], task: str, stats: SessionStats | None = None) -> dict[str, Tensor]:
    """A copy of ``logs`` whose ``retention_reward`` is the task's reward and whose immediate ``reward`` is 0."""
    out = dict(logs)
    out["retention_reward"] = task_rewards(logs, task, stats)
    out["reward"] = torch.zeros_like(logs["reward"])
    return out
