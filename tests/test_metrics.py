"""Metric primitives and the §4 accumulator on hand-made steps with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.evaluation.metrics import RetentionMetrics, roc_auc, total_variation


def test_auc_known_values():
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 1, 0])) == pytest.approx(0.5)  # ties
    assert roc_auc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 0, 0])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))


def test_total_variation():
    assert total_variation([1, 0], [0, 1]) == 1.0
    assert total_variation([2, 2], [1, 1]) == 0.0
    assert total_variation(np.array([0.5, 0.5, 0]), np.array([0.25, 0.25, 0.5])) == pytest.approx(0.5)


def _step(slate, resp, watch, end, day, ep):
    return SimpleNamespace(
        slate=torch.tensor(slate), responses=torch.tensor(resp, dtype=torch.float32),
        watch_time=torch.tensor(watch, dtype=torch.float32), session_end=torch.tensor(end),
        return_day=torch.tensor(day), episode_end=torch.tensor(ep),
    )


def test_retention_metrics_by_hand():
    """2 users, slate 2. Items 0..3 with tags [0, 0, 1, -1] and authors [10, 11, 10, -1]."""
    m = RetentionMetrics(2, torch.tensor([0, 0, 1, -1]), torch.tensor([10, 11, 10, -1]), BEHAVIOURS)
    z = [0] * 7
    click = [1, 0, 0, 0, 0, 0, 0]
    follow = [1, 0, 0, 0, 0, 1, 0]
    # step 1: user 0 sees (0, 2), clicks item 0 and follows item 2's author; user 1 sees (1, 3).
    m.update(_step([[0, 2], [1, 3]], [[click, follow], [z, z]], [[10, 20], [5, 0]], [False, True], [0, 3], [False, False]))
    # step 2: user 0 sees (0, 1) and ends its session returning on day 1 -> its episode ends; user 1 sees (2, 2).
    m.update(_step([[0, 1], [2, 2]], [[z, follow], [z, z]], [[1, 1], [2, 2]], [True, False], [1, 0], [True, False]))
    r = m.result()
    assert r["click_rate"] == pytest.approx(3 / 8)
    assert r["follow_rate"] == pytest.approx(2 / 8)
    assert r["return_time"] == pytest.approx((3 + 1) / 2)
    assert r["retention"] == pytest.approx(1 / 2)
    assert r["session_length"] == pytest.approx((1 + 2) / 2)  # user 1's first session: 1 request; user 0's: 2
    assert r["watch_time"] == pytest.approx((5 + 32) / 2)
    # Distinct known tags per session: user 1 {0} (item 3's tag unknown), user 0 {0, 1}.
    assert r["diversity_session"] == pytest.approx((1 + 2) / 2)
    # Distinct tags per slate (unknown counts as its own value): (0,1)=2, (0,unk)=2, (0,0)=1, (1,1)=1.
    assert r["diversity_slate"] == pytest.approx((2 + 2 + 1 + 1) / 4)
    # ILD (share of a slate's item pairs with different tags; K = 2: one pair): 1, 1, 0, 0.
    assert r["diversity"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    # One completed episode (user 0): 2 follows, authors 10 and 11 -> 2 UA pairs; total return gap 1.
    assert r["episodes"] == 1 and r["new_fans"] == 2 and r["ua_count"] == 2 and r["total_return_gap"] == 1


def test_intra_list_diversity_of_a_slate_of_three_by_hand():
    m = RetentionMetrics(1, torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 3]), BEHAVIOURS)
    z = [[0] * 7] * 3
    m.update(_step([[0, 1, 2]], [z], [[0, 0, 0]], [False], [0], [False]))  # tags 0, 0, 1: 2 of 3 pairs differ
    m.update(_step([[0, 2, 3]], [z], [[0, 0, 0]], [False], [0], [False]))  # tags 0, 1, 2: 3 of 3
    assert m.result()["diversity"] == pytest.approx((2 / 3 + 1) / 2)
    one = RetentionMetrics(1, torch.tensor([0, 1]), torch.tensor([0, 1]), BEHAVIOURS)
    one.update(_step([[0]], [[[0] * 7]], [[0]], [False], [0], [False]))
    assert one.result()["diversity"] is None  # no pairs in a slate of one


def test_metrics_on_simulator(tiny_sim):
    """A return law with a closed form: P = bias = 0.4 for everyone (no personal term, no feedback), so the return
    day is a geometric truncated to 1..D and ``return_time`` / ``retention`` have known values."""
    B = 256
    env = tiny_sim.make_env("kuaisim", n_users=B, max_sessions=2,
                            returns={"personal": "none", "feedback_influence": 0.0})
    m = RetentionMetrics(B, tiny_sim.item_tag, tiny_sim.item_author, BEHAVIOURS)
    env.reset(seed=0)
    for _ in range(20):
        m.update(env.step(torch.ones(B, 7)))
    r = m.result()
    assert r["sessions"] == B * 4 and r["episodes"] == B * 2
    assert r["session_length"] == 5.0
    p, q, D = 0.4, 0.6, env.cfg.max_return_day
    mean_day = sum(d * p * q ** (d - 1) for d in range(1, D + 1)) / (1 - q**D)  # 2.42 for D = 10
    assert r["return_time"] == pytest.approx(mean_day, abs=0.25)  # 1,024 sessions: standard error 0.06
    assert r["retention"] == pytest.approx(p / (1 - q**D), abs=0.06)  # standard error 0.015
    assert r["total_return_gap"] == pytest.approx(2 * r["return_time"])
