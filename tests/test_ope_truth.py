"""OPE against the simulator's truth (bench/ope_truth.py, benchmarks/ope_truth.py).

The synthetic retention case (``RETENTION_ENV``: 2-request sessions, the return law reads the session's long-view
rate, clicks are the immediate reward; probabilities do not depend on the state, so fixed-weight policies give
i.i.d. sessions). Behaviour: a Gaussian of σ = 0.3 around click-ranking. Targets move its mean towards long-view
ranking along ĝ, the unit direction in which the "liked minus clicky" fusion score grows fastest
(ĝ ∝ p_liked − p_clicky, the family base probabilities), by d ∈ {0, 0.1, 0.2, 0.3, 0.4} (in units of σ: 0 to 1.33
per step, two steps per session).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_benchmark

from retentionrl.agents.base import FixedWeightsAgent, GaussianBehaviour
from retentionrl.bench.ope_truth import ESTIMATORS, column, ope_against_truth
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.ope import to_trajectories
from retentionrl.evaluation.propensity import policy_log_prob
from retentionrl.simulator.synthetic import CLICK, FAMILIES, RETENTION_ENV, make_synthetic_simulator
from retentionrl.training.offline import generate_logs

SIGMA = 0.3
CAPS = (2.0, 10.0, math.inf)
ALL = ("ncis", "is", "wis", "pdwis", "pdis")
LOGS = dict(n_users=128, steps=48, seed=0, truth_seeds=(1, 2))  # 3,072 logged sessions, 6,144 per truth
_DIFF = torch.tensor(FAMILIES["liked"][1]) - torch.tensor(FAMILIES["clicky"][1])
G = _DIFF / _DIFF.norm()
DISTANCES = (0.0, 0.1, 0.2, 0.3, 0.4)


def shifted(d: float) -> FixedWeightsAgent:
    return FixedWeightsAgent((torch.tensor(CLICK) + d * G).tolist())


@pytest.fixture(scope="module")
def sim():
    return make_synthetic_simulator(n_users=64, n_items=300, seed=0)


@pytest.fixture(scope="module")
def behaviour():
    return GaussianBehaviour(FixedWeightsAgent(list(CLICK)), SIGMA)


def _run(sim, behaviour, targets, immediate_weight, env=RETENTION_ENV, estimators=("ncis", "is", "pdwis"), **kw):
    return ope_against_truth(sim, behaviour, targets, SIGMA, "kuaisim", env, None, 1.0, immediate_weight,
                             estimators, CAPS, **{**LOGS, **kw})


def test_target_equal_to_the_behaviour_every_estimator_is_the_truth_within_noise(sim, behaviour):
    """π = β (the same mean, the same σ): every ρ is exactly 1, so every estimator at every cap is the logs' on-policy
    mean of its functional, and the truth is the same functional on independent rollouts: they differ by Monte-Carlo
    noise only, sd = sqrt(se_logs² + se_truth²) with se = sd / sqrt(n) over 3,072 and 6,144 sessions (clustered by
    env row); tolerance 4 sd (measured 0.013 for the mean reward per step, 0.025 for the return; the differences
    are 0.0002 and 0.0004). Reward: retention + clicks (1 × -d/10 + 1 × click rate per request).

    A deliberately wrong weight fails it: the same logs weighted with the density of the d = 0.4 target instead of
    the behaviour's measure that target (its true return is 1.156 against 1.370): NCIS misses the truth by 2.3
    tolerances, trajectory IS by 4.6, PDWIS by 9.4 (measured; asserted > 1.5)."""
    res = _run(sim, behaviour, {"behaviour": FixedWeightsAgent(list(CLICK))}, 1.0, estimators=ALL)
    row, info = res.row("behaviour"), res.info
    assert info["log_trajectories"] == 128 * 48 // 2 and row["n_truth"] == 2 * 128 * 48 // 2
    assert row["ess"] == pytest.approx(1.0, abs=1e-9)
    tol = {"mean": 4 * math.hypot(info["behaviour_mean_se"], row["truth_mean_se"]),
           "return": 4 * math.hypot(info["behaviour_return_se"], row["truth_return_se"])}
    # se = sd / sqrt(n): the per-session return's sd is 0.32 here, so 4 sd ≈ 4 · 0.32 · sqrt(1/3072 + 1/6144) = 0.028.
    assert 0.01 < tol["return"] < 0.04 and tol["mean"] == pytest.approx(tol["return"] / 2, rel=0.05)
    for col in res.columns:
        functional = ESTIMATORS[col.split("@")[0]][1]
        own = info[f"behaviour_{functional}"]
        assert row["estimates"][col] == pytest.approx(own, abs=1e-6), col  # ρ = 1: the on-policy mean exactly
        assert abs(row["estimates"][col] - row[f"truth_{functional}"]) < tol[functional], col

    # The wrong weight: the same held-out logs (same seed), the d = 0.4 target's density in place of β's.
    logs = generate_logs(sim, behaviour, "kuaisim", 128, 48, seed=0, env=RETENTION_ENV, users="test")
    tr = to_trajectories(logs, 128)
    r = tr.gather((logs["retention_reward"] + logs["reward"]).double())
    b = tr.gather(logs["behaviour_log_prob"].double())
    wrong = tr.gather(policy_log_prob(shifted(0.4), logs, sigma=SIGMA).double())
    for name in ("ncis", "is", "pdwis"):
        fn, functional = ESTIMATORS[name]
        assert fn(b, b, r, tr.mask, math.inf, 1.0) == pytest.approx(row["estimates"][column(name, math.inf)])
        miss = abs(fn(wrong, b, r, tr.mask, math.inf, 1.0) - row[f"truth_{functional}"]) / tol[functional]
        assert miss > 1.5, (name, miss)


@pytest.fixture(scope="module")
def distance(sim, behaviour):
    """Targets at d = 0 ... 0.4 on the retention-dominated mix 1 × retention + 0.25 × clicks."""
    return _run(sim, behaviour, {f"d{d}": shifted(d) for d in DISTANCES}, 0.25)


def test_is_and_pdwis_are_unbiased_for_near_targets_and_pdwis_ranks_the_targets(distance):
    """Moving towards long-view ranking trades clicks for returns; with this mix the true return rises with d
    (measured 0.040, 0.046, 0.053, 0.063, 0.069 ± 0.003) while the weights degenerate (ESS 1.0, 0.80, 0.39, 0.12,
    0.03 of the 3,072 sessions).

    * Near targets (d ≤ 0.2, ESS ≥ 0.3): uncapped trajectory IS and PDWIS are within 4 sd of the truth, sd the
      root sum of squares of the estimate's jackknife se and the truth's se (measured |z| ≤ 1.2; over log seeds
      0 / 100 / 200 the largest was 3.5, on the seed whose logs were themselves 2.3 sd off).
    * PDWIS ranks all five targets exactly: Spearman 1.0 uncapped on log seeds 0, 100 and 200; capped at 10 1.0,
      1.0, 0.9; asserted ≥ 0.8. Uncapped IS too (1.0, 1.0, 1.0); capped at 10 0.7, capped at 2 -0.7.
    * The cap is a bias: capped IS at 2 underestimates the far targets (z -4.4 and -7.8 at d = 0.3, 0.4)."""
    res = distance
    ess = [res.row(f"d{d}")["ess"] for d in DISTANCES]
    assert all(a > b for a, b in zip(ess, ess[1:])) and ess[0] == pytest.approx(1.0) and ess[-1] < 0.1
    truth = [res.row(f"d{d}")["truth_return"] for d in DISTANCES]
    assert all(a < b for a, b in zip(truth, truth[1:]))  # a ranking to recover
    assert truth[-1] - truth[0] > 5 * res.row("d0.0")["truth_return_se"]  # measured 9
    for d in DISTANCES:
        row = res.row(f"d{d}")
        if row["ess"] < 0.3:
            continue
        for col in ("is@inf", "pdwis@inf"):
            sd = math.hypot(row["se"][col], row["truth_return_se"])
            assert abs(row["estimates"][col] - row["truth_return"]) < 4 * sd, (d, col)
    assert res.summary_of("pdwis@inf")["spearman"] >= 0.8
    assert res.summary_of("pdwis@10")["spearman"] >= 0.8
    far = res.row("d0.4")
    assert far["estimates"]["is@2"] < far["truth_return"] - 3 * math.hypot(far["se"]["is@2"], far["truth_return_se"])
    s = res.summary_of("pdwis@inf")
    assert s["rmse"] >= abs(s["bias"]) and s["n_policies"] == 5
    # the supported subset: exactly the targets with ESS >= 0.1, its truth range their truths' range
    sup = res.summary_of("pdwis@inf", "supported")
    kept = [r for r in res.rows if r["ess"] >= 0.1]
    assert sup["support"] != "all" and sup["n_policies"] == len(kept)
    assert sup["truth_range"] == (min(r["truth_return"] for r in kept), max(r["truth_return"] for r in kept))


def test_ncis_estimates_the_behaviour_where_the_reward_comes_at_the_session_end(sim, behaviour, distance):
    """What NCIS's per-trajectory normalisation does, measured (it re-weights steps within a session, never one
    session against another):

    * One-request sessions: each term is ρ̃ r / ρ̃ = r, so NCIS is the behaviour's on-policy mean for every target
      at every cap, exactly (Spearman undefined), while the truth moves from -0.183 to -0.126 (24 se).
    * Two-request sessions, the reward at the session end only (the return-time reward, as in ResAct's tasks): the
      end reward here is a symmetric function of the session's two i.i.d. actions, so E_β[ρ₂ / (ρ₁ + ρ₂) · r] =
      E_β[r] / 2 — NCIS estimates the *behaviour's* value whatever π is. Measured: every estimate within 0.0036 of
      the behaviour's -0.1995 (at most 1.0 jackknife se; asserted 3) while the truth rises from -0.201 to -0.147
      (34 se); Spearman -1.0 here, over log seeds 0, 100, 200 -1.0, -0.7, +1.0: noise.
    * Retention + 0.25 × clicks: only the click part moves, so NCIS follows the clicks, which fall as the returns
      rise: Spearman -1.0 against the truth (cap inf; measured -1.0 on log seeds 0, 100 and 200), bias -0.011."""
    targets = {f"d{d}": shifted(d) for d in DISTANCES}
    one = _run(sim, behaviour, targets, 0.25, env={**RETENTION_ENV, "leave": {"initial_temper": 1.0}},
               estimators=("ncis",), jackknife=0)
    assert one.info["mean_trajectory_length"] == 1.0
    for row in one.rows:
        for c in one.columns:
            assert row["estimates"][c] == pytest.approx(one.info["behaviour_mean"], abs=1e-12)
    assert all(one.summary_of(c)["spearman"] is None for c in one.columns)
    moved = one.row("d0.4")["truth_mean"] - one.row("d0.0")["truth_mean"]
    assert moved > 10 * one.row("d0.0")["truth_mean_se"]

    end = _run(sim, behaviour, targets, 0.0, estimators=("ncis",))
    bm = end.info["behaviour_mean"]
    for row in end.rows:
        assert abs(row["estimates"]["ncis@inf"] - bm) < 3 * row["se"]["ncis@inf"], row["policy"]
    rise = end.row("d0.4")["truth_mean"] - end.row("d0.0")["truth_mean"]
    assert rise > 10 * end.row("d0.0")["truth_mean_se"]
    # The estimate's spread over the targets is a small fraction of the truth's.
    est = [row["estimates"]["ncis@inf"] for row in end.rows]
    assert max(est) - min(est) < 0.2 * rise

    assert distance.summary_of("ncis@inf")["spearman"] <= -0.5
    assert distance.summary_of("ncis@inf")["bias"] < 0


def test_task_rewards_use_the_behaviour_logs_statistics_for_logs_and_truth(sim, behaviour):
    """ResAct's task (both: r(δ) + r(η)): the truth scores the target's rollouts with the per-user statistics of a
    held-out behaviour log — by hand here: the same log (seed 5), the same rollouts (seed 1), the same numbers to
    1e-6 — and not with the rollouts' own statistics (a different number). Logs and rollouts draw their users from
    the held-out users with statistics (14 of the 16 here). ``task_stats="logs"`` takes the statistics from the
    estimators' logs instead, whose rewards are then scored in-sample."""
    from retentionrl.bench.ope_truth import _with_test_users
    from retentionrl.training.tasks import task_rewards, user_session_stats

    kw = dict(estimators=("ncis", "is"), caps=(math.inf,), n_users=32, steps=24, seed=0, truth_seeds=(1,),
              jackknife=0)
    target = FixedWeightsAgent(list(CLICK))
    res = ope_against_truth(sim, behaviour, {"beh": target}, SIGMA, "kuaisim", RETENTION_ENV, "both", stats_seed=5,
                            **kw)
    stats = user_session_stats(generate_logs(sim, behaviour, "kuaisim", 32, 24, seed=5, env=RETENTION_ENV,
                                             users="test"), n_users=sim.n_users)
    covered = ~torch.isnan(stats.delta_avg)
    view = _with_test_users(sim, covered)
    assert res.info["pool_users"] == int(view.test_users.sum()) == 14 < int(sim.test_users.sum())

    def per_session_mean(logs, st):
        tr = to_trajectories(logs, 32)
        r = tr.gather(task_rewards(logs, "both", st).double())
        return float((r.sum(1) / tr.lengths).mean())

    logs = generate_logs(view, behaviour, "kuaisim", 32, 24, seed=0, env=RETENTION_ENV, users="test")
    assert res.row("beh")["estimates"]["ncis@inf"] == pytest.approx(per_session_mean(logs, stats), abs=1e-6)
    rollout = generate_logs(view, GaussianBehaviour(target, SIGMA), "kuaisim", 32, 24, seed=1, env=RETENTION_ENV,
                            users="test")
    assert covered[logs["user"]].all() and covered[rollout["user"]].all()
    truth = per_session_mean(rollout, stats)
    assert res.row("beh")["truth_mean"] == pytest.approx(truth, abs=1e-9)
    assert abs(per_session_mean(rollout, user_session_stats(rollout, n_users=sim.n_users)) - truth) > 1e-3
    assert res.row("beh")["n_truth_dropped"] == 0

    own = ope_against_truth(sim, behaviour, {"beh": target}, SIGMA, "kuaisim", RETENTION_ENV, "both",
                            task_stats="logs", **kw)
    logs = generate_logs(sim, behaviour, "kuaisim", 32, 24, seed=0, env=RETENTION_ENV, users="test")  # all of them
    in_sample = user_session_stats(logs, n_users=sim.n_users)
    assert own.row("beh")["estimates"]["ncis@inf"] == pytest.approx(per_session_mean(logs, in_sample), abs=1e-6)
    rollout = generate_logs(_with_test_users(sim, ~torch.isnan(in_sample.delta_avg)), GaussianBehaviour(target, SIGMA),
                            "kuaisim", 32, 24, seed=1, env=RETENTION_ENV, users="test")
    assert own.row("beh")["truth_mean"] == pytest.approx(per_session_mean(rollout, in_sample), abs=1e-9)
    assert own.info["task_stats"] == "logs" and res.info["task_stats"] == "separate"
    with pytest.raises(RetentionRLError, match="stats_seed 1 must differ"):
        ope_against_truth(sim, behaviour, {"beh": target}, SIGMA, "kuaisim", RETENTION_ENV, "both", stats_seed=1, **kw)


def test_bad_setups_are_one_line_errors(sim, behaviour):
    t = {"x": FixedWeightsAgent(list(CLICK))}
    cases = [
        (dict(estimators=("ncis", "dr")), "unknown estimator 'dr'"),
        (dict(caps=(0.0,)), "caps must be positive numbers"),
        (dict(task="speed"), "unknown task 'speed'"),
        (dict(truth_seeds=(0,)), "must be non-empty and not contain the logs' seed 0"),
        (dict(task_stats="own"), "task_stats must be 'separate' or 'logs'"),
    ]
    for kw, msg in cases:
        with pytest.raises(RetentionRLError, match=msg):
            ope_against_truth(sim, behaviour, t, SIGMA, "kuaisim", RETENTION_ENV, n_users=4, steps=4, seed=0, **kw)
    with pytest.raises(RetentionRLError, match="FixedWeightsAgent gives no density"):
        ope_against_truth(sim, FixedWeightsAgent(list(CLICK)), t, SIGMA, "kuaisim", RETENTION_ENV, n_users=4, steps=4,
                          seed=0, truth_seeds=(1,))
    with pytest.raises(RetentionRLError, match="target 'noisy' acts at random with explore=False"):
        ope_against_truth(sim, behaviour, {"noisy": behaviour}, SIGMA, "kuaisim", RETENTION_ENV, n_users=4, steps=4,
                          seed=0, truth_seeds=(1,))
    with pytest.raises(RetentionRLError, match="no target policies"):
        ope_against_truth(sim, behaviour, {}, SIGMA, n_users=4, steps=4)


# --- the benchmark script end to end ------------------------------------------------------------------------
def _script():
    return load_benchmark("ope_truth")


def test_benchmark_script_writes_one_row_per_finished_run(tiny_sim, tmp_path):
    """Two tiny finished offline runs (BC and TD3+BC, a handful of updates, ResAct's return-time task) and one
    unfinished one and one without the task on the tiny simulator: the report has one row per finished
    return-time run, the behaviour's mean and a reference policy, in one group (same logs), and a plot."""
    from retentionrl.training.offline import OfflineTrainConfig, train_offline

    common = dict(env={"max_sessions": 2}, behaviour="gaussian", behaviour_agent={"base": "ranking", "sigma": 0.3},
                  n_log_users=8, log_steps=10, total_updates=3, batch_size=16, log_every=3, eval_every=3,
                  checkpoint_every=3, eval={"n_users": 4, "n_episodes": 4, "seeds": [7]},
                  agent={"hidden": [16], "state_dim": 16, "token_dim": 8})
    root = tmp_path / "runs"
    for algo, task in (("bc", "return_time"), ("td3bc", "return_time"), ("bc", None)):
        cfg = OfflineTrainConfig(algo=algo, seed=0, task=task, label=f"{algo}-{task}", **common)
        assert train_offline(cfg, tiny_sim, root / f"{algo}-{task}" / "seed0", progress=False) is not None
    cfg = OfflineTrainConfig(algo="bc", seed=1, task="return_time", label="unfinished", **common)
    assert train_offline(cfg, tiny_sim, root / "unfinished" / "seed1", progress=False, stop_after=1) is None

    mod = _script()
    out = tmp_path / "report"
    md = mod.main(["--roots", str(root), "--out", str(out), "--n-users", "8", "--steps", "10", "--truth-seeds", "1",
                   "--caps", "10", "inf", "--reference", "long-view=0,1,0,0,0,0,0", "--jackknife", "4"])
    text = (out / "report.md").read_text()
    assert text == md and (out / "ope_truth_1.png").stat().st_size > 1000
    rows = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
    labels = [line.split("|")[1].strip() for line in rows]
    assert labels == ["bc-return_time s0", "td3bc-return_time s0", "behaviour mean (ranking)", "long-view"]
    assert "3 runs" not in text and "2 runs in 1 group(s)" in text
    assert "`ncis@10`" in text and "`pdwis@inf`" in text and "task `return_time`" in text
    with pytest.raises(RetentionRLError, match="--reference must be NAME=w1,...,w7"):
        mod.main(["--roots", str(root), "--reference", "bad=1,2"])
    with pytest.raises(RetentionRLError, match="no finished run with task in"):
        mod.main(["--roots", str(root), "--tasks", "both", "--out", str(out)])
