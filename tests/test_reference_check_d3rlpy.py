"""benchmarks/reference_check_d3rlpy.py without d3rlpy: the dataset conversion, the network sizes, the settings
mapping, the TorchScript wrapper and the report."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import load_benchmark


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rc():
    """benchmarks/reference_check_d3rlpy.py as a module."""
    yield load_benchmark("reference_check_d3rlpy")
    sys.modules.pop("reference_check_d3rlpy", None)


def d3rlpy_transitions(arrays: dict[str, np.ndarray]) -> list[tuple]:
    """d3rlpy 2.8.1's rule, replayed: EpisodeGenerator cuts after every terminal or timeout row; an episode that
    ended by timeout yields transitions 0..L-2 (``transition_count = length - 1``), BasicTransitionPicker pairs
    row i with row i + 1 as s'. Returns (s, a, r, s') tuples of floats."""
    ends = np.flatnonzero(np.logical_or(arrays["terminals"], arrays["timeouts"]))
    assert not arrays["terminals"].any()
    out, start = [], 0
    for end in ends:
        for i in range(start, end):  # rows start..end, transitions start..end-1
            out.append((tuple(arrays["observations"][i]), tuple(arrays["actions"][i]),
                        float(arrays["rewards"][i, 0]), tuple(arrays["observations"][i + 1])))
        start = end + 1
    assert start == len(arrays["timeouts"])  # nothing left after the last timeout
    return out


def test_episode_reordering_by_hand(rc):
    """2 users x 4 requests, step-major (row t * 2 + b); user 0's episode ends at request t = 1 (row 2)."""
    n_users, N = 2, 8
    obs = np.arange(N, dtype=np.float32)[:, None]  # the state of row r is [r]
    episode_end = np.zeros(N, bool)
    episode_end[2] = True
    nxt = np.empty_like(obs)
    for r in range(N):  # within an episode, the successor is the same user's next row; else a fresh state
        nxt[r] = obs[r + n_users] if r + n_users < N and not episode_end[r] else 100 + r
    action = np.stack([np.arange(N), -np.arange(N)], 1).astype(np.float32)  # (N, 2)
    reward = 0.5 * np.arange(N, dtype=np.float32)
    assert [list(s) for s in rc.episode_segments(episode_end, n_users)] == [[0, 2], [4, 6], [1, 3, 5, 7]]
    out = rc.d3rlpy_arrays(obs, nxt, action, reward, episode_end, n_users)
    assert out["source"].tolist() == [0, 2, -1, 4, 6, -1, 1, 3, 5, 7, -1]
    assert out["observations"][:, 0].tolist() == [0, 2, 102, 4, 6, 106, 1, 3, 5, 7, 107]
    assert out["timeouts"].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    assert out["terminals"].tolist() == [0] * 11
    assert out["rewards"][:, 0].tolist() == [0, 1, 0, 2, 3, 0, 0.5, 1.5, 2.5, 3.5, 0]
    assert out["actions"][:, 0].tolist() == [0, 2, 0, 4, 6, 0, 1, 3, 5, 7, 0]
    assert out["rewards"].shape == (11, 1) and out["observations"].dtype == np.float32
    # d3rlpy's transitions are exactly ours, each once: the episode ends keep their true successor.
    ours = sorted((tuple(obs[r]), tuple(action[r]), float(reward[r]), tuple(nxt[r])) for r in range(N))
    assert sorted(d3rlpy_transitions(out)) == ours
    with pytest.raises(Exception, match="step-major"):
        rc.episode_segments(np.zeros(7, bool), 2)


def _tiny_settings(rc, algo="td3bc", **over):
    ev = {"n_users": 4, "n_episodes": 4, "seeds": [1], "users": "test"}
    return rc.settings_for(algo, "tiny", **{"n_log_users": 4, "log_steps": 35, "updates": 2, "batch_size": 16,
                                             "eval": ev, **over})


def test_dataset_from_real_logs(rc, tiny_sim, monkeypatch, tmp_path):
    s = _tiny_settings(rc)
    cfg = rc.offline_config(s, seed=3)
    logs = rc.cell_logs(cfg, tiny_sim)
    # The logs are those train_offline trains on (same call, same seed).
    import retentionrl.training.offline as offline

    seen = {}
    real = offline.generate_logs

    def spy(*args, **kwargs):
        seen["logs"] = real(*args, **kwargs)
        return seen["logs"]

    monkeypatch.setattr(offline, "generate_logs", spy)
    offline.train_offline(cfg, tiny_sim, tmp_path / "run", progress=False)
    assert seen["logs"].keys() == logs.keys()
    assert all(torch.equal(seen["logs"][k], logs[k]) for k in logs)

    layout = rc._layout(cfg, tiny_sim)
    N, B = len(logs["reward"]), cfg.n_log_users
    assert N == 4 * 35 and logs["episode_end"].any()  # 30-request episodes: one end per user, then a log cut
    x = rc.flat_features(rc.obs_from_batch(logs), layout).numpy()
    x2 = rc.flat_features(rc.obs_from_batch(logs, "next_"), layout).numpy()
    within = np.flatnonzero(~logs["episode_end"].numpy()[: N - B])
    assert np.array_equal(x2[within], x[within + B])  # s' of row t is the state of the same user's row t + 1
    arrays = rc.dataset_from_logs(logs, layout, B, 10.0, 0.0)
    assert len(arrays["timeouts"]) == N + 2 * B and arrays["timeouts"].sum() == 2 * B
    r = 10.0 * logs["retention_reward"].numpy()
    assert (r != 0).any() and (r[logs["episode_end"].numpy()] != 0).all()  # episode ends carry the reward
    a = logs["action"].numpy()
    ours = sorted((tuple(x[i]), tuple(a[i]), float(r[i]), tuple(x2[i])) for i in range(N))
    assert sorted(d3rlpy_transitions(arrays)) == ours
    # immediate_weight mixes in the immediate reward, as mixed_reward does
    mixed = rc.dataset_from_logs(logs, layout, B, 10.0, 0.5)
    keep = arrays["source"] >= 0
    want = 10.0 * logs["retention_reward"].numpy() + 0.5 * logs["reward"].numpy()
    assert np.allclose(mixed["rewards"][keep, 0], want[arrays["source"][keep]])


@pytest.mark.parametrize("algo", ["td3bc", "iql", "cql", "bcq"])
def test_our_flat_nets_match_d3rlpy_formula(algo, rc, tiny_sim):
    from retentionrl.training.run import build_agent

    for hidden in ([128, 32], [16, 8, 4]):
        s = _tiny_settings(rc, algo, hidden=hidden)
        cfg = rc.offline_config(s, 0)
        agent = build_agent(algo, tiny_sim, cfg.agent, 0, cfg.env_config(), "test")
        D = rc._layout(cfg, tiny_sim).dim
        formula = rc.d3rlpy_param_formula(algo, D, hidden)
        assert rc.our_params(agent) == rc.expected_ours(algo, formula)
    # By hand for [128, 32]: encoders d*128+128 + 128*32+32, heads 32*o+o.
    enc = lambda d: d * 128 + 128 + 4128  # noqa: E731
    f = rc.d3rlpy_param_formula(algo, D, [128, 32])
    assert f["critic"] == 2 * (enc(D + 7) + 33)
    assert f["actor"] == {"td3bc": enc(D) + 231, "iql": enc(D) + 231 + 7, "cql": enc(D) + 462,
                          "bcq": enc(D + 7) + 231}[algo]
    if algo == "iql":
        assert f["value"] == enc(D) + 33
    if algo == "bcq":
        assert f["vae"] == enc(D + 7) + 2 * (32 * 14 + 14) + enc(D + 14) + 231


def test_settings_map_hyperparameters(rc):
    s = {a: rc.settings_for(a, "b") for a in rc.ALGOS}
    for a, x in s.items():
        assert (x["updates"], x["batch_size"], x["n_log_users"], x["log_steps"]) == (1500, 256, 256, 60)
        assert x["agent"]["encoder"] == "flat" and x["agent"]["retention_weight"] == 10.0
        assert x["agent"]["immediate_weight"] == 0.0 and x["hidden"] == [128, 32]
        d = x["d3rlpy"]
        assert (d["gamma"], d["tau"], d["batch_size"], d["n_critics"]) == (0.9, 0.005, 256, 2)
    td3bc = {"alpha": 2.5, "actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "target_smoothing_sigma": 0.2,
             "target_smoothing_clip": 0.5, "update_actor_interval": 2}
    assert {k: s["td3bc"]["d3rlpy"][k] for k in td3bc} == td3bc
    iql = s["iql"]["d3rlpy"]
    assert (iql["expectile"], iql["weight_temp"], iql["max_weight"], iql["critic_learning_rate"]) == (0.7, 3.0, 100.0, 3e-4)
    cql = s["cql"]["d3rlpy"]
    assert (cql["conservative_weight"], cql["alpha_learning_rate"], cql["initial_alpha"]) == (5.0, 0.0, 1.0)
    assert (cql["temp_learning_rate"], cql["initial_temperature"], cql["n_action_samples"]) == (1e-4, 1.0, 10)
    assert (cql["actor_learning_rate"], cql["critic_learning_rate"], cql["soft_q_backup"]) == (1e-4, 3e-4, False)
    bcq = s["bcq"]["d3rlpy"]
    assert (bcq["n_action_samples"], bcq["action_flexibility"], bcq["lam"], bcq["beta"]) == (10, 0.05, 0.75, 0.5)
    assert (bcq["imitator_learning_rate"], bcq["update_actor_interval"], bcq["rl_start_step"]) == (1e-3, 1, 0)
    with pytest.raises(ValueError, match="steps"):
        rc.settings_for("bcq", "b", steps=3)
    from dataclasses import replace

    from retentionrl.agents.td3bc import TD3BCConfig

    with pytest.raises(SystemExit, match="terminal 'session'"):  # d3rlpy's dataset here has no terminals
        rc.d3rlpy_kwargs("td3bc", replace(TD3BCConfig(), terminal="session"), 256)


def test_torchscript_policy_is_evaluated_like_the_agent(rc, tiny_sim):
    """A traced copy of our TD3+BC actor's MLP, wrapped as d3rlpy's saved policy is, scores exactly as the agent."""
    from retentionrl.evaluation.protocol import evaluate_policy
    from retentionrl.training.run import build_agent

    cfg = rc.offline_config(_tiny_settings(rc), 0)
    agent = build_agent("td3bc", tiny_sim, cfg.agent, 0, cfg.env_config(), "test")
    layout = rc._layout(cfg, tiny_sim)
    traced = torch.jit.trace(agent.actor.net, torch.rand(1, layout.dim))
    policy = rc.TorchScriptPolicy(traced, layout)
    ev = cfg.eval_config()
    assert evaluate_policy(policy, tiny_sim, ev)["mean"] == evaluate_policy(agent, tiny_sim, ev)["mean"]


def test_report_from_fake_cells(rc, tmp_path):
    s = rc.settings_for("iql", "b", updates=20)
    ours, ref = (rc.Cell("iql", impl, 0, s, str(tmp_path)) for impl in rc.IMPLS)
    params = {"actor": 100, "critic": 200, "value": 50}
    for c, rt in ((ours, 2.25), (ref, 2.5)):
        c.dir.mkdir(parents=True)
        ev = {"return_time": rt, "retention": 0.5, "click_rate": 0.75}
        rc.write_json_atomic(c.result_path, {"settings": s, "seed": 0, "eval": ev, "train_seconds": 3.0,
                                             "updates": 20, "params": params})
    md = rc.report([ours, ref])
    # No ensemble in these results: the two disagreement columns read "–".
    assert "| IQL | ours | 0 | 2.2500 | 0.5000 | 0.7500 | – | – | 3.0 | 20 | actor 100 / critic 200 / value 50 |" in md
    assert "| IQL | d3rlpy | 0 | 2.5000 | 0.5000 | 0.7500 | – | – | 3.0 | 20 |" in md
    assert "not enough finished seeds" in md
    # A second seed each: Welch's test of [2.25, 2.35] vs [2.5, 2.6], difference -0.25 days.
    more = [rc.Cell("iql", impl, 1, s, str(tmp_path)) for impl in rc.IMPLS]
    for c, rt in zip(more, (2.35, 2.6)):
        c.dir.mkdir(parents=True)
        rc.write_json_atomic(c.result_path, {"settings": s, "seed": 1, "train_seconds": 3.0, "updates": 20,
                                             "params": params,
                                             "eval": {"return_time": rt, "retention": 0.5, "click_rate": 0.75,
                                                      "disagreement_click": 0.2, "disagreement_return": 0.1}})
    md = rc.report([ours, ref, *more])
    # Seed 1 has the disagreement, seed 0 not: a mean over part of the seeds would mislead, so "–".
    assert "| IQL | ours | 0,1 | 2.3000 ± 0.6353 | 0.5000 ± 0.0000 | 0.7500 ± 0.0000 | – | – |" in md  # t_{0.975, 1} * 0.0707 / sqrt(2) = 12.706 * 0.05
    only1 = rc.report(more)
    assert "| IQL | ours | 1 | 2.3500 | 0.5000 | 0.7500 | 0.2000 | 0.1000 | 3.0 | 20 |" in only1
    assert "ours − d3rlpy return time = -0.2500 days, Welch t = -3.54" in md and "CIs overlap" in md
    other = rc.Cell("iql", "ours", 0, rc.settings_for("iql", "b", updates=21), str(tmp_path))
    with pytest.raises(SystemExit, match="updates"):
        other.finished()
