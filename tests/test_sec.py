"""SEC: hand values of its terms (nuclear-norm and entropy AER, stratification, every branch of the selection
rule, the cap by r_h, δ_k), k-means against scikit-learn's own answer, and the known-answer case: users of three
types whose retention-best actions are known, half of each type experts (who played it, and returned on the
day of their type) and half not (random actions, late returns), the type visible in the state and expertise not.
SEC recovers each type's best action on every state of that type; one BC on all users cannot; AER raises the
diversity of the cloned actions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from retentionrl.agents import make_agent
from retentionrl.agents.sec import (
    SEC,
    centroid_threshold,
    entropy_aer,
    level_distances,
    nuclear_aer,
    select_level,
    user_levels,
)
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.synthetic import make_synthetic_simulator
from retentionrl.spaces import obs_from_batch
from retentionrl.training.offline import EpochSampler, generate_logs

SMALL = {"hidden": [32], "state_dim": 16, "token_dim": 8}
BEST = torch.eye(7)[:3] * 0.8 + 0.1  # the best fusion action of user type 1, 2, 3 (rows)


# --- hand values ----------------------------------------------------------------------------------------------
def test_nuclear_aer_is_minus_the_sum_of_singular_values():
    assert float(nuclear_aer(torch.tensor([[3.0, 0.0], [0.0, -4.0]]))) == pytest.approx(-7.0)
    assert float(nuclear_aer(torch.ones(2, 2))) == pytest.approx(-2.0)  # rank one: singular values 2, 0
    # Gradient -U V^T: for a diagonal positive matrix, minus the identity.
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    nuclear_aer(a).backward()
    assert torch.allclose(a.grad, -torch.eye(2))
    assert float(nuclear_aer(torch.zeros(0, 7))) == 0.0


def test_entropy_aer_is_the_negative_entropy_of_the_batch_mean():
    sharp = torch.tensor([[50.0, 0.0], [0.0, 50.0]])  # two confident rows on different classes: mean (1/2, 1/2)
    assert float(entropy_aer(sharp)) == pytest.approx(-math.log(2), abs=1e-6)
    assert float(entropy_aer(sharp[:1])) == pytest.approx(0.0, abs=1e-6)  # one class only: zero entropy
    p = torch.tensor([0.2, 0.3, 0.5])
    assert float(entropy_aer(p.log()[None])) == pytest.approx(float((p * p.log()).sum()), abs=1e-6)


def test_user_levels_by_return_day_and_by_active_days():
    #          u0: 1, 1   u1: 1, 2   u2: 3     u3: 4, 3   u4: no return   u5: 2 (a non-end row with a day is ignored)
    user = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 5, 5])
    end = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    day = torch.tensor([1, 1, 1, 2, 3, 4, 3, 0, 2, 9])
    users, level = user_levels(user, end, day, levels=3)
    assert users.tolist() == [0, 1, 2, 3, 4, 5]
    assert level.tolist() == [1, 2, 3, 0, 0, 2]  # means 1, 1.5, 3, 3.5, none, 2 -> ceil if <= 3
    cal = torch.tensor([0, 1, 0, 0, 5, 1, 2, 3, 4, 4])  # distinct days: u0 2, u1 1, u2 1, u3 2, u4 1, u5 1
    _, act = user_levels(user, end, day, 2, "active_days", cal, [2, 1])
    assert act.tolist() == [1, 2, 2, 1, 2, 2]
    with pytest.raises(RetentionRLError, match="'day' key"):
        user_levels(user, end, day, 2, "active_days")


def test_selection_rule_every_branch_and_the_history_cap():
    delta = torch.tensor([1.0, 1.0, 1.0])
    d = torch.tensor([
        [0.5, 0.1, 0.1],  # level 1 within: the first within wins although level 2 is nearer
        [2.0, 0.5, 0.1],  # level 1 out, level 2 within
        [2.0, 3.0, 1.5],  # none within: the nearest level
        [2.0, 3.0, 0.2],  # level 3 within
    ])
    assert select_level(d, delta).tolist() == [1, 2, 3, 3]
    r_h = torch.tensor([4, 1, 2, 4])  # min(k*, r_h): a user who came back the next day gets level 1
    assert select_level(d, delta, r_h).tolist() == [1, 1, 2, 3]


def test_level_distances_and_thresholds_on_hand_placed_centroids():
    centroids = torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[0.0, 5.0], [99.0, 99.0]]])
    valid = torch.tensor([[True, True], [True, False]])  # level 2's second slot is padding
    z = torch.tensor([[1.0, 0.0], [9.0, 0.0]])
    assert torch.allclose(level_distances(z, centroids, valid), torch.tensor([[1.0, math.sqrt(26)],
                                                                               [1.0, math.sqrt(106)]]))
    assert centroid_threshold(np.array([[0.0, 0.0], [3.0, 4.0]]), np.zeros((1, 2))) == pytest.approx(2.5)
    tri = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # pairwise 5, 10, 5: mean 20/3
    assert centroid_threshold(tri, tri) == pytest.approx(10 / 3)
    one = np.array([[0.0, 0.0]])
    assert centroid_threshold(one, np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(1.0)


# --- the known-answer case ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def typed_logs():
    """Logs of 96 users of the synthetic simulator; user u has type t = u % 3 + 1 (profile code, the only user
    feature left) and is an expert iff (u // 3) is even: experts played BEST[t] (+ noise 0.03) and returned after
    t days, the others played uniform [0, 1]^7 and returned after 6 days. The history is the same random rollout
    for both, so nothing in the state tells an expert from a non-expert of the same type."""
    sim = make_synthetic_simulator(n_users=96, n_items=300, seed=0)
    logs = generate_logs(sim, make_agent("random", sim, seed=0), "kuaisim", n_users=96, steps=30, seed=0,
                         users="all")
    u = logs["user"]
    t = u % 3 + 1
    expert = (u // 3) % 2 == 0
    g = torch.Generator().manual_seed(0)
    noisy = BEST[t - 1] + 0.03 * torch.randn(len(u), 7, generator=g)
    logs["action"] = torch.where(expert[:, None], noisy, torch.rand(len(u), 7, generator=g))
    logs["return_day"] = torch.where(logs["session_end"], torch.where(expert, t, torch.full_like(t, 6)), 0)
    for p in ("", "next_"):
        logs[p + "profile_cat"] = torch.stack([t, torch.ones_like(t)], 1)
        logs[p + "profile_num"] = torch.zeros_like(logs[p + "profile_num"])
    return sim, logs, t, expert


def _fit(agent, logs, updates: int, seed: int = 0) -> None:
    sampler = EpochSampler(len(logs["reward"]), agent.batch_size, seed)
    for _ in range(updates):
        idx = sampler.next()
        agent.update({k: v[idx] for k, v in logs.items()})


def _per_type_error(actions, t):
    return [float(((actions[t == k] - BEST[k - 1]) ** 2).sum(1).mean()) for k in (1, 2, 3)]


def test_sec_recovers_each_level_action_where_bc_on_all_users_cannot(typed_logs):
    sim, logs, t, expert = typed_logs
    sec = make_agent("sec", sim, {**SMALL, "lam": 0.0, "history_cap": False, "lr": 1e-3, "delta_fraction": 0.0},
                     seed=0)
    train = sec.prepare_logs(dict(logs))
    # Stratification: the experts of type k, and only they, are level k.
    lvl = sec.user_level[torch.searchsorted(sec.user_ids, logs["user"])]
    assert torch.equal(lvl, torch.where(expert, t, 0))
    assert len(train["reward"]) == int(expert.sum())
    _fit(sec, train, 600)
    bc = make_agent("bc", sim, {**SMALL, "batch_size": 128}, seed=0)
    _fit(bc, logs, 600)
    obs = obs_from_batch(logs)
    # Head k on every state of type k (experts' and the others'): the level's cloned action.
    with torch.no_grad():
        heads = sec.net.heads(sec.net.enc(obs), t - 1)
    head_err, bc_err = _per_type_error(heads, t), _per_type_error(bc.act(obs), t)
    # BC clones everyone: E[a | type] is halfway to the random players' mean, an error of ~0.14 per type.
    assert max(head_err) < 0.02, head_err
    assert min(bc_err) > 0.08, bc_err
    # The selection, in f_φ-space: with the nearest level (delta_fraction 0) most states of type k get level k
    # (the encoder is trained to predict actions, not to separate levels, so not all).
    with torch.no_grad():
        chosen = sec.levels_for(obs, sec.net.enc(obs)) + 1
    hit = [float((chosen[t == k] == k).float().mean()) for k in (1, 2, 3)]
    assert min(hit) > 0.6, hit
    # With the paper's δ_k (half the mean distance between a level's centroids) the first-within rule sends
    # almost every state to level 1 here: the types lie closer together in f_φ-space than that.
    sec.cfg.delta_fraction, sec._fit_at = 0.5, -1
    sec.act(obs)
    assert sec.last_levels[0] > 0.9


def test_action_entropy_regularisation_raises_the_diversity_of_cloned_actions(typed_logs):
    """Diversity = nuclear norm of the centred actions on 512 fixed states (seeds 0 and 1 at λ = 0: 21.17 and
    21.06). λ = 1 and 3 raise it to ~26.4 and ~39, at the price of BC error (the trade-off Fig. 6 sweeps)."""
    sim, logs, t, expert = typed_logs
    norms, errs = {}, {}
    for lam in (0.0, 1.0, 3.0):
        sec = make_agent("sec", sim, {**SMALL, "lam": lam, "history_cap": False, "lr": 1e-3, "multi_level": False},
                         seed=0)
        _fit(sec, sec.prepare_logs(dict(logs)), 400)
        a = sec.act(obs_from_batch({k: v[:512] for k, v in logs.items()}))
        norms[lam] = float(torch.linalg.matrix_norm(a - a.mean(0), ord="nuc"))
        errs[lam] = max(_per_type_error(a, t[:512]))
    assert norms[1.0] > 1.15 * norms[0.0] and norms[3.0] > 1.3 * norms[1.0], norms
    assert errs[0.0] < 0.005 < errs[1.0] < errs[3.0], errs


def test_kmeans_centroids_match_scikit_learn_and_survive_the_checkpoint(typed_logs, tmp_path):
    sim, logs, t, expert = typed_logs
    cfg = {**SMALL, "states_per_cluster": 100, "history_cap": True}
    sec = make_agent("sec", sim, cfg, seed=3)
    train = sec.prepare_logs(dict(logs))
    _fit(sec, train, 20)
    sec.fit_centroids()
    with torch.no_grad():
        z = sec.net.enc(obs_from_batch(sec._cluster_obs)).double().numpy()
    z1 = z[(sec._cluster_level == 0).numpy()]
    ref = KMeans(n_clusters=len(z1) // 100, n_init=1, max_iter=100, random_state=3).fit(z1).cluster_centers_
    got = sec.centroids[0][sec.valid[0]].numpy()
    assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-5)
    # The checkpoint holds them: a fresh agent with no logs acts the same.
    from retentionrl.training.checkpoint import load_checkpoint, save_checkpoint
    save_checkpoint(tmp_path / "ck.pt", {"agent": sec.state_dict()})
    fresh = make_agent("sec", sim, cfg, seed=9)
    fresh.load_state_dict(load_checkpoint(tmp_path / "ck.pt")["agent"])
    obs = obs_from_batch({k: v[:64] for k, v in logs.items()})
    assert torch.equal(fresh.act(obs), sec.act(obs))


def test_sec_refuses_logs_it_cannot_clone(typed_logs):
    sim, logs, _, _ = typed_logs
    sec = make_agent("sec", sim, SMALL)
    with pytest.raises(RetentionRLError, match="fusion actions"):
        sec.check_logs({**logs, "action": logs["slate"]}, "the logs")
    late = {**logs, "return_day": torch.where(logs["session_end"], 9, 0)}
    with pytest.raises(RetentionRLError, match="no expert users"):
        sec.prepare_logs(late)
    assert isinstance(sec, SEC)


def test_history_level_reads_the_gap_that_started_the_session(typed_logs):
    sim, logs, _, _ = typed_logs
    sec = make_agent("sec", sim, SMALL)
    obs = obs_from_batch({k: v[:3] for k, v in logs.items()})
    obs.session_index = torch.tensor([0, 2, 1])
    obs.days_since_last = torch.tensor([0.0, 1.0, 5.0])
    assert sec.history_level(obs).tolist() == [4, 1, 5]  # first session: K + 1, no cap


def test_offline_run_of_sec_resumes_exactly(tiny_sim, tmp_path):
    from retentionrl.training.offline import OfflineTrainConfig, train_offline

    def cfg():
        return OfflineTrainConfig(algo="sec", seed=1, env={"max_sessions": 3}, behaviour="random", n_log_users=16,
                                  log_steps=15, total_updates=30, log_every=5, eval_every=20, checkpoint_every=10,
                                  eval={"n_users": 16, "n_episodes": 16, "seeds": [101]},
                                  agent={**SMALL, "batch_size": 32, "states_per_cluster": 5})

    full = train_offline(cfg(), tiny_sim, tmp_path / "full", progress=False)
    assert 0 < full["train_rows"] < full["log_rows"] == 240  # only the experts' rows are cloned
    assert train_offline(cfg(), tiny_sim, tmp_path / "part", progress=False, stop_after=13) is None
    resumed = train_offline(cfg(), tiny_sim, tmp_path / "part", resume=True, progress=False)
    assert resumed["eval"] == full["eval"]
    read = lambda p: [{k: v for k, v in json.loads(x).items() if k != "time"}  # noqa: E731
                      for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert read(tmp_path / "part") == read(tmp_path / "full")


def test_cluster_ranker_scores_are_the_ranking_stage_times_the_expert_cluster_probability(tiny_sim):
    from retentionrl.agents.sec import ClusterRanker

    env = tiny_sim.make_env("kuaisim", n_users=8, users="train")
    obs = env.reset(seed=0)
    sec = make_agent("sec", tiny_sim, {**SMALL, "action": "discrete", "n_actions": 4, "multi_level": False})
    labels = torch.arange(tiny_sim.n_items) % 4
    ranker = ClusterRanker(sec, labels, tiny_sim.response, beta=0.0)
    # beta 0: the click probability the env's click-ranking (fusion weights [1, 0, ...]) ranks by, item for item.
    w = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0]]).expand(8, -1)
    with torch.no_grad():
        ref = env._fusion_scores(env.model.queries(env._state)[:, :7], w.contiguous(), obs.candidates)
    assert torch.allclose(ranker.act(obs).exp(), ref, atol=1e-5)
    # beta 1 with an expert sure of cluster 2: the top of the ranking is cluster 2's items, in click order.
    with torch.no_grad():
        sec.net.heads.biases[-1][0] = torch.tensor([0.0, 0.0, 30.0, 0.0])
    ranker.beta = 1.0
    top = obs.candidates[ranker.act(obs).topk(6, dim=1).indices]
    assert bool((labels[top] == 2).all())
    in2 = obs.candidates[labels[obs.candidates] == 2]
    best2 = in2[ref[:, labels[obs.candidates] == 2].topk(6, dim=1).indices]
    assert torch.equal(top, best2)


def test_discrete_sec_clones_each_level_class_where_bc_on_all_users_blurs_it(typed_logs):
    """The cluster form: experts of type t were shown class t - 1 of 6, the others a uniform class. Head k puts
    most of its mass on its class; one BC over everyone can put at most ~1/2 + 1/12 there."""
    sim, logs, t, expert = typed_logs
    g = torch.Generator().manual_seed(1)
    logs = {**logs, "action": torch.where(expert, t - 1, torch.randint(0, 6, t.shape, generator=g))}
    sec = make_agent("sec", sim, {**SMALL, "action": "discrete", "n_actions": 6, "lr": 1e-3}, seed=0)
    _fit(sec, sec.prepare_logs(dict(logs)), 300)
    bc = make_agent("sec", sim, {**SMALL, "action": "discrete", "n_actions": 6, "lr": 1e-3, "levels": 10,
                                 "multi_level": False, "lam": 0.0}, seed=0)
    train = bc.prepare_logs(dict(logs))
    assert len(train["reward"]) == len(logs["reward"])  # every user has a return within 10 days: BC on all
    _fit(bc, train, 300)
    obs = obs_from_batch(logs)
    with torch.no_grad():
        p_sec = torch.softmax(sec.net.heads(sec.net.enc(obs), t - 1), 1).gather(1, (t - 1)[:, None]).squeeze(1)
    p_bc = bc.class_probs(obs).gather(1, (t - 1)[:, None]).squeeze(1)
    assert float(p_sec.mean()) > 0.85 and float(p_bc.mean()) < 0.7, (float(p_sec.mean()), float(p_bc.mean()))


def test_sec_lowers_return_time_from_the_retention_signal_where_bc_and_click_ranking_do_not():
    """The retention case of the synthetic simulator (reward = clicks, the return law reads long views; exact E[d]
    of a constant action in closed form: click-ranking 4.272 days, the optimum 1.534). Logs: every user served
    its own fixed random fusion policy, so the users who came back soonest are those whose weights favour long
    views. SEC clones them and gets most of the way to the optimum; BC clones everyone (about the random mean)."""
    from retentionrl.agents.base import RandomAgent
    from retentionrl.simulator.env import preset
    from retentionrl.simulator.synthetic import CLICK, RETENTION_ENV, expected_return_day_of_weights

    sim = make_synthetic_simulator(n_users=256, n_items=300, seed=0)
    cfg = preset("kuaisim", **RETENTION_ENV)
    logs = generate_logs(sim, RandomAgent(seed=0, n_users=sim.n_users), cfg, n_users=128, steps=60, seed=0,
                         users="train")
    small = {"hidden": [32], "state_dim": 16, "token_dim": 8, "lr": 1e-3}
    sec = make_agent("sec", sim, small, seed=0, env=cfg)
    _fit(sec, sec.prepare_logs(dict(logs)), 400)
    bc = make_agent("bc", sim, {**small, "batch_size": 128}, seed=0, env=cfg)
    _fit(bc, logs, 400)
    obs = sim.make_env(cfg.__class__(**{**cfg.__dict__, "n_users": 64, "users": "test"})).reset(seed=5)
    click, best = expected_return_day_of_weights(sim, CLICK, cfg), 1.5339
    closed = {name: (click - sum(expected_return_day_of_weights(sim, a, cfg) for a in agent.act(obs)) / 64) / (click - best)
              for name, agent in (("sec", sec), ("bc", bc))}
    assert closed["sec"] > 0.5 and closed["bc"] < 0.25, closed  # measured: 0.94 and 0.05


def test_bad_sec_and_per_user_configs_are_one_line_errors(tmp_path, capsys):
    from retentionrl.cli import main

    sim = make_synthetic_simulator(n_users=8, n_items=40, seed=0)
    bundle = str(sim.save(tmp_path / "syn"))
    for i, (text, expect) in enumerate([
        ("algo: sec\nagent: {levels: 0}\n", "agent: levels must be >= 1, got 0"),
        ("algo: sec\nagent: {lvls: 3}\n", "unknown key 'lvls'"),
        ("algo: random\nagent: {per_user: 'yes'}\n", "agent: per_user must be true or false, got 'yes'"),
    ]):
        cfg = tmp_path / f"bad{i}.yaml"
        cfg.write_text(text)
        out = tmp_path / f"run{i}"
        assert main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err and str(cfg) in err, err
        assert not out.exists()
