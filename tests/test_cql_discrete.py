"""Discrete (item-level) CQL: learns the click ranking from logged slates, and its conservative term pushes down
the items the logs never showed."""

from __future__ import annotations

import torch

from retentionrl.agents import make_agent
from retentionrl.agents.base import Agent, RandomAgent
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.synthetic import item_probabilities, make_synthetic_simulator
from retentionrl.spaces import obs_from_batch
from retentionrl.training.offline import generate_logs

ENV = {"max_sessions": 2}
CLICK_REWARD = [1.0, 0, 0, 0, 0, 0, 0]


class FirstHalf(Agent):
    """Items-mode behaviour that only ever shows items of the first half of the catalogue (random among them)."""

    action_mode = "items"

    def __init__(self, n_items: int) -> None:
        self.half, self.gen = n_items // 2, torch.Generator().manual_seed(0)

    def act(self, obs, explore: bool = False):
        s = torch.rand(obs.user.shape[0], obs.candidates.shape[-1], generator=self.gen)
        return s + 10.0 * (obs.candidates < self.half).float()


def _fit(agent, logs, epochs: int) -> None:
    n = logs["slate"].shape[0]
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for b in torch.randperm(n, generator=g).split(agent.batch_size):
            agent.update({k: v[b] for k, v in logs.items()})


def test_cql_discrete_ranks_by_the_logged_reward_and_closes_the_gap_to_the_best_click_rate():
    sim = make_synthetic_simulator(n_users=64, n_items=300, seed=0)
    env = {**ENV, "reward_weights": CLICK_REWARD}
    logs = generate_logs(sim, RandomAgent(action_mode="items", seed=0), "kuaisim", n_users=256, steps=20, seed=1, env=env)
    agent = make_agent("cql_discrete", sim, {"gamma": 0.0, "alpha": 1.0, "batch_size": 128})
    _fit(agent, logs, epochs=3)
    ev = EvalConfig(preset="kuaisim", env_overrides=ENV, n_users=64, n_episodes=64, seeds=[101, 102])
    greedy = evaluate_policy(agent, sim, ev)["mean"]["click_rate"]
    random = evaluate_policy(RandomAgent(action_mode="items", seed=0), sim, ev)["mean"]["click_rate"]
    best = float(item_probabilities(sim)[:, 0].topk(6).values.mean())
    assert (greedy - random) / (best - random) >= 0.5, (greedy, random, best)


def test_the_conservative_term_pushes_down_items_the_logs_never_showed():
    sim = make_synthetic_simulator(n_users=64, n_items=300, seed=0)
    env = {**ENV, "reward_weights": CLICK_REWARD}
    logs = generate_logs(sim, FirstHalf(300), "kuaisim", n_users=128, steps=20, seed=1, env=env)
    assert int(logs["slate"].max()) < 150  # the behaviour never showed the second half

    def gap(alpha: float) -> float:
        agent = make_agent("cql_discrete", sim, {"gamma": 0.5, "alpha": alpha, "batch_size": 128}, seed=0)
        _fit(agent, logs, epochs=3)
        with torch.no_grad():
            q = agent.q.score(obs_from_batch({k: v[:256] for k, v in logs.items()}))  # (256, N)
        return float(q[:, 150:].mean() - q[:, :150].mean())

    plain, conservative = gap(0.0), gap(5.0)
    assert conservative < plain - 0.5, (plain, conservative)
