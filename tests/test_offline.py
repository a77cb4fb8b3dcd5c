"""Offline loop: logged data, behaviour cloning, DIN as a click model and greedy policy, run directory, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from retentionrl.agents import AGENTS
from retentionrl.agents import bc as bc_mod
from retentionrl.agents import din as din_mod
from retentionrl.agents.base import FixedWeightsAgent, GaussianBehaviour, RandomAgent
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.metrics import roc_auc
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.training import offline as offline_mod
from retentionrl.training.buffer import obs_from_batch
from retentionrl.training.offline import EpochSampler, OfflineTrainConfig, generate_logs, train_offline

ENV = {"max_sessions": 2}
EVAL = {"n_users": 16, "n_episodes": 16, "seeds": [101, 102]}


def test_offline_agents_are_registered():
    assert {"bc", "din"} <= set(AGENTS)


def test_generate_logs_shapes_and_determinism(tiny_sim):
    a = generate_logs(tiny_sim, RandomAgent(seed=0), "kuaisim", n_users=4, steps=5, seed=3, env=ENV)
    b = generate_logs(tiny_sim, RandomAgent(seed=0), "kuaisim", n_users=4, steps=5, seed=3, env=ENV)
    H = tiny_sim.response.cfg.window
    assert a["action"].shape == (20, 7) and a["slate"].shape == (20, 6) and a["responses"].shape == (20, 6, 7)
    assert a["hist_items"].shape == a["next_hist_items"].shape == (20, H) and a["hist_resp"].shape == (20, H, 8)
    assert a["reward"].shape == a["session_end"].shape == a["return_day"].shape == (20,)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The slate shown is the newest part of the successor's history.
    assert torch.equal(a["next_hist_items"][:, -6:], a["slate"])
    c = generate_logs(tiny_sim, RandomAgent(seed=0), "kuaisim", n_users=4, steps=5, seed=4, env=ENV)
    assert not torch.equal(a["slate"], c["slate"])
    items = generate_logs(tiny_sim, RandomAgent(action_mode="items", seed=0), "kuaisim", n_users=4, steps=2, seed=3,
                          env=ENV)
    assert items["action"].dtype == torch.long and torch.equal(items["action"], items["slate"])


def _fit(agent, logs, epochs: int, batch_size: int, seed: int = 0) -> None:
    sampler = EpochSampler(len(logs["reward"]), batch_size, seed)
    for _ in range(epochs * sampler.batches_per_epoch):
        idx = sampler.next()
        agent.update({k: v[idx] for k, v in logs.items()})


def test_bc_recovers_a_constant_behaviour(tiny_sim):
    w = [1.0, 0, 0, 0, 0, 0, 0]
    logs = generate_logs(tiny_sim, FixedWeightsAgent(w), "kuaisim", n_users=16, steps=8, seed=0, env=ENV)
    agent = bc_mod.build(tiny_sim, {"hidden": [32], "state_dim": 32, "token_dim": 16, "batch_size": 32, "lr": 3e-3},
                         seed=0)
    _fit(agent, logs, epochs=30, batch_size=32)
    other = generate_logs(tiny_sim, RandomAgent(seed=1), "kuaisim", n_users=8, steps=2, seed=9, env=ENV, users="test")
    act = agent.act(obs_from_batch(other))
    assert act.shape == (16, 7)
    assert (act - torch.tensor(w)).abs().max() < 0.1
    assert torch.equal(act, agent.act(obs_from_batch(other)))  # deterministic


def test_din_factorised_attention_matches_the_concatenation(tiny_sim):
    agent = din_mod.build(tiny_sim, {"att_hidden": [8, 4]}, seed=0)
    logs = generate_logs(tiny_sim, RandomAgent(seed=0), "kuaisim", n_users=3, steps=2, seed=0, env=ENV)
    net, obs = agent.net, obs_from_batch(logs)
    table = net.item_table()
    p, h, mask = net.user_side(obs, table)
    t = table[logs["slate"]]
    torch.testing.assert_close(net.score(p, h, mask, t), net.score_naive(p, h, mask, t))
    # act in chunks = per-candidate scores.
    cand = torch.arange(50)
    obs.candidates = cand
    # Same init, scored in 6 x 5 blocks (1 user x 10 candidates: 1000 // (H=12 · F=8) = 10).
    small = din_mod.build(tiny_sim, {"att_hidden": [8, 4], "chunk_elems": 1000}, seed=0)
    scores = small.act(obs)
    assert scores.shape == (6, 50)
    with torch.no_grad():
        ref = net.score(p, h, mask, table[cand].expand(6, -1, -1))
    torch.testing.assert_close(scores, ref)
    torch.testing.assert_close(agent.act(obs), ref)


def test_din_learns_clicks_and_beats_random_items(tiny_sim):
    logs = generate_logs(tiny_sim, RandomAgent(seed=0), "kuaisim", n_users=512, steps=40, seed=1, env=ENV)
    held = generate_logs(tiny_sim, RandomAgent(seed=5), "kuaisim", n_users=64, steps=20, seed=2, env=ENV,
                         users="test")
    agent = din_mod.build(tiny_sim, {"batch_size": 256, "weight_decay": 1e-4}, seed=0)
    _fit(agent, logs, epochs=2, batch_size=256)
    with torch.no_grad():
        logits = agent.predict(obs_from_batch(held), held["slate"])
    auc = roc_auc(logits.flatten(), held["responses"][..., 0].flatten())
    # The simulator's own click logits reach ~0.60 on such exposures (tiny_sim: 1 training epoch, weak signal).
    assert auc > 0.55
    ev = EvalConfig(preset="kuaisim", env_overrides=ENV, **EVAL)
    greedy = evaluate_policy(agent, tiny_sim, ev)["mean"]["click_rate"]
    random = evaluate_policy(RandomAgent(action_mode="items", seed=0), tiny_sim, ev)["mean"]["click_rate"]
    assert greedy > random + 0.02


def test_din_refuses_a_target_with_one_label_before_writing_the_run(tiny_sim, tmp_path, monkeypatch):
    # MovieLens' case: every logged exposure is a click, so a click model has nothing to rank by.
    def all_clicked(*args, **kw):
        logs = generate_logs(*args, **kw)
        logs["responses"][..., 0] = 1.0
        return logs

    monkeypatch.setattr(offline_mod, "generate_logs", all_clicked)
    run = tmp_path / "din"
    with pytest.raises(RetentionRLError, match=r"target 'click' is all 1 over the 288 exposures in logs of 'random'"):
        train_offline(_cfg(algo="din", agent={}), tiny_sim, run, progress=False)
    assert not run.exists()  # refused before anything was written
    agent = din_mod.build(tiny_sim, {"target": "like"}, seed=0)
    logs = all_clicked(tiny_sim, RandomAgent(seed=0), "kuaisim", n_users=8, steps=6, seed=2, env=ENV)
    assert 0 < float(logs["responses"][..., BEHAVIOURS.index("like")].mean()) < 1  # like still varies: accepted
    agent.check_logs(logs, "test logs")


def _cfg(**kw) -> OfflineTrainConfig:
    base = dict(algo="bc", seed=2, env=ENV, behaviour="random", n_log_users=8, log_steps=6, total_updates=30,
                batch_size=16, log_every=5, eval_every=20, checkpoint_every=10, eval=EVAL,
                agent={"hidden": [16], "state_dim": 16, "token_dim": 8})
    base.update(kw)
    return OfflineTrainConfig(**base)


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_offline_run_directory_and_resume_matches_uninterrupted(tiny_sim, tmp_path):
    from retentionrl.training import load_trained

    full = tmp_path / "full"
    summary = train_offline(_cfg(), tiny_sim, full, progress=False)
    assert sorted(p.name for p in full.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "summary.json"]
    assert (full / "checkpoints" / "last.pt").is_file()
    assert summary["updates"] == 30 and summary["log_rows"] == 48
    # The summary's evaluation is the last eval record, and the saved final policy scores it again exactly.
    last = [r for r in _records(full) if r["event"] == "eval"][-1]
    assert last["step"] == 30 and summary["eval"] == {k: v for k, v in last.items() if k not in ("step", "event", "time")}
    _, agent = load_trained(str(full), tiny_sim)
    assert evaluate_policy(agent, tiny_sim, _cfg().eval_config())["mean"] == summary["eval"]
    events = [r["event"] for r in _records(full)]
    assert events[0] == "logs" and events.count("eval") == 2 and events.count("train") == 6

    part = tmp_path / "part"
    assert train_offline(_cfg(), tiny_sim, part, progress=False, stop_after=13) is None
    resumed = train_offline(_cfg(), tiny_sim, part, resume=True, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(_records(part)) == strip(_records(full))
    assert resumed["eval"] == summary["eval"]

    again = train_offline(_cfg(), tiny_sim, tmp_path / "again", progress=False)
    assert again["eval"] == summary["eval"]  # same seed, same numbers


def test_din_reaches_the_known_best_click_rate_of_the_synthetic_simulator():
    """Known optimum for the item-level DIN: on the state-independent synthetic simulator the best click rate is
    the mean click probability of the 6 most clickable items. DIN, supervised on clicks of random slates, must
    close at least half of the gap between random items and that optimum."""
    from retentionrl.simulator.synthetic import item_probabilities, make_synthetic_simulator

    sim = make_synthetic_simulator(n_users=64, n_items=300, seed=0)
    env = {"max_sessions": 2}
    logs = generate_logs(sim, RandomAgent(action_mode="items", seed=0), "kuaisim", n_users=256, steps=20, seed=1,
                         env=env)
    agent = din_mod.build(sim, {"batch_size": 256, "hidden": [32], "dim": 16}, seed=0)
    _fit(agent, logs, epochs=3, batch_size=256)
    ev = EvalConfig(preset="kuaisim", env_overrides=env, n_users=64, n_episodes=64, seeds=[101, 102])
    greedy = evaluate_policy(agent, sim, ev)["mean"]["click_rate"]
    random = evaluate_policy(RandomAgent(action_mode="items", seed=0), sim, ev)["mean"]["click_rate"]
    best = float(item_probabilities(sim)[:, 0].topk(6).values.mean())
    assert best - random > 0.1
    assert (greedy - random) / (best - random) >= 0.5, (greedy, random, best)


def test_bc_of_the_known_best_policy_beats_random_on_the_synthetic_simulator():
    """Known optimum for BC: cloning logs of the best fusion weights (with noise, so the logged actions vary)
    must close at least half of the random -> optimum gap in expected immediate reward."""
    from retentionrl.simulator.synthetic import (
        best_expected_reward, expected_reward_of_weights, make_synthetic_simulator, optimal_fusion_weights,
    )

    sim = make_synthetic_simulator(n_users=64, n_items=300, seed=0)
    a_star = optimal_fusion_weights(sim)

    class NoisyExpert(FixedWeightsAgent):
        gen = torch.Generator().manual_seed(0)

        def act(self, obs, explore=False):
            return (super().act(obs) + 0.2 * torch.randn(obs.user.shape[0], 7, generator=self.gen)).clamp(-1, 1)

    logs = generate_logs(sim, NoisyExpert(a_star.tolist()), "kuaisim", n_users=32, steps=10, seed=0, env=ENV)
    agent = bc_mod.build(sim, {"hidden": [32], "state_dim": 16, "token_dim": 8, "batch_size": 64, "lr": 3e-3}, seed=0)
    _fit(agent, logs, epochs=20, batch_size=64)
    obs = obs_from_batch(generate_logs(sim, RandomAgent(seed=1), "kuaisim", n_users=16, steps=2, seed=9, env=ENV))
    cloned = float(torch.tensor([expected_reward_of_weights(sim, a) for a in agent.act(obs)]).mean())
    g = torch.Generator().manual_seed(0)
    random = float(torch.tensor([expected_reward_of_weights(sim, torch.rand(7, generator=g)) for _ in range(64)]).mean())
    best = best_expected_reward(sim)
    assert (cloned - random) / (best - random) >= 0.5, (cloned, random, best)


def test_generate_logs_stores_the_log_density_of_a_gaussian_behaviour(tiny_sim):
    w, sigma = [1.0, 0.5, 0, 0, 0.2, 0, 0], 0.3
    behaviour = GaussianBehaviour(FixedWeightsAgent(w), sigma)
    a = generate_logs(tiny_sim, behaviour, "kuaisim", n_users=8, steps=10, seed=3, env=ENV)
    b = generate_logs(tiny_sim, behaviour, "kuaisim", n_users=8, steps=10, seed=3, env=ENV)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same logs
    lp = a["behaviour_log_prob"]
    assert lp.shape == (80,) and lp.dtype == torch.float32
    # log N(a; w, σ² I_7) = -Σ_j (a_j - w_j)² / (2σ²) - 7 log σ - (7/2) log 2π, by hand from the logged actions.
    z = a["action"] - torch.tensor(w)
    hand = -(z**2).sum(1) / (2 * sigma**2) - 7 * math.log(sigma) - 3.5 * math.log(2 * math.pi)
    torch.testing.assert_close(lp, hand, atol=1e-4, rtol=0)
    # The logged actions are N(w, σ²): 560 draws, sd of the mean ≈ 0.013, of the sd ≈ 0.009.
    assert z.mean().abs() < 0.05 and abs(float(z.std()) - sigma) < 0.04
    c = generate_logs(tiny_sim, behaviour, "kuaisim", n_users=8, steps=10, seed=4, env=ENV)
    assert not torch.equal(a["action"], c["action"])
    # A behaviour without a density adds no key; the other keys are those of a density-free behaviour.
    plain = generate_logs(tiny_sim, FixedWeightsAgent(w), "kuaisim", n_users=8, steps=10, seed=3, env=ENV)
    assert "behaviour_log_prob" not in plain and set(a) - set(plain) == {"behaviour_log_prob"}
    with pytest.raises(RetentionRLError, match="base agent must be a fusion agent"):
        GaussianBehaviour(RandomAgent(action_mode="items"), 0.1)
    with pytest.raises(RetentionRLError, match="sigma must be a positive number or 7 of them"):
        GaussianBehaviour(FixedWeightsAgent(w), [0.1, 0.2])
    with pytest.raises(RetentionRLError, match="sigma must be a positive number"):
        GaussianBehaviour(FixedWeightsAgent(w), 0.0)
