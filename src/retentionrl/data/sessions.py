"""Sessionization and retention labels.

A session is either a user-day (KuaiSim's rule: all of a user's requests on one calendar day) or a run of
exposures with no gap longer than ``gap_minutes``. A session's *return gap* is the number of calendar days to
the same user's next session; the user's last session has no observed return and is right-censored: we only
know the gap exceeds ``observed_days`` (days from the session to the end of the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from retentionrl.data.schema import BEHAVIOURS, Interactions
from retentionrl.errors import RetentionRLError

SessionRule = Literal["day", "gap"]


@dataclass
class Sessions:
    """Sessions of a dataset.

    Attributes:
        table: one row per session, sorted by (user_id, start). Columns: ``user_id, day, start, end, length``,
            one count column per behaviour (``n_click`` ...), ``watch_time`` (s), ``return_gap`` (calendar days
            to the next session; NaN when censored), ``return_hours`` (hours from this session's end to the
            next one's start; NaN when censored), ``censored`` (bool), ``observed_days`` (days from the
            session's day to the last day of the log), ``index_in_user`` (0-based).
        session_of: (n_interactions,) session row of each exposure in ``Interactions.log``.
        rule: ``"day"`` or ``"gap"``; gap_minutes: the gap used by the ``"gap"`` rule.
    """

    table: pd.DataFrame
    session_of: np.ndarray
    rule: str
    gap_minutes: float | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def observed(self) -> pd.DataFrame:
        """Sessions whose return was observed."""
        return self.table[~self.table["censored"]]

    def return_day_distribution(self, max_day: int = 10) -> dict[str, float]:
        """Share of observed return gaps equal to 1..max_day-1 and >= max_day (key ``f"{max_day}+"``)."""
        if isinstance(max_day, bool) or not isinstance(max_day, int) or max_day < 1:
            raise RetentionRLError(f"max_day (--max-day) must be an integer >= 1, got {max_day!r}")
        gaps = self.observed["return_gap"].to_numpy()
        if len(gaps) == 0:
            return {}
        first = 0 if (gaps == 0).any() else 1  # 0-day returns exist only under the gap rule
        out = {str(d): float(np.mean(gaps == d)) for d in range(first, max_day)}
        out[f"{max_day}+"] = float(np.mean(gaps >= max_day))
        return out


def sessionize(data: Interactions, rule: SessionRule = "day", gap_minutes: float = 30.0) -> Sessions:
    """Cut ``data.log`` into sessions and label each with its return gap. Fully vectorised."""
    log = data.log
    user = log["user_id"].to_numpy()
    ts = log["timestamp"].to_numpy()
    day = log["day"].to_numpy()
    if rule == "day":
        # Key on (user, day) rather than on timestamp order: a source's own calendar date is authoritative.
        span = int(day.max() - day.min()) + 1
        key = user.astype(np.int64) * span + (day - day.min())
        _, session_of = np.unique(key, return_inverse=True)
    elif rule == "gap":
        if gap_minutes <= 0:
            raise RetentionRLError(f"gap_minutes must be positive, got {gap_minutes}")
        # The log is sorted by (user, timestamp), so a new session starts at a user change or a long pause.
        new = np.ones(len(log), dtype=bool)
        new[1:] = (user[1:] != user[:-1]) | (np.diff(ts) > gap_minutes * 60.0)
        session_of = np.cumsum(new) - 1
    else:
        raise RetentionRLError(f"unknown session rule '{rule}' (use 'day' or 'gap')")
    session_of = session_of.astype(np.int64)
    n = int(session_of.max()) + 1

    counts = np.bincount(session_of, minlength=n)
    first = np.full(n, len(log), dtype=np.int64)
    np.minimum.at(first, session_of, np.arange(len(log)))
    start = np.full(n, np.inf)
    np.minimum.at(start, session_of, ts)
    end = np.full(n, -np.inf)
    np.maximum.at(end, session_of, ts)
    sess_day = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(sess_day, session_of, day)
    table = pd.DataFrame(
        {
            "user_id": user[first],
            "day": sess_day,
            "start": start,
            "end": end,
            "length": counts,
        }
    )
    for b in BEHAVIOURS:
        table[f"n_{b}"] = np.bincount(session_of, weights=log[b].to_numpy(), minlength=n).astype(np.int64)
    table["watch_time"] = np.bincount(session_of, weights=log["watch_time"].to_numpy(np.float64), minlength=n)

    # "Next session" is the next row once sessions are ordered by user, then by day (day rule: a source's
    # calendar date can disagree with its clock near midnight) or by start time (gap rule).
    second = table["day"].to_numpy() if rule == "day" else table["start"].to_numpy()
    order = np.lexsort((table["start"].to_numpy(), second, table["user_id"].to_numpy()))
    if not np.array_equal(order, np.arange(n)):
        remap = np.empty(n, dtype=np.int64)
        remap[order] = np.arange(n)
        table = table.iloc[order].reset_index(drop=True)
        session_of = remap[session_of]
    u = table["user_id"].to_numpy()
    has_next = np.zeros(n, dtype=bool)
    has_next[:-1] = u[1:] == u[:-1]
    next_day = np.roll(table["day"].to_numpy(), -1)
    next_start = np.roll(table["start"].to_numpy(), -1)
    table["return_gap"] = np.where(has_next, next_day - table["day"].to_numpy(), np.nan)
    table["return_hours"] = np.where(has_next, (next_start - table["end"].to_numpy()) / 3600.0, np.nan)
    table["censored"] = ~has_next
    table["observed_days"] = int(day.max()) - table["day"].to_numpy()
    is_first = np.ones(n, dtype=bool)
    is_first[1:] = u[1:] != u[:-1]
    block_start = np.maximum.accumulate(np.where(is_first, np.arange(n), 0))
    table["index_in_user"] = np.arange(n) - block_start
    return Sessions(table=table, session_of=session_of, rule=rule, gap_minutes=gap_minutes if rule == "gap" else None)


def user_retention(sessions: Sessions, n_users: int) -> pd.DataFrame:
    """Per-user historical retention level (index: dense user id).

    Columns: ``n_sessions``, ``n_returns`` (observed), ``mean_return_day`` (over observed gaps; NaN if none),
    ``next_day_share`` (share of observed returns on the next day), ``retention_level``: the mean return day,
    or, for a user who never returned in the log, the lower bound their censored gap gives
    (``observed_days + 1``) when that exceeds the population mean, else the population mean.
    """
    t = sessions.table
    users = t["user_id"].to_numpy()
    obs = ~t["censored"].to_numpy()
    gap = np.nan_to_num(t["return_gap"].to_numpy())
    n_sessions = np.bincount(users, minlength=n_users)
    n_returns = np.bincount(users, weights=obs, minlength=n_users)
    gap_sum = np.bincount(users, weights=gap * obs, minlength=n_users)
    next_day = np.bincount(users, weights=(gap == 1) & obs, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.where(n_returns > 0, gap_sum / n_returns, np.nan)
        share = np.where(n_returns > 0, next_day / n_returns, np.nan)
    pop_mean = float(gap[obs].mean()) if obs.any() else 1.0
    last_obs_days = np.zeros(n_users)
    cens = t[t["censored"]]
    last_obs_days[cens["user_id"].to_numpy()] = cens["observed_days"].to_numpy()
    fallback = np.maximum(pop_mean, last_obs_days + 1)
    level = np.where(n_returns > 0, mean_gap, np.where(n_sessions > 0, fallback, np.nan))
    return pd.DataFrame(
        {
            "n_sessions": n_sessions,
            "n_returns": n_returns.astype(np.int64),
            "mean_return_day": mean_gap,
            "next_day_share": share,
            "retention_level": level,
        }
    )
