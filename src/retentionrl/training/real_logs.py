"""Training rows straight from a real log (no simulated interaction), in the layout of
:func:`~retentionrl.training.offline.generate_logs`: SEC's "online form" (discrete actions = item clusters).

* :func:`item_clusters` — k-means (scikit-learn) of item vectors into C clusters; a logged exposure's action is
  the cluster of its item. Default source: the bundle's response-model item vectors, which live in the
  simulator's item id space and encode what the simulated users respond to, so a cluster-level policy trained on
  the log acts coherently in the simulator; alternative: the item feature tables the bundle stores (one-hot of
  the low-cardinality categoricals + standardised numerics), closer to the paper's "multimodal features".
* :func:`real_log_rows` — one row per logged exposure: the user's state *before* it, encoded exactly as the
  simulator encodes a state (history tokens of ``simulator/build.py:_initial_histories`` /
  :meth:`ResponseModel.token_features`, the bundle's profile tables, user-day sessions of
  :func:`~retentionrl.data.sessions.sessionize` as in the bundle build), the exposed item's cluster as ``action``,
  the session end / observed return gap, and the ``next_*`` successor state.
* :func:`last_day_split` — train = days before the log's last day (labels censored at the split), test = the last
  day; :func:`user_retention_from_rows` / :func:`expert_users` — the per-user retention level of a set of rows;
  :func:`topk_cluster_accuracy` / :func:`popularity_probs` — the offline evaluation.

Why ``training``: the rows are a training loop's input, like ``training.offline``'s logs, and they need the
simulator bundle's encodings (``simulator`` is below ``training`` in tests/test_layering.py); ``data`` may not
import the simulator. The bundle is used only for encodings (profiles, item ids, history window, reward
weights, item vectors), never to simulate.

Choices (see also :func:`real_log_rows`):

* ``step_in_session`` counts *requests*, as in the env: exposure r (1-based) of a session is in request
  ``ceil(r / K)``, so ``(r - 1) // K`` requests were completed before it (the calibration report's mapping of a
  real session of L exposures to ``ceil(L / K)`` requests); ``slate_size=1`` makes one exposure one request.
* ``session_index`` is the session's index among the user's sessions in the log (the env counts from the episode
  start); ``days_since_last`` the gap that started it (0 for the user's first logged session), as the bundle's
  return model features.
* ``return_day`` is the observed gap in calendar days at a session's last exposure (not clipped to the bundle's
  D); 0 when censored (the user's last session in the log), where ``session_end`` is still True.
* ``episode_end`` marks each user's last row (the log is a time-limit truncation, not a terminal state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from torch import Tensor

from retentionrl.data import sessionize
from retentionrl.data.schema import BEHAVIOURS, Interactions
from retentionrl.data.sessions import Sessions, user_retention
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.response import ResponseModel
from retentionrl.spaces import OBS_FIELDS

CLUSTER_SOURCES = ("response", "features")
MAX_ONEHOT = 64  # item categoricals with more codes (author ids) are left out of the "features" vectors


# --- item clusters -----------------------------------------------------------------------------------------------
@dataclass
class ItemClusters:
    """A partition of the bundle's items: ``labels`` (n_items,) long cluster of each dense item id, ``centers``
    (C, D) float32 k-means centroids in the clustered space."""

    labels: Tensor
    centers: Tensor
    source: str
    seed: int

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    def sizes(self) -> Tensor:
        """(C,) long number of items in each cluster."""
        return torch.bincount(self.labels, minlength=self.n_clusters)


@torch.no_grad()
def item_vectors(sim: Simulator, source: str = "response") -> Tensor:
    """(n_items, D) float32 vectors of the bundle's items: the response model's item encodings (``"response"``), or
    one-hot codes of the item categoricals with at most :data:`MAX_ONEHOT` values plus the standardised numerics
    (``"features"``)."""
    if source == "response":
        return sim.response.eval().item_vectors().float()
    if source == "features":
        cat, num = sim.response.item_cat, sim.response.item_num
        cards = list(sim.meta["item_cardinalities"])
        parts = [torch.nn.functional.one_hot(cat[:, j], c).float() for j, c in enumerate(cards) if c <= MAX_ONEHOT]
        out = torch.cat([*parts, num.float()], 1)
        if out.shape[1] == 0:
            raise RetentionRLError("item clusters source 'features': the bundle has no usable item feature column")
        return out
    raise RetentionRLError(f"unknown item clusters source '{source}' (use one of {', '.join(CLUSTER_SOURCES)})")


def item_clusters(sim: Simulator, n_clusters: int = 32, seed: int = 0, source: str = "response",
                  n_init: int = 4) -> ItemClusters:
    """k-means (scikit-learn, k-means++ init, ``n_init`` restarts, ``random_state=seed``) of
    :func:`item_vectors` into ``n_clusters`` clusters. Same bundle, source and seed ⇒ same labels."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= sim.n_items:
        raise RetentionRLError(f"n_clusters must be an integer in 1..{sim.n_items} (the bundle's items), got {n_clusters!r}")
    x = item_vectors(sim, source).double().numpy()
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(x)
    return ItemClusters(torch.as_tensor(km.labels_, dtype=torch.long),
                        torch.as_tensor(km.cluster_centers_, dtype=torch.float32), source, int(seed))


# --- the log as the bundle saw it -----------------------------------------------------------------------------
def bundle_view(data: Interactions, sim: Simulator) -> Interactions:
    """``data`` restricted as the bundle build restricted it (``max_users``: the same seeded subset of users,
    re-densified), after checking that the bundle was built from this log: same dataset, user and item counts,
    and per-item exposure counts (``item_exposures``). Raises :class:`RetentionRLError` otherwise."""
    where = f"bundle {sim.path or '(in memory)'}"
    if sim.meta.get("dataset") != data.name:
        raise RetentionRLError(f"{where}: built from dataset '{sim.meta.get('dataset')}', the log is '{data.name}'")
    cfg = sim.build_config or {}
    max_users = cfg.get("max_users")
    if max_users is not None and max_users < data.n_users:
        # the build's own subset rule (simulator/build.py:build_simulator)
        keep = np.sort(np.random.default_rng(cfg.get("seed", 0)).choice(data.n_users, max_users, replace=False))
        data = data.subset_users(keep)
    if data.n_users != sim.n_users or data.n_items != sim.n_items:
        raise RetentionRLError(f"{where}: {sim.n_users:,} users x {sim.n_items:,} items, the log has "
                               f"{data.n_users:,} x {data.n_items:,}: not built from this log")
    counts = torch.bincount(torch.tensor(data.log["item_id"].to_numpy(np.int64)), minlength=data.n_items)
    if not torch.equal(counts, sim.item_exposures):
        bad = int(torch.nonzero(counts != sim.item_exposures)[0])
        raise RetentionRLError(f"{where}: item {bad} has {int(sim.item_exposures[bad])} exposures in table "
                               f"'item_exposures', {int(counts[bad])} in the log: not built from this log")
    return data


# --- rows -------------------------------------------------------------------------------------------------------
def _windows(end: Tensor, start: Tensor, H: int, items: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """History of rows ``[end - H, end)`` clipped at the user's first row ``start``: (N, H) items, (N, H, 8) tokens,
    (N, H) pad; left-padded (item 0, zero tokens), oldest first, as ``_initial_histories``."""
    idx = end[:, None] - H + torch.arange(H)[None]  # (N, H) global row of each slot
    pad = idx < start[:, None]
    idx = idx.clamp(min=0)
    return items[idx].masked_fill(pad, 0), tokens[idx].masked_fill(pad[..., None], 0.0), pad


def _session_rank(session_of: np.ndarray) -> np.ndarray:
    """(N,) 1-based rank of each log row within its session, in log order (as ``simulator/build.py``)."""
    s = pd.Series(session_of)
    return s.groupby(s).cumcount().to_numpy() + 1


@torch.no_grad()
def real_log_rows(data: Interactions, sim: Simulator, clusters: ItemClusters | Tensor, slate_size: int = 6,
                  retention_reward: str = "neg_day_over_10", next_obs: bool = True) -> dict[str, Tensor]:
    """One row per exposure of ``data.log`` (of :func:`bundle_view`; row i = log row i, user-major, time order).

    Keys (N rows):

    * the :data:`~retentionrl.spaces.OBS_FIELDS` of the state before the exposure — ``user`` (N,) long,
      ``profile_cat`` (N, Fc) long / ``profile_num`` (N, Fn) float (the bundle's tables), ``hist_items`` (N, H)
      long, ``hist_resp`` (N, H, 8), ``hist_pad`` (N, H) bool (the user's previous H logged exposures, H = the
      response model's window), ``session_index``, ``step_in_session`` (N,) long, ``days_since_last`` (N,) float;
    * with ``next_obs``, ``next_<f>``: the state after the exposure (history including it; at a session end the
      env's counters: session_index + 1, step 0, days_since_last = return_day). ``next_user`` and
      ``next_profile_*`` are the same tensors as ``user`` / ``profile_*``;
    * ``action`` (N,) long cluster of the exposed item; ``item``, ``day`` (N,) long; ``slate`` (N, 1) long,
      ``responses`` (N, 1, 7) float 0/1, ``watch_time`` (N, 1) float (generate_logs' extras with K = 1);
    * ``reward`` (N,) Σ_b w_b y_b (the bundle's reward weights), ``session_reward`` (N,) its running sum in the
      session; ``session_end`` (N,) bool at each session's last exposure; ``return_day`` (N,) long observed gap
      there (0 if censored or not an end); ``retention_reward`` (N,) −d/10 (``"neg_day_over_10"``) or 1/d
      (``"inverse_day"``) at observed ends, else 0; ``episode_end`` (N,) bool at each user's last row.

    ``clusters``: :class:`ItemClusters` or (n_items,) long labels. ``slate_size`` K converts exposures to requests
    for ``step_in_session`` (see the module docstring). Checks that the bundle's initial histories equal each
    user's last H logged exposures (same encoding). Vectorised: ~180k rows in seconds.
    """
    if isinstance(slate_size, bool) or not isinstance(slate_size, int) or slate_size < 1:
        raise RetentionRLError(f"slate_size must be a positive integer, got {slate_size!r}")
    if retention_reward not in ("neg_day_over_10", "inverse_day"):
        raise RetentionRLError(f"unknown retention_reward '{retention_reward}' (use neg_day_over_10 or inverse_day)")
    data = bundle_view(data, sim)
    labels = clusters.labels if isinstance(clusters, ItemClusters) else torch.as_tensor(clusters, dtype=torch.long)
    if labels.shape != (sim.n_items,):
        raise RetentionRLError(f"item clusters: labels have shape {tuple(labels.shape)}, the bundle has {sim.n_items} items")
    log = data.log
    N, H, K = len(log), sim.response.cfg.window, slate_size
    user_np = log["user_id"].to_numpy(np.int64)
    if N == 0 or (np.diff(user_np) < 0).any():
        raise RetentionRLError(f"{data.name}: the log must be non-empty and sorted by user_id (Interactions.log is)")

    user = torch.tensor(user_np)
    item = torch.tensor(log["item_id"].to_numpy(np.int64))
    day = torch.tensor(log["day"].to_numpy(np.int64))
    resp = torch.tensor(log[list(BEHAVIOURS)].to_numpy(np.float32))
    watch = torch.tensor(log["watch_time"].to_numpy(np.float32))
    tokens = ResponseModel.token_features(resp, watch)  # (N, 8)
    first = np.r_[True, user_np[1:] != user_np[:-1]]
    last = np.r_[user_np[1:] != user_np[:-1], True]
    start = torch.as_tensor(np.maximum.accumulate(np.where(first, np.arange(N), 0)))  # (N,) user's first row
    rows = torch.arange(N)

    # Sessions: the bundle build's rule (user-days) and its per-session features.
    sessions = sessionize(data, "day")
    t, so = sessions.table, sessions.session_of
    rank = _session_rank(so)
    end = rank == t["length"].to_numpy()[so]
    gap = np.nan_to_num(t["return_gap"].to_numpy(), nan=0.0).astype(np.int64)  # 0 = censored
    first_session = t["index_in_user"].to_numpy() == 0
    prev_gap = np.where(first_session, 0, np.r_[0, gap[:-1]])  # the gap that started each session
    session_index = torch.as_tensor(t["index_in_user"].to_numpy(np.int64)[so])
    days_since = torch.as_tensor(prev_gap[so].astype(np.float32))
    step = torch.as_tensor((rank - 1) // K)
    session_end = torch.as_tensor(end)
    return_day = torch.as_tensor(np.where(end, gap[so], 0))
    w = torch.tensor(sim.reward_weights, dtype=torch.float32)
    reward = resp @ w
    session_reward = torch.tensor(pd.Series(reward.numpy()).groupby(so).cumsum().to_numpy(np.float32))
    d = return_day.float()
    observed = return_day > 0
    ret_r = torch.where(observed, -d / 10.0 if retention_reward == "neg_day_over_10" else 1.0 / d.clamp(min=1.0),
                        torch.zeros(N))

    hist_items, hist_resp, hist_pad = _windows(rows, start, H, item, tokens)
    out: dict[str, Tensor] = {
        "user": user, "profile_cat": sim.response.user_cat[user], "profile_num": sim.response.user_num[user],
        "hist_items": hist_items, "hist_resp": hist_resp, "hist_pad": hist_pad,
        "session_index": session_index, "step_in_session": step, "days_since_last": days_since,
    }
    n_items_, n_resp, n_pad = _windows(rows + 1, start, H, item, tokens)
    last_t = torch.as_tensor(last)
    _check_initial_histories(sim, user[last_t], n_items_[last_t], n_resp[last_t], n_pad[last_t])
    if next_obs:
        out.update({
            "next_user": out["user"], "next_profile_cat": out["profile_cat"], "next_profile_num": out["profile_num"],
            "next_hist_items": n_items_, "next_hist_resp": n_resp, "next_hist_pad": n_pad,
            "next_session_index": torch.where(session_end, session_index + 1, session_index),
            "next_step_in_session": torch.where(session_end, 0, torch.as_tensor(rank // K)),
            "next_days_since_last": torch.where(session_end, d, days_since),
        })
    out.update({
        "action": labels[item], "item": item, "day": day,
        "slate": item[:, None], "responses": resp[:, None], "watch_time": watch[:, None],
        "reward": reward, "session_reward": session_reward, "retention_reward": ret_r,
        "session_end": session_end, "episode_end": last_t, "return_day": return_day,
    })
    missing = [f for f in OBS_FIELDS if f not in out]
    assert not missing, missing  # the layout follows spaces.Obs
    return out


def _check_initial_histories(sim: Simulator, users: Tensor, items: Tensor, resp: Tensor, pad: Tensor) -> None:
    """The history after each user's last row must be the bundle's ``init_*`` (built by ``_initial_histories``)."""
    same = (items == sim.init_items[users]).all(1) & (pad == sim.init_pad[users]).all(1)
    same &= torch.isclose(resp, sim.init_resp[users], atol=1e-6).all(2).all(1)
    if not bool(same.all()):
        u = int(users[~same][0])
        raise RetentionRLError(f"bundle {sim.path or '(in memory)'}: table 'init_items'/'init_resp' of user {u} is not "
                               f"that user's last {items.shape[1]} logged exposures: not built from this log")


# --- split, retention levels, evaluation ---------------------------------------------------------------------
def select_rows(rows: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
    """The rows where ``mask`` (N,) bool is True (every key, shared tensors indexed once)."""
    cache: dict[int, Tensor] = {}
    out = {}
    for k, v in rows.items():
        if id(v) not in cache:
            cache[id(v)] = v[mask]
        out[k] = cache[id(v)]
    return out


def last_day_split(rows: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(train, test): rows of the days before the log's last day, and of the last day.

    The training rows know nothing of the last day: a training session whose observed return falls on the last
    day becomes censored (``return_day`` 0, ``retention_reward`` 0, ``next_days_since_last`` 0), and each
    user's last training row is an ``episode_end``, exactly as if the log ended the day before. Test rows keep
    their states (histories of earlier exposures, also from training days) and labels."""
    last_day = int(rows["day"].max())
    is_test = rows["day"] == last_day
    train, test = select_rows(rows, ~is_test), select_rows(rows, is_test)
    if len(train["day"]) == 0:
        raise RetentionRLError(f"last-day split: the rows cover one day ({last_day}); a split needs at least two")
    cut = train["session_end"] & (train["return_day"] > 0) & (train["day"] + train["return_day"] >= last_day)
    train["return_day"] = train["return_day"].masked_fill(cut, 0)
    train["retention_reward"] = train["retention_reward"].masked_fill(cut, 0.0)
    if "next_days_since_last" in train:
        train["next_days_since_last"] = train["next_days_since_last"].masked_fill(cut, 0.0)
    u = train["user"]
    train["episode_end"] = torch.cat([u[1:] != u[:-1], torch.ones(1, dtype=torch.bool)])
    return train, test


def user_retention_from_rows(rows: dict[str, Tensor], n_users: int, last_day: int | None = None) -> pd.DataFrame:
    """:func:`~retentionrl.data.sessions.user_retention` of the sessions the rows end (``session_end``; censored
    where ``return_day`` is 0), the log ending on ``last_day`` (default: the rows' last day). Columns
    ``n_sessions, n_returns, mean_return_day, next_day_share, retention_level``; index: dense user id."""
    end = rows["session_end"]
    last_day = int(rows["day"].max()) if last_day is None else int(last_day)
    gap = rows["return_day"][end].numpy()
    table = pd.DataFrame({
        "user_id": rows["user"][end].numpy(), "return_gap": np.where(gap > 0, gap, np.nan).astype(np.float64),
        "censored": gap == 0, "observed_days": last_day - rows["day"][end].numpy(),
    })
    return user_retention(Sessions(table=table, session_of=np.empty(0, dtype=np.int64), rule="day"), n_users)


def expert_users(retention: pd.DataFrame, max_return_day: float = 3.0) -> Tensor:
    """(U,) bool: users whose mean observed return day is at most ``max_return_day`` (SEC's experts; a user who
    never returned is not one)."""
    mean = retention["mean_return_day"].to_numpy()
    return torch.as_tensor(np.nan_to_num(mean, nan=np.inf) <= max_return_day)


def popularity_probs(rows: dict[str, Tensor], n_clusters: int) -> Tensor:
    """(C,) float share of the rows' actions in each cluster."""
    counts = torch.bincount(rows["action"], minlength=n_clusters).float()
    return counts / counts.sum().clamp(min=1.0)


def topk_cluster_accuracy(probs: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of rows whose target cluster is among the ``k`` highest of ``probs`` (N, C), for each k.

    Ties are broken by cluster index (the lower wins), so the result does not depend on a sort's tie order: the
    target's rank is #clusters with a higher score + #clusters with an equal score and a lower index. Any score
    works (probabilities, logits); k > C counts every row. ``probs`` may be (C,) for one distribution shared by
    all rows. ``targets`` (N,) long."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    if probs.dim() == 1:
        probs = probs[None].expand(len(targets), -1)
    if probs.dim() != 2 or probs.shape[0] != len(targets):
        raise RetentionRLError(f"topk_cluster_accuracy: probs {tuple(probs.shape)} do not match targets {tuple(targets.shape)}")
    if len(targets) == 0:
        raise RetentionRLError("topk_cluster_accuracy: no rows to evaluate")
    C = probs.shape[1]
    if ((targets < 0) | (targets >= C)).any():
        raise RetentionRLError(f"topk_cluster_accuracy: a target is outside 0..{C - 1}")
    p_t = probs.gather(1, targets[:, None])  # (N, 1)
    before = torch.arange(C)[None] < targets[:, None]
    rank = (probs > p_t).sum(1) + ((probs == p_t) & before).sum(1)  # (N,) 0 = top
    return {int(k): float((rank < int(k)).float().mean()) for k in ks}
