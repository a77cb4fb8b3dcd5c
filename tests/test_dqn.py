"""Item-level DQN (retentionrl.agents.dqn): shapes, exploration schedule, updates from its own slate replay,
exact resume, and learning the best items of the synthetic simulator."""

from __future__ import annotations

import io

import pytest
import torch

from retentionrl.agents.base import RandomAgent
from retentionrl.agents.dqn import DQN, build
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.synthetic import item_rewards, make_synthetic_simulator
from retentionrl.training.online import TrainConfig, train

SMALL = {"batch_size": 32, "hidden": [16], "state_dim": 16, "token_dim": 8, "dim": 16}


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return make_synthetic_simulator(n_users=64, n_items=300, seed=0)


def _env(sim, n_users=8, **overrides):
    env = sim.make_env("kuaisim", n_users=n_users, action_mode="items", **overrides)
    return env, env.reset(seed=3)


def test_act_scores_every_candidate_or_the_sampled_ones(sim):
    agent = build(sim, dict(SMALL), seed=0)
    assert agent.action_mode == "items" and not agent.learns
    for overrides, C in (({}, sim.n_items), ({"candidates": 50}, 50)):
        env, obs = _env(sim, **overrides)
        assert obs.candidates.shape == (C,)
        greedy = agent.act(obs)
        assert greedy.shape == (8, C) and torch.isfinite(greedy).all()
        assert torch.equal(greedy, agent.act(obs))  # explore=False is deterministic
        assert agent.act(obs, explore=True).shape == (8, C)
        # Scores are Q(s, candidate): the same as scoring every item and picking the candidates' columns.
        full = agent.q.score(obs)
        assert torch.allclose(greedy, full[:, obs.candidates], atol=1e-5)
        out = env.step(greedy)  # the environment accepts them and shows the top K
        assert out.slate.shape == (8, 6)
        assert torch.equal(out.slate, obs.candidates[greedy.topk(6, dim=1).indices])


def test_epsilon_decays_linearly_over_updates_and_replaces_whole_rows(sim):
    agent = build(sim, {**SMALL, "eps_start": 1.0, "eps_end": 0.1, "eps_decay_steps": 10}, seed=0)
    for n, eps in ((0, 1.0), (5, 0.55), (10, 0.1), (25, 0.1)):
        agent.n_updates = n
        assert agent.epsilon() == pytest.approx(eps)
    _, obs = _env(sim, n_users=64)
    greedy = agent.act(obs)
    agent.n_updates = 0  # eps = 1: every row random, uniform in [0, 1)
    rand = agent.act(obs, explore=True)
    assert not (rand == greedy).all(dim=1).any() and rand.min() >= 0 and rand.max() < 1
    agent.n_updates = 5  # eps = 0.55: rows are either untouched or fully replaced
    mixed = agent.act(obs, explore=True)
    same = (mixed == greedy).all(dim=1)
    assert 10 < int(same.sum()) < 54
    assert not (mixed[~same] == greedy[~same]).any(dim=1).any()
    zero = build(sim, {**SMALL, "eps_start": 0.0, "eps_end": 0.0}, seed=0)
    assert torch.equal(zero.act(obs, explore=True), zero.act(obs))


def _run(agent: DQN, env, obs, steps: int) -> tuple[object, list]:
    """Act with exploration and observe for ``steps`` env steps; returns the last obs and (action, info) pairs."""
    trace = []
    for _ in range(steps):
        a = agent.act(obs, explore=True)
        out = env.step(a)
        trace.append((a, agent.observe(obs, a, out)))
        obs = out.obs
    return obs, trace


def test_updates_learn_from_the_shown_slates(sim):
    cfg = {**SMALL, "gamma": 0.9, "learning_starts": 16, "updates_per_step": 2, "target_candidates": 20,
           "immediate_weight": 1.0, "terminal": "session"}
    agent = build(sim, cfg, seed=0)
    env, obs = _env(sim, candidates=50)
    target_before = [p.clone() for p in agent.q_t.parameters()]
    obs, trace = _run(agent, env, obs, 4)
    assert trace[0][1] == {}  # 8 transitions stored: below learning_starts, no update yet
    info = trace[-1][1]
    assert agent.n_updates == 2 * 3  # steps 2..4, two updates each
    assert {"loss", "q", "target", "epsilon"} <= set(info) and info["epsilon"] == agent.epsilon()
    buf = agent.buffer
    assert buf is not None and len(buf) == 32
    assert buf.data["action"].dtype == torch.long and buf.data["action"].shape[1:] == (6,)
    assert ((buf.data["action"] >= 0) & (buf.data["action"] < sim.n_items)).all()
    assert any(not torch.equal(a, b) for a, b in zip(target_before, agent.q_t.parameters()))  # soft update ran
    # Gradient steps on one fixed batch fit it (the target net barely moves at tau 0.005): the TD loss falls.
    batch = buf.sample(16)
    first = agent.update(batch)["loss"]
    for _ in range(50):
        last = agent.update(batch)["loss"]
    assert last < 0.5 * first, (first, last)
    # A fusion action (the env in fusion mode) is refused with a hint.
    with pytest.raises(RetentionRLError, match="action_mode: items"):
        agent.observe(obs, torch.zeros(8, 7), env.step(agent.act(obs)))


def test_state_dict_round_trip_continues_identically(sim):
    cfg = {**SMALL, "gamma": 0.9, "learning_starts": 16, "eps_decay_steps": 20, "target_candidates": 30}
    a = build(sim, cfg, seed=0)
    env, obs = _env(sim)
    obs, _ = _run(a, env, obs, 5)
    raw = io.BytesIO()
    torch.save(a.state_dict(), raw)
    raw.seek(0)
    b = build(sim, cfg, seed=123)  # different init and streams, no buffer yet: everything must come from the state
    b.load_state_dict(torch.load(raw, weights_only=True))
    assert b.n_updates == a.n_updates > 0 and b.epsilon() == a.epsilon()
    assert len(b.buffer) == len(a.buffer)
    for _ in range(4):
        act_a, act_b = a.act(obs, explore=True), b.act(obs, explore=True)
        assert torch.equal(act_a, act_b)
        out = env.step(act_a)
        info_a, info_b = a.observe(obs, act_a, out), b.observe(obs, act_b, out)
        assert info_a == info_b and "loss" in info_a
        obs = out.obs
    assert torch.equal(a.act(obs), b.act(obs))
    # Before the first observe there is no buffer; that round-trips too.
    c, d = build(sim, cfg, seed=0), build(sim, cfg, seed=5)
    d.load_state_dict(c.state_dict())
    assert d.buffer is None and torch.equal(c.act(obs), d.act(obs))


def _eval_reward(sim: Simulator, metrics: dict) -> float:
    return sum(w * metrics[f"{b}_rate"] for w, b in zip(sim.reward_weights, BEHAVIOURS))


def test_dqn_learns_the_best_items_of_the_synthetic_simulator(sim, tmp_path, monkeypatch):
    ev = {"n_users": 64, "n_episodes": 64, "seeds": [101, 102], "env_overrides": {"max_sessions": 2}}
    random_reward = _eval_reward(sim, evaluate_policy(RandomAgent(action_mode="items"), sim, EvalConfig(**ev))["mean"])
    best = float(torch.topk(item_rewards(sim), 6).values.mean())
    assert best - random_reward > 1.0
    steps = 120
    agent_cfg = {**SMALL, "batch_size": 64, "lr": 3e-3, "immediate_weight": 1.0, "retention_weight": 0.0,
                 "gamma": 0.0, "learning_starts": 320, "eps_decay_steps": steps // 2}
    # The loop's own buffer is never read for this agent (learns = False): keep it minimal.
    tc = TrainConfig(algo="dqn", seed=0, env={"max_sessions": 2}, n_users=32,
                     total_steps=steps, warmup_steps=10, buffer_size=1, log_every=steps // 4, eval_every=steps,
                     checkpoint_every=steps, eval=ev, agent=agent_cfg)
    summary = train(tc, sim, tmp_path / "dqn", progress=False)
    reward = _eval_reward(sim, summary["eval"])
    closed = (reward - random_reward) / (best - random_reward)
    assert reward <= best + 0.15
    assert closed >= 0.5, (f"dqn: mean immediate reward {reward:.3f} closes {closed:.0%} of the gap between random "
                           f"({random_reward:.3f}) and the optimum ({best:.3f})")
