"""Rows from the real log (SEC's online form): states equal the raw log, sessions equal sessionize, clusters are
seeded, top-k accuracy by hand, and the last-day split leaks nothing. Bundle: conftest's ``tiny_sim`` (shipped
sample, 1,500 of its users), so the subset re-densification of :func:`bundle_view` is exercised too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from retentionrl.data import load_dataset, sample_dir, sessionize, user_retention
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.spaces import OBS_FIELDS
from retentionrl.training.real_logs import (
    bundle_view, expert_users, item_clusters, last_day_split, popularity_probs, real_log_rows,
    topk_cluster_accuracy, user_retention_from_rows,
)


@pytest.fixture(scope="module")
def view(tiny_sim):
    return bundle_view(load_dataset("kuairand-pure"), tiny_sim)


@pytest.fixture(scope="module")
def clusters(tiny_sim):
    return item_clusters(tiny_sim, n_clusters=12, seed=0)


@pytest.fixture(scope="module")
def rows(tiny_sim, clusters):
    return real_log_rows(load_dataset("kuairand-pure"), tiny_sim, clusters)


def _raw_log() -> pd.DataFrame:
    raw = pd.read_csv(next(sample_dir().glob("log_standard_*.csv.gz")))
    return raw.drop_duplicates(ignore_index=True)  # as the loader (exact duplicate exposures)


def _busy_user(view, H: int) -> int:
    """A user with more than H + 3 exposures and at least three sessions (the one with most rows)."""
    n = view.log.groupby("user_id").size()
    days = view.log.groupby("user_id")["day"].nunique()
    ok = n[(n > H + 3) & (days >= 3)]
    assert len(ok), "the sample should have a user with a long history"
    return int(ok.idxmax())


def test_history_tokens_are_the_users_previous_raw_exposures(tiny_sim, view, rows):
    H = tiny_sim.response.cfg.window
    u = _busy_user(view, H)
    raw = _raw_log()
    mine = raw[raw["user_id"] == view.user_ids[u]].sort_values("time_ms", kind="stable").reset_index(drop=True)
    at = torch.nonzero(rows["user"] == u).squeeze(1)
    assert len(at) == len(mine)
    raw_items = mine["video_id"].to_numpy()
    raw_resp = mine[["is_click", "long_view", "is_like", "is_comment", "is_forward", "is_follow", "is_hate"]].to_numpy(np.float32)
    raw_watch = np.log1p(mine["play_time_ms"].to_numpy() / 1000.0) / 5.0
    for j in (0, 2, H, len(mine) - 1):  # empty history, partly padded, exactly full, the last exposure
        r = int(at[j])
        n = min(j, H)
        pad = rows["hist_pad"][r]
        assert pad.tolist() == [True] * (H - n) + [False] * n
        got_items = view.item_ids[rows["hist_items"][r][~pad].numpy()]
        np.testing.assert_array_equal(got_items, raw_items[j - n : j])
        np.testing.assert_array_equal(rows["hist_resp"][r][~pad][:, :7].numpy(), raw_resp[j - n : j])
        np.testing.assert_allclose(rows["hist_resp"][r][~pad][:, 7].numpy(), raw_watch[j - n : j], rtol=1e-5)
        assert (rows["hist_items"][r][pad] == 0).all() and (rows["hist_resp"][r][pad] == 0).all()
        assert view.item_ids[int(rows["item"][r])] == raw_items[j]  # the exposure itself is the action's item
    # the profile is the bundle's row of that user
    assert torch.equal(rows["profile_cat"][at[0]], tiny_sim.response.user_cat[u])
    assert torch.equal(rows["profile_num"][at[0]], tiny_sim.response.user_num[u])


def test_actions_are_the_items_clusters(rows, clusters):
    assert torch.equal(rows["action"], clusters.labels[rows["item"]])


def test_sessions_match_sessionize_for_a_user(tiny_sim, view, rows):
    u = _busy_user(view, tiny_sim.response.cfg.window)
    t = sessionize(view, "day").table
    t = t[t["user_id"] == u].reset_index(drop=True)
    at = rows["user"] == u
    ends = at & rows["session_end"]
    assert int(ends.sum()) == len(t) >= 3
    gaps = np.nan_to_num(t["return_gap"].to_numpy()).astype(int)
    assert rows["return_day"][ends].tolist() == gaps.tolist()
    assert gaps[-1] == 0 and (gaps[:-1] >= 1).all()  # the last session is censored
    assert rows["day"][ends].tolist() == t["day"].tolist()
    assert rows["session_index"][ends].tolist() == list(range(len(t)))
    # the first exposure of each session: step 0, the gap that started it, 0 for the first session
    day = rows["day"][at]
    starts = torch.cat([torch.tensor([True]), day[1:] != day[:-1]])
    assert rows["days_since_last"][at][starts].tolist() == [0.0, *gaps[:-1].astype(float)]
    assert (rows["step_in_session"][at][starts] == 0).all()
    # rewards: -d/10 at observed ends; the immediate reward is the bundle's weights on the exposure's behaviours
    d = rows["return_day"][ends].float()
    assert torch.allclose(rows["retention_reward"][ends], torch.where(d > 0, -d / 10, torch.zeros_like(d)))
    w = torch.tensor(tiny_sim.reward_weights)
    assert torch.allclose(rows["reward"], rows["responses"][:, 0] @ w)
    assert rows["episode_end"][at].tolist() == [False] * (int(at.sum()) - 1) + [True]


def test_step_in_session_counts_requests_of_k_exposures(tiny_sim, clusters):
    data = load_dataset("kuairand-pure")
    by6 = real_log_rows(data, tiny_sim, clusters, slate_size=6, next_obs=False)
    by1 = real_log_rows(data, tiny_sim, clusters, slate_size=1, next_obs=False)
    assert torch.equal(by6["step_in_session"], by1["step_in_session"] // 6)  # exposure rank r -> (r - 1) // K
    assert by1["step_in_session"].max() >= 6  # the sample has sessions longer than one request of 6
    assert "next_hist_items" not in by6


def test_next_state_is_the_following_rows_state(rows):
    """Within a user, next_<f> of row r is <f> of row r + 1 (the sample's sessions are contiguous in time)."""
    r = torch.nonzero(~rows["episode_end"]).squeeze(1)
    for f in OBS_FIELDS:
        assert torch.equal(rows[f"next_{f}"][r], rows[f][r + 1]), f
    last = torch.nonzero(rows["episode_end"]).squeeze(1)
    assert (rows["next_session_index"][last] == rows["session_index"][last] + 1).all()


def test_the_bundle_must_come_from_this_log(tiny_sim, tiny_kuairand, clusters):
    other = load_dataset("kuairand-pure", tiny_kuairand)
    with pytest.raises(RetentionRLError, match="not built from this log"):
        real_log_rows(other, tiny_sim, clusters)
    with pytest.raises(RetentionRLError, match="labels have shape"):
        real_log_rows(load_dataset("kuairand-pure"), tiny_sim, clusters.labels[:-1])


def test_clusters_are_deterministic_for_a_seed(tiny_sim, clusters):
    again = item_clusters(tiny_sim, n_clusters=12, seed=0)
    assert torch.equal(again.labels, clusters.labels)
    assert torch.equal(again.centers, clusters.centers)
    other = item_clusters(tiny_sim, n_clusters=12, seed=1)
    assert not torch.equal(other.labels, clusters.labels)
    sizes = clusters.sizes()
    assert sizes.shape == (12,) and int(sizes.sum()) == tiny_sim.n_items and (sizes > 0).all()
    feats = item_clusters(tiny_sim, n_clusters=5, seed=0, source="features")
    assert feats.labels.shape == (tiny_sim.n_items,) and feats.n_clusters == 5
    with pytest.raises(RetentionRLError, match="n_clusters"):
        item_clusters(tiny_sim, n_clusters=0)
    with pytest.raises(RetentionRLError, match="unknown item clusters source"):
        item_clusters(tiny_sim, source="pixels")


def test_topk_cluster_accuracy_hand_values():
    probs = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])
    targets = torch.tensor([2, 1, 0])
    # ranks: row 0 -> 1 (0.5 above); row 1 -> 2 (0.4 above, the tied 0.3 of cluster 0 first); row 2 -> 1
    acc = topk_cluster_accuracy(probs, targets, ks=(1, 2, 3, 10))
    assert acc == pytest.approx({1: 0.0, 2: 2 / 3, 3: 1.0, 10: 1.0})
    shared = topk_cluster_accuracy(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([1, 2, 0, 1]), ks=(1, 2))
    assert shared == pytest.approx({1: 0.5, 2: 0.75})
    rows = {"action": torch.tensor([0, 2, 2, 2])}
    assert popularity_probs(rows, 4).tolist() == [0.25, 0.0, 0.75, 0.0]
    with pytest.raises(RetentionRLError, match="outside"):
        topk_cluster_accuracy(probs, torch.tensor([0, 1, 3]))


def test_last_day_split_has_no_leakage(tiny_sim, view, rows):
    last = int(view.log["day"].max())
    train, test = last_day_split(rows)
    assert (train["day"] < last).all() and (test["day"] == last).all()
    assert len(train["day"]) + len(test["day"]) == len(rows["day"]) and len(test["day"]) > 0
    # no training label reaches the last day, and histories only look back: within a user no test row comes
    # before a training row
    ends = train["session_end"] & (train["return_day"] > 0)
    assert (train["day"][ends] + train["return_day"][ends] < last).all()
    is_test = (rows["day"] == last).long()
    same_user = rows["user"][1:] == rows["user"][:-1]
    assert not ((is_test[:-1] > is_test[1:]) & same_user).any()
    # the training rows' retention is that of the log cut before the last day; the full rows' that of the log
    cut = view.log["day"].to_numpy() < last
    before = type(view)(**{**view.__dict__, "log": view.log[cut].reset_index(drop=True)})
    expected = user_retention(sessionize(before, "day"), view.n_users)
    pd.testing.assert_frame_equal(user_retention_from_rows(train, view.n_users), expected)
    pd.testing.assert_frame_equal(user_retention_from_rows(rows, view.n_users),
                                  user_retention(sessionize(view, "day"), view.n_users))
    # the users the cut censors: they returned only on the last day
    changed = rows["session_end"][rows["day"] < last] & (train["return_day"] != rows["return_day"][rows["day"] < last])
    assert changed.any()
    # each user's last training row ends their training episode
    assert int(train["episode_end"].sum()) == len(torch.unique(train["user"]))
    # the full rows' episode_end is untouched by the split
    assert int(rows["episode_end"].sum()) == view.n_users


def test_expert_users():
    ret = pd.DataFrame({"mean_return_day": [1.0, 3.0, 3.5, np.nan]})
    assert expert_users(ret).tolist() == [True, True, False, False]
    assert expert_users(ret, max_return_day=1).tolist() == [True, False, False, False]


def test_on_the_shared_slice(shared_data):
    """The shared slice with a small bundle of 1,500 of its users: the subset is found again, every exposure is a
    row, and the successor state differs from the next row's state only around sessions that are not contiguous
    in time (the source's calendar date and its clock disagree near midnight)."""
    from retentionrl.simulator.build import BuildConfig, EnsembleConfig, build_simulator
    from retentionrl.simulator.response import ResponseConfig

    path = shared_data / "kuairand-pure"
    cfg = BuildConfig(data_dir=str(path), max_users=1500, ensemble=EnsembleConfig(members=0),
                      response=ResponseConfig(dim=16, epochs=1, window=8, layers=1))
    sim = build_simulator(cfg, progress=False, log=lambda *_: None)
    data = load_dataset("kuairand-pure", path)
    view = bundle_view(data, sim)
    rows = real_log_rows(data, sim, item_clusters(sim, 8, seed=0))
    assert len(rows["user"]) == len(view.log) and view.n_users == 1500
    so = torch.as_tensor(sessionize(view, "day").session_of)
    block = torch.cat([torch.tensor([True]), so[1:] != so[:-1]])
    split = torch.bincount(so[block], minlength=int(so.max()) + 1) > 1  # sessions in more than one block
    r = torch.nonzero(~rows["episode_end"]).squeeze(1)
    differs = torch.zeros(len(r), dtype=torch.bool)
    for f in OBS_FIELDS:
        differs |= (rows[f"next_{f}"][r] != rows[f][r + 1]).reshape(len(r), -1).any(1)
    assert not (differs & ~(split[so[r]] | split[so[r + 1]])).any()
