"""The flat state encoder (ours on the gym adapter's observation) and benchmarks/reference_check.py's cells."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from retentionrl.agents import make_agent
from retentionrl.agents.sac import SACConfig
from retentionrl.agents.td3 import TD3Config
from retentionrl.nets.actor_critic import AgentSpec, mixed_reward
from retentionrl.nets.state import FlatEncoder
from retentionrl.simulator.env import preset
from retentionrl.simulator.gym import RetentionGymEnv, _reward, flat_observation
from retentionrl.spaces import FlatLayout
from retentionrl.training.buffer import ReplayBuffer



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rc():
    """benchmarks/reference_check.py as a module."""
    yield load_benchmark("reference_check")
    sys.modules.pop("reference_check", None)


def test_flat_encoder_is_the_gym_observation(tiny_sim):
    spec = AgentSpec.from_env(tiny_sim, preset("kuaisim"))
    enc = FlatEncoder(spec.flat_layout())
    assert not list(enc.parameters())
    env = tiny_sim.make_env("kuaisim", n_users=8)
    assert spec.flat_layout() == FlatLayout.from_env(env)
    obs = env.reset(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(35):  # past the end of the first episodes (30 requests): auto-reset rows too
        x = enc(obs)
        assert x.dtype == torch.float32 and x.shape == (8, enc.out_dim)
        assert np.array_equal(x.numpy(), flat_observation(obs, env))
        out = env.step(torch.rand(8, 7, generator=gen) * 2 - 1)
        assert np.array_equal(enc(out.next_obs).numpy(), flat_observation(out.next_obs, env))
        obs = out.obs
    # The single-user gym env (what SB3 sees) gives the same vector for its user.
    genv = RetentionGymEnv(tiny_sim)
    o, _ = genv.reset(seed=1)
    assert np.array_equal(o, enc(genv.env.obs)[0].numpy())
    assert enc.out_dim == genv.observation_space.shape[0]


def test_retention_reward_matches_gym_retention_mode(tiny_sim):
    """gym reward "retention" == what ours learn from with its default weights (retention 1, immediate 0)."""
    for cfg in (TD3Config(), SACConfig()):
        assert (cfg.retention_weight, cfg.immediate_weight) == (1.0, 0.0) and cfg.encoder == "transformer"
    env = tiny_sim.make_env("kuaisim", n_users=4)
    obs = env.reset(0)
    buf = ReplayBuffer(64, obs, (7,), seed=0)
    seen = 0.0
    for _ in range(10):  # two session ends
        a = torch.rand(4, 7) * 2 - 1
        out = env.step(a)
        buf.add(obs, a, out)
        gym_r = _reward(out, "retention", 1.0)
        ours = mixed_reward({"retention_reward": out.retention_reward, "reward": out.reward}, 1.0, 0.0)
        assert np.array_equal(gym_r, ours.numpy())
        seen += float(out.retention_reward.abs().sum())
        obs = out.obs
    assert seen > 0
    batch = {k: v[:40] for k, v in buf.data.items()}
    assert torch.equal(mixed_reward(batch, 1.0, 0.0), batch["retention_reward"])


@pytest.mark.parametrize("algo", ["td3", "sac", "ddpg"])
def test_agents_build_and_update_with_flat_encoder(algo, tiny_sim):
    agent = make_agent(algo, tiny_sim, {"encoder": "flat", "hidden": [16, 8], "batch_size": 8}, seed=0)
    obs_dim = FlatLayout.from_env(tiny_sim.make_env("kuaisim", n_users=1)).dim
    first = agent.actor.net[0] if hasattr(agent.actor, "net") else agent.actor.trunk[0]
    assert first.in_features == obs_dim
    critic = agent.q if algo == "ddpg" else agent.q1
    assert critic.net[0].in_features == obs_dim + 7 and critic.net[-1].out_features == 1
    env = tiny_sim.make_env("kuaisim", n_users=4)
    obs = env.reset(0)
    buf = ReplayBuffer(64, obs, (7,), seed=0)
    for _ in range(6):
        a = agent.act(obs, explore=True)
        assert a.shape == (4, 7) and a.abs().max() <= 1
        out = env.step(a)
        buf.add(obs, a, out)
        obs = out.obs
    def moved(before, module):
        return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))

    actor0, critic0 = [p.clone() for p in agent.actor.parameters()], [p.clone() for p in critic.parameters()]
    agent.update(buf.sample(8))
    assert moved(critic0, critic)  # every update steps the critic
    assert moved(actor0, agent.actor) is (algo != "td3")  # TD3 delays the actor to every 2nd update
    agent.update(buf.sample(8))
    assert moved(actor0, agent.actor)
    assert torch.equal(agent.act(obs), agent.act(obs))  # deterministic when frozen


def test_unknown_encoder_is_rejected(tiny_sim):
    from retentionrl.errors import RetentionRLError

    with pytest.raises(RetentionRLError, match="encoder"):
        make_agent("td3", tiny_sim, {"encoder": "cnn"}, seed=0)


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_benchmark_cells_smoke(algo, rc, tiny_sim, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where SB3's default logger would write
    ev = {"n_users": 4, "n_episodes": 4, "seeds": [1, 2], "users": "test"}
    s = rc.settings_for(algo, "tiny", steps=5, n_users=4, warmup=2, batch_size=8, eval=ev)
    assert (s["gamma"], s["batch_size"], s["lr"]) == (0.9, 8, 1e-3)
    ours = rc.run_ours(s, 0, tiny_sim, tmp_path / "ours")
    sb3 = rc.run_sb3(s, 0, tiny_sim, tmp_path / "sb3")
    for r in (ours, sb3):
        assert r["updates"] == 3 and r["transitions"] == 20
    # Each cell reports the evaluation of the policy it saved (its final one), under the shared protocol.
    from retentionrl.evaluation.protocol import evaluate_policy
    from retentionrl.training import load_trained

    cfg, agent = load_trained(str(tmp_path / "ours"), tiny_sim)
    assert evaluate_policy(agent, tiny_sim, cfg.eval_config())["mean"] == ours["eval"]
    model = type(rc.sb3_model(s, 0, tiny_sim)).load(tmp_path / "sb3" / "model.zip")
    layout = FlatLayout.from_env(tiny_sim.make_env(cfg.preset, n_users=1, **cfg.env_overrides()))
    assert evaluate_policy(rc.SB3Agent(model, layout), tiny_sim, cfg.eval_config())["mean"] == sb3["eval"]
    assert ours["params"] == sb3["params"]  # same networks
    assert list(scratch.iterdir()) == []  # SB3 left no logger folder behind


def test_grid_skips_finished_cells_and_reports(rc, tmp_path):
    s = rc.settings_for("td3", "tiny", steps=5)
    cells = [rc.Cell("td3", impl, seed, s, str(tmp_path)) for impl in rc.IMPLS for seed in (0, 1)]
    for i, c in enumerate(cells):
        c.dir.mkdir(parents=True)
        rt = 2.0 + 0.1 * i
        ev = {"return_time": rt, "retention": 0.4, "click_rate": 0.3}
        rc.write_json_atomic(c.result_path, {"settings": s, "seed": c.seed, "eval": ev, "train_seconds": 1.0,
                                             "updates": 3})
    assert all(c.finished() for c in cells)
    md = rc.report(cells)
    assert "| td3 | ours | 0,1 |" in md and "Welch" in md and "p = " in md
    other = rc.Cell("td3", "ours", 0, rc.settings_for("td3", "tiny", steps=6), str(tmp_path))
    with pytest.raises(SystemExit, match="steps"):
        other.finished()


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_same_initial_policy_same_evaluation(algo, rc, tiny_sim, tmp_path):
    """No update (steps == warmup): both sides hold the initial actor seeded alike (same layer sizes, created in
    the same order after ``torch.manual_seed(seed)``), so the shared evaluation must give identical metrics —
    a check of the networks, the flat observation and the SB3 wrapper together."""
    ev = {"n_users": 4, "n_episodes": 4, "seeds": [1], "users": "test"}
    s = rc.settings_for(algo, "tiny", steps=2, n_users=2, warmup=2, batch_size=8, eval=ev)
    ours = rc.run_ours(s, 3, tiny_sim, tmp_path / "ours")
    sb3 = rc.run_sb3(s, 3, tiny_sim, tmp_path / "sb3")
    assert ours["updates"] == sb3["updates"] == 0
    assert ours["eval"] == sb3["eval"]
