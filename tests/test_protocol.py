"""Evaluation protocol: determinism, seeds, known answers of the kuaisim preset, policy ordering, errors."""

from __future__ import annotations

import math

import pytest
import torch

from retentionrl.agents.base import Agent, RandomAgent
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import EvalConfig, EvaluationError, evaluate_policy, last_episodes_average
from retentionrl.simulator.env import Obs

# Two sessions of ceil(temper 5) = 5 requests: every user episode is exactly 10 steps.
SHORT = {"max_sessions": 2}


class FixedWeights(Agent):
    """The same fusion weights for every user (a "RankingModel" ranking by a fixed mix of behaviours)."""

    def __init__(self, weights: list[float]) -> None:
        self.w = torch.tensor(weights, dtype=torch.float32)

    def act(self, obs: Obs, explore: bool = False) -> torch.Tensor:
        return self.w.expand(obs.user.shape[0], -1)


class GlobalNoise(Agent):
    """Draws from the *global* torch RNG (what a careless agent does)."""

    def act(self, obs: Obs, explore: bool = False) -> torch.Tensor:
        return torch.rand(obs.user.shape[0], 7)


class Recorder(Agent):
    """Wraps an agent and records the users it is asked to act for, step by step."""

    def __init__(self, inner: Agent) -> None:
        self.inner, self.action_mode, self.users = inner, inner.action_mode, []

    def act(self, obs: Obs, explore: bool = False) -> torch.Tensor:
        self.users.append(obs.user.clone())
        return self.inner.act(obs, explore)


CLICK = [1.0, 0, 0, 0, 0, 0, 0]
ANTI_CLICK = [-1.0, 0, 0, 0, 0, 0, 0]


def small(**kw) -> EvalConfig:
    base = dict(n_users=16, n_episodes=16, seeds=[1, 2], env_overrides=dict(SHORT))
    return EvalConfig(**{**base, **kw})


def strip_time(res: dict) -> dict:
    return {**res, "wall_time": None, "per_seed": [{**r, "wall_time": None} for r in res["per_seed"]]}


def test_defaults():
    c = EvalConfig()
    assert (c.preset, c.n_users, c.n_episodes, c.seeds, c.users, c.env_overrides, c.max_steps) == (
        "kuaisim", 256, 512, [10_000, 10_001, 10_002], "test", {}, 10_000)
    assert EvalConfig().seeds is not c.seeds  # no shared mutable default


def test_deterministic_and_seeds_differ(tiny_sim):
    a = evaluate_policy(FixedWeights(CLICK), tiny_sim, small())
    b = evaluate_policy(FixedWeights(CLICK), tiny_sim, small())
    assert strip_time(a) == strip_time(b)
    s1, s2 = (r["metrics"] for r in a["per_seed"])
    assert [r["seed"] for r in a["per_seed"]] == [1, 2]
    assert s1 != s2 and s1["watch_time"] != s2["watch_time"]
    # A freshly seeded random agent replays too.
    r1 = evaluate_policy(RandomAgent(seed=3), tiny_sim, small(seeds=[5]))
    r2 = evaluate_policy(RandomAgent(seed=3), tiny_sim, small(seeds=[5]))
    assert strip_time(r1) == strip_time(r2)
    assert a["wall_time"] > 0 and a["steps"] == sum(r["steps"] for r in a["per_seed"])


def test_same_users_for_every_agent(tiny_sim):
    """The env's generator alone decides the users: agents that rank differently meet the same users."""
    rec = [Recorder(FixedWeights(CLICK)), Recorder(FixedWeights(ANTI_CLICK)), Recorder(RandomAgent(seed=9))]
    for r in rec:
        evaluate_policy(r, tiny_sim, small(seeds=[4], n_episodes=32))
    ref = torch.stack(rec[0].users)  # (steps, B)
    assert len(rec[0].users) == 20 and ref[0].unique().numel() > 1
    assert not torch.equal(ref[0], ref[-1])  # the second round of episodes has fresh users
    for r in rec[1:]:
        assert torch.equal(torch.stack(r.users), ref)
    other = Recorder(FixedWeights(CLICK))
    evaluate_policy(other, tiny_sim, small(seeds=[6], n_episodes=32))
    assert not torch.equal(torch.stack(other.users), ref)
    # Test users only (the default): every user drawn is one of the bundle's held-out users.
    assert bool(tiny_sim.test_users[ref.flatten()].all())


def test_global_rng_isolated(tiny_sim):
    state = torch.get_rng_state()
    a = evaluate_policy(GlobalNoise(), tiny_sim, small(seeds=[7]))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    torch.manual_seed(123)  # and the caller's state does not leak into the evaluation
    b = evaluate_policy(GlobalNoise(), tiny_sim, small(seeds=[7]))
    assert strip_time(a) == strip_time(b)


def test_kuaisim_known_answers(tiny_sim):
    """max_sessions = 2: every episode is 2 sessions of 5 requests, and all rows finish together at step 10."""
    res = evaluate_policy(FixedWeights(CLICK), tiny_sim, small(n_users=16, n_episodes=32, seeds=[1, 2, 3]))
    for r in res["per_seed"]:
        m = r["metrics"]
        assert r["steps"] == 20  # 32 episodes of 16 parallel users: 2 rounds of 10 steps
        assert m["episodes"] == 32 and m["sessions"] == 64
        assert m["session_length"] == 5.0
        # No session of an unfinished episode is counted, so the per-episode gap is exactly 2 mean return days.
        assert m["total_return_gap"] == pytest.approx(2 * m["return_time"], rel=1e-12)
    for k, v in res["mean"].items():
        assert v == pytest.approx(sum(r["metrics"][k] for r in res["per_seed"]) / 3, rel=1e-12)
    assert res["action_mode"] == "fusion" and res["config"]["seeds"] == [1, 2, 3]


def test_return_time_and_retention_follow_the_return_law(tiny_sim):
    """P = bias = 0.4 for every user (no personal term, no feedback): the return day is a geometric truncated to
    1..D, so the protocol's return time and retention have closed forms."""
    flat = {**SHORT, "returns": {"personal": "none", "feedback_influence": 0.0}}
    res = evaluate_policy(FixedWeights(CLICK), tiny_sim, small(n_users=128, n_episodes=128, env_overrides=flat))
    p, q, D = 0.4, 0.6, tiny_sim.max_return_day
    assert res["mean"]["sessions"] == 256  # per seed: 128 episodes of 2 sessions
    mean_day = sum(d * p * q ** (d - 1) for d in range(1, D + 1)) / (1 - q**D)  # 2.44 for D = 10
    assert res["mean"]["return_time"] == pytest.approx(mean_day, abs=0.3)  # 512 sessions: standard error 0.08
    assert res["mean"]["retention"] == pytest.approx(p / (1 - q**D), abs=0.07)  # standard error 0.02


def test_stop_overshoots_to_whole_rounds(tiny_sim):
    # 20 episodes asked with 16 parallel users: rows finish in rounds of 16, so 2 rounds = 32 episodes.
    res = evaluate_policy(FixedWeights(CLICK), tiny_sim, small(n_episodes=20, seeds=[1]))
    assert res["per_seed"][0]["steps"] == 20 and res["per_seed"][0]["metrics"]["episodes"] == 32


def test_click_policy_beats_anti_click(tiny_sim):
    cfg = small(n_users=32, n_episodes=32, seeds=[3, 4])
    good = evaluate_policy(FixedWeights(CLICK), tiny_sim, cfg)["mean"]
    bad = evaluate_policy(FixedWeights(ANTI_CLICK), tiny_sim, cfg)["mean"]
    assert good["click_rate"] > bad["click_rate"] + 0.1
    # With a strong session feedback in the return law, the more rewarding policy brings users back sooner.
    fb = small(n_users=32, n_episodes=32, seeds=[3, 4], env_overrides={**SHORT, "returns": {"feedback_influence": 1.0}})
    good = evaluate_policy(FixedWeights(CLICK), tiny_sim, fb)["mean"]
    bad = evaluate_policy(FixedWeights(ANTI_CLICK), tiny_sim, fb)["mean"]
    assert good["return_time"] < bad["return_time"] - 0.2 and good["retention"] > bad["retention"] + 0.1


class FixedItems(Agent):
    """Items mode: the same scores for every user, so the slate is always the 6 top-scored items."""

    action_mode = "items"

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def act(self, obs: Obs, explore: bool = False) -> torch.Tensor:
        scores = torch.zeros(obs.user.shape[0], len(obs.candidates))
        scores[:, self.items] = torch.arange(len(self.items), 0, -1, dtype=torch.float32)
        return scores


def test_items_mode(tiny_sim):
    items = [0, 1, 2, 3, 4, 5]
    res = evaluate_policy(FixedItems(items), tiny_sim, small(seeds=[1]))
    m = res["mean"]
    assert res["action_mode"] == "items" and m["session_length"] == 5.0
    # Every slate and every session shows exactly these items: diversity is their tag count (an unknown tag, -1,
    # counts as one value per slate and not at all per session).
    tags = tiny_sim.item_tag[items].tolist()
    assert -1 in tags and len(set(tags)) > 1  # the case is not trivial
    assert m["diversity_slate"] == len(set(tags))
    assert m["diversity_session"] == len({t for t in tags if t >= 0})
    # With a fresh sample of candidates per request the agent scores (B, C) of them.
    res = evaluate_policy(RandomAgent(action_mode="items", seed=0), tiny_sim,
                          small(seeds=[1], env_overrides={**SHORT, "candidates": 50}))
    assert res["mean"]["episodes"] == 16


def test_max_steps_cap(tiny_sim):
    with pytest.raises(EvaluationError, match=r"seed 1 hit the max_steps cap \(3 env steps\) after completing 0 of 16"):
        evaluate_policy(FixedWeights(CLICK), tiny_sim, small(max_steps=3))


@pytest.mark.parametrize("kw, msg", [
    (dict(seeds=[1, 1]), "distinct"),
    (dict(seeds=[]), "seeds is empty"),
    (dict(n_episodes=0), "n_episodes must be a positive integer"),
    (dict(n_users=2.5), "n_users must be a positive integer"),
    (dict(users="heldout"), "users must be"),
    (dict(env_overrides={"n_users": 8}), "may not set 'n_users'"),
    (dict(preset="nope"), "unknown simulator preset"),
    (dict(env_overrides={"max_sesions": 2}), "unknown key 'max_sesions'"),
])
def test_bad_config(tiny_sim, kw, msg):
    with pytest.raises(RetentionRLError, match=msg):
        evaluate_policy(FixedWeights(CLICK), tiny_sim, small(**kw))


def test_wrong_action_shape_is_caught(tiny_sim):
    # A fusion agent declared as items-mode returns (B, 7) where (B, C) is expected.
    agent = FixedWeights(CLICK)
    agent.action_mode = "items"
    with pytest.raises(RetentionRLError, match="candidate scores"):
        evaluate_policy(agent, tiny_sim, small(seeds=[1]))


def test_last_episodes_average():
    hist = [{"return_time": float(i), "click_rate": 0.1 * i} for i in range(1, 11)]
    assert last_episodes_average(hist, 3, "return_time") == pytest.approx((8 + 9 + 10) / 3)
    assert last_episodes_average(hist, 10, "click_rate") == pytest.approx(0.55)
    assert last_episodes_average(hist, 1, "return_time") == 10.0
    assert last_episodes_average([{"x": torch.tensor(2.0)}, {"x": 4}], 2, "x") == 3.0
    with pytest.raises(ValueError, match="only 10 were logged"):
        last_episodes_average(hist, 11, "return_time")
    with pytest.raises(ValueError, match="positive integer"):
        last_episodes_average(hist, 0, "return_time")
    with pytest.raises(ValueError, match="episode 8 has no 'retention'"):
        last_episodes_average(hist, 2, "retention")
    bad = hist + [{"return_time": None, "click_rate": math.nan}]
    with pytest.raises(ValueError, match="episode 10: 'return_time' is None"):
        last_episodes_average(bad, 2, "return_time")
    with pytest.raises(ValueError, match="'click_rate' is nan"):
        last_episodes_average(bad, 2, "click_rate")
    assert last_episodes_average(bad[:-1], 2, "return_time") == 9.5  # an older bad entry outside the window is fine
