"""DeepFM (RLIV-UA's RankingModel): the FM term by hand, a user x item interaction it must learn, and the known
best click rate of the synthetic simulator as a greedy item-level policy."""

from __future__ import annotations

import torch

from retentionrl.agents.base import RandomAgent
from retentionrl.agents.deepfm import DeepFM, DeepFMConfig
from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy
from retentionrl.simulator.synthetic import item_probabilities, make_synthetic_simulator
from retentionrl.training.offline import generate_logs
from retentionrl.utils.scores import roc_auc


def test_fm_term_is_the_sum_of_pairwise_inner_products(synthetic_sim):
    net = DeepFM(synthetic_sim, DeepFMConfig(hidden=[8]), seed=0).net
    with torch.no_grad():
        net.deep[-1].weight.zero_()
        net.deep[-1].bias.zero_()  # deep part off: logit = b + first order + FM
        net.first.weight.normal_()
        net.bias.fill_(0.3)
    u, i = torch.tensor([3]), torch.tensor([5])
    codes = torch.cat([net.user_cat[u], net.item_cat[i], i[:, None]], -1) % net.sizes + net.offsets
    x = torch.cat([net.user_num[u], net.item_num[i]], -1)
    e = torch.cat([net.embed.weight[codes[0]], x[0, :, None] * net.num_embed])  # (F, k)
    pairs = sum(float(e[a] @ e[b]) for a in range(len(e)) for b in range(a + 1, len(e)))
    first = float(net.first.weight[codes[0]].sum() + (x[0] * net.num_first).sum())
    assert abs(float(net(*net.profile(u), i)) - (0.3 + first + pairs)) < 1e-4


def test_deepfm_learns_a_user_by_item_interaction():
    """Clicks iff the user's first profile field is even XOR the item's family is even: no first-order term can
    rank that (each field alone is uninformative); the FM / deep interaction can."""
    sim = make_synthetic_simulator(n_users=64, n_items=60, seed=0)
    gen = torch.Generator().manual_seed(0)
    users = torch.randint(0, 64, (8192,), generator=gen)
    items = torch.randint(0, 60, (8192,), generator=gen)
    y = ((sim.response.user_cat[users, 0] % 2 == 0) ^ (sim.response.item_cat[items, 0] % 2 == 0)).float()
    agent = DeepFM(sim, DeepFMConfig(dim=8, hidden=[32]), seed=0)
    for k in range(0, 4 * 8192, 256):
        b = torch.arange(k, k + 256) % 8192
        agent.fit_pairs(users[b], items[b], y[b])
    with torch.no_grad():
        logits = agent.net(*agent.net.profile(users), items)
    assert roc_auc(logits, y) > 0.95


def test_deepfm_greedy_closes_most_of_the_gap_to_the_known_best_click_rate():
    sim = make_synthetic_simulator(n_users=64, n_items=300, seed=0)
    env = {"max_sessions": 2}
    logs = generate_logs(sim, RandomAgent(action_mode="items", seed=0), "kuaisim", n_users=256, steps=20, seed=1,
                         env=env)
    agent = DeepFM(sim, DeepFMConfig(batch_size=256), seed=0)
    agent.check_logs(logs, "test logs")
    n = logs["slate"].shape[0]
    for _ in range(3):
        for b in torch.randperm(n).split(256):
            agent.update({k: v[b] for k, v in logs.items()})
    ev = EvalConfig(preset="kuaisim", env_overrides=env, n_users=64, n_episodes=64, seeds=[101, 102])
    greedy = evaluate_policy(agent, sim, ev)["mean"]["click_rate"]
    random = evaluate_policy(RandomAgent(action_mode="items", seed=0), sim, ev)["mean"]["click_rate"]
    best = float(item_probabilities(sim)[:, 0].topk(6).values.mean())
    assert (greedy - random) / (best - random) >= 0.5, (greedy, random, best)
