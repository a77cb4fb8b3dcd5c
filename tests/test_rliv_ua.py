"""RLIV-UA's LIV networks: Eq. 5/7 target, Eq. 8 decomposition, Eq. 9 tower loss, Eq. 10 sum, hand values."""

from __future__ import annotations

import math

import pytest
import torch

from retentionrl.agents.rliv_ua import GiftAssistance, LIVTower, liv_target, total_loss, tower_loss


def _huber(x: float, delta: float = 1.0) -> float:
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def test_target_takes_the_twin_minimum_then_the_max_over_the_authors_items():
    # Two rows; the author of row 0 has 3 items, row 1's author 2 (third slot is padding).
    q_next = torch.tensor([[[1.0, 2.0], [4.0, 3.0], [0.5, 0.0]],
                           [[2.0, 5.0], [1.0, 1.5], [9.0, 9.0]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    y = liv_target(q_next, torch.tensor([1.0, 0.0]), 0.9, valid)
    # row 0: min per item = 1, 3, 0 -> max 3 -> 1 + 0.9*3; row 1: min = 2, 1 (padding's 9 ignored) -> 0.9*2
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 3.0, 0.9 * 2.0])
    assert liv_target(q_next, torch.zeros(2), 0.9)[1].item() == pytest.approx(0.9 * 9.0)  # without the mask


def test_tower_is_reward_head_plus_discounted_values_and_its_huber_loss():
    torch.manual_seed(0)
    tower = LIVTower(4, [8], auxiliary=True)
    h = torch.randn(3, 4)
    r_hat, q = tower(h, 0.9)
    v = torch.cat([net(h) for net in tower.values], -1)
    assert torch.allclose(q, tower.reward(h) + 0.9 * v)  # Eq. 8, both heads share r̂
    no_aux = LIVTower(4, [8], auxiliary=False)
    r0, q0 = no_aux(h, 0.9)
    assert torch.equal(r0, torch.zeros(3)) and torch.allclose(q0, 0.9 * torch.cat([n(h) for n in no_aux.values], -1))

    # Eq. 9 by hand, one row: r̂ = 0.2, r = 1 (residual 0.8); Q = (0.5, 3.5), y = 1.5 (residuals 1.0, 2.0).
    loss = tower_loss(torch.tensor([0.2]), torch.tensor([[0.5, 3.5]]), torch.tensor([1.0]), torch.tensor([1.5]),
                      delta=1.0, auxiliary=True)
    assert loss.item() == pytest.approx(_huber(0.8) + _huber(1.0) + _huber(2.0))  # 0.32 + 0.5 + 1.5
    no_sl = tower_loss(torch.tensor([0.2]), torch.tensor([[0.5, 3.5]]), torch.tensor([1.0]), torch.tensor([1.5]),
                       delta=1.0, auxiliary=False)
    assert no_sl.item() == pytest.approx(2.0)


def test_total_loss_sums_the_towers_and_adds_the_gift_bce():
    towers = {"click": torch.tensor(0.5), "watch_time": torch.tensor(1.25), "follow": torch.tensor(2.0)}
    assert total_loss(towers).item() == pytest.approx(3.75)
    logit, gift = torch.tensor([0.0, 2.0]), torch.tensor([1, 0])
    bce = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert total_loss(towers, logit, gift).item() == pytest.approx(3.75 + bce)


def test_gift_assistance_learns_a_synthetic_gift_label():
    """KuaiRand has no gift: on a synthetic label (users of group 1 gift authors of group 1) the assistance
    network trained with the BCE of Eq. 10 separates gifting pairs from the others."""
    torch.manual_seed(0)
    n, e = 512, 8
    ug, ag = torch.randint(0, 2, (n,)), torch.randint(0, 2, (n,))
    hu, ha = torch.randn(n, e) * 0.1 + ug[:, None].float(), torch.randn(n, e) * 0.1 + ag[:, None].float()
    gift = (ug == 1) & (ag == 1)
    net = GiftAssistance(e, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        total_loss({}, net(hu, ha), gift).backward()  # no towers: the assistance BCE alone
        opt.step()
    p = torch.sigmoid(net(hu, ha))
    assert p[gift].min() > 0.8 and p[~gift].max() < 0.2


# --- the agent ------------------------------------------------------------------------------------------------
import math as _m  # noqa: E402

from retentionrl.agents import make_agent  # noqa: E402
from retentionrl.agents.rliv_ua import LIVConfig, RLIVUA, asa_labels, pair_rewards  # noqa: E402
from retentionrl.data.schema import BEHAVIOURS  # noqa: E402
from retentionrl.simulator.env import RetentionEnv, preset  # noqa: E402
from retentionrl.simulator.synthetic import make_synthetic_simulator  # noqa: E402

FOLLOW = BEHAVIOURS.index("follow")


def _pair_mdp_samples(n: int, gen: torch.Generator):
    """A pair-level MDP where the LIV-optimal item is not the immediately best one (γ = 0.5, watch-time tower):

    * item 0 (author 0): watch reward 1 at every exposure, never a follow -> Q* = 1 / (1 - γ) = 2;
    * item 1 (author 1): a fresh pair (no follow yet) watches 0.5 and follows; once followed, every exposure
      watches 3 -> V*(followed) = 3 / (1 - γ) = 6 and Q*(fresh) = 0.5 + γ · 6 = 3.5.

    Rewards are watch-time ``log1p(seconds)``, so seconds = e^r - 1. Returns add_pairs' arguments."""
    users = torch.randint(0, 64, (n,), generator=gen)
    kind = torch.randint(0, 3, (n,), generator=gen)  # 0: item 0; 1: item 1 fresh; 2: item 1 followed
    counts = torch.zeros(n, 5)
    counts[:, 0] = torch.randint(0, 8, (n,), generator=gen).float()  # exposures so far
    counts[kind == 1, 0] = 0.0
    counts[kind == 2, 0] = counts[kind == 2, 0].clamp(min=1.0)
    counts[kind == 2, 4] = 1.0  # followed
    responses = torch.zeros(n, 7)
    responses[kind == 1, FOLLOW] = 1.0
    reward = torch.tensor([1.0, 0.5, 3.0])[kind]
    return users, (kind > 0).long(), counts, responses, torch.expm1(reward)


def _known_answer_agent(gamma: float, auxiliary: bool = True, updates: int = 800) -> RLIVUA:
    sim = make_synthetic_simulator(n_users=64, n_items=40, seed=0)
    sim.item_author = torch.arange(40)  # every item its own author: the item set of the target is the item
    cfg = LIVConfig(tasks=["watch_time", "follow"], gamma=gamma, batch_size=256, buffer_size=20_000,
                    learning_starts=0, auxiliary=auxiliary, hidden=[64, 64], embed_dim=16, tau=0.05)
    agent = RLIVUA(sim, cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    agent.add_pairs(*_pair_mdp_samples(20_000, gen))
    for _ in range(updates):
        agent.update(agent.sample(256))
    return agent


def test_rliv_ua_prefers_the_author_whose_follows_pay_off_later_and_the_reward_ranker_does_not():
    agent = _known_answer_agent(gamma=0.5)
    users = torch.arange(8)
    fresh = torch.zeros(8, 2, 5)  # a new pair with both authors
    prof = agent.net.embed.profile(users)
    liv = agent.liv(*prof, torch.tensor([0, 1]).expand(8, 2), fresh)  # (8, 2)
    assert (liv[:, 1] > liv[:, 0]).all()  # LIV picks item 1
    assert liv[:, 0].mean().item() == pytest.approx(2.0, rel=0.15)
    assert liv[:, 1].mean().item() == pytest.approx(3.5, rel=0.15)
    # the auxiliary head r̂ is the immediate (reward-ranking) predictor: it prefers item 0 (1 > 0.5)
    r_hat = agent.net(*prof, torch.tensor([0, 1]).expand(8, 2), fresh, 0.5, ["watch_time"])["watch_time"][0]
    assert (r_hat[:, 0] > r_hat[:, 1]).all()
    assert r_hat[:, 0].mean().item() == pytest.approx(1.0, abs=0.15) and r_hat[:, 1].mean().item() == pytest.approx(0.5, abs=0.15)
    # a myopic ranker (γ = 0, the same networks trained on the immediate reward) ranks item 0 first
    myopic = _known_answer_agent(gamma=0.0, updates=200)
    m = myopic.liv(*prof, torch.tensor([0, 1]).expand(8, 2), fresh)
    assert (m[:, 0] > m[:, 1]).all()


def test_rliv_ua_without_the_auxiliary_head_learns_the_same_values():
    agent = _known_answer_agent(gamma=0.5, auxiliary=False)
    liv = agent.liv(*agent.net.embed.profile(torch.arange(8)), torch.tensor([0, 1]).expand(8, 2), torch.zeros(8, 2, 5))
    assert liv[:, 0].mean().item() == pytest.approx(2.0, rel=0.15)
    assert liv[:, 1].mean().item() == pytest.approx(3.5, rel=0.15)


def test_pair_rewards_and_asa_labels_read_the_shown_items_responses():
    y = torch.zeros(2, 7)
    y[0, BEHAVIOURS.index("click")] = 1
    y[1, FOLLOW] = 1
    y[1, BEHAVIOURS.index("like")] = 1
    r = pair_rewards(["click", "watch_time", "follow"], y, torch.tensor([0.0, _m.e - 1]))
    assert torch.allclose(r, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    assert asa_labels(y).tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 1, 1]]  # exposure, click, long view, like, follow


def test_rliv_ua_needs_pair_counts_from_the_env(synthetic_sim):
    env = RetentionEnv(synthetic_sim, preset("kuaisim", action_mode="items", candidates=30))
    agent = make_agent("rliv_ua", synthetic_sim, {"learning_starts": 10}, 0, env.cfg)
    with pytest.raises(Exception, match="ua_counts: true"):
        agent.act(env.reset(seed=0))
    with pytest.raises(Exception, match="tasks must be distinct"):
        make_agent("rliv_ua", synthetic_sim, {"tasks": ["gift"]}, 0)
    with pytest.raises(Exception, match="score must weight"):
        make_agent("rliv_ua", synthetic_sim, {"tasks": ["click"], "score": {"watch_time": 1.0}}, 0)


def test_rliv_ua_trains_in_the_env_and_resumes_exactly(synthetic_sim):
    import io

    cfg = preset("kuaisim", action_mode="items", candidates=30, candidate_source="ranked", ua_counts=True, n_users=8)
    agent_cfg = {"learning_starts": 240, "batch_size": 32, "buffer_size": 500}  # 48 pair samples per step

    def run(agent, env, obs, steps):
        for _ in range(steps):
            a = agent.act(obs, explore=True)
            out = env.step(a)
            info = agent.observe(obs, a, out)
            obs = out.obs
        return obs, info

    env = RetentionEnv(synthetic_sim, cfg)
    agent = make_agent("rliv_ua", synthetic_sim, agent_cfg, 0, cfg)
    obs, info = run(agent, env, env.reset(seed=1), 10)
    assert agent.n_updates == 6 and math.isfinite(info["loss"])
    buf = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "env": env.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    a_obs, _ = run(agent, env, obs, 5)
    env2 = RetentionEnv(synthetic_sim, cfg)
    env2.reset(seed=7)
    env2.load_state_dict(saved["env"])
    agent2 = make_agent("rliv_ua", synthetic_sim, agent_cfg, 3, cfg)
    agent2.load_state_dict(saved["agent"])
    b_obs, _ = run(agent2, env2, env2.obs, 5)
    assert torch.equal(agent.act(a_obs), agent2.act(b_obs)) and torch.equal(a_obs.ua_counts, b_obs.ua_counts)


def test_item_level_scores_read_the_observed_profile_not_the_user_id(synthetic_sim):
    """What a served user brings is the profile in the observation; the simulator's user table is not consulted."""
    cfg = preset("kuaisim", action_mode="items", candidates=20, ua_counts=True, n_users=4)
    env = RetentionEnv(synthetic_sim, cfg)
    obs = env.reset(seed=0)
    for name in ("rliv_ua", "deepfm"):
        agent = make_agent(name, synthetic_sim, {}, 0, cfg)
        base = agent.act(obs)
        other = obs.clone()
        other.user = torch.full_like(obs.user, 63)  # another user id, same profiles
        assert torch.equal(agent.act(other), base), name
        other.profile_num = other.profile_num + 1.0
        assert not torch.allclose(agent.act(other), base), name
