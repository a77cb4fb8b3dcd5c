"""Every fusion agent beats random on a tiny synthetic simulator whose best fusion weight is known.

The simulator (:mod:`retentionrl.simulator.synthetic`) is state-independent: each item has fixed behaviour
probabilities and the best fusion action is ``a* ∝ reward_weights``. Agents are trained briefly through
:func:`~retentionrl.training.online.train` on the immediate reward only and evaluated with the evaluation
protocol; every learning agent must close at least half of the gap between a uniform-random-weights policy and
the optimum.
"""

from __future__ import annotations

import re

import pytest
import torch

from retentionrl.agents import AGENTS, make_agent
from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.synthetic import (
    best_expected_reward,
    expected_reward_of_weights,
    make_synthetic_simulator,
    optimal_fusion_weights,
)
from retentionrl.training.online import TrainConfig, train

ENV = {"max_sessions": 2}
EVAL = {"n_users": 64, "n_episodes": 64, "seeds": [101, 102], "env_overrides": ENV}
BASELINES = ("ranking", "random")  # fixed policies: no margin over random is expected of them
IMITATION = {"bc": "clones logged actions: there is no reward for it to learn from online",
             "sec": "clones the logged actions of the users who returned soonest (tests/test_sec.py)",
             "gaussian": "a fixed stochastic logging policy (propensities for OPE, tests/test_ope.py): nothing to learn"}
IMITATION.update(dict.fromkeys(("td3bc", "iql", "cql", "bcq", "il_cvae"),  # training.OFFLINE_ALGOS: the offline loop
                               "offline RL from a behaviour policy's logs (tests/test_offline_rl.py)"))
IMITATION["resact"] = "offline RL from a behaviour policy's logs (tests/test_resact.py)"
MARGIN = 0.5  # share of the random -> optimum gap every learning agent must close

# Keys an agent does not have are dropped (see _agent_cfg); immediate reward only, small and fast networks.
AGENT_CFG = {
    "immediate_weight": 1.0, "retention_weight": 0.0, "gamma": 0.0,
    "batch_size": 64, "hidden": [32], "state_dim": 16, "token_dim": 8, "actor_lr": 1e-3, "critic_lr": 3e-3,
    "steps_per_generation": 5,  # CEM: 5 steps = one fixed-length session per candidate
}
TRAIN_STEPS = 120
WARMUP_STEPS = 20  # off-policy learners only; CEM (and any agent learning in observe) gets 0


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return make_synthetic_simulator(n_users=64, n_items=300, seed=0)


def _eval_reward(sim: Simulator, metrics: dict) -> float:
    """Mean immediate reward per request, from the eval's per-exposure behaviour rates."""
    return sum(w * metrics[f"{b}_rate"] for w, b in zip(sim.reward_weights, BEHAVIOURS))


@pytest.fixture(scope="module")
def random_reward(sim) -> float:
    res = evaluate_policy(make_agent("random", sim, {}, seed=0), sim, EvalConfig(**EVAL))
    return _eval_reward(sim, res["mean"])


# --- the simulator itself ----------------------------------------------------------------------------------
def test_the_optimum_is_known_and_beats_random_and_single_behaviour_weights(sim):
    a_star = optimal_fusion_weights(sim)
    w = torch.tensor(sim.reward_weights)
    assert torch.allclose(a_star * w.abs().max(), w)
    best = expected_reward_of_weights(sim, a_star)
    assert best == pytest.approx(best_expected_reward(sim), abs=1e-6)
    assert expected_reward_of_weights(sim, 3.0 * a_star) == pytest.approx(best, abs=1e-6)  # any positive multiple

    g = torch.Generator().manual_seed(0)
    for low in (0.0, -1.0):  # RandomAgent's [0, 1]^7 and the training warm-up's [-1, 1]^7
        rand = torch.tensor([expected_reward_of_weights(sim, low + (1 - low) * torch.rand(7, generator=g))
                             for _ in range(200)])
        assert (rand <= best + 1e-6).all()
        assert (rand < best - 1e-6).float().mean() > 0.9
        assert float(rand.mean()) < best - 1.0
    for b in range(7):
        for sign in (1.0, -1.0):
            e = torch.zeros(7)
            e[b] = sign
            assert expected_reward_of_weights(sim, e) <= best + 1e-6
    # Ranking by click is far from the optimum by construction.
    assert expected_reward_of_weights(sim, [1.0, 0, 0, 0, 0, 0, 0]) < best - 1.0


def test_rollout_matches_the_exact_expectation_and_better_slates_bring_users_back_sooner(sim):
    a_star = optimal_fusion_weights(sim)
    days = {}
    for name, a in (("optimal", a_star), ("click", torch.tensor([1.0, 0, 0, 0, 0, 0, 0]))):
        env = sim.make_env("kuaisim", n_users=128, users="all")
        env.reset(seed=5)
        rewards, gaps = [], []
        for _ in range(20):
            out = env.step(a.expand(128, -1))
            rewards.append(out.reward)
            gaps.append(out.return_day[out.session_end].float())
            assert bool((out.session_end == (env.obs.step_in_session == 0)).all())  # fixed 5-request sessions
        r = torch.cat(rewards)
        exact = expected_reward_of_weights(sim, a)
        assert abs(float(r.mean()) - exact) < 4 * float(r.std()) / len(r) ** 0.5 + 1e-3
        days[name] = float(torch.cat(gaps).mean())
    assert days["optimal"] < days["click"] - 0.3


def test_no_learned_models_and_save_load_round_trip(sim, tmp_path):
    with pytest.raises(RetentionRLError, match="no learned leave model"):
        sim.make_env("learned")
    loaded = Simulator.load(sim.save(tmp_path / "bundle"))
    a_star = optimal_fusion_weights(loaded)
    assert expected_reward_of_weights(loaded, a_star) == pytest.approx(expected_reward_of_weights(sim, a_star))


# --- every fusion agent --------------------------------------------------------------------------------------
def _agent_cfg(name: str, sim: Simulator) -> dict:
    """AGENT_CFG without the keys this agent's config does not have (its builder names them one by one)."""
    cfg = dict(AGENT_CFG)
    while True:
        try:
            make_agent(name, sim, cfg, seed=0)
            return cfg
        except RetentionRLError as exc:
            m = re.search(r"unknown key '([^']+)'", str(exc))
            if not m or m.group(1) not in cfg:
                raise
            del cfg[m.group(1)]


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agent_beats_random_on_the_synthetic_simulator(name, sim, random_reward, tmp_path):
    if name in IMITATION:
        pytest.skip(f"{name}: {IMITATION[name]}")
    cfg = _agent_cfg(name, sim)
    agent = make_agent(name, sim, cfg, seed=0)
    if agent.action_mode != "fusion":
        pytest.skip(f"{name} is an item-level agent (action_mode {agent.action_mode!r}); only fusion agents are in scope")
    tc = TrainConfig(algo=name, seed=0, env=ENV, n_users=32, total_steps=TRAIN_STEPS,
                     warmup_steps=WARMUP_STEPS if agent.learns else 0, buffer_size=TRAIN_STEPS * 32,
                     log_every=TRAIN_STEPS, eval_every=TRAIN_STEPS, checkpoint_every=TRAIN_STEPS, eval=EVAL, agent=cfg)
    summary = train(tc, sim, tmp_path / name, progress=False)
    reward = _eval_reward(sim, summary["eval"])
    best = best_expected_reward(sim)
    gap = best - random_reward
    assert gap > 1.0  # the synthetic problem separates random from optimal
    assert reward <= best + 0.15  # eval noise only: nothing beats the optimum in expectation
    if name == "random":
        return
    if name == "ranking":
        assert reward < best - 0.5 * gap  # click-ranking is not optimal by construction
        return
    closed = (reward - random_reward) / gap
    assert closed >= MARGIN, (
        f"{name}: mean immediate reward {reward:.3f} closes {closed:.0%} of the gap between random "
        f"({random_reward:.3f}) and the optimum ({best:.3f}); needs {MARGIN:.0%}"
    )


def test_return_time_range_bounds_every_policy(sim):
    """Floor/ceiling of the mean return day any policy can reach (geometric return model). With the personal
    term off, P = 0.4 + 0.1 * r exactly, so the floor is the truncated-geometric mean at r = sum of positive
    weights; rollouts of the optimal and the click-ranking policy land inside the range."""
    from retentionrl.simulator.env import preset
    from retentionrl.simulator.returns import truncated_geometric_mean

    cfg = preset("kuaisim", returns={"personal": "none"})
    floor, ceiling = sim.return_time_range(cfg, users="all")
    w = torch.tensor(sim.reward_weights)
    D = sim.max_return_day
    for value, r in ((floor, w.clamp(min=0).sum()), (ceiling, w.clamp(max=0).sum())):
        p = torch.tensor([0.4 + 0.1 * float(r)]).clamp(1e-3, 1 - 1e-3)
        assert value == pytest.approx(float(truncated_geometric_mean(p, D)), abs=1e-5)
    assert floor < ceiling
    floor_fitted, ceiling_fitted = sim.return_time_range("kuaisim", users="all")
    for a in (optimal_fusion_weights(sim), torch.tensor([1.0, 0, 0, 0, 0, 0, 0])):
        env = sim.make_env("kuaisim", n_users=128, users="all")
        env.reset(seed=7)
        days = torch.cat([out.return_day[out.session_end].float() for out in (env.step(a.expand(128, -1)) for _ in range(30))])
        margin = 3 * float(days.std()) / len(days) ** 0.5
        assert floor_fitted - margin <= float(days.mean()) <= ceiling_fitted + margin
