"""RLUR and GFN4Retention: hand-computed losses and formulas, RND novelty, group routing, and the agents'
contract (shapes, determinism, exact state round trip). The ablation switches' effect on
targets and losses, and the GFN terminal step's gradient, are also in ``test_retention_path.py``."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_rollout, reload_after_updates

from retentionrl.agents import gfn4retention, rlur
from retentionrl.agents.gfn4retention import detailed_balance_loss
from retentionrl.agents.rlur import normalized_cost
from retentionrl.errors import RetentionRLError
from retentionrl.nets.encoders import GroupedMLP
from retentionrl.nets.rnd import RND
from retentionrl.nets.state import UserGroups

SMALL = {"batch_size": 16, "hidden": [16], "state_dim": 16, "token_dim": 8}
GROUPED = {"group_feature": "user_active_degree", "groups": [["full_active"], ["high_active"]]}
BUILDERS = {"rlur": (rlur.build, {**SMALL, **GROUPED}), "gfn4retention": (gfn4retention.build, {**SMALL, "heads": 2})}
ABLATIONS = {
    "rlur": [{"rnd": False}, {"normalize": False}, {"group_feature": None, "groups": []}, {"soft_regularization": 0.0}],
    "gfn4retention": [{"context_module": False}, {"immediate": "none"}, {"immediate": "terminal"}, {"lam": 0.5}],
}


# --- GFN4Retention: the refined detailed-balance loss on a two-step toy trajectory ---------------------------
def _toy_trajectory() -> dict:
    """Session s0 -> s1 -> end. Step 0 (inside): log F(s0) = 1.0, P_F(a0|s0) = 0.5, log F(s1) = 0.2, P_B = 0.25,
    r0 = 0.3. Step 1 (session end, d = 2 so R_ret = 1/2): log F(s1) = 0.2, P_F(a1|s1) = 0.9, P_B = 0.6, r1 = 0.4,
    session sum 0.7; its log F(s_{t+1}) = 5.0 is the next session's and must not be read."""
    return dict(
        log_flow=torch.tensor([1.0, 0.2]), log_pf=torch.log(torch.tensor([0.5, 0.9])),
        log_flow_next=torch.tensor([0.2, 5.0]), p_back=torch.tensor([0.25, 0.6]), reward=torch.tensor([0.3, 0.4]),
        session_end=torch.tensor([False, True]), retention=torch.tensor([0.0, 0.5]),
        session_reward=torch.tensor([0.3, 0.7]),
    )


OFFSETS = dict(lam=1.0, b_f=1.0, b_b=1.0, b_r=0.6)
INSIDE = 1.0 + math.log(1.5) - 0.2 - math.log(1.25) - 0.3  # 0.682321


def test_detailed_balance_loss_by_hand():
    """The default terminal step: the last request is a balance step into the terminal state, whose log-flow
    is log(R_ret + b_r) = log 1.1: 0.2 + log 1.9 - log 1.1 - log 1.6 - 0.4 = -0.123460."""
    args = _toy_trajectory()
    end = 0.2 + math.log(1.9) - math.log(1.1) - math.log(1.6) - 0.4
    full = detailed_balance_loss(**args, **OFFSETS)
    assert full.tolist() == pytest.approx([INSIDE**2, end**2], abs=1e-6)
    assert full.tolist() == pytest.approx([0.465562, 0.015242], abs=1e-6)
    assert torch.equal(detailed_balance_loss(**args, **OFFSETS, terminal_step="transition"), full)  # the default
    # NIF: no immediate reward anywhere (r1 leaves the end step too); SIF: the whole session's rewards
    # (0.7 = r0 + r1) in the terminal target only, so SIF and the full model integrate the same rewards.
    nif = detailed_balance_loss(**args, **OFFSETS, immediate="none")
    assert nif.tolist() == pytest.approx([(INSIDE + 0.3) ** 2, (end + 0.4) ** 2], abs=1e-6)
    sif = detailed_balance_loss(**args, **OFFSETS, immediate="terminal")
    assert sif.tolist() == pytest.approx([(INSIDE + 0.3) ** 2, (end + 0.4 - 0.7) ** 2], abs=1e-6)
    # lam scales every step reward, the ending one included: lam = 0.5 -> inside + 0.15, end + 0.2.
    half = detailed_balance_loss(**args, **{**OFFSETS, "lam": 0.5})
    assert half.tolist() == pytest.approx([(INSIDE + 0.15) ** 2, (end + 0.2) ** 2], abs=1e-6)


def test_detailed_balance_loss_by_hand_old_terminal_state():
    """``terminal_step: state`` anchors s_T itself: (log F(s1) - log 1.1)^2, whatever P_F(a1), P_B and r1 are;
    SIF's terminal target then holds the rewards before the last request only (0.7 - 0.4 = r0)."""
    args = _toy_trajectory()
    end = 0.2 - math.log(1.1)  # 0.104690
    old = detailed_balance_loss(**args, **OFFSETS, terminal_step="state")
    assert old.tolist() == pytest.approx([INSIDE**2, end**2], abs=1e-6)
    assert old.tolist() == pytest.approx([0.465562, 0.010960], abs=1e-6)
    nif = detailed_balance_loss(**args, **OFFSETS, immediate="none", terminal_step="state")
    assert nif.tolist() == pytest.approx([(INSIDE + 0.3) ** 2, end**2], abs=1e-6)
    sif = detailed_balance_loss(**args, **OFFSETS, immediate="terminal", terminal_step="state")
    assert sif.tolist() == pytest.approx([(INSIDE + 0.3) ** 2, (end - 0.3) ** 2], abs=1e-6)


@pytest.mark.parametrize("immediate", ["step", "none", "terminal"])
def test_the_ending_action_gets_a_forward_policy_gradient_only_with_the_transition_step(immediate):
    """d loss / d log P_F(a_T|s_T) at the session end: non-zero with the terminal transition, exactly zero with
    the old anchor on s_T (the action that ended the session was never trained)."""
    grads = {}
    for step in ("transition", "state"):
        args = _toy_trajectory()
        log_pf = args.pop("log_pf").requires_grad_(True)
        detailed_balance_loss(**args, log_pf=log_pf, **OFFSETS, immediate=immediate, terminal_step=step).sum().backward()
        grads[step] = log_pf.grad
    assert grads["transition"][1].abs() > 1e-3 and grads["state"][1] == 0
    assert grads["transition"][0] == grads["state"][0] != 0  # inside the session nothing changes


def test_detailed_balance_is_zero_on_consistent_flows():
    """Flows built to satisfy the balance exactly: F(s1) from the terminal step into F(s2) = R_ret + b_r,
    F(s0) from the step equation (both terminal forms: for the old one, F(s1) = R_ret + b_r)."""
    pf, pb, r, b = (0.4, 0.3), (0.7, 0.2), (0.25, 0.9), 1.0
    log_r = math.log(1 / 3 + 0.6)
    for step, log_f1 in (("transition", log_r + math.log(pb[1] + b) + r[1] - math.log(pf[1] + b)), ("state", log_r)):
        log_f0 = log_f1 + math.log(pb[0] + b) + r[0] - math.log(pf[0] + b)
        loss = detailed_balance_loss(
            torch.tensor([log_f0, log_f1]), torch.log(torch.tensor(pf)), torch.tensor([log_f1, 7.0]),
            torch.tensor(pb), torch.tensor(r), torch.tensor([False, True]), torch.tensor([0.0, 1 / 3]),
            torch.tensor([r[0], r[0] + r[1]]), lam=1.0, b_f=b, b_b=b, b_r=0.6, terminal_step=step,
        )
        assert loss.abs().max() < 1e-10, step


# --- RLUR: normalisation, RND, groups ----------------------------------------------------------------------
def test_normalized_cost_formula_and_markov_bound():
    d = torch.tensor([3.0, 3.0, 3.0, 1.0])
    p = torch.tensor([0.5, 0.1, 0.9, 0.0])
    # T(s) = max(1, (eta + 1)(1 - p)): 1, 1.8, 1 (clamped), 2
    assert normalized_cost(d, p, eta=1).tolist() == pytest.approx([3.0, 3 / 1.8, 3.0, 0.5])
    assert normalized_cost(d, p, eta=2).tolist() == pytest.approx([3 / 1.5, 3 / 2.7, 3.0, 1 / 3])
    # The denominator is a lower bound of E[d]: geometric return days P(d = k) = q (1 - q)^(k - 1).
    for q in (0.2, 0.5, 0.8):
        for eta in (1, 2, 3):
            p_within = 1 - (1 - q) ** eta
            assert max(1.0, (eta + 1) * (1 - p_within)) <= 1 / q + 1e-12


def test_rnd_bonus_shrinks_on_seen_states_and_stays_high_on_new_ones():
    torch.manual_seed(0)
    rnd = RND(8)
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=3e-3)
    seen = torch.randn(32, 8)
    new = torch.randn(32, 8) + 4.0  # a region never shown to the predictor
    before_seen, before_new = float(rnd.bonus(seen).mean()), float(rnd.bonus(new).mean())
    for _ in range(300):
        opt.zero_grad()
        rnd.loss(seen).backward()
        opt.step()
    after_seen, after_new = float(rnd.bonus(seen).mean()), float(rnd.bonus(new).mean())
    # Measured (seeds 0-2): seen 0.05-0.08 -> ~5e-6; the new region 0.7-1.2 -> 0.26-0.67.
    assert after_seen < 0.01 * before_seen
    assert after_new > 0.1 * before_new and after_new > 1000 * after_seen
    assert all(not p.requires_grad for p in rnd.target.parameters())  # the target stays random
    # The scaled bonus divides by the running mean error of the training batches: ~1 on the states it is
    # trained on, a large multiple on novel ones, whatever the networks' raw scale.
    assert 0.3 < float(rnd.scaled_bonus(seen).mean()) < 3.0
    assert float(rnd.scaled_bonus(new).mean()) > 100


def test_rnd_scale_is_saved_and_restored():
    torch.manual_seed(0)
    rnd = RND(4)
    rnd.loss(torch.randn(8, 4))
    other = RND(4)
    other.load_state_dict(rnd.state_dict())
    x = torch.randn(5, 4)
    assert float(rnd.scale) > 0 and torch.equal(other.scaled_bonus(x), rnd.scaled_bonus(x))


def test_user_groups_route_by_raw_value():
    feats = {"gender": ["f", "m"], "user_active_degree": ["full_active", "high_active", "low_active"]}
    groups = UserGroups(feats, "user_active_degree", [["full_active"], ["high_active"]])
    assert groups.n == 3 and groups.column == 1

    class O:  # only profile_cat and user are read
        profile_cat = torch.tensor([[1, 0], [1, 1], [2, 2], [1, 3]])
        user = torch.arange(4)

    assert groups(O).tolist() == [2, 0, 1, 2]  # missing and unlisted values fall in the last group
    assert UserGroups(feats, None, []).n == 1 and UserGroups(feats, None, [])(O).tolist() == [0, 0, 0, 0]
    with pytest.raises(RetentionRLError, match="'age' is not a categorical user feature"):
        UserGroups(feats, "age", [])
    with pytest.raises(RetentionRLError, match="'hyper_active' is not a value of user feature"):
        UserGroups(feats, "user_active_degree", [["hyper_active"]])


def test_grouped_mlp_equals_one_mlp_per_group():
    torch.manual_seed(0)
    net = GroupedMLP([5, 7, 3], groups=3)
    x, g = torch.randn(6, 5), torch.tensor([0, 2, 1, 2, 0, 1])
    out = net(x, g)
    for b in range(6):
        k = int(g[b])
        h = torch.relu(x[b] @ net.weights[0][k] + net.biases[0][k])
        assert torch.allclose(out[b], h @ net.weights[1][k] + net.biases[1][k], atol=1e-6)
    out.sum().backward()
    assert net.weights[0].grad[0].abs().sum() > 0  # every group used here receives a gradient


# --- both agents on the real (tiny) simulator --------------------------------------------------------------
@pytest.fixture(scope="module")
def rollout(tiny_sim):
    """(obs, batch): a first observation of 8 users and a 32-row batch from a 12-step random rollout (sessions
    of 5 requests, so the batch holds session ends)."""
    first, batch = random_rollout(tiny_sim, steps=12, rows=32)
    assert batch["session_end"].any() and (~batch["session_end"]).any()
    return first, batch


def test_tiny_sim_users_fall_in_several_activity_groups(tiny_sim, rollout):
    obs, _ = rollout
    agent = rlur.build(tiny_sim, {**SMALL, **GROUPED}, 0)
    assert agent.groups.n == 3 and len(set(agent.groups(obs).tolist())) >= 2


@pytest.mark.parametrize("algo", BUILDERS)
def test_act_shapes_bounds_and_determinism(algo, tiny_sim, rollout):
    obs, _ = rollout
    build, cfg = BUILDERS[algo]
    agent = build(tiny_sim, dict(cfg), 0)
    a = agent.act(obs)
    assert a.shape == (8, 7) and torch.equal(a, agent.act(obs)) and torch.equal(a, build(tiny_sim, dict(cfg), 0).act(obs))
    e1, e2 = agent.act(obs, explore=True), agent.act(obs, explore=True)
    for x in (a, e1, e2):
        assert torch.isfinite(x).all() and x.abs().max() <= 1.0
    assert not torch.equal(e1, e2)


# Each ablation switch's effect on the computed targets / loss: tests/test_retention_path.py.
def test_rlur_group_switch_routes_each_user_group_to_its_own_heads(tiny_sim, rollout):
    """Grouped: a change to group k's retention head moves Q_T (and the actor's mean) of group-k rows only; the
    no-groups ablation has one head that every row uses."""
    obs, _ = rollout
    agent = rlur.build(tiny_sim, {**SMALL, **GROUPED}, 0)
    g = agent.groups(obs)
    k = int(g[0])
    a = torch.zeros(8, 7)
    with torch.no_grad():
        z = agent.critic.enc(obs)
        before, mu_before = agent.critic.q(z, a, g)[0], agent.actor(obs, g)[0]
        agent.critic.q_t1.biases[-1][k] += 1.0
        agent.actor.head.biases[-1][k] += 1.0
        after, mu_after = agent.critic.q(z, a, g)[0], agent.actor(obs, g)[0]
    assert torch.allclose(after - before, (g == k).float()) and (g != k).any()
    assert torch.allclose((mu_after - mu_before)[:, 0], (g == k).float())
    flat = rlur.build(tiny_sim, {**SMALL, "group_feature": None, "groups": []}, 0)
    assert flat.groups.n == 1 and flat.groups(obs).tolist() == [0] * 8
    assert flat.critic.q_t1.weights[0].shape[0] == 1 and agent.critic.q_t1.weights[0].shape[0] == 3


def test_gfn_loss_decreases_on_a_fixed_batch(tiny_sim, rollout):
    _, batch = rollout
    agent = gfn4retention.build(tiny_sim, {**SMALL, "heads": 2, "flow_lr": 1e-3, "forward_lr": 1e-3, "backward_lr": 1e-3}, 0)
    losses = [agent.update(batch)["db_loss"] for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("algo", BUILDERS)
def test_state_dict_round_trip_resumes_identically(algo, tiny_sim, rollout):
    obs, batch = rollout
    agent, fresh = reload_after_updates(*BUILDERS[algo], tiny_sim, obs, batch)
    assert torch.equal(fresh.act(obs), agent.act(obs))
    assert torch.equal(fresh.act(obs, explore=True), agent.act(obs, explore=True))
    for _ in range(2):
        assert fresh.update(batch) == agent.update(batch)


def test_bad_agent_config_is_a_clear_error(tiny_sim):
    with pytest.raises(RetentionRLError, match="eta"):
        rlur.build(tiny_sim, {"eta": 0}, 0)
    with pytest.raises(RetentionRLError, match="offsets"):
        gfn4retention.build(tiny_sim, {"reward_offset": -0.1}, 0)
    with pytest.raises(Exception, match="immediate"):
        gfn4retention.build(tiny_sim, {"immediate": "sometimes"}, 0)


def test_rlur_kl_penalty_is_against_the_target_actor_at_s_not_s_prime(tiny_sim, rollout):
    """The target actor runs once over [s'; s]: the soft regularisation must take the s half. With the target
    actor moved away from the actor, the update's KL equals KL(pi(.|s) || pi'(.|s)) computed directly."""
    from retentionrl.nets.actor_critic import gaussian_kl
    from retentionrl.spaces import obs_from_batch

    _, batch = rollout
    agent = rlur.build(tiny_sim, {**SMALL, **GROUPED}, 0)
    with torch.no_grad():
        agent.actor_t.head.biases[-1] += 0.3  # mean and log-std of every group move
        obs, nxt = obs_from_batch(batch), obs_from_batch(batch, "next_")
        g = agent.groups(obs)
        want = gaussian_kl(*agent.actor(obs, g), *agent.actor_t(obs, g)).mean()
        wrong = gaussian_kl(*agent.actor(obs, g), *agent.actor_t(nxt, agent.groups(nxt))).mean()
    assert abs(float(want) - float(wrong)) > 1e-4  # s and s' really give different references
    info = agent.update(batch)
    assert info["kl"] == pytest.approx(float(want), rel=1e-5, abs=1e-7)
