"""Off-policy evaluation: estimators against hand-computed values, the Open Bandit Pipeline references, unbiasedness
on a bandit with known probabilities, the trajectory layout of the logs, and the log-densities (stored, target
convention, fitted behaviour model) on the tiny simulator."""

from __future__ import annotations

import math

import pytest
import torch

from retentionrl.agents.base import Agent, FixedWeightsAgent, GaussianBehaviour, RandomAgent, agent_spec
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.ope import (
    Trajectories, ipw, ncis, ncis_values, pdwis, snipw, to_trajectories, trajectory_is,
)
from retentionrl.evaluation.propensity import fit_behaviour, flat_state, policy_log_prob
from retentionrl.simulator.env import preset
from retentionrl.spaces import flat_features
from retentionrl.training.offline import generate_logs

ENV = {"max_sessions": 2}  # KuaiSim preset: sessions of 5 requests, episodes of 10
NAN = float("nan")


def _log(p) -> torch.Tensor:
    return torch.tensor(p, dtype=torch.float64).log()


def _toy():
    """Two trajectories. A: 2 steps, β = (1/4, 1/2), π = (1/2, 1/4) -> ρ = (2, 1/2), r = (1, 0); B: 3 steps,
    β = (0.1, 0.5, 0.2), π = (0.4, 0.5, 0.2) -> ρ = (4, 1, 1), r = (0, 1, 1). A's padding holds junk (a NaN
    log-prob, a reward of 1000) that the mask must hide."""
    target = _log([[0.5, 0.25, 1.0], [0.4, 0.5, 0.2]])
    behaviour = _log([[0.25, 0.5, 1.0], [0.1, 0.5, 0.2]])
    target[0, 2] = NAN
    reward = torch.tensor([[1.0, 0.0, 1000.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return target, behaviour, reward, mask


def test_ncis_on_two_trajectories_with_the_cap_inactive_and_active():
    t, b, r, m = _toy()
    # cap 10 (inactive): A = (2·1 + ½·0) / (2 + ½) = 0.8, B = (4·0 + 1 + 1) / 6 = 1/3; mean 17/30.
    torch.testing.assert_close(ncis_values(t, b, r, m, cap=10.0), torch.tensor([0.8, 1 / 3], dtype=torch.float64))
    assert ncis(t, b, r, m, cap=10.0) == pytest.approx(17 / 30, abs=1e-12)
    assert ncis(t, b, r, m, cap=math.inf) == pytest.approx(17 / 30, abs=1e-12)
    # cap 1.5 (active on 2 and 4): A = 1.5 / 2 = 3/4, B = 2 / 3.5 = 4/7; mean 37/56.
    assert ncis(t, b, r, m, cap=1.5) == pytest.approx(37 / 56, abs=1e-12)
    # Unnormalised: Σ ρ̃ r / |ξ|: A = 2/2 = 1, B = 2/3; mean 5/6. With cap 1.5: A = 1.5/2, B = 2/3 -> 17/24.
    assert ncis(t, b, r, m, cap=10.0, normalise=False) == pytest.approx(5 / 6, abs=1e-12)
    assert ncis(t, b, r, m, cap=1.5, normalise=False) == pytest.approx(17 / 24, abs=1e-12)


def test_ncis_reduces_to_the_open_bandit_pipeline_formulas():
    # Four logged rounds: β = (1/2, 1/4, 1/5, 4/5), π = (1/4, 1/2, 3/5, 2/5) -> w = (1/2, 2, 3, 1/2);
    # rewards r = (1, 0, 1, 0).
    t, b = _log([0.25, 0.5, 0.6, 0.4]), _log([0.5, 0.25, 0.2, 0.8])
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    snipw_hand = (0.5 + 3.0) / (0.5 + 2 + 3 + 0.5)  # Σ w r / Σ w = 7/12
    ipw_hand = (0.5 + 3.0) / 4  # mean(w r) = 0.875
    clipped_hand = (0.5 + 2.0) / 4  # mean(min(w, 2) r) = 0.625
    assert snipw(t, b, r) == pytest.approx(snipw_hand, abs=1e-12)
    assert ipw(t, b, r) == pytest.approx(ipw_hand, abs=1e-12)
    assert ipw(t, b, r, lambda_=2.0) == pytest.approx(clipped_hand, abs=1e-12)
    # The four rounds as one trajectory: NCIS with an infinite cap is SNIPW; unnormalised, it is clipped IPW.
    one = dict(target_logp=t[None], behaviour_logp=b[None], reward=r[None])
    assert ncis(**one, cap=math.inf) == pytest.approx(snipw_hand, abs=1e-12)
    assert ncis(**one, cap=2.0, normalise=False) == pytest.approx(clipped_hand, abs=1e-12)
    assert ncis(**one, cap=math.inf, normalise=False) == pytest.approx(ipw_hand, abs=1e-12)
    # As four one-step trajectories, unnormalised NCIS is still clipped IPW; normalised, each trajectory's ρ̃ r / ρ̃
    # is its reward, so NCIS is the on-policy mean 1/2 whatever π is (the per-trajectory normalisation).
    steps = dict(target_logp=t[:, None], behaviour_logp=b[:, None], reward=r[:, None])
    assert ncis(**steps, cap=2.0, normalise=False) == pytest.approx(clipped_hand, abs=1e-12)
    assert ncis(**steps, cap=math.inf) == pytest.approx(0.5, abs=1e-12)


def test_trajectory_is_and_pdwis_by_hand():
    t, b, r, m = _toy()
    # Trajectory weights W = (2·½, 4·1·1) = (1, 4), returns G = (1, 2).
    assert trajectory_is(t, b, r, m) == pytest.approx((1 * 1 + 4 * 2) / 2, abs=1e-12)  # 4.5
    assert trajectory_is(t, b, r, m, cap=3.0) == pytest.approx((1 * 1 + 3 * 2) / 2, abs=1e-12)  # 3.5
    assert trajectory_is(t, b, r, m, weighted=True) == pytest.approx((1 + 8) / (1 + 4), abs=1e-12)  # 1.8
    assert trajectory_is(t, b, r, m, gamma=0.5) == pytest.approx((1 * 1 + 4 * (0.5 + 0.25)) / 2, abs=1e-12)  # 2.0
    # Weighted IS of a single trajectory is its return, whatever the weight (the small-sample bias of WIS).
    assert trajectory_is(t[1:], b[1:], r[1:], m[1:], weighted=True) == pytest.approx(2.0, abs=1e-12)
    # Cumulative weights: A (2, 1, 1 carried after its end), B (4, 4, 4); rewards A (1, 0, -), B (0, 1, 1).
    # t=0: (2·1 + 4·0) / 6 = 1/3; t=1: (1·0 + 4·1) / 5 = 4/5; t=2: (1·0 + 4·1) / 5 = 4/5.
    assert pdwis(t, b, r, m) == pytest.approx(1 / 3 + 4 / 5 + 4 / 5, abs=1e-12)
    assert pdwis(t, b, r, m, gamma=0.5) == pytest.approx(1 / 3 + 0.5 * 4 / 5 + 0.25 * 4 / 5, abs=1e-12)
    # Capped at 3: A (2, 1, 1), B (3, 3, 3): 2/5 + 3/4 + 3/4.
    assert pdwis(t, b, r, m, cap=3.0) == pytest.approx(2 / 5 + 3 / 4 + 3 / 4, abs=1e-12)
    # Unweighted per-decision IS: (2·1 + 4·0)/2 + (1·0 + 4·1)/2 + (0 + 4·1)/2 = 5.
    assert pdwis(t, b, r, m, weighted=False) == pytest.approx(5.0, abs=1e-12)
    # π = β: PDWIS is the mean return (1 + 2) / 2, an ended trajectory staying in the later denominators.
    assert pdwis(b, b, r, m) == pytest.approx(1.5, abs=1e-12)


def test_importance_sampling_is_unbiased_on_a_bandit_with_known_probabilities():
    """Three actions, β = (.5, .3, .2), π = (.2, .3, .5), Bernoulli rewards with means (.1, .5, .9): V(π) = .62 per
    step, V(β) = .38. Trajectories of two independent rounds: E_π[G] = 1.24, E_β[G] = .76. The unbiased estimators
    are linear in the trajectories, so their mean over repeated small samples is one estimate over all 40,000
    trajectories (per-trajectory sd ≈ 2.5 for trajectory IS: standard error ≈ .012; tolerance .05). A wrong weight
    fails it: no weight gives .76, the second step's ratio alone gives E_β[r1] + V(π) = 1.0."""
    gen = torch.Generator().manual_seed(0)
    beta, pi = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    mean_r = torch.tensor([0.1, 0.5, 0.9])
    n, T = 40_000, 2
    a = torch.multinomial(beta, n * T, replacement=True, generator=gen).reshape(n, T)
    r = torch.bernoulli(mean_r[a], generator=gen).double()
    t, b = pi.double().log()[a], beta.double().log()[a]
    assert trajectory_is(t, b, r) == pytest.approx(1.24, abs=0.05)
    assert pdwis(t, b, r, weighted=False) == pytest.approx(1.24, abs=0.05)
    assert ipw(t[:, 0], b[:, 0], r[:, 0]) == pytest.approx(0.62, abs=0.03)
    assert ncis(t, b, r, cap=math.inf, normalise=False) == pytest.approx(0.62, abs=0.03)  # per-step value
    # Self-normalised ones are consistent: at this sample size, close too.
    assert snipw(t[:, 0], b[:, 0], r[:, 0]) == pytest.approx(0.62, abs=0.03)
    assert pdwis(t, b, r) == pytest.approx(1.24, abs=0.05)
    # The wrong weights are outside the tolerance.
    assert abs(trajectory_is(b, b, r) - 1.24) > 0.4
    second_only = torch.stack([b[:, 0], t[:, 1]], 1)
    assert abs(trajectory_is(second_only, b, r) - 1.24) > 0.15


def test_bad_input_is_one_line_naming_the_argument():
    t, b, r, m = _toy()
    cases = [
        (lambda: ncis(t, b[:, :2], r, m), r"behaviour_logp has shape \(2, 2\), target_logp has \(2, 3\)"),
        (lambda: ncis(t, b, r[0], m), r"reward must be a non-empty \(n_traj, T\) tensor"),
        (lambda: ncis(t, b, r, m, cap=0.0), "cap must be a positive number"),
        (lambda: ncis(t, b, r, m, cap=-1), "cap must be a positive number"),
        (lambda: trajectory_is(t, b, r, m, cap=NAN), "cap must be a positive number"),
        (lambda: ipw(t[1], b[1], r[1], lambda_=0), "lambda_ must be a positive number"),
        (lambda: ncis(t.clone().fill_(NAN), b, r, m), r"target_logp is nan at \(0, 0\)"),
        (lambda: pdwis(t, b.clone().fill_(-math.inf), r, m), "behaviour_logp is -inf at"),
        (lambda: ncis(t, b, r.clone().fill_(NAN), m), "reward is nan at"),
        (lambda: ncis(t, b, r, m.long()), "mask must be a bool tensor"),
        (lambda: ncis(t, b, r, torch.tensor([[True, False, True], [True, True, True]])), "mask: padding must come"),
        (lambda: ncis(t, b, r, torch.tensor([[False] * 3, [True] * 3])), "mask: trajectory 0 has no step"),
        (lambda: pdwis(t, b, r, m, gamma=2.0), "gamma must be in"),
        (lambda: ncis(torch.full((2, 3), -math.inf), b, r, m), "target_logp is -inf at every step of trajectory 0"),
        (lambda: ncis([[0.0]], b, r, m), "target_logp must be a torch tensor"),
    ]
    for call, message in cases:
        with pytest.raises(RetentionRLError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_to_trajectories_cuts_the_step_major_logs_into_sessions_and_episodes():
    # 2 env rows x 4 steps, row t*2 + b. Row 0 ends sessions at t=1 and t=3 (its episode at t=3); row 1 at t=2.
    end = torch.zeros(8, dtype=torch.bool)
    end[[2, 6, 5]] = True
    episode = torch.zeros(8, dtype=torch.bool)
    episode[6] = True
    logs = {"session_end": end, "episode_end": episode}
    tr = to_trajectories(logs, n_users=2)
    assert torch.equal(tr.index, torch.tensor([[0, 2, -1], [4, 6, -1], [1, 3, 5]]))
    assert torch.equal(tr.mask, tr.index >= 0) and torch.equal(tr.lengths, torch.tensor([2, 2, 3]))
    vals = torch.arange(8.0) + 1
    assert torch.equal(tr.gather(vals), torch.tensor([[1.0, 3, 0], [5, 7, 0], [2, 4, 6]]))
    assert tr.gather(torch.ones(8, 7)).shape == (3, 3, 7)
    full = to_trajectories(logs, n_users=2, keep_incomplete=True)
    assert torch.equal(full.index, torch.tensor([[0, 2, -1], [4, 6, -1], [1, 3, 5], [7, -1, -1]]))
    assert torch.equal(to_trajectories(logs, n_users=2, split="episode").index, torch.tensor([[0, 2, 4, 6]]))
    with pytest.raises(RetentionRLError, match="n_users must be a positive divisor of the 8 log rows, got 3"):
        to_trajectories(logs, n_users=3)
    with pytest.raises(RetentionRLError, match="no complete episode"):
        to_trajectories({"episode_end": torch.zeros(8, dtype=torch.bool)}, n_users=2, split="episode")
    with pytest.raises(RetentionRLError, match="split must be 'session' or 'episode'"):
        to_trajectories(logs, n_users=2, split="user")
    assert isinstance(tr, Trajectories)


W = [1.0, 0.5, 0, 0, 0.2, 0, 0]


def test_stored_and_target_log_densities_on_the_tiny_simulator(tiny_sim):
    sigma = 0.3
    logs = generate_logs(tiny_sim, GaussianBehaviour(FixedWeightsAgent(W), sigma), "kuaisim", n_users=8, steps=10,
                         seed=0, env=ENV)
    stored = logs["behaviour_log_prob"]
    # A deterministic target at the same weights, with the same σ (the Gaussian convention) is the behaviour.
    target = policy_log_prob(FixedWeightsAgent(W), logs, sigma=sigma, chunk=7)  # chunks of 7 rows
    torch.testing.assert_close(target, stored)
    tr = to_trajectories(logs, n_users=8)
    assert tr.index.shape == (16, 5)  # 8 rows x 2 sessions of 5 requests, all complete
    ratio_one = ncis(tr.gather(target), tr.gather(stored), tr.gather(logs["reward"]), tr.mask)
    # ρ = 1: each session's mean reward, averaged; sessions are rows' steps 0-4 and 5-9.
    per_session = logs["reward"].reshape(10, 8).T.reshape(16, 5).mean(1)
    assert ratio_one == pytest.approx(float(per_session.double().mean()), abs=1e-6)
    # A shifted target: log ρ = Σ_j [(a_j - w_j)² - (a_j - w'_j)²] / (2σ²), here only column 0 moves by 0.3.
    shifted = [W[0] + 0.3, *W[1:]]
    log_ratio = policy_log_prob(FixedWeightsAgent(shifted), logs, sigma=sigma) - stored
    a0 = logs["action"][:, 0]
    hand = ((a0 - W[0]) ** 2 - (a0 - shifted[0]) ** 2) / (2 * sigma**2)
    torch.testing.assert_close(log_ratio, hand, atol=1e-4, rtol=0)
    with pytest.raises(RetentionRLError, match="FixedWeightsAgent has no log-density of its own; give sigma"):
        policy_log_prob(FixedWeightsAgent(W), logs)
    with pytest.raises(RetentionRLError, match="items-mode agents are not supported"):
        policy_log_prob(RandomAgent(action_mode="items"), logs, sigma=0.1)


class LinearFusion(Agent):
    """μ(s) = x(s) W + c on the flat state vector: a state-dependent behaviour mean."""

    def __init__(self, layout, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.layout = layout
        self.W = torch.randn(layout.dim, 7, generator=g) * (2.0 / layout.dim**0.5)
        self.c = torch.rand(7, generator=g)

    def act(self, obs, explore=False):
        return flat_features(obs, self.layout) @ self.W + self.c


def test_fitted_behaviour_model_recovers_the_stored_log_density(tiny_sim):
    sigma = 0.2
    layout = agent_spec(tiny_sim, preset("kuaisim", **ENV)).flat_layout()
    logs = generate_logs(tiny_sim, GaussianBehaviour(LinearFusion(layout), sigma), "kuaisim", n_users=256, steps=10,
                         seed=1, env=ENV)
    x, stored = flat_state(logs, layout), logs["behaviour_log_prob"]
    fit = fit_behaviour(x, logs["action"], groups=logs["user"], seed=0)  # linear, homoscedastic
    held = fit.heldout
    assert 0.1 < float(held.float().mean()) < 0.3 and fit.n_heldout == int(held.sum())
    assert not set(logs["user"][held].tolist()) & set(logs["user"][~held].tolist())  # a user is on one side
    # E[log N(a; μ, σ² I_7)] = -7 (1/2 + log σ + log(2π)/2) = 1.3335 for σ = 0.2.
    expected = -7 * (0.5 + math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert float(stored.mean()) == pytest.approx(expected, abs=0.1)
    # Held out, the fitted model scores close to (and not above) the true density's own log-likelihood.
    truth = float(stored[held].mean())
    assert truth - 0.3 < fit.heldout_loglik < truth + 0.05, (fit.heldout_loglik, truth)
    err = (fit.log_prob(x, logs["action"]) - stored)[held].abs().mean()
    assert err < 0.6, float(err)
    # A model that ignores the state (constant features) misses the state-dependent mean (sd ~0.5 vs σ = 0.2).
    blind = fit_behaviour(torch.zeros_like(x), logs["action"], groups=logs["user"], seed=0)
    blind_err = (blind.log_prob(torch.zeros_like(x), logs["action"]) - stored)[held].abs().mean()
    assert blind_err > 3.0, float(blind_err)
    assert blind.heldout_loglik < truth - 3.0
    with pytest.raises(RetentionRLError, match="actions has 3 rows, features has 4"):
        fit_behaviour(torch.zeros(4, 2), torch.zeros(3, 7))
    with pytest.raises(RetentionRLError, match=f"features has 2 columns, the model was fitted on {layout.dim}"):
        fit.log_prob(torch.zeros(4, 2), torch.zeros(4, 7))
    with pytest.raises(RetentionRLError, match="holdout must be in"):
        fit_behaviour(x, logs["action"], holdout=1.0)


def test_gaussian_logging_policy_from_a_config(tiny_sim):
    """``behaviour: gaussian`` in a train config: a Gaussian around a fixed policy whose logs carry propensities;
    configs that would make its mean action stochastic or unknown are one-line errors."""
    from retentionrl.agents import make_agent
    from retentionrl.errors import RetentionRLError

    agent = make_agent("gaussian", tiny_sim, {"base": "ranking", "base_agent": {"weights": [1, 0, 0, 0, 0, 0, 0]},
                                               "sigma": 0.5})
    logs = generate_logs(tiny_sim, agent, "kuaisim", n_users=4, steps=5, seed=3)
    z = (logs["action"] - torch.tensor([1.0, 0, 0, 0, 0, 0, 0])) / 0.5
    expected = (-0.5 * z.square() - math.log(0.5) - 0.5 * math.log(2 * math.pi)).sum(1)
    assert torch.allclose(logs["behaviour_log_prob"], expected, atol=1e-5)
    per_user = make_agent("gaussian", tiny_sim, {"base": "random", "base_agent": {"per_user": True}, "sigma": 0.1})
    assert "behaviour_log_prob" in generate_logs(tiny_sim, per_user, "kuaisim", n_users=4, steps=2)
    for bad, msg in (({"base": "random"}, "per_user: true"), ({"base": "td3"}, "base must be one of"),
                     ({"sigma": -1}, "sigma must be a positive"), ({"weights": [1]}, "unknown key 'weights'")):
        with pytest.raises(RetentionRLError, match=msg):
            make_agent("gaussian", tiny_sim, bad)
