"""Off-policy evaluation: the value of a target policy π estimated from logs of a behaviour policy β.

**Layout.** The trajectory estimators take padded ``(n_traj, T)`` tensors and a ``(n_traj, T)`` bool ``mask``
(True = a real step; the real steps of a trajectory come first, padding after it; pad values are ignored, so
they may be anything). :func:`to_trajectories` builds that layout from the flat step-major logs of
:func:`~retentionrl.training.offline.generate_logs` (row ``t * n_users + b`` belongs to env row b at step t), a
trajectory being one row's session or episode; :meth:`Trajectories.gather` then turns any (N,) log column into
``(n_traj, T)``.

**Inputs** are per-step log-densities (or log-probabilities) of the logged action under the target,
``target_logp``, and under the behaviour policy, ``behaviour_logp``, and the rewards; ρ_t = π(a_t|s_t) /
β(a_t|s_t) = exp(target_logp - behaviour_logp). Everything is computed in float64, weights from log-ratios
(softmax-style normalisation where the estimator normalises), and every estimator returns a Python float.
``target_logp`` may be -inf (π cannot take the logged action); ``behaviour_logp`` must be finite on real steps (β
took that action). Where the log-densities come from: :mod:`retentionrl.evaluation.propensity`.

Estimators (one per function):

* :func:`ncis` — ResAct's normalised capped importance sampling (``../shared/papers/resact-slides.md``).
* :func:`trajectory_is` — plain trajectory importance sampling (product of the ratios × the return).
* :func:`pdwis` — per-decision (weighted) importance sampling (Precup, Sutton & Singh 2000).
* :func:`ipw`, :func:`snipw` — the single-step (bandit) references, as Open Bandit Pipeline defines them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from retentionrl.errors import RetentionRLError

_SPLITS = {"session": "session_end", "episode": "episode_end"}


# --- the trajectory layout -----------------------------------------------------------------------------------
@dataclass
class Trajectories:
    """Trajectories as rows of a padded matrix: ``index`` (n_traj, T) long row numbers into the flat logs (-1 on
    padding), ``mask`` (n_traj, T) bool (True = real step, real steps first). Ordered by env row, then time."""

    index: Tensor
    mask: Tensor

    @property
    def lengths(self) -> Tensor:
        """(n_traj,) long number of steps of each trajectory."""
        return self.mask.sum(1)

    def gather(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """(N, ...) log column -> (n_traj, T, ...), ``fill`` on padding."""
        out = values[self.index.clamp(min=0)]
        pad = ~self.mask.reshape(*self.mask.shape, *([1] * (out.dim() - 2)))
        return out.masked_fill(pad, fill)


def to_trajectories(logs: dict[str, Tensor], n_users: int, split: str = "session",
                    keep_incomplete: bool = False) -> Trajectories:
    """Cut the step-major logs of ``n_users`` parallel env rows (N = n_users * steps rows, row ``t * n_users + b``)
    into trajectories: a row's stream of steps ends a trajectory at every ``session_end`` (``split="session"``) or
    ``episode_end`` (``split="episode"``). The last trajectory of a row is usually cut off by the end of logging;
    it is dropped unless ``keep_incomplete`` (its return would be missing its last terms)."""
    if split not in _SPLITS:
        raise RetentionRLError(f"to_trajectories: split must be 'session' or 'episode', got {split!r}")
    key = _SPLITS[split]
    if key not in logs:
        raise RetentionRLError(f"to_trajectories: logs have no '{key}' column")
    end = logs[key].bool()
    N = end.shape[0]
    if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users < 1 or N % n_users:
        raise RetentionRLError(f"to_trajectories: n_users must be a positive divisor of the {N} log rows, "
                               f"got {n_users!r}")
    steps = N // n_users
    end_ut = end.reshape(steps, n_users).T  # (n_users, steps): one env row's steps in time order
    rows = (torch.arange(steps)[None, :] * n_users + torch.arange(n_users)[:, None]).reshape(-1)
    start = torch.zeros_like(end_ut)
    start[:, 0] = True
    start[:, 1:] = end_ut[:, :-1]
    start, end_ut = start.reshape(-1), end_ut.reshape(-1)
    tid = torch.cumsum(start.long(), 0) - 1  # (n_users * steps,) trajectory id, env row by env row
    n = int(tid[-1]) + 1
    first = torch.nonzero(start).squeeze(1)  # (n,) first position of every trajectory
    pos = torch.arange(len(tid)) - first[tid]
    complete = torch.zeros(n, dtype=torch.bool).index_put_((tid[end_ut],), torch.tensor(True))
    keep = complete | keep_incomplete
    if not keep.any():
        raise RetentionRLError(f"to_trajectories: no complete {split} in the logs ({steps} steps per row); "
                               "log more steps or pass keep_incomplete=True")
    new_id = torch.cumsum(keep.long(), 0) - 1
    sel = keep[tid]
    T = int(pos[sel].max()) + 1
    index = torch.full((int(keep.sum()), T), -1, dtype=torch.long)
    index[new_id[tid[sel]], pos[sel]] = rows[sel]
    return Trajectories(index, index >= 0)


# --- input checks --------------------------------------------------------------------------------------------
def _check_cap(cap: float, name: str = "cap") -> float:
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or math.isnan(cap) or cap <= 0:
        raise RetentionRLError(f"{name} must be a positive number (inf allowed), got {cap!r}")
    return float(cap)


def _steps(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor, mask: Tensor | None,
           ndim: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Validate -> (log_ratio, reward, mask), float64 / bool of the inputs' shape; log_ratio and reward are 0 on
    padding (a padded step is absorbing: ratio 1, reward 0)."""
    layout = "(n_traj, T)" if ndim == 2 else "(n,)"
    named = {"target_logp": target_logp, "behaviour_logp": behaviour_logp, "reward": reward}
    for name, x in named.items():
        if not isinstance(x, Tensor):
            raise RetentionRLError(f"{name} must be a torch tensor {layout}, got {type(x).__name__}")
        if x.dim() != ndim or x.numel() == 0:
            raise RetentionRLError(f"{name} must be a non-empty {layout} tensor, got shape {tuple(x.shape)}")
        if x.shape != target_logp.shape:
            raise RetentionRLError(f"{name} has shape {tuple(x.shape)}, target_logp has {tuple(target_logp.shape)}")
    if mask is None:
        mask = torch.ones(target_logp.shape, dtype=torch.bool)
    elif not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != target_logp.shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise RetentionRLError(f"mask must be a bool tensor of shape {tuple(target_logp.shape)}, got {got}")
    if ndim == 2:
        if not mask.any(1).all():
            raise RetentionRLError(f"mask: trajectory {int((~mask.any(1)).nonzero()[0])} has no step")
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise RetentionRLError("mask: padding must come after a trajectory's steps (a gap was found)")
    t, b, r = (x.double() for x in named.values())
    checks = (("target_logp", t, torch.isnan(t) | (t == math.inf)), ("behaviour_logp", b, ~torch.isfinite(b)),
              ("reward", r, ~torch.isfinite(r)))
    for name, x, bad in checks:
        bad = bad & mask
        if bad.any():
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise RetentionRLError(f"{name} is {float(x[where])} at {where} (must be finite"
                                   f"{', or -inf' if name == 'target_logp' else ''})")
    zero = torch.zeros((), dtype=torch.float64)
    return torch.where(mask, t - b, zero), torch.where(mask, r, zero), mask


def _discounts(T: int, gamma: float) -> Tensor:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
        raise RetentionRLError(f"gamma must be in [0, 1], got {gamma!r}")
    return float(gamma) ** torch.arange(T, dtype=torch.float64)  # (T,)


# --- estimators ----------------------------------------------------------------------------------------------
def ncis_values(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor, mask: Tensor | None = None,
                cap: float = 10.0, normalise: bool = True) -> Tensor:
    """(n_traj,) float64 per-trajectory terms of :func:`ncis` (their mean is the estimate; their spread gives a CI).

    Per trajectory ξ: ``Σ_t ρ̃_t r_t / Σ_t ρ̃_t`` with ρ̃_t = min(ρ_t, cap); ``normalise=False`` replaces the
    denominator by its expectation under β, the number of steps |ξ| (E_β[ρ] = 1): ``Σ_t ρ̃_t r_t / |ξ|``."""
    lr, r, mask = _steps(target_logp, behaviour_logp, reward, mask)
    cap = _check_cap(cap)
    lw = torch.where(mask, lr.clamp(max=math.log(cap)), -math.inf)  # log ρ̃, -inf on padding
    if normalise:
        dead = torch.isinf(lw).all(1)  # π gives every logged action zero density: 0 / 0
        if dead.any():
            raise RetentionRLError(f"target_logp is -inf at every step of trajectory {int(dead.nonzero()[0])} "
                                   "(NCIS is 0/0 there)")
        return (torch.softmax(lw, 1) * r).sum(1)  # softmax = ρ̃ / Σ ρ̃ without overflow
    return (lw.exp() * r).sum(1) / mask.sum(1)


def ncis(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor, mask: Tensor | None = None,
         cap: float = 10.0, normalise: bool = True) -> float:
    """Normalised capped importance sampling, the ResAct slides' formula exactly::

        J_NCIS(π) = 1/|𝒯| Σ_{ξ∈𝒯} [ Σ_{(s,a,r)∈ξ} ρ̃(s,a) r / Σ_{(s,a,r)∈ξ} ρ̃(s,a) ],
        ρ̃(s,a) = min(π(a|s) / β(a|s), cap)

    target_logp, behaviour_logp, reward, mask: (n_traj, T) (see the module docstring). ``cap`` > 0, ``inf`` for
    no capping (the slides give no value; 10 is our default, compare several). ``normalise=False``: each
    trajectory's Σ ρ̃ r is divided by its length instead of by Σ ρ̃.

    What it estimates: within each trajectory, a π-reweighted average of the per-step rewards, then the plain
    mean over trajectories — the weights only move mass between the steps of one trajectory, so a one-step
    trajectory contributes its reward whatever π is. Relations to the bandit references (exact): all n rounds
    as *one* trajectory with ``cap=inf`` is :func:`snipw`; ``normalise=False`` with cap λ is clipped :func:`ipw`
    (λ), for one n-step trajectory as for n one-step trajectories."""
    return float(ncis_values(target_logp, behaviour_logp, reward, mask, cap, normalise).mean())


def trajectory_is(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor, mask: Tensor | None = None,
                  gamma: float = 1.0, cap: float = math.inf, weighted: bool = False) -> float:
    """Trajectory importance sampling: ``1/n Σ_i min(W_i, cap) G_i`` with W_i = Π_t ρ_{i,t} and
    G_i = Σ_t γ^t r_{i,t} (unbiased for E_π[G] when ``cap=inf`` and β > 0 wherever π > 0). ``weighted``: the
    self-normalised version ``Σ_i W̃_i G_i / Σ_i W̃_i`` (W̃ the capped weights). Inputs (n_traj, T) as in the
    module docstring; the cap applies to the trajectory weight, not per step."""
    lr, r, mask = _steps(target_logp, behaviour_logp, reward, mask)
    cap = _check_cap(cap)
    G = (r * _discounts(r.shape[1], gamma)).sum(1)  # (n_traj,)
    log_w = lr.sum(1).clamp(max=math.log(cap))  # (n_traj,) log W̃
    if weighted:
        if torch.isinf(log_w).all():
            raise RetentionRLError("target_logp: every trajectory has weight 0 (weighted IS is 0/0)")
        return float((torch.softmax(log_w, 0) * G).sum())
    return float((log_w.exp() * G).mean())


def pdwis(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor, mask: Tensor | None = None,
          gamma: float = 1.0, cap: float = math.inf, weighted: bool = True) -> float:
    """Per-decision weighted importance sampling: ``Σ_t γ^t Σ_i w_{i,t} r_{i,t} / Σ_i w_{i,t}`` with the
    cumulative weight w_{i,t} = min(Π_{t'≤t} ρ_{i,t'}, cap), normalised per time step across trajectories.
    ``weighted=False`` is plain per-decision IS, ``1/n Σ_i Σ_t γ^t w_{i,t} r_{i,t}`` (unbiased with ``cap=inf``).

    Unequal lengths: a trajectory that has ended is absorbing (ratio 1, reward 0), so its weight stays in the
    denominator of the later steps at its final value; then, when π = β, the estimate is the mean return (a
    denominator over the still-running trajectories only would overweight the long ones). A time step where every
    weight is 0 contributes 0. Inputs (n_traj, T) as in the module docstring."""
    lr, r, mask = _steps(target_logp, behaviour_logp, reward, mask)
    cap = _check_cap(cap)
    disc = _discounts(r.shape[1], gamma)
    log_w = torch.cumsum(lr, 1).clamp(max=math.log(cap))  # (n_traj, T); padding carries the last weight
    if weighted:
        per_step = (torch.softmax(log_w, 0) * r).sum(0).nan_to_num(0.0)  # (T,) softmax over trajectories
        return float((disc * per_step).sum())
    return float((log_w.exp() * r * disc).sum(1).mean())


# --- single-step references (Open Bandit Pipeline) -----------------------------------------------------------
def ipw(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor, lambda_: float = math.inf) -> float:
    """Inverse probability weighting, ``mean_i(min(w_i, λ) r_i)`` with w_i = π(a_i|x_i) / β(a_i|x_i);
    ``lambda_ < inf`` is clipped IPW. Inputs (n,) log-probabilities and rewards of n logged rounds.

    Reference: Open Bandit Pipeline, ``obp.ope.InverseProbabilityWeighting(lambda_=np.inf)``
    (st-tech/zr-obp, ``obp/ope/estimators.py``: V̂_IPW = E_n[w(x_i, a_i) r_i], clipped as ŵ = min{λ, w})."""
    lr, r, _ = _steps(target_logp, behaviour_logp, reward, None, ndim=1)
    return float((lr.clamp(max=math.log(_check_cap(lambda_, "lambda_"))).exp() * r).mean())


def snipw(target_logp: Tensor, behaviour_logp: Tensor, reward: Tensor) -> float:
    """Self-normalised inverse probability weighting, ``Σ_i w_i r_i / Σ_i w_i`` (no clipping). Inputs (n,).

    Reference: Open Bandit Pipeline, ``obp.ope.SelfNormalizedInverseProbabilityWeighting`` (st-tech/zr-obp,
    ``obp/ope/estimators.py``: V̂_SNIPW = E_n[w r] / E_n[w]; its round rewards ignore the inherited ``lambda_``)."""
    lr, r, _ = _steps(target_logp, behaviour_logp, reward, None, ndim=1)
    if torch.isinf(lr).all():
        raise RetentionRLError("target_logp: every round has weight 0 (SNIPW is 0/0)")
    return float((torch.softmax(lr, 0) * r).sum())
