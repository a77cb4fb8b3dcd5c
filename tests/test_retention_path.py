"""The retention path: hand-value tests of the targets the retention-trained agents regress on (TD3's smoothing,
clip, twin minimum and policy delay; the ``terminal`` masks; RLUR's once-per-session discount and max over
target critics), each ablation switch's documented effect on a fixed batch, SAC's temperature direction, and
that online training sees training users only. The learning test on the retention case is at the end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retentionrl.agents import gfn4retention, rlur, sac, td3
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import done_mask
from retentionrl.simulator.env import preset
from retentionrl.simulator.synthetic import (
    CLICK,
    LONG_VIEW,
    RETENTION_ENV,
    expected_return_day_of_weights,
    item_probabilities,
)
from retentionrl.training.buffer import obs_from_batch

SMALL = {"batch_size": 16, "hidden": [16], "state_dim": 16, "token_dim": 8}


@pytest.fixture(scope="module")
def sim(synthetic_sim):
    return synthetic_sim


@pytest.fixture(scope="module")
def rollout(synthetic_rollout):
    return synthetic_rollout


# --- TD3 ---------------------------------------------------------------------------------------------------
class _ConstActor(nn.Module):
    """A target actor that outputs ``value`` in every dimension."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, obs):
        return torch.full((obs.user.shape[0], 7), self.value)


class _SumCritic(nn.Module):
    """A target critic Q(s, a) = sum(a) + offset (N,); records the actions it is asked about."""

    def __init__(self, offset: torch.Tensor) -> None:
        super().__init__()
        self.offset, self.seen = offset, []

    def forward(self, obs, a):
        self.seen.append(a.clone())
        return a.sum(1) + self.offset


def test_done_mask_by_terminal_mode():
    batch = {"session_end": torch.tensor([True, False, True, False]), "episode_end": torch.tensor([False, False, True, False]),
             "reward": torch.zeros(4)}
    assert done_mask(batch, "none").tolist() == [0, 0, 0, 0]
    assert done_mask(batch, "session").tolist() == [1, 0, 1, 0]
    assert done_mask(batch, "episode").tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("terminal", ["none", "session", "episode"])
def test_td3_target_smoothing_clip_twin_minimum_and_terminal_mask(terminal, sim, rollout, monkeypatch):
    """Target actor 0.8 everywhere, policy noise 1.0 clipped at ±0.3, so a' = clamp(0.8 + clip(eps), -1, 1) lies in
    [0.5, 1]; Q'_1 = sum(a') ± 1 and Q'_2 = sum(a') ∓ 1 row by row, so the twin minimum is sum(a') - 1 on every
    row; y = r + 0.9 (1 - done) (sum(a') - 1) with r = 1 * retention + 0.5 * immediate."""
    _, batch = rollout
    N = batch["reward"].shape[0]
    agent = td3.build(sim, {**SMALL, "gamma": 0.9, "immediate_weight": 0.5, "policy_noise": 1.0, "noise_clip": 0.3,
                            "policy_delay": 100, "terminal": terminal}, 0)
    sign = torch.where(torch.arange(N) % 2 == 0, 1.0, -1.0)
    agent.actor_t, agent.q1_t, agent.q2_t = _ConstActor(0.8), _SumCritic(sign), _SumCritic(-sign)
    seen = {}

    def critic_step(critics, opt, obs, action, target):  # record the TD target instead of regressing on it
        seen["y"] = target
        return 0.0, torch.zeros(N)

    monkeypatch.setattr(td3, "critic_step", critic_step)
    gen = torch.Generator()
    gen.set_state(agent.gen.get_state())
    eps = torch.randn(N, 7, generator=gen)
    agent.update(batch)

    a2 = agent.q1_t.seen[0]
    assert torch.equal(a2, agent.q2_t.seen[0])  # both twins judge the same smoothed action
    assert torch.allclose(a2, (0.8 + eps.clamp(-0.3, 0.3)).clamp(max=1.0))
    assert float(a2.min()) >= 0.5 - 1e-6 and (a2 == 1.0).any() and ((a2 - 0.5).abs() < 1e-6).any()  # clip, clamp active
    assert (eps < -0.3).any() and (eps > 0.3).any()  # the unclipped noise would have left [0.5, 1]
    done = {"none": torch.zeros(N), "session": batch["session_end"].float(), "episode": batch["episode_end"].float()}[terminal]
    r = batch["retention_reward"] + 0.5 * batch["reward"]
    assert torch.allclose(seen["y"], r + 0.9 * (1 - done) * (a2.sum(1) - 1.0), atol=1e-5)
    if terminal == "session":  # a session end does not bootstrap: y = r exactly there
        end = batch["session_end"]
        assert torch.allclose(seen["y"][end], r[end])


def _params(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()]).clone()


def test_td3_policy_delay_updates_actor_and_targets_every_third_critic_step(sim, rollout):
    _, batch = rollout
    agent = td3.build(sim, {**SMALL, "policy_delay": 3, "actor_lr": 1e-2}, 0)
    nets = ("actor", "q1", "q2", "actor_t", "q1_t", "q2_t")
    changed = {k: [] for k in nets}
    for _ in range(6):
        before = {k: _params(getattr(agent, k)) for k in nets}
        info = agent.update(batch)
        for k in nets:
            changed[k].append(not torch.equal(before[k], _params(getattr(agent, k))))
        assert ("actor_loss" in info) == (agent.n_updates % 3 == 0)
    every, third = [True] * 6, [False, False, True, False, False, True]
    assert changed["q1"] == every and changed["q2"] == every
    assert changed["actor"] == third and changed["actor_t"] == third
    assert changed["q1_t"] == third and changed["q2_t"] == third


# --- RLUR --------------------------------------------------------------------------------------------------
def test_rlur_retention_target_discounts_once_per_session_and_takes_the_max():
    cost = torch.tensor([2.0, 0.0, 3.0, 0.0])
    end = torch.tensor([1.0, 0.0, 1.0, 0.0])
    q1, q2 = torch.tensor([1.0, 2.0, -1.0, -3.0]), torch.tensor([1.5, 1.0, -2.0, -2.5])
    # ends: cost + 0.9 * max; inside: 1 * max (no discount within a session)
    assert rlur.retention_target(cost, end, q1, q2, 0.9).tolist() == pytest.approx([3.35, 2.0, 2.1, -2.5])
    assert rlur.immediate_target(torch.tensor([1.0, 0.5]), torch.tensor([2.0, 0.0]), torch.tensor([3.0, -1.0]),
                                 0.1, 0.9).tolist() == pytest.approx([1 + 0.2 + 2.7, 0.5 - 0.9])


def _record(monkeypatch, module, name: str) -> list[dict]:
    """Wrap ``module.name`` so that every call's arguments (by position) and result are kept."""
    calls, fn = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "out": out})
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_rlur_update_feeds_the_session_structure_into_its_targets(sim, rollout, monkeypatch):
    _, batch = rollout
    calls = _record(monkeypatch, rlur, "retention_target")
    agent = rlur.build(sim, {**SMALL, "normalize": False, "retention_gamma": 0.7}, 0)
    agent.update(batch)
    cost, end, _, _, gamma = calls[0]["args"]
    assert torch.equal(end, batch["session_end"].float()) and gamma == 0.7
    assert torch.equal(cost, batch["return_day"].float())  # normalize: false -> the raw returning time d


def test_rlur_normalisation_divides_the_cost_by_its_markov_bound(sim, rollout, monkeypatch):
    obs_batch = rollout[1]
    agent = rlur.build(sim, {**SMALL, "eta": 2}, 0)
    with torch.no_grad():
        obs = obs_from_batch(obs_batch)
        p = torch.sigmoid(agent.critic.p_within(agent.critic.enc(obs), agent.groups(obs)).squeeze(1))
    calls = _record(monkeypatch, rlur, "retention_target")
    agent.update(obs_batch)
    cost = calls[0]["args"][0]
    day = obs_batch["return_day"].float()
    assert torch.allclose(cost, day / torch.clamp(3 * (1 - p), min=1.0), atol=1e-6)
    end = obs_batch["session_end"]
    assert (cost[end] < day[end] - 1e-3).all()  # p ~ 0.5 at init: T(s) = 1.5 > 1


@pytest.mark.parametrize("use_rnd", [True, False])
def test_rlur_rnd_switch_adds_or_removes_the_bonus_in_the_immediate_target(use_rnd, sim, rollout, monkeypatch):
    _, batch = rollout
    calls = _record(monkeypatch, rlur, "immediate_target")
    info = rlur.build(sim, {**SMALL, "rnd": use_rnd, "rnd_weight": 0.3}, 0).update(batch)
    reward, bonus, q_next, beta, _ = calls[0]["args"]
    assert torch.equal(reward, batch["reward"]) and beta == 0.3
    if use_rnd:
        assert (bonus > 0).all() and "rnd_loss" in info
    else:
        assert torch.equal(bonus, torch.zeros_like(bonus)) and "rnd_loss" not in info
    assert torch.allclose(calls[0]["out"], reward + 0.3 * bonus + 0.9 * q_next)


def test_rlur_soft_regularisation_adds_kappa_times_the_kl_to_the_actor_loss(sim, rollout):
    """Two agents from one seed stay identical through the first update (the actor equals its Polyak copy, so the
    KL and its gradient are 0); at the second, kappa = 2 adds exactly 2 * KL to kappa = 0's actor loss."""
    _, batch = rollout
    a, b = (rlur.build(sim, {**SMALL, "soft_regularization": k}, 0) for k in (2.0, 0.0))
    first = a.update(batch), b.update(batch)
    assert first[0]["kl"] == pytest.approx(0.0, abs=1e-9) and first[0]["actor_loss"] == pytest.approx(first[1]["actor_loss"])
    ia, ib = a.update(batch), b.update(batch)
    assert ia["kl"] > 0 and "kl" not in ib
    assert ia["actor_loss"] == pytest.approx(ib["actor_loss"] + 2.0 * ia["kl"], rel=1e-5, abs=1e-7)


# --- GFN4Retention ablations: the loss each switch computes on a fixed batch ---------------------------------
GFN = {**SMALL, "heads": 2}


@pytest.mark.parametrize("ablation, kwargs", [
    ({"immediate": "none"}, {"immediate": "none"}),
    ({"immediate": "terminal"}, {"immediate": "terminal"}),
    ({"lam": 0.5}, {"lam": 0.5}),
    ({"terminal_step": "state"}, {"terminal_step": "state"}),
])
def test_gfn_loss_switches_change_the_loss_as_documented(ablation, kwargs, sim, rollout, monkeypatch):
    """Same seed, same networks, same batch: the ablation's loss is the full model's recorded terms through the
    loss with the switched option, and differs from the full model's loss."""
    _, batch = rollout
    calls = _record(monkeypatch, gfn4retention, "detailed_balance_loss")
    full = gfn4retention.build(sim, dict(GFN), 0).update(batch)["db_loss"]
    abl = gfn4retention.build(sim, {**GFN, **ablation}, 0).update(batch)["db_loss"]
    (full_call, abl_call) = calls
    for x, y in zip(full_call["args"], abl_call["args"]):  # the networks' terms are the same
        assert torch.allclose(x, y)
    defaults = {"lam": 1.0, "b_f": 1.0, "b_b": 1.0, "b_r": 0.6, "immediate": "step", "terminal_step": "transition"}
    assert full_call["kwargs"] == defaults and abl_call["kwargs"] == {**defaults, **kwargs}
    expected = gfn4retention.detailed_balance_loss(*[t.detach() for t in full_call["args"]], **{**defaults, **kwargs})
    assert abl == pytest.approx(float(expected.mean()), rel=1e-5)
    assert abs(abl - full) > 1e-4


def test_gfn_ncd_drops_the_context_detector_from_the_state(sim, rollout):
    obs, batch = rollout
    full, ncd = (gfn4retention.build(sim, {**GFN, "context_module": c}, 0) for c in (True, False))
    assert full.nets.state(obs).shape == (8, 16 + 32) and ncd.nets.state(obs).shape == (8, 16)
    assert ncd.nets.ctx is None and abs(full.update(batch)["db_loss"] - ncd.update(batch)["db_loss"]) > 1e-4


# --- SAC ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target_entropy, rises", [(50.0, True), (-50.0, False)])
def test_sac_alpha_moves_towards_its_target_entropy(target_entropy, rises, sim, rollout):
    """alpha_loss = -log_alpha (log pi + H_target): a target above the policy's entropy (7-D, at most ~10 nats
    here) raises alpha to reward entropy; one far below lowers it."""
    _, batch = rollout
    agent = sac.build(sim, {**SMALL, "target_entropy": target_entropy, "alpha_lr": 1e-2}, 0)
    alphas = [agent.alpha]
    for _ in range(3):
        info = agent.update(batch)
        alphas.append(agent.alpha)
        assert (info["entropy"] < target_entropy) == rises
    steps = torch.tensor(alphas).diff()
    assert ((steps > 0) if rises else (steps < 0)).all()


# --- online training draws only training users --------------------------------------------------------------
def test_online_training_sees_only_training_users(sim, tmp_path):
    from retentionrl.training.checkpoint import load_checkpoint
    from retentionrl.training.online import TrainConfig, train

    cfg = TrainConfig(algo="td3", seed=0, n_users=16, total_steps=30, warmup_steps=10, buffer_size=1000, log_every=30,
                      eval_every=30, checkpoint_every=30, env={"max_sessions": 1},
                      eval={"n_users": 8, "n_episodes": 8, "seeds": [1]}, agent=dict(SMALL))
    train(cfg, sim, tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    data = ck["buffer"]["data"]
    seen = torch.cat([data["user"], data["next_user"], ck["env"]["obs.user"]]).unique()
    train_users = set(sim.user_pool("train").tolist())
    assert set(seen.tolist()) <= train_users
    assert not set(seen.tolist()) & set(torch.nonzero(sim.test_users).flatten().tolist())
    assert len(seen) > 0.5 * len(train_users)  # 30 one-session episodes of 16 rows: most training users drawn


# --- the retention case: the return law reads long views, the immediate reward counts clicks -----------------
def test_return_feedback_weights_decouple_retention_from_the_immediate_reward(sim):
    """Rollouts of click-ranking and long-view-ranking land on the closed-form expected return day; the
    click-ranking slate has the higher immediate reward but users come back ~2.7 days later."""
    cfg = preset("kuaisim", **RETENTION_ENV)
    exact = {name: expected_return_day_of_weights(sim, a, cfg) for name, a in (("click", CLICK), ("long_view", LONG_VIEW))}
    assert exact["click"] - exact["long_view"] > 2.5
    for name, a in (("click", CLICK), ("long_view", LONG_VIEW)):
        env = sim.make_env("kuaisim", n_users=64, **RETENTION_ENV)
        env.reset(seed=3)
        days, clicks = [], []
        for _ in range(100):
            out = env.step(torch.tensor(a).expand(64, -1))
            days.append(out.return_day[out.session_end].float())
            clicks.append(out.reward)
        d = torch.cat(days)
        assert abs(float(d.mean()) - exact[name]) < 4 * float(d.std()) / len(d) ** 0.5
        exact_click = float(item_probabilities(sim)[torch.topk(item_probabilities(sim) @ torch.tensor(a), 6).indices, 0].mean())
        assert float(torch.cat(clicks).mean()) == pytest.approx(exact_click, abs=0.02)  # the reward counts clicks only
        exact[name + "_click"] = exact_click
    assert exact["click_click"] > exact["long_view_click"] + 0.3  # the immediate-greedy action is click-ranking
    # Without feedback weights the law reads the immediate reward (clicks): click-ranking would bring users back sooner.
    no_fb = preset("kuaisim", **{**RETENTION_ENV, "returns": {**RETENTION_ENV["returns"], "feedback_weights": None}})
    assert expected_return_day_of_weights(sim, CLICK, no_fb) < expected_return_day_of_weights(sim, LONG_VIEW, no_fb)


def test_long_view_ranking_is_the_retention_optimum(sim):
    """The closed form: probabilities are state-independent and sessions fixed-length, so the top-6 by long-view
    probability maximises the session's long-view count stochastically and minimises E[d]; no constant action
    (one-hot, random in [-1, 1]^7) does better."""
    cfg = preset("kuaisim", **RETENTION_ENV)
    best = expected_return_day_of_weights(sim, LONG_VIEW, cfg)
    g = torch.Generator().manual_seed(0)
    others = [torch.rand(7, generator=g) * 2 - 1 for _ in range(200)] + [s * torch.eye(7)[b] for b in range(7) for s in (1, -1)]
    days = torch.tensor([expected_return_day_of_weights(sim, a, cfg) for a in others])
    assert (days >= best - 1e-9).all() and float(days.mean()) > best + 0.5


def test_return_time_range_uses_the_feedback_weights(sim):
    """P = 0.1 + 0.8 f with f the long-view rate in [0, 1]: floor E[d | P = 0.9], ceiling E[d | P = 0.1]; the
    click weights alone (the immediate reward) would give the same range here, so check a scaled feedback too."""
    from retentionrl.simulator.returns import truncated_geometric_mean

    D = sim.max_return_day
    cfg = preset("kuaisim", **RETENTION_ENV)
    floor, ceiling = sim.return_time_range(cfg, users="all")
    assert floor == pytest.approx(float(truncated_geometric_mean(torch.tensor([0.9]), D)), abs=1e-5)
    assert ceiling == pytest.approx(float(truncated_geometric_mean(torch.tensor([0.1]), D)), abs=1e-5)
    half = preset("kuaisim", **{**RETENTION_ENV, "returns": {**RETENTION_ENV["returns"], "feedback_weights": [0, 0.5, 0, 0, 0, 0, -0.25]}})
    floor, ceiling = sim.return_time_range(half, users="all")
    assert floor == pytest.approx(float(truncated_geometric_mean(torch.tensor([0.1 + 0.8 * 0.5]), D)), abs=1e-5)
    assert ceiling == pytest.approx(float(truncated_geometric_mean(torch.tensor([0.1 - 0.8 * 0.25]).clamp(min=1e-3), D)), abs=1e-4)
    with pytest.raises(RetentionRLError, match="feedback_weights needs 7 values"):
        sim.make_env("kuaisim", returns={"feedback_weights": [1.0, 0.0]})


# --- learning from the retention signal ------------------------------------------------------------------
# 3 sessions of 2 requests per user episode; evaluation on the held-out users, 2 seeds x 64 episodes (384 sessions).
RET_ENV = {**RETENTION_ENV, "max_sessions": 3}
RET_EVAL = {"n_users": 64, "n_episodes": 64, "seeds": [101, 102], "env_overrides": RET_ENV}
NET = {"batch_size": 64, "hidden": [32], "state_dim": 16, "token_dim": 8}
RET_AC = {**NET, "actor_lr": 1e-3, "critic_lr": 3e-3, "retention_weight": 1.0, "immediate_weight": 0.0, "gamma": 0.9}
RETENTION_TRAINED = {
    "td3": RET_AC, "sac": RET_AC, "ddpg": RET_AC,
    # The retention critic only. tau 0.05, not 0.005: see the learning test's docstring.
    "rlur": {**NET, "actor_lr": 1e-3, "critic_lr": 3e-3, "immediate_weight": 0.0, "tau": 0.05},
    # NIF: retention reward only (lam has no effect); the paper's learning rates (2e-5 / 1e-4) are far too slow
    # for 150 steps, so all three are 1e-3 here.
    "gfn4retention": {**NET, "heads": 2, "immediate": "none", "flow_lr": 1e-3, "forward_lr": 1e-3, "backward_lr": 1e-3},
}
RET_STEPS = 150
RET_MARGIN = 0.5  # share of the click-ranking -> optimum gap (in mean return days) a retention learner must close


@pytest.fixture(scope="module")
def retention_gap(sim) -> tuple[float, float]:
    """(click-ranking's, the optimum's) exact expected return day in the retention case."""
    cfg = preset("kuaisim", **RET_ENV)
    return expected_return_day_of_weights(sim, CLICK, cfg), expected_return_day_of_weights(sim, LONG_VIEW, cfg)


def _train_retention(sim, algo: str, agent_cfg: dict, path, env: dict = RET_ENV, seed: int = 0) -> float:
    """Mean return day (evaluation on held-out users) after ``RET_STEPS`` steps of 32 training users."""
    from retentionrl.training.online import TrainConfig, train

    steps = RET_STEPS
    tc = TrainConfig(algo=algo, seed=seed, env=env, n_users=32, total_steps=steps, warmup_steps=20,
                     buffer_size=steps * 32, log_every=steps, eval_every=steps, checkpoint_every=steps,
                     eval={**RET_EVAL, "env_overrides": env}, agent=agent_cfg)
    return train(tc, sim, path, progress=False)["eval"]["return_time"]


def _closed(return_time: float, gap: tuple[float, float]) -> float:
    click, best = gap
    return (click - return_time) / (click - best)


def _far_seed(sim, algo: str, agent_cfg: dict, gap: tuple[float, float], env: dict = RET_ENV) -> int:
    """The first seed whose *untrained* policy closes < 25% of ``gap``: a random initialisation sometimes starts
    near the optimum (e.g. TD3 seed 1 at 98%), and a pass must not come from that."""
    from retentionrl.agents import make_agent
    from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy

    cfg = EvalConfig(**{**RET_EVAL, "env_overrides": env})
    for seed in range(10):
        agent = make_agent(algo, sim, dict(agent_cfg), seed=seed, env=preset("kuaisim", **env))
        if _closed(evaluate_policy(agent, sim, cfg)["mean"]["return_time"], gap) < 0.25:
            return seed
    raise AssertionError(f"{algo}: every seed's untrained policy is near the optimum")


@pytest.mark.parametrize("algo", sorted(RETENTION_TRAINED))
def test_retention_trained_agent_closes_the_gap_to_the_retention_optimum(algo, sim, retention_gap, tmp_path):
    """Trains from the first seed whose untrained policy is far from the optimum (:func:`_far_seed`): with the
    3-feature (time-unaware) context that is seed 0 for DDPG, RLUR, SAC, TD3 and seed 2 for GFN4Retention, which
    then close 98%, 100%, 100%, 97% and 99% of the gap. Earlier measurements (150 steps, with the earlier 4-feature context that still held the episode clock): TD3, SAC, DDPG close
    98-101% of the gap (seeds 0, 3, 5, 7, whose untrained policies close -15 to -8%; seeds 1, 2 start at 98% / 54%
    by luck, hence the seed choice), GFN4Retention 95-102% (seeds 0-4, either terminal step; untrained seeds 0-2: -19 to -11%), RLUR 99-102%
    (seeds 0-4; untrained seeds 0-2: -17 to -14%). In their evaluation actions (seed 0) the long-view or like
    weight is the largest (SAC's tanh(mu) is small, ~0.1, but long view leads in seeds 0-2). RLUR with the
    default Polyak rate tau = 0.005 closed 98, 94, -10, 99, 89% (seeds 0-4) yet had not learned: its retention
    critic regresses on the raw day count (over its Markov bound) discounted once per session, so Q_T is of order
    E[d] / (1 - 0.9), up to 15-43, but it was still ~2 after 150-300 updates through the slow target copies, and tanh(mu) had
    moved < 0.2 from its initialisation (the result was the sign pattern of near-zero weights). With tau = 0.05
    its long-view weight reaches 0.49-0.76 in every seed."""
    seed = _far_seed(sim, algo, RETENTION_TRAINED[algo], retention_gap)
    rt = _train_retention(sim, algo, dict(RETENTION_TRAINED[algo]), tmp_path / algo, seed=seed)
    closed = _closed(rt, retention_gap)
    assert rt > retention_gap[1] - 0.15  # evaluation noise only: nothing beats the optimum in expectation
    assert closed >= RET_MARGIN, (
        f"{algo} (seed {seed}): mean return day {rt:.3f} closes {closed:.0%} of the gap between click-ranking "
        f"({retention_gap[0]:.3f}) and the retention optimum ({retention_gap[1]:.3f}); needs {RET_MARGIN:.0%}")


def test_immediate_greedy_policies_do_not_close_the_gap(sim, retention_gap, tmp_path):
    """Click-ranking (the immediate optimum) and TD3 trained on the immediate reward with gamma 0 stay at the
    click-ranking return time."""
    from retentionrl.agents import make_agent
    from retentionrl.evaluation.protocol import EvalConfig, evaluate_policy

    ranking = evaluate_policy(make_agent("ranking", sim, {}, seed=0), sim, EvalConfig(**RET_EVAL))["mean"]["return_time"]
    immediate = {**RET_AC, "retention_weight": 0.0, "immediate_weight": 1.0, "gamma": 0.0}
    rt = _train_retention(sim, "td3", immediate, tmp_path / "td3-immediate")
    for value in (ranking, rt):
        assert _closed(value, retention_gap) < 0.25


def test_gfn_learns_the_ending_action_only_with_the_terminal_transition(sim, retention_gap, tmp_path):
    """1-request sessions: every transition ends a session. The old anchor on s_T gives P_F no gradient at all,
    so GFN4Retention cannot learn; the terminal transition trains the ending action. Measured, seeds 0-2:
    transition closes 99-100% of the gap, state 3%, -1% and 5%."""
    env = {**RET_ENV, "leave": {"initial_temper": 1.0}, "max_sessions": 4}
    cfg = preset("kuaisim", **env)
    gap = (expected_return_day_of_weights(sim, CLICK, cfg), expected_return_day_of_weights(sim, LONG_VIEW, cfg))
    closed = {}
    for step in ("transition", "state"):
        agent_cfg = {**RETENTION_TRAINED["gfn4retention"], "terminal_step": step}
        seed = _far_seed(sim, "gfn4retention", agent_cfg, gap, env)
        closed[step] = _closed(_train_retention(sim, "gfn4retention", agent_cfg, tmp_path / step, env=env, seed=seed), gap)
    assert closed["transition"] >= RET_MARGIN and closed["state"] < 0.25, closed


def test_gfn_policy_head_gets_no_gradient_from_session_ends_with_the_old_terminal_form(sim, rollout):
    _, batch = rollout
    ends = {k: v[batch["session_end"]] for k, v in batch.items()}  # only session-end rows
    for step, moves in (("transition", True), ("state", False)):
        agent = gfn4retention.build(sim, {**GFN, "terminal_step": step}, 0)
        before = _params(agent.nets.policy)
        agent.update(ends)
        assert (not torch.equal(before, _params(agent.nets.policy))) == moves, step
