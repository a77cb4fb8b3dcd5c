"""ResAct's task rewards: hand values of r(δ) and r(η), per-user statistics, and the rewrite of a log."""

from __future__ import annotations

import pytest
import torch

from retentionrl.errors import RetentionRLError
from retentionrl.training.tasks import (
    apply_task,
    return_time_reward,
    session_length_reward,
    task_rewards,
    user_session_stats,
)


def _logs():
    """Two users, step-major rows. User 0: sessions of 2, 3 and 1 requests, gaps 1, 4, 2 days. User 1: sessions
    of 4 and 2 requests, gaps 3 and 3."""
    rows = [  # (user, step_in_session, session_end, return_day)
        (0, 0, False, 0), (0, 1, True, 1), (0, 0, False, 0), (0, 1, False, 0), (0, 2, True, 4), (0, 0, True, 2),
        (1, 0, False, 0), (1, 1, False, 0), (1, 2, False, 0), (1, 3, True, 3), (1, 0, False, 0), (1, 1, True, 3),
    ]
    u, s, e, d = zip(*rows)
    n = len(rows)
    return {"user": torch.tensor(u), "step_in_session": torch.tensor(s), "session_end": torch.tensor(e),
            "return_day": torch.tensor(d), "reward": torch.full((n,), 0.7), "retention_reward": torch.full((n,), -0.1)}


def test_reward_formulas_by_hand():
    # min(δ_avg, δ_75%) = min(2.5, 3) = 2.5: δ 1 -> 2, δ 2 -> 1, δ 3 -> 0; a 0.1-day gap is capped at 5.
    assert return_time_reward(torch.tensor([1.0, 2.0, 3.0, 0.1]), torch.full((4,), 2.5),
                              torch.full((4,), 3.0)).tolist() == [2, 1, 0, 5]
    # η_avg 2.5 -> 0.8 * 2.5 = 2: η 1 -> 0, 2 -> 1, 4 -> 2, 11 -> 5 (capped at 5).
    assert session_length_reward(torch.tensor([1, 2, 4, 11]), torch.full((4,), 2.5)).tolist() == [0, 1, 2, 5]


def test_user_stats_and_task_rewards_on_a_hand_log():
    logs = _logs()
    st = user_session_stats(logs)
    # User 0: gaps [1, 4, 2] -> mean 7/3, 75th percentile 3 (numpy's linear rule: 2 + 0.5 * (4 - 2)); lengths 2, 3, 1.
    assert st.delta_avg.tolist() == pytest.approx([7 / 3, 3.0])
    assert st.delta_q75.tolist() == pytest.approx([3.0, 3.0])
    assert st.eta_avg.tolist() == pytest.approx([2.0, 3.0])
    ends = [1, 4, 5, 9, 11]
    r_time = task_rewards(logs, "return_time")
    # User 0: min(7/3, 3) = 7/3 -> gaps 1, 4, 2 give 2, 0, 1. User 1: 3/3 -> 1, 1.
    assert r_time[ends].tolist() == [2, 0, 1, 1, 1] and r_time.sum() == r_time[ends].sum()
    # User 0: 0.8 * 2 = 1.6 -> lengths 2, 3, 1 give 1, 1, 0. User 1: 0.8 * 3 = 2.4 -> 4, 2 give 1, 0.
    r_len = task_rewards(logs, "session_length")
    assert r_len[ends].tolist() == [1, 1, 0, 1, 0]
    assert torch.equal(task_rewards(logs, "both"), r_time + r_len)
    out = apply_task(logs, "both")
    assert torch.equal(out["retention_reward"], r_time + r_len) and (out["reward"] == 0).all()
    assert (logs["reward"] == 0.7).all()  # the input is not modified


def test_bad_task_and_logs_without_sessions():
    logs = _logs()
    with pytest.raises(RetentionRLError, match="unknown ResAct task 'clicks'"):
        task_rewards(logs, "clicks")
    logs["session_end"][:] = False
    with pytest.raises(RetentionRLError, match="no session end"):
        task_rewards(logs, "return_time")
    with pytest.raises(RetentionRLError, match="'user' column"):
        task_rewards({k: v for k, v in _logs().items() if k != "user"}, "return_time")


def test_an_offline_run_trains_on_the_task_reward(tiny_sim, tmp_path, monkeypatch):
    """``task: both`` in an offline config: every batch the agent sees carries r(δ) + r(η) at session ends (integers
    0-10) and no immediate reward; the logs record says so; without ``task`` the saved config has no such key."""
    import json

    import yaml

    from retentionrl.agents.bc import BC
    from retentionrl.training.offline import OfflineTrainConfig, train_offline

    seen = []
    real = BC.update
    monkeypatch.setattr(BC, "update", lambda self, b: seen.append(b) or real(self, b))
    base = dict(algo="bc", seed=0, behaviour="gaussian", behaviour_agent={"sigma": 0.3}, n_log_users=8,
                log_steps=12, total_updates=4, log_every=2, eval_every=4, checkpoint_every=4,
                eval={"n_users": 8, "n_episodes": 8, "seeds": [1]}, agent={"batch_size": 32})
    train_offline(OfflineTrainConfig(**base, task="both"), tiny_sim, tmp_path / "task", progress=False)
    r = torch.cat([b["retention_reward"] for b in seen])
    ends = torch.cat([b["session_end"] for b in seen])
    assert (torch.cat([b["reward"] for b in seen]) == 0).all() and (r[~ends] == 0).all()
    assert (r == r.round()).all() and r.max() <= 10 and r[ends].sum() > 0
    record = json.loads((tmp_path / "task" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["event"] == "logs" and 0 < record["task_reward"] <= 10
    assert yaml.safe_load((tmp_path / "task" / "config.yaml").read_text())["task"] == "both"
    train_offline(OfflineTrainConfig(**base), tiny_sim, tmp_path / "plain", progress=False)
    assert "task" not in yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())
