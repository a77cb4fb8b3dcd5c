"""Replay buffer (ring storage, flags, seeded sampling, resumable state) and checkpoints (atomic, safe, RNG)."""

from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest
import torch

from retentionrl.agents.base import RandomAgent
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.env import Obs, StepOutput
from retentionrl.training import checkpoint as ckpt
from retentionrl.training.buffer import OBS_FIELDS, ReplayBuffer, obs_from_batch
from retentionrl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

H, FC, FN, K = 4, 3, 2, 2


def fake_obs(B: int, start: int, offset: int = 0) -> Obs:
    """B rows whose every field encodes the row's counter ``start + i`` (+ ``offset``), to track where rows go."""
    c = torch.arange(start, start + B) + offset
    return Obs(
        user=c.clone(),
        profile_cat=c[:, None].repeat(1, FC),
        profile_num=c[:, None].float().repeat(1, FN),
        hist_items=c[:, None].repeat(1, H),
        hist_resp=c[:, None, None].float().repeat(1, H, 8),
        hist_pad=(c % 2 == 0)[:, None].repeat(1, H),
        session_index=c.clone(),
        step_in_session=c.clone(),
        days_since_last=c.float(),
        candidates=torch.arange(10),
    )


def fake_step(B: int, start: int) -> tuple[Obs, torch.Tensor, StepOutput]:
    c = torch.arange(start, start + B)
    nxt = fake_obs(B, start, offset=1000)
    out = StepOutput(
        slate=c[:, None].repeat(1, K), responses=torch.zeros(B, K, 7), watch_time=torch.zeros(B, K),
        reward=c.float(), session_end=c % 3 == 0, return_day=c % 7, retention_reward=-c.float(), session_reward=2 * c.float(),
        episode_end=c % 5 == 0, next_obs=nxt, obs=nxt, users=nxt.user,
    )
    return fake_obs(B, start), c[:, None].float().repeat(1, 7), out


def filled(capacity: int, total: int, B: int, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(capacity, fake_obs(1, 0), (7,), seed=seed)
    for start in range(0, total, B):
        buf.add(*fake_step(min(B, total - start), start))
    return buf


def test_shapes_and_dtypes():
    obs, action, out = fake_step(3, 0)
    buf = ReplayBuffer(8, obs, (7,))
    assert len(buf) == 0
    with pytest.raises(RetentionRLError, match="empty"):
        buf.sample(2)
    buf.add(obs, action, out)
    assert len(buf) == 3
    b = buf.sample(5)
    for name in OBS_FIELDS:
        for key in (name, f"next_{name}"):
            want = getattr(obs, name)
            assert b[key].shape == (5, *want.shape[1:]) and b[key].dtype == want.dtype, key
    assert b["action"].shape == (5, 7) and b["action"].dtype == torch.float32
    assert b["reward"].dtype == b["retention_reward"].dtype == torch.float32 and b["reward"].shape == (5,)
    assert b["session_end"].dtype == b["episode_end"].dtype == torch.bool
    assert b["return_day"].dtype == torch.long
    # Every field of a sampled row comes from the same transition.
    c = b["reward"].long()
    assert torch.equal(b["user"], c) and torch.equal(b["next_user"], c + 1000)
    assert torch.equal(b["action"], c[:, None].float().repeat(1, 7)) and torch.equal(b["return_day"], c % 7)
    # Rebuilt Obs for encoders; candidates are not stored.
    o = obs_from_batch(b, "next_", candidates=torch.arange(4))
    assert torch.equal(o.hist_resp, b["next_hist_resp"]) and torch.equal(o.candidates, torch.arange(4))
    assert obs_from_batch(b).candidates.numel() == 0
    # Item-level agents store the slate.
    slates = ReplayBuffer(8, obs, (K,), torch.long)
    slates.add(obs, out.slate, out)
    assert slates.sample(2)["action"].dtype == torch.long
    with pytest.raises(RetentionRLError, match="'action' must have shape"):
        buf.add(obs, torch.zeros(3, 6), out)


@pytest.mark.parametrize("B", [3, 4, 7, 25])
def test_ring_keeps_the_last_capacity_transitions_in_order(B):
    capacity, total = 10, 37  # no B divides 10; B = 25 > capacity: one add overwrites the whole ring
    buf = filled(capacity, total, B)
    assert len(buf) == capacity and buf.n_added == total
    want = torch.arange(total - capacity, total)
    assert torch.equal(buf.chronological("reward").long(), want)
    assert torch.equal(buf.chronological("next_user"), want + 1000)
    assert torch.equal(buf.chronological("hist_items"), want[:, None].repeat(1, H))
    assert buf.ptr == total % capacity
    # Sampling only ever returns stored (recent) transitions.
    assert set(buf.sample(200)["reward"].long().tolist()) <= set(want.tolist())


def test_partial_fill_samples_only_filled_rows():
    buf = filled(100, 7, 3)
    assert len(buf) == 7
    assert set(buf.sample(500)["reward"].long().tolist()) == set(range(7))


def test_real_rollout_flags_and_successors(tiny_sim):
    """kuaisim: sessions of 5 requests; with max_sessions=2 the episode is truncated at step 10."""
    env = tiny_sim.make_env("kuaisim", n_users=4, max_sessions=2)
    agent = RandomAgent(seed=0)
    obs = env.reset(seed=0)
    fusion = ReplayBuffer(64, obs, (7,))
    items = ReplayBuffer(64, obs, (env.K,), torch.long)
    steps = []
    for _ in range(12):
        a = agent.act(obs, explore=True)
        out = env.step(a)
        fusion.add(obs, a, out)
        items.add(obs, out.slate, out)
        steps.append((obs, a, out))
        obs = out.obs
    assert len(fusion) == 48
    B = 4
    for t, (o, a, out) in enumerate(steps, start=1):
        rows = slice((t - 1) * B, t * B)
        get = lambda key: fusion.chronological(key)[rows]  # noqa: E731
        assert bool(get("session_end").all()) == (t % 5 == 0) and bool(get("session_end").any()) == (t % 5 == 0)
        assert bool(get("episode_end").all()) == (t == 10) and bool(get("episode_end").any()) == (t == 10)
        assert torch.equal(get("return_day"), out.return_day) and torch.equal(get("reward"), out.reward)
        assert torch.equal(get("retention_reward"), out.retention_reward)
        assert torch.equal(get("action"), a) and torch.equal(items.chronological("action")[rows], out.slate)
        for name in OBS_FIELDS:
            assert torch.equal(get(name), getattr(o, name)), name
            assert torch.equal(get(f"next_{name}"), getattr(out.next_obs, name)), name
    # A session end that is not an episode end (t = 5), and the truncation keeps the true successor (t = 10).
    assert fusion.chronological("session_end")[16:20].all() and not fusion.chronological("episode_end")[16:20].any()
    assert (fusion.chronological("next_session_index")[36:40] == 2).all()
    assert (fusion.chronological("session_index")[40:44] == 0).all()  # the auto-reset row starts a new user


def test_same_seed_same_samples():
    a, b, c = filled(50, 40, 6, seed=1), filled(50, 40, 6, seed=1), filled(50, 40, 6, seed=2)
    sa, sb, sc = a.sample(32), b.sample(32), c.sample(32)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["reward"], sc["reward"])


@pytest.mark.parametrize("total", [23, 137])  # partly filled; wrapped around
def test_state_dict_round_trip_continues_identically(tmp_path, total):
    buf = filled(50, total, 6, seed=3)
    buf.sample(8)  # advance the sampling stream before saving
    torch.save(buf.state_dict(), tmp_path / "buf.pt")
    state = torch.load(tmp_path / "buf.pt", weights_only=True)
    assert state["data"]["reward"].shape[0] == len(buf)  # only filled rows are saved
    resumed = ReplayBuffer(50, fake_obs(1, 0), (7,), seed=99)
    resumed.load_state_dict(state)
    assert len(resumed) == len(buf) and resumed.ptr == buf.ptr
    for step in range(3):
        x, y = buf.sample(16), resumed.sample(16)
        assert all(torch.equal(x[k], y[k]) for k in x)
        buf.add(*fake_step(7, 1000 + 7 * step))
        resumed.add(*fake_step(7, 1000 + 7 * step))
    assert all(torch.equal(buf.data[k], resumed.data[k]) for k in buf.data)
    with pytest.raises(RetentionRLError, match="capacity mismatch"):
        ReplayBuffer(51, fake_obs(1, 0), (7,)).load_state_dict(state)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run" / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(RetentionRLError, match=f"^{re.escape(str(path))}: cannot write: disk full$"):  # names the file
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert os.listdir(path.parent) == ["ckpt.pt"]  # no temp file left behind
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(RetentionRLError, match="checkpoint not found: .*ckpt.pt"):
        load_checkpoint(path)
    save_checkpoint(path, {"w": torch.arange(1000)})
    good = path.read_bytes()
    for bad in (b"not a checkpoint", good[: len(good) // 2], b""):
        path.write_bytes(bad)
        with pytest.raises(RetentionRLError, match=r"cannot read checkpoint .*ckpt\.pt \(corrupt"):
            load_checkpoint(path)


def test_rng_state_round_trip(tmp_path):
    random.gauss(0, 1)  # leave a cached Gaussian in Python's and numpy's state: it must survive too
    np.random.standard_normal()
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})

    def draw():
        return (torch.rand(4), torch.randn(2), np.random.rand(3), np.random.standard_normal(), random.random(),
                random.gauss(0, 1))

    first = draw()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = draw()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert np.array_equal(first[2], again[2]) and first[3:] == again[3:]
