"""A tiny synthetic simulator whose best fusion weight is known (for fast agent tests).

Construction (:func:`make_synthetic_simulator`):

* A real :class:`~retentionrl.simulator.response.ResponseModel` over small random feature tables (users: two
  categorical columns and one numeric; items: one categorical column, the item's family), whose weights are then
  set by hand so that **behaviour probabilities depend on the item only**: the last layer of the ``query`` MLP
  is zeroed, so ``q(s) = 0`` and ``logit_o(s, i) = item_bias_o(i) + out_bias_o`` (``out_bias = 0``). The user's
  state, history and profile then change nothing: the problem is a contextual bandit whose context is
  irrelevant, repeated over requests.
* Three item families (base probabilities, jittered per item in logit space with std ``jitter``)::

      family   share  click long_view like comment forward follow hate   E[reward] (default weights)
      clicky   1/3    0.90  0.05      0.05 0.30    0.30    0.20   0.50   ≈ -0.20
      liked    1/6    0.40  0.60      0.50 0.02    0.02    0.02   0.00   ≈ +1.56
      dull     1/2    0.15  0.05      0.02 0.01    0.01    0.01   0.02   ≈ +0.17

  "clicky" items have the most clicks and the largest *sum* of behaviour probabilities but are often hated;
  "liked" items have moderate clicks, many long views / likes and (almost) no hate.
* Reward weights ``w = (1, 1, 1, 1, 1, 1, -4)`` (click, long_view, like, comment, forward, follow, hate), so an
  item's expected immediate reward is ``r(i) = Σ_b w_b p_b(i)``.

The immediate reward of a request is ``mean_{i in slate} Σ_b w_b y_b(i)``, additive over the slate's items, and
the probabilities do not depend on the state, so the best slate is the top-K items by ``r(i)``. Fusion ranks by
``Σ_b a_b p_b(i)``; with ``a = c * w`` (any ``c > 0``) this is ``c * r(i)``, hence

    **a* ∝ w**; :func:`optimal_fusion_weights` returns ``w / max|w| = (0.25, ..., 0.25, -1)`` (inside [-1, 1]^7).

Baselines are clearly worse: ranking by click (``[1, 0, ..., 0]``) and most uniform ``[0, 1]^7`` weights put
clicky items first (r ≈ -0.2 against ≈ +1.6 for the optimum).

Sessions and returns: the environment's ``kuaisim`` preset gives fixed 5-request sessions (temper leave) and a
geometric return with ``P = 0.4 + 0.1 * r_session`` (``personal`` is all zeros), increasing in the session's
mean immediate reward, so the same ``a*`` also maximises the retention reward. Users start with an empty history
(``init_pad`` all True). There are no learned leave / return models: the ``learned`` preset raises the bundle's
usual "this bundle has no learned leave model" error. The simulator saves and loads like a built bundle.

The retention case (:data:`RETENTION_ENV`, env overrides on the same simulator) decouples the two: the
immediate reward counts clicks only (``reward_weights = e_click``) and the return law reads the session's
long-view rate f (``returns.feedback_weights = e_long_view``), ``P = 0.1 + 0.8 f``, no personal term, 2-request
sessions. Ranking by click (``[1, 0, ..., 0]``, clicky items) is then immediate-greedy and brings users back
after ≈ 4.27 days; ranking by long view (``[0, 1, 0, ..., 0]``, liked items) is retention-optimal in closed form
— probabilities are state-independent and sessions fixed-length, so the top-K by long-view probability makes
the session's long-view count stochastically largest, and ``E[d]`` decreases in it — with ≈ 1.53 days
(:func:`expected_return_day_of_weights` computes both exactly, seed 0, 300 items). A policy must learn from the
retention signal, through one bootstrapped step inside each session, to find it.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Sequence

import torch
from torch import Tensor

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.nets.encoders import FeatureTensors
from retentionrl.simulator.bundle import FORMAT_VERSION, Simulator
from retentionrl.simulator.response import ResponseConfig, ResponseModel
from retentionrl.simulator.returns import truncated_geometric_probs

NB = len(BEHAVIOURS)

#: family -> (share of items, base probability per behaviour in BEHAVIOURS order)
FAMILIES: dict[str, tuple[float, tuple[float, ...]]] = {
    "clicky": (1 / 3, (0.90, 0.05, 0.05, 0.30, 0.30, 0.20, 0.50)),
    "liked": (1 / 6, (0.40, 0.60, 0.50, 0.02, 0.02, 0.02, 0.00)),
    "dull": (1 / 2, (0.15, 0.05, 0.02, 0.01, 0.01, 0.01, 0.02)),
}
REWARD_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -4.0)
_P_MIN = 1e-3  # probabilities are clipped to [_P_MIN, 1 - _P_MIN] before taking logits


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(_P_MIN, 1 - _P_MIN)
    return torch.log(p) - torch.log1p(-p)


def make_synthetic_simulator(n_users: int = 64, n_items: int = 300, seed: int = 0, *, jitter: float = 0.3,
                             reward_weights: Sequence[float] = REWARD_WEIGHTS, dim: int = 8, window: int = 12,
                             watch_sigma: float = 0.5, max_return_day: int = 10,
                             test_fraction: float = 0.25) -> Simulator:
    """A state-independent simulator with a known best fusion weight (see the module docstring).

    ``jitter``: std of the per-item logit noise around each family's base probabilities (0: identical items
    within a family). ``dim`` / ``window``: the response model's width and history window (the window must
    exceed the environment's slate size, 6 by default). A fraction ``test_fraction`` of users is marked as test
    users (the evaluation protocol's default pool).
    """
    if len(reward_weights) != NB:
        raise ValueError(f"reward_weights needs {NB} values, got {len(reward_weights)}")
    if n_items < 3 * 6 or n_users < 2:
        raise ValueError("need at least 18 items and 2 users")
    g = torch.Generator().manual_seed(seed)

    # Item families: counts by share, the remainder to the last family; shuffled over item ids.
    names = list(FAMILIES)
    counts = [int(round(FAMILIES[f][0] * n_items)) for f in names[:-1]]
    counts.append(n_items - sum(counts))
    family = torch.cat([torch.full((c,), j, dtype=torch.long) for j, c in enumerate(counts)])
    family = family[torch.randperm(n_items, generator=g)]
    base = torch.tensor([FAMILIES[f][1] for f in names])  # (F, 7)
    logits = _logit(base[family]) + jitter * torch.randn(n_items, NB, generator=g)
    # "liked" items are never hated: keep their hate probability at the floor, not jittered upwards.
    liked = family == names.index("liked")
    logits[liked, NB - 1] = _logit(torch.tensor(0.0))
    watch = math.log1p(8.0) + 1.0 * liked.float() + 0.2 * torch.randn(n_items, generator=g)  # log1p(seconds)

    # Feature tables: users 2 categorical (+ code 0 = missing) and 1 numeric; items 1 categorical (family + 1).
    user_cards = [4, 3]
    users = FeatureTensors(
        torch.stack([torch.randint(1, c, (n_users,), generator=g) for c in user_cards], 1),
        torch.randn(n_users, 1, generator=g), user_cards,
    )
    item_cards = [len(names) + 1]
    items = FeatureTensors((family + 1)[:, None], torch.zeros(n_items, 0), item_cards)

    rcfg = ResponseConfig(dim=dim, window=window, layers=1, heads=1, dropout=0.0, epochs=0)
    torch.manual_seed(seed)  # the (irrelevant) random init of the encoders
    model = ResponseModel(users, items, rcfg)
    with torch.no_grad():
        last = model.query[-1]
        last.weight.zero_()
        last.bias.zero_()  # q(s) = 0 for every state
        model.out_bias.zero_()
        model.item_bias.weight[:, :NB] = logits
        model.item_bias.weight[:, NB] = watch
    model.eval()

    w = torch.tensor(list(reward_weights), dtype=torch.float32)
    p = torch.sigmoid(logits)
    r_item = p @ w
    test_users = torch.zeros(n_users, dtype=torch.bool)
    test_users[torch.randperm(n_users, generator=g)[: max(1, int(round(test_fraction * n_users)))]] = True
    H = window
    tensors = {
        "init_items": torch.zeros(n_users, H, dtype=torch.long),
        "init_resp": torch.zeros(n_users, H, NB + 1),
        "init_pad": torch.ones(n_users, H, dtype=torch.bool),
        "personal": torch.zeros(n_users),
        "item_tag": family.clone(),
        "item_author": torch.arange(n_items) % max(1, n_items // 10),
        "test_users": test_users,
        "item_exposures": torch.ones(n_items, dtype=torch.long),
    }
    # "Real" statistics for the calibration report: a logger that shows uniformly random items, 5-request
    # sessions and the kuaisim geometric return at that logger's mean reward.
    ref_reward = float(r_item.mean())
    p_ret = torch.tensor([min(max(0.4 + 0.1 * ref_reward, 1e-3), 1 - 1e-3)])
    ret = truncated_geometric_probs(p_ret, max_return_day)[0]
    real = {
        "behaviour_rates": {b: float(p[:, j].mean()) for j, b in enumerate(BEHAVIOURS)},
        "mean_session_length": 5.0,
        "session_length_hist": [0] * 4 + [1000] + [0] * 15,
        "return_day_hist": [int(round(1000 * float(x))) for x in ret],
        "observed_days_hist": [0] * 60 + [1000],
        "mean_return_day": float((ret * torch.arange(1, max_return_day + 1)).sum()),
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": "synthetic",
        "n_users": n_users,
        "n_items": n_items,
        "behaviours": list(BEHAVIOURS),
        "user_cardinalities": user_cards,
        "item_cardinalities": item_cards,
        "reward_weights": [float(x) for x in reward_weights],
        "reference_reward": ref_reward,
        "watch_sigma": float(watch_sigma),
        "max_return_day": int(max_return_day),
        "real": real,
        "synthetic": {"families": {f: counts[j] for j, f in enumerate(names)}, "jitter": jitter, "seed": seed},
    }
    build_config = {"synthetic": {"n_users": n_users, "n_items": n_items, "seed": seed, "jitter": jitter},
                    "response": asdict(rcfg)}
    return Simulator(model, None, None, tensors, meta, build_config)


def item_probabilities(sim: Simulator) -> Tensor:
    """(N, 7) behaviour probabilities of every item (exact for a synthetic, state-independent simulator)."""
    m = sim.response
    with torch.no_grad():
        return torch.sigmoid(m.item_bias.weight[:, :NB] + m.out_bias[:NB])


def item_rewards(sim: Simulator, reward_weights: Sequence[float] | None = None) -> Tensor:
    """(N,) expected immediate reward ``Σ_b w_b p_b(i)`` of every item."""
    w = torch.tensor(list(reward_weights if reward_weights is not None else sim.reward_weights), dtype=torch.float32)
    return item_probabilities(sim) @ w


def optimal_fusion_weights(sim: Simulator) -> Tensor:
    """(7,) the best fusion action: the reward weights scaled into [-1, 1] (any positive multiple is as good)."""
    w = torch.tensor(sim.reward_weights, dtype=torch.float32)
    return w / w.abs().max()


def expected_reward_of_weights(sim: Simulator, a: Tensor | Sequence[float], slate_size: int = 6) -> float:
    """Exact expected immediate reward per request of the top-``slate_size`` slate chosen by fusion weights ``a``
    (the environment's ranking ``Σ_b a_b p_b(i)`` over all items; the reward is the slate's mean of
    ``Σ_b w_b y_b``). Ties are broken like the environment's ``torch.topk``."""
    a = torch.as_tensor(a, dtype=torch.float32).reshape(NB)
    p = item_probabilities(sim)
    top = torch.topk(p @ a, slate_size).indices
    return float(item_rewards(sim)[top].mean())


def best_expected_reward(sim: Simulator, slate_size: int = 6) -> float:
    """Expected immediate reward of the best possible slate (the top ``slate_size`` items by reward)."""
    return float(torch.topk(item_rewards(sim), slate_size).values.mean())


# --- the retention case: the immediate-greedy action is not the retention-optimal one -----------------------
CLICK = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # immediate reward = click; also the click-ranking fusion action
LONG_VIEW = (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # return feedback = long view; also the retention-optimal action

#: Env overrides of the retention case (on the kuaisim preset): the immediate reward counts clicks only, the
#: geometric return law reads the session's long-view rate f, P = 0.1 + 0.8 f (no personal term), sessions of
#: ``RETENTION_SESSION_LENGTH`` requests. Clicky items (click 0.9, long view 0.05) win the immediate reward,
#: liked ones (click 0.4, long view 0.6) bring users back: P ≈ 0.14 (E[d] ≈ 4.3) against ≈ 0.69 (E[d] ≈ 1.5).
RETENTION_SESSION_LENGTH = 2
RETENTION_ENV: dict = {
    "reward_weights": list(CLICK),
    "leave": {"initial_temper": float(RETENTION_SESSION_LENGTH)},
    "returns": {"personal": "none", "bias": 0.1, "feedback_influence": 0.8, "feedback_weights": list(LONG_VIEW)},
}


def expected_return_day_of_weights(sim: Simulator, a: Tensor | Sequence[float], cfg) -> float:
    """Exact expected return day of the constant fusion action ``a`` (7,) in env config ``cfg`` (an
    :class:`~retentionrl.simulator.env.EnvConfig` with the geometric law, no personal term, fixed-length temper
    sessions, every item a candidate, and a single-behaviour feedback ``v = c * e_b``).

    The slate is the same at every request (state-independent probabilities), so over a session of n requests the
    count S of behaviour b among the n * K exposures is Poisson-binomial (each slate item n times); the feedback is
    ``c * S / (n K)`` and ``E[d] = Σ_k Pr(S = k) * TruncGeomMean(clip(bias + kappa * c * k / (n K)))``.
    """
    from retentionrl.simulator.returns import EPS, truncated_geometric_mean

    rc, K = cfg.returns, cfg.slate_size
    v = torch.tensor(rc.feedback_weights if rc.feedback_weights is not None else
                     (cfg.reward_weights if cfg.reward_weights is not None else sim.reward_weights), dtype=torch.float32)
    nz = torch.nonzero(v).flatten()
    if (rc.kind != "geometric" or rc.personal != "none" or cfg.leave.kind != "temper" or cfg.candidates is not None
            or len(nz) != 1):
        raise ValueError("expected_return_day_of_weights needs the geometric law without a personal term, temper "
                         "sessions, all items as candidates and a single-behaviour feedback")
    n = math.ceil(cfg.leave.initial_temper)
    a = torch.as_tensor(a, dtype=torch.float32).reshape(NB)
    p = item_probabilities(sim)
    top = torch.topk(p @ a, K).indices
    pmf = torch.ones(1, dtype=torch.float64)  # Pr(S = k), built one exposure at a time
    for q in p[top, int(nz[0])].double().repeat(n):
        pmf = torch.cat([pmf * (1 - q), torch.zeros(1, dtype=torch.float64)]) + torch.cat([torch.zeros(1, dtype=torch.float64), pmf * q])
    f = float(v[nz[0]]) * torch.arange(n * K + 1, dtype=torch.float64) / (n * K)
    P = (rc.bias + rc.feedback_influence * f).clamp(EPS, 1 - EPS)
    D = cfg.max_return_day or sim.max_return_day
    return float((pmf * truncated_geometric_mean(P, D)).sum())
