"""Gymnasium adapters: API compliance, shapes, same-step autoreset, determinism, bad actions, a short TD3 run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from retentionrl.errors import RetentionRLError
from retentionrl.simulator.env import ActionError
from retentionrl.simulator.gym import (
    RetentionGymEnv,
    RetentionVectorEnv,
    flat_observation,
    observation_names,
)

STEPS_PER_EPISODE = 30  # kuaisim preset: 6 sessions of exactly ceil(temper 5) = 5 requests


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-CPU box 2 threads make a step ~50x
    slower (spinning workers); restore the setting for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _actions(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def test_check_env_passes(tiny_sim):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = RetentionGymEnv(tiny_sim)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
        check_env(env.unwrapped)
        sb3_check_env(env, warn=True)
    # The only acceptable warning: alternative render modes cannot be tried without a registered spec.
    bad = [str(w.message) for w in caught if "not having a spec" not in str(w.message)]
    assert not bad, bad
    assert env.observation_space.shape == (len(observation_names(env.env)),)
    for name, lo, hi in zip(observation_names(env.env), env.observation_space.low, env.observation_space.high):
        if name.endswith("log_watch"):  # log1p(seconds) / 5, which the simulator's clamp keeps at <= 2.4
            assert (lo, hi) == (0.0, 3.0), name
        elif name.startswith("user_num_"):  # standardised, clipped to +-5
            assert (lo, hi) == (-5.0, 5.0), name
        else:  # behaviour rates, fill / progress / day fractions, category codes scaled to [0, 1]
            assert (lo, hi) == (0.0, 1.0), name


def test_single_env_episode(tiny_sim):
    env = RetentionGymEnv(tiny_sim, reward="both", clock=True)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs in env.observation_space and isinstance(info["user"], int)
    for t in range(1, STEPS_PER_EPISODE + 1):
        obs, r, term, trunc, info = env.step(_actions(t, 1, (7,))[0])
        assert obs in env.observation_space and isinstance(r, float) and term is False
        assert r == pytest.approx(info["immediate_reward"] + info["retention_reward"])
        assert trunc is (t == STEPS_PER_EPISODE)
        assert info["session_end"] is (t % 5 == 0)
        assert (info["return_day"] > 0) is info["session_end"]
    names = observation_names(env.env, clock=True)
    assert obs[names.index("session_frac")] == 1.0  # the true last observation, not the next user's
    with pytest.raises(RetentionRLError, match="reset"):
        env.step(np.zeros(7, np.float32))
    obs, _ = env.reset()
    assert obs[names.index("session_frac")] == 0.0


def test_vector_shapes_and_spaces(tiny_sim):
    venv = RetentionVectorEnv(tiny_sim, num_envs=4)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    d = venv.single_observation_space.shape[0]
    assert venv.observation_space.shape == (4, d) and venv.action_space.shape == (4, 7)
    assert (venv.single_action_space.low == -1).all() and (venv.single_action_space.high == 1).all()
    obs, info = venv.reset(seed=0)
    assert obs.shape == (4, d) and obs.dtype == np.float32 and obs in venv.observation_space
    assert info["user"].shape == (4,)
    obs, rew, term, trunc, infos = venv.step(venv.action_space.sample())
    assert obs.shape == (4, d) and obs.dtype == np.float32 and obs in venv.observation_space
    assert rew.shape == (4,) and rew.dtype == np.float32
    assert term.dtype == bool and trunc.dtype == bool and not term.any() and not trunc.any()
    for key in ("user", "session_end", "return_day", "retention_reward", "immediate_reward"):
        assert infos[key].shape == (4,) and infos[f"_{key}"].all()
    assert "final_obs" not in infos
    np.testing.assert_array_equal(obs, flat_observation(venv.env.obs, venv.env))


def test_vector_same_step_autoreset(tiny_sim):
    # Satisfaction leave: session lengths depend on the slates, so users finish their episodes at different steps.
    venv = RetentionVectorEnv(tiny_sim, num_envs=8, leave={"kind": "satisfaction"}, clock=True)
    names = observation_names(venv.env, clock=True)
    sess = names.index("session_frac")
    obs, _ = venv.reset(seed=1)
    acts = _actions(1, 60, (8, 7))
    partial_seen = False
    for a in acts:
        users_before = venv.env.obs.user.numpy()
        obs, rew, term, trunc, infos = venv.step(a)
        assert not term.any()
        np.testing.assert_array_equal(infos["user"], users_before)  # info describes the users who acted
        if not trunc.any():
            assert "final_obs" not in infos
            continue
        partial_seen |= not trunc.all()
        np.testing.assert_array_equal(infos["_final_obs"], trunc)
        np.testing.assert_array_equal(infos["_final_info"], trunc)
        for i in range(8):
            final = infos["final_obs"][i]
            if trunc[i]:
                assert final in venv.single_observation_space
                assert final[sess] == 1.0 and obs[i, sess] == 0.0  # old user's last obs vs new user's first
                assert infos["final_info"]["session_end"][i] and infos["final_info"]["return_day"][i] > 0
                assert rew[i] == pytest.approx(infos["immediate_reward"][i] + infos["retention_reward"][i])
            else:
                assert final is None
                assert obs[i, sess] < 1.0
        # The returned batch is the post-reset state: the new users' first observations.
        np.testing.assert_array_equal(obs, flat_observation(venv.env.obs, venv.env, clock=True))
    assert partial_seen, "expected some step where only part of the batch finished its episode"



def test_default_observation_has_no_clock_so_the_cut_is_an_ordinary_state(tiny_sim):
    """By default (what SB3 gets) the last observation of an episode, from which SB3 bootstraps on truncation, is
    the vector of a mid-episode observation with the same history and gap, a state seen in training. With the
    clock it is not: session_frac = 1 only there."""
    assert "session_frac" not in observation_names(RetentionGymEnv(tiny_sim).env)
    env = tiny_sim.make_env("kuaisim", n_users=4)
    env.reset(seed=3)
    for t in range(1, STEPS_PER_EPISODE + 1):
        out = env.step(_actions(t, 1, (4, 7))[0])
    assert out.episode_end.all()
    mid = out.next_obs.clone()
    mid.session_index[:] = 1  # same history, step and gap, one session into the episode
    np.testing.assert_array_equal(flat_observation(out.next_obs, env), flat_observation(mid, env))
    with_clock = flat_observation(out.next_obs, env, clock=True), flat_observation(mid, env, clock=True)
    assert not np.array_equal(*with_clock)
    assert with_clock[0].shape[1] == flat_observation(mid, env).shape[1] + 1


def _rollout(venv: RetentionVectorEnv, seed: int, steps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = venv.reset(seed=seed)
    all_obs, all_rew = [obs], []
    for a in _actions(0, steps, (venv.num_envs, 7)):
        obs, rew, *_ = venv.step(a)
        all_obs.append(obs)
        all_rew.append(rew)
    return np.stack(all_obs), np.stack(all_rew)


def test_vector_determinism(tiny_sim):
    venv = RetentionVectorEnv(tiny_sim, num_envs=4)
    o1, r1 = _rollout(venv, seed=7)
    o2, r2 = _rollout(RetentionVectorEnv(tiny_sim, num_envs=4), seed=7)  # a fresh env gives the same too
    o3, r3 = _rollout(venv, seed=8)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(o1, o3) and not np.array_equal(r1, r3)


def test_reward_modes(tiny_sim):
    rewards = {}
    for mode in ("immediate", "retention", "both"):
        venv = RetentionVectorEnv(tiny_sim, num_envs=3, reward=mode, retention_weight=2.0)
        venv.reset(seed=5)
        out = [venv.step(a)[1:] for a in _actions(5, 10, (3, 7))]
        rewards[mode] = np.stack([o[0] for o in out])
        infos = [o[3] for o in out]
    imm = np.stack([i["immediate_reward"] for i in infos])
    ret = np.stack([i["retention_reward"] for i in infos])
    np.testing.assert_allclose(rewards["immediate"], imm)
    np.testing.assert_allclose(rewards["retention"], ret)
    np.testing.assert_allclose(rewards["both"], imm + 2.0 * ret, rtol=1e-6)
    assert (ret[4] < 0).all() and (ret[:4] == 0).all()  # first session end after 5 requests
    with pytest.raises(RetentionRLError, match="unknown reward"):
        RetentionGymEnv(tiny_sim, reward="clicks")


def test_bad_configuration(tiny_sim):
    with pytest.raises(RetentionRLError, match="fusion"):
        RetentionVectorEnv(tiny_sim, num_envs=2, action_mode="items")
    with pytest.raises(RetentionRLError, match="one user"):
        RetentionGymEnv(tiny_sim, n_users=4)
    with pytest.raises(RetentionRLError, match="disagree"):
        RetentionVectorEnv(tiny_sim, num_envs=2, n_users=3)


def test_bad_actions(tiny_sim):
    env = RetentionGymEnv(tiny_sim)
    env.reset(seed=0)
    with pytest.raises(ActionError, match=r"shape \(7,\).*got \(5,\)"):
        env.step(np.zeros(5, np.float32))
    with pytest.raises(ActionError, match=r"NaN.*index 2"):
        env.step(np.array([0, 0, np.nan, 0, 0, 0, 0], np.float32))
    with pytest.raises(ActionError, match="numeric"):
        env.step(["a"] * 7)
    venv = RetentionVectorEnv(tiny_sim, num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ActionError, match=r"shape \(3, 7\).*got \(3, 6\)"):
        venv.step(np.zeros((3, 6), np.float32))
    a = np.zeros((3, 7), np.float32)
    a[1, 4] = np.inf
    with pytest.raises(ActionError, match="NaN or infinite value at row 1, column 4"):
        venv.step(a)
    # A rejected action leaves the env usable.
    assert venv.step(np.zeros((3, 7), np.float32))[0].shape[0] == 3


def test_td3_short_run(tiny_sim):
    from stable_baselines3 import TD3
    from stable_baselines3.common.logger import Logger

    env = RetentionGymEnv(tiny_sim)
    model = TD3("MlpPolicy", env, learning_starts=50, seed=0, policy_kwargs=dict(net_arch=[32, 32]), device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-<time> folder per run
    model.learn(300)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (7,) and action in env.action_space
