"""Sessionization and retention labels on small synthetic logs with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retentionrl.data.schema import build_interactions
from retentionrl.data.sessions import sessionize, user_retention

DAY = 86_400.0


def _data(rows):
    """rows: (user, day, hour, click)."""
    frame = pd.DataFrame(rows, columns=["user_id", "d", "h", "click"])
    frame["timestamp"] = frame["d"] * DAY + frame["h"] * 3600.0
    frame["day"] = frame["d"]
    frame["item_id"] = np.arange(len(frame)) % 3
    return build_interactions("toy", frame.drop(columns=["d", "h"]), behaviours=("click",))


def test_user_day_sessions_return_gaps_and_censoring():
    d = _data(
        [
            (7, 100, 9, 1), (7, 100, 10, 0), (7, 100, 23, 1),  # user 7 day 100: 3 requests
            (7, 101, 1, 0),                                      # day 101: 1 request
            (7, 104, 8, 1),                                      # day 104 (last: censored)
            (9, 102, 12, 0), (9, 102, 12.5, 1),                 # user 9: one day only (censored)
        ]
    )
    s = sessionize(d, "day")
    t = s.table
    assert t["length"].tolist() == [3, 1, 1, 2]
    assert t["n_click"].tolist() == [2, 0, 1, 1]
    assert t["return_gap"].tolist()[:2] == [1.0, 3.0]
    assert np.isnan(t["return_gap"].iloc[2]) and np.isnan(t["return_gap"].iloc[3])
    assert t["censored"].tolist() == [False, False, True, True]
    assert t["observed_days"].tolist() == [4, 3, 0, 2]  # last day in the log is 104
    assert t["index_in_user"].tolist() == [0, 1, 2, 0]
    assert t["return_hours"].iloc[0] == pytest.approx(2.0)  # 23:00 -> 01:00 next day
    # session_of maps each exposure to its session row.
    assert s.session_of.tolist() == [0, 0, 0, 1, 2, 3, 3]
    assert s.return_day_distribution(max_day=3) == {"1": 0.5, "2": 0.0, "3+": 0.5}


def test_gap_rule_splits_within_a_day():
    d = _data([(1, 10, 8, 1), (1, 10, 8.2, 0), (1, 10, 14, 1), (1, 11, 9, 0)])
    s = sessionize(d, "gap", gap_minutes=30)
    assert s.table["length"].tolist() == [2, 1, 1]
    assert s.table["return_gap"].tolist()[:2] == [0.0, 1.0]
    assert "0" in s.return_day_distribution()
    assert len(sessionize(d, "gap", gap_minutes=18 * 60)) == 2  # only the 19h pause (14:00 -> 09:00) splits
    assert len(sessionize(d, "gap", gap_minutes=24 * 60)) == 1


def test_retention_level():
    d = _data([(1, 0, 1, 0), (1, 1, 1, 0), (1, 4, 1, 0), (2, 0, 1, 0), (2, 2, 1, 0), (3, 9, 1, 0), (4, 1, 1, 0)])
    r = user_retention(sessionize(d, "day"), d.n_users)
    assert r["n_sessions"].tolist() == [3, 2, 1, 1]
    assert r["mean_return_day"].iloc[0] == pytest.approx(2.0)  # gaps 1, 3
    assert r["mean_return_day"].iloc[1] == pytest.approx(2.0)
    assert r["next_day_share"].iloc[0] == pytest.approx(0.5)
    # Never-returned users: max(population mean of observed gaps (1+3+2)/3 = 2, observed_days + 1).
    assert r["retention_level"].iloc[2] == pytest.approx(2.0)  # last log day 9: observed 0 days -> 1 < 2
    assert r["retention_level"].iloc[3] == pytest.approx(9.0)  # day 1: 8 days without return -> >= 9


def test_unknown_rule_is_an_error():
    from retentionrl.errors import RetentionRLError

    with pytest.raises(RetentionRLError, match="unknown session rule"):
        sessionize(_data([(1, 0, 1, 0)]), "week")  # type: ignore[arg-type]
