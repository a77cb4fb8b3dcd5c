"""Off-policy estimates beside the truth: the estimators of :mod:`retentionrl.evaluation.ope` on held-out logs of a
behaviour policy, against the value of each target measured by rolling it out in the simulator.

:func:`ope_against_truth` does, for one behaviour and a dict of named targets:

1. **Held-out logs.** ``generate_logs(sim, behaviour, users="test", seed=seed)``: the behaviour (which must know
   its density, e.g. :class:`~retentionrl.agents.base.GaussianBehaviour`) on the held-out users; its logs carry
   ``behaviour_log_prob``. Trajectories are sessions (``split="session"``) or episodes, incomplete ones dropped
   (:func:`~retentionrl.evaluation.ope.to_trajectories`).
2. **Estimates.** For each target, ``policy_log_prob(target, logs, sigma)`` — the Gaussian of std σ around the
   target's deterministic action (the usual convention for deterministic continuous targets) — then every
   estimator at every cap on the same rewards: :func:`~retentionrl.evaluation.ope.ncis` (cap on the per-step ρ),
   :func:`~retentionrl.evaluation.ope.trajectory_is` (``is``; ``wis`` its weighted form; cap on the trajectory
   weight) and :func:`~retentionrl.evaluation.ope.pdwis` (``pdwis``; ``pdis`` unweighted; cap on the cumulative
   weight).
3. **Truth.** The policy the estimators estimate is the *smoothed* target ``GaussianBehaviour(target, σ)``, so
   that is what is rolled out (``generate_logs`` on the same held-out users, other seeds), and the same
   functional is computed from its own rewards:

   * for ``is``, ``wis``, ``pdwis``, ``pdis``: the mean per-trajectory return ``mean_ξ Σ_t γ^t r_t`` (what they
     estimate: E_π[G] over trajectories);
   * for ``ncis``: the mean over trajectories of the per-trajectory *mean* reward, ``mean_ξ (Σ_t r_t / |ξ|)``.
     NCIS's term ``Σ ρ̃ r / Σ ρ̃`` is a within-trajectory weighted average of rewards; when π = β (ρ = 1) it is
     exactly ``Σ r / |ξ|`` and NCIS is the on-policy mean of that functional, so this is the only quantity it is
     an estimate *of* (for π ≠ β it re-weights steps inside a trajectory and never one trajectory against
     another, so it is not consistent for it in general: the table measures how far off it is).

   With a ResAct task the rewards are ``task_rewards`` with per-user statistics (δ_avg, δ_75%, η_avg) of the
   behaviour's held-out logs, the *same* statistics for the logs and for the target's rollouts (the slides compute
   them from the serving logs; the truth must score sessions by the same yardstick, not by its own rollouts'
   statistics). ``task_stats`` says which behaviour logs:

   * ``"separate"`` (default): a second held-out behaviour log (seed ``stats_seed``, the logs' size). Every reward,
     in the estimators' logs as in the rollouts, is then scored by statistics of *other* sessions.
   * ``"logs"``: the estimators' logs themselves. Their rewards are then scored in-sample (a user's gaps are
     judged against an average that includes them; with one session r(δ) = ⌊δ/δ⌋ = 1 exactly) and the rollouts'
     out of sample, which shifts the truth against every estimate by the same amount, whatever the estimator.
     Measured on the tests' tiny KuaiRand simulator (return-time task, target = behaviour, 256 × 60 logs, four log
     seeds): the logged mean reward per step 0.180-0.186 in-sample against 0.191-0.205 with separate statistics,
     truths 0.185-0.205; logs minus truth -1.0 to -4.0 sd in-sample, -0.7 to +1.3 sd with separate statistics.

   A user with no finished session in the statistics' log has no statistic, so with a task the estimators' logs
   (``"separate"``) and the rollouts draw their users from the held-out users that have one; a trajectory whose
   reward is still undefined would be dropped (``n_truth_dropped``, 0 by construction). Without a task the reward
   is ``retention_weight · retention_reward + immediate_weight · reward`` (the agents' mix) and logs and rollouts
   draw from the whole held-out pool.
4. **Summary** per estimator column (estimator @ cap) over the targets: bias (mean of estimate − truth), RMSE, and
   Spearman's rank correlation between estimates and truths (``scipy.stats.spearmanr``; None when either side is
   constant, e.g. NCIS on one-step trajectories). The truth has Monte-Carlo noise of its own: its standard error
   is in the table (``truth_*_se``); bias and RMSE include it.

Start states: with ``split="session"`` a logged session starts where β's previous sessions left the user, the
truth's where π's did. For policies whose sessions do not change later sessions' states (the synthetic
simulator's fixed-weight policies) the two agree; for history-dependent policies the session split measures the
estimator *and* that mismatch; ``split="episode"`` (fresh users at every start) removes it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from retentionrl.agents.base import Agent, GaussianBehaviour
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.ope import Trajectories, ncis, pdwis, to_trajectories, trajectory_is
from retentionrl.evaluation.propensity import policy_log_prob
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.env import EnvConfig
from retentionrl.training.offline import generate_logs
from retentionrl.training.tasks import TASKS, SessionStats, task_rewards, user_session_stats
from retentionrl.utils.io import atomic_path

Estimate = Callable[[Tensor, Tensor, Tensor, Tensor, float, float], float]
#: estimator -> (function (target_logp, behaviour_logp, reward, mask, cap, gamma) -> estimate, truth functional)
ESTIMATORS: dict[str, tuple[Estimate, str]] = {
    "ncis": (lambda t, b, r, m, cap, g: ncis(t, b, r, m, cap=cap), "mean"),
    "is": (lambda t, b, r, m, cap, g: trajectory_is(t, b, r, m, gamma=g, cap=cap), "return"),
    "wis": (lambda t, b, r, m, cap, g: trajectory_is(t, b, r, m, gamma=g, cap=cap, weighted=True), "return"),
    "pdwis": (lambda t, b, r, m, cap, g: pdwis(t, b, r, m, gamma=g, cap=cap), "return"),
    "pdis": (lambda t, b, r, m, cap, g: pdwis(t, b, r, m, gamma=g, cap=cap, weighted=False), "return"),
}
DEFAULT_ESTIMATORS = ("ncis", "is", "pdwis")
DEFAULT_CAPS = (2.0, 10.0, math.inf)
SUPPORTED_ESS = 0.1  # a target the logs support: Kish ESS of its trajectory weights >= this share of the logs


def column(estimator: str, cap: float) -> str:
    """``"ncis@10"``, ``"is@inf"``: the name of an estimator at a cap."""
    return f"{estimator}@{'inf' if math.isinf(cap) else f'{cap:g}'}"


@dataclass
class OPETruthResult:
    """``rows``: one dict per target — ``policy``, ``truth_mean`` / ``truth_return`` (and ``_se``, their standard
    errors over the rollout trajectories), ``n_truth`` trajectories (``n_truth_dropped`` without task
    statistics), ``ess`` (Kish effective sample size of the uncapped trajectory weights on the logs, as a fraction
    of the logged trajectories), ``estimates`` {column: value} and ``se`` {column: jackknife standard error or
    None}. Standard errors are clustered by env row. ``summary``: one dict per column — ``column``,
    ``estimator``, ``cap``, ``truth`` (the functional it is compared with), ``support`` ("all", then the
    policies with ESS >= SUPPORTED_ESS), ``truth_range``, ``bias``, ``rmse``, ``spearman``
    (None if undefined), ``n_policies``. ``info``: the setup and the logs' sizes, with the behaviour's own
    on-policy values (``behaviour_mean`` / ``behaviour_return`` and their ``_se``)."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    columns: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, policy: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["policy"] == policy)

    def summary_of(self, col: str, support: str = "all") -> dict[str, Any]:
        """The summary of column ``col`` over every policy (``support="all"``) or over the supported ones."""
        return next(s for s in self.summary if s["column"] == col and (s["support"] == "all") == (support == "all"))

    def truth_key(self, col: str) -> str:
        return "truth_" + ESTIMATORS[col.split("@")[0]][1]


def _mean_se(x: Tensor, groups: Tensor) -> tuple[float, float]:
    """Mean of (n,) per-trajectory values and its standard error clustered by ``groups`` (n,) (the env row a
    trajectory came from: the sessions of one row are not independent in general)."""
    x = x.double()
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan
    _, g = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(int(g.max()) + 1, dtype=torch.float64).index_add_(0, g, x - m)
    return m, float(sums.square().sum().sqrt() / len(x))


def _jackknife(fn: Callable[[Tensor], float], groups: Tensor, blocks: int) -> float | None:
    """Delete-a-block jackknife standard error of ``fn(keep)`` (keep: (n_traj,) bool) over ``blocks`` blocks of env
    rows (trajectories of one row stay in one block); None when ``blocks`` < 2 or a block holds every row."""
    ids = torch.unique(groups)
    k = min(blocks, len(ids))
    if k < 2:
        return None
    block = torch.zeros(int(ids.max()) + 1, dtype=torch.long)
    block[ids] = torch.arange(len(ids)) % k
    theta = torch.tensor([fn(block[groups] != j) for j in range(k)], dtype=torch.float64)
    return float(((k - 1) / k * (theta - theta.mean()).square().sum()).sqrt())


def _rewards(logs: dict[str, Tensor], task: str | None, stats: SessionStats | None, retention_weight: float,
             immediate_weight: float) -> Tensor:
    """(N,) float64 rewards the estimators and the truth read (NaN at a task session end without statistics)."""
    if task is not None:
        return task_rewards(logs, task, stats).double()
    return retention_weight * logs["retention_reward"].double() + immediate_weight * logs["reward"].double()


def _functionals(r: Tensor, mask: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(n_traj,) per-trajectory mean reward and discounted return of (n_traj, T) rewards (0 on padding)."""
    disc = gamma ** torch.arange(r.shape[1], dtype=torch.float64)
    return r.sum(1) / mask.sum(1), (r * disc).sum(1)


def _check(estimators: Sequence[str], caps: Sequence[float], task: str | None, targets: dict,
           truth_seeds: Sequence[int], seed: int, stats_seed: int, task_stats: str) -> None:
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise RetentionRLError(f"ope_against_truth: unknown estimator {unknown[0] if unknown else 'none given'!r} "
                               f"(known: {', '.join(ESTIMATORS)})")
    for c in caps:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or math.isnan(c) or c <= 0:
            raise RetentionRLError(f"ope_against_truth: caps must be positive numbers (inf allowed), got {c!r}")
    if not caps:
        raise RetentionRLError("ope_against_truth: caps is empty (give at least one, e.g. inf)")
    if task is not None and task not in TASKS:
        raise RetentionRLError(f"ope_against_truth: unknown task {task!r} (known: {', '.join(TASKS)}, or None)")
    if not targets:
        raise RetentionRLError("ope_against_truth: no target policies")
    if not truth_seeds or seed in truth_seeds:
        raise RetentionRLError(f"ope_against_truth: truth_seeds must be non-empty and not contain the logs' seed "
                               f"{seed} (the truth must come from other rollouts), got {list(truth_seeds)}")
    if task_stats not in ("separate", "logs"):
        raise RetentionRLError(f"ope_against_truth: task_stats must be 'separate' or 'logs', got {task_stats!r}")
    if task is not None and task_stats == "separate" and stats_seed in (seed, *truth_seeds):
        raise RetentionRLError(f"ope_against_truth: stats_seed {stats_seed} must differ from the logs' and the truth's "
                               "seeds")


@torch.no_grad()
def ope_against_truth(sim: Simulator, behaviour: Agent, targets: dict[str, Agent], sigma: float | list[float],
                      preset: str | EnvConfig = "kuaisim", env: dict[str, Any] | None = None,
                      task: str | None = None, retention_weight: float = 1.0, immediate_weight: float = 0.0,
                      estimators: Sequence[str] = DEFAULT_ESTIMATORS, caps: Sequence[float] = DEFAULT_CAPS,
                      n_users: int = 256, steps: int = 60, seed: int = 20_000, truth_users: int | None = None,
                      truth_steps: int | None = None, truth_seeds: Sequence[int] = (30_000,),
                      split: str = "session", gamma: float = 1.0, jackknife: int = 20,
                      task_stats: str = "separate", stats_seed: int | None = None) -> OPETruthResult:
    """Every estimator at every cap for every target, from ``n_users`` × ``steps`` held-out logs of ``behaviour``
    (seed ``seed``), beside the truth from rollouts of ``GaussianBehaviour(target, sigma)`` (``truth_users`` ×
    ``truth_steps`` rows per seed of ``truth_seeds``, default the logs' size); see the module docstring for what is
    compared with what. ``preset``/``env`` as in :func:`~retentionrl.training.offline.generate_logs`; ``task`` a
    ResAct task (rewards :func:`~retentionrl.training.tasks.task_rewards` with the statistics of held-out behaviour
    logs: ``task_stats`` ``"separate"`` — another log, seed ``stats_seed``, default ``seed + 1`` — or ``"logs"``,
    the estimators' own) or None (``retention_weight · retention_reward + immediate_weight · reward``).
    ``jackknife``: blocks of env rows for the delete-a-block jackknife standard error of every estimate (``se`` in
    the rows; 0 = none)."""
    stats_seed = seed + 1 if stats_seed is None else stats_seed
    _check(estimators, caps, task, targets, truth_seeds, seed, stats_seed, task_stats)
    truth_users, truth_steps = truth_users or n_users, truth_steps or steps
    stats, pool_sim = None, sim
    if task is not None and task_stats == "separate":
        stats_logs = generate_logs(sim, behaviour, preset, n_users, steps, seed=stats_seed, env=env, users="test")
        stats = user_session_stats(stats_logs, n_users=sim.n_users)
        pool_sim = _with_test_users(sim, ~torch.isnan(stats.delta_avg))
    logs = generate_logs(pool_sim, behaviour, preset, n_users, steps, seed=seed, env=env, users="test")
    if "behaviour_log_prob" not in logs:
        raise RetentionRLError(f"ope_against_truth: {type(behaviour).__name__} gives no density, so its logs carry no "
                               "behaviour_log_prob (use a stochastic behaviour such as GaussianBehaviour)")
    if task is not None and task_stats == "logs":
        stats = user_session_stats(logs, n_users=sim.n_users)
        pool_sim = _with_test_users(sim, ~torch.isnan(stats.delta_avg))
    tr: Trajectories = to_trajectories(logs, n_users, split)
    r_flat = _rewards(logs, task, stats, retention_weight, immediate_weight)
    if torch.isnan(r_flat).any():  # cannot happen: the logs' users are drawn from those with statistics
        raise RetentionRLError("ope_against_truth: a logged session's task reward is undefined (no user statistics)")
    r, b = tr.gather(r_flat), tr.gather(logs["behaviour_log_prob"].double())
    groups = tr.index[:, 0] % n_users  # (n_traj,) the env row of each trajectory
    b_mean, b_return = _functionals(r, tr.mask, gamma)
    (bm, bm_se), (br, br_se) = _mean_se(b_mean, groups), _mean_se(b_return, groups)
    columns = [column(e, c) for e in estimators for c in caps]

    rows = []
    probe = {k: v[:64] for k, v in logs.items()}  # a few rows to check each target's action is a function of s
    for name, target in targets.items():
        if not torch.equal(policy_log_prob(target, probe, sigma=sigma), policy_log_prob(target, probe, sigma=sigma)):
            raise RetentionRLError(f"ope_against_truth: target '{name}' acts at random with explore=False; the "
                                   "Gaussian convention needs a deterministic target (a stochastic one: its base)")
        t = tr.gather(policy_log_prob(target, logs, sigma=sigma).double(), fill=0.0)
        log_w = (t - b).masked_fill(~tr.mask, 0.0).sum(1)  # (n_traj,) log trajectory weight
        ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))) / len(log_w)
        est, se = {}, {}
        for e in estimators:
            fn = ESTIMATORS[e][0]
            for c in caps:
                est[column(e, c)] = fn(t, b, r, tr.mask, float(c), gamma)
                se[column(e, c)] = _jackknife(
                    lambda keep: fn(t[keep], b[keep], r[keep], tr.mask[keep], float(c), gamma), groups, jackknife)
        means, returns, truth_groups, dropped = [], [], [], 0
        smoothed = GaussianBehaviour(target, sigma)
        for i, s in enumerate(truth_seeds):
            tl = generate_logs(pool_sim, smoothed, preset, truth_users, truth_steps, seed=int(s), env=env, users="test")
            ttr = to_trajectories(tl, truth_users, split)
            tr_r = ttr.gather(_rewards(tl, task, stats, retention_weight, immediate_weight))
            ok = ~torch.isnan(tr_r).any(1)  # a task session of a user the held-out logs have no statistics of
            dropped += int((~ok).sum())
            m, g = _functionals(tr_r[ok], ttr.mask[ok], gamma)
            means.append(m)
            returns.append(g)
            truth_groups.append((ttr.index[ok, 0] % truth_users) + i * truth_users)
        if not sum(len(m) for m in means):
            raise RetentionRLError(f"ope_against_truth: no truth trajectory of '{name}' has task statistics "
                                   "(its users had no finished session in the held-out logs)")
        tgroups = torch.cat(truth_groups)
        (tm, tm_se), (tg, tg_se) = _mean_se(torch.cat(means), tgroups), _mean_se(torch.cat(returns), tgroups)
        rows.append({"policy": name, "truth_mean": tm, "truth_mean_se": tm_se, "truth_return": tg,
                     "truth_return_se": tg_se, "n_truth": sum(len(m) for m in means), "n_truth_dropped": dropped,
                     "ess": ess, "estimates": est, "se": se})

    summary = []
    # Over every policy, then over those the logs support (ESS >= SUPPORTED_ESS): where the behaviour almost never
    # takes the target's actions the weights vanish, and an estimator's error there says nothing of its accuracy
    # where it can be used.
    for support, sub in (("all", rows), (f"ESS ≥ {SUPPORTED_ESS:g}", [r for r in rows if r["ess"] >= SUPPORTED_ESS])):
        for e in estimators:
            key = "truth_" + ESTIMATORS[e][1]
            truth = torch.tensor([row[key] for row in sub], dtype=torch.float64)
            for c in caps:
                col = column(e, c)
                x = torch.tensor([row["estimates"][col] for row in sub], dtype=torch.float64)
                summary.append({"column": col, "estimator": e, "cap": float(c), "truth": key, "support": support,
                                "bias": float((x - truth).mean()) if sub else None,
                                "rmse": float((x - truth).square().mean().sqrt()) if sub else None,
                                "spearman": _spearman(x, truth), "n_policies": len(sub),
                                "truth_range": (float(truth.min()), float(truth.max())) if sub else None})
    info = {"sigma": sigma if isinstance(sigma, (int, float)) else list(sigma), "task": task, "split": split,
            "task_stats": task_stats if task is not None else None, "pool_users": int(pool_sim.test_users.sum()),
            "gamma": gamma, "retention_weight": retention_weight, "immediate_weight": immediate_weight,
            "log_users": n_users, "log_steps": steps, "log_seed": seed, "log_trajectories": len(tr.lengths),
            "mean_trajectory_length": float(tr.lengths.double().mean()), "truth_users": truth_users,
            "truth_steps": truth_steps, "truth_seeds": [int(s) for s in truth_seeds],
            "behaviour_mean": bm, "behaviour_mean_se": bm_se, "behaviour_return": br, "behaviour_return_se": br_se}
    return OPETruthResult(rows, summary, columns, info)


def _with_test_users(sim: Simulator, users: Tensor) -> Simulator:
    """A shallow copy of ``sim`` (every model and table shared) whose held-out pool (``users="test"``) is the
    held-out users marked in ``users`` (n_users,) bool."""
    view = copy.copy(sim)
    view.test_users = sim.test_users & users
    if not view.test_users.any():
        raise RetentionRLError("ope_against_truth: no held-out user has a finished session in the held-out logs")
    return view


def _spearman(x: Tensor, y: Tensor) -> float | None:
    """Spearman's ρ of two (n,) vectors; None for fewer than 3 points or a constant side (undefined)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return None
    return float(spearmanr(x.numpy(), y.numpy()).statistic)


# --- report ---------------------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown_tables(res: OPETruthResult) -> str:
    """The per-policy table (truths with their standard errors, ESS, every estimate) and the summary table."""
    cols = res.columns
    head = "| policy | truth (mean reward / step) | truth (return) | ESS | " + " | ".join(f"`{c}`" for c in cols)
    lines = [head + " |", "|---|---|---|---|" + "---|" * len(cols)]
    for row in res.rows:
        cells = [f"{_f(row['truth_mean'])} ± {_f(row['truth_mean_se'])}",
                 f"{_f(row['truth_return'])} ± {_f(row['truth_return_se'])}", _f(row["ess"], 3)]
        for c in cols:
            se = row["se"].get(c)
            cells.append(_f(row["estimates"][c]) + (f" ± {_f(se)}" if se is not None else ""))
        lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
    lines += ["", "| estimator @ cap | compared with | policies | bias | RMSE | Spearman | n | truth range |",
              "|---|---|---|---|---|---|---|---|"]
    for s in res.summary:
        rng = "–" if s["truth_range"] is None else f"{_f(s['truth_range'][0])} – {_f(s['truth_range'][1])}"
        lines.append(f"| `{s['column']}` | {s['truth'].replace('truth_', '')} | {s['support']} | {_f(s['bias'])} | "
                     f"{_f(s['rmse'])} | {_f(s['spearman'], 3)} | {s['n_policies']} | {rng} |")
    return "\n".join(lines) + "\n"


def scatter_plot(res: OPETruthResult, path: str | Path, title: str = "") -> None:
    """One panel per estimator column: estimate (y) against truth (x) per policy, ± their standard errors, with the
    identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(res.columns)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.3 * nrow), squeeze=False)
    for ax, col in zip(axes.flat, res.columns):
        key = res.truth_key(col)
        x = [r[key] for r in res.rows]
        y = [r["estimates"][col] for r in res.rows]
        ax.errorbar(x, y, xerr=[r[key + "_se"] for r in res.rows], yerr=[r["se"].get(col) or 0.0 for r in res.rows],
                    fmt="o", ms=4, alpha=0.8)
        lo, hi = min(x + y), max(x + y)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        s = res.summary_of(col)
        ax.set_title(f"{col}  ρ={_f(s['spearman'], 2)}  bias={_f(s['bias'], 3)}", fontsize=9)
        ax.set_xlabel(f"truth ({key.replace('truth_', '')})", fontsize=8)
        ax.set_ylabel("estimate", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
