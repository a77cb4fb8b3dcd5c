"""SEC — Stratified Expert Cloning with adaptive expert selection (Lin et al., 2024; design.md §5).

Training (offline, from logs):

* **Stratification** (:func:`user_levels`). A user's retention score comes from the logs being cloned. With
  ``criterion: return_day`` it is the mean logged return day; experts have a score ≤ K (K = ``levels``, 3 by
  default) and level k holds the experts with a score in (k − 1, k], so level 1 is "always back the next day".
  With ``criterion: active_days`` it is the number of distinct logged days (``day`` key) and level k holds the
  users with at least ``active_thresholds[k-1]`` days. ``multi_level: false`` (the ablation) puts every expert in
  one level.
* **Multi-level behaviour cloning.** A shared state encoder f_φ and one action head g_θk per level (one batched
  :class:`~retentionrl.nets.encoders.GroupedMLP`). Per minibatch, with ``A_k`` the head-k outputs on the batch's
  level-k rows::

      L = Σ_k ( BC_k + λ · AER_k )
      BC_k  = Σ_{rows of k} ‖g_θk(f_φ(s)) − a‖²            (continuous)   or   −Σ log g_θk(a | f_φ(s))   (discrete)
      AER_k = −‖A_k‖_*  (nuclear norm, the sum of singular values) or   Σ_j p̄_kj log p̄_kj  (p̄: batch-mean probs)

  Sums over rows, as in the paper (its λ = 0.01 is relative to the summed BC term, batch 128).
* **Adaptive expert selection** (:func:`level_distances`, :func:`select_level`). k-means (scikit-learn) with
  C_k clusters on f_φ(s) of level k's training states; ``d_k = min_c ‖f_φ(s) − μ_kc‖``; δ_k = half the mean
  distance between level k's centroids; ``k* = min{k : d_k ≤ δ_k}``, else ``argmin_k d_k``; then
  ``k* = min(k*, r_h)`` with r_h the user's historical retention level. C_k = min(``n_clusters``,
  n_k / ``states_per_cluster``): the paper's 1,000 centroids come from Kuaishou-scale logs; at our log sizes a
  centroid per 20 states keeps every cluster populated. The centroids are refitted whenever the encoder has
  changed since the last fit, and they live in the checkpoint. ``delta_fraction`` (0.5, the paper's "half")
  scales δ_k: the first-within rule favours level 1 whenever the levels lie closer together in f_φ-space than
  half a level's own spread (tests/test_sec.py measures it), and ``delta_fraction: 0`` is the nearest level.

In the simulator r_h is the return gap that started the current session (``days_since_last``; the observation
carries no longer history), none in a user's first session. Continuous SEC acts in fusion mode (the cloned
fusion weights of the selected level). Discrete SEC (``action: discrete``, classes = item clusters, the paper's
online form) exposes :meth:`SEC.class_probs`; :class:`ClusterRanker` combines them with the ranking stage's
scores into an items-mode policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor, nn

from retentionrl.agents.base import Agent, agent_spec
from retentionrl.config import from_dict
from retentionrl.errors import RetentionRLError
from retentionrl.nets.actor_critic import AgentSpec, EncoderKind, encoder
from retentionrl.nets.encoders import GroupedMLP
from retentionrl.nets.optim import adam
from retentionrl.simulator.env import EnvConfig
from retentionrl.spaces import OBS_FIELDS, Obs, obs_from_batch


@dataclass
class SECConfig:
    action: Literal["continuous", "discrete"] = "continuous"
    n_actions: int = 0  # discrete: number of classes (0: one more than the largest logged class)
    levels: int = 3  # K expert levels
    criterion: Literal["return_day", "active_days"] = "return_day"
    active_thresholds: list[float] | None = None  # active_days: level k needs >= thresholds[k-1] days (descending)
    multi_level: bool = True  # False: one expert set (every expert in level 1) — the "w/o multi-level" ablation
    lam: float = 0.01  # AER weight λ; 0 is the "w/o AER" ablation
    lr: float = 3e-4
    batch_size: int = 128
    hidden: list[int] = field(default_factory=lambda: [128, 32])
    state_dim: int = 64
    token_dim: int = 32
    encoder: EncoderKind = "transformer"
    n_clusters: int = 1000  # C_k upper bound (the paper's value)
    states_per_cluster: int = 20  # C_k = min(n_clusters, n_k // states_per_cluster), at least 1
    max_cluster_states: int = 20_000  # level-k states k-means sees (a seeded subsample beyond this)
    delta_fraction: float = 0.5  # δ_k = this x the mean distance between level k's centroids (paper: half)
    history_cap: bool = True  # apply k* = min(k*, r_h)
    bound: float | None = None  # continuous: clamp actions to [-bound, bound] at act time


# --- the maths, as pure functions (unit-tested with hand values) --------------------------------------------
def nuclear_aer(actions: Tensor) -> Tensor:
    """AER of a continuous head: −‖A‖_* for A (M, d) (0 for an empty batch)."""
    if actions.shape[0] == 0:
        return actions.sum() * 0.0
    return -torch.linalg.matrix_norm(actions, ord="nuc")


def entropy_aer(logits: Tensor) -> Tensor:
    """AER of a discrete head: Σ_j p̄_j log p̄_j with p̄ (C,) the batch-mean class probabilities of logits (M, C)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    p = torch.softmax(logits, dim=1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


def user_levels(user: Tensor, session_end: Tensor, return_day: Tensor, levels: int,
                criterion: str = "return_day", day: Tensor | None = None,
                active_thresholds: list[float] | None = None) -> tuple[Tensor, Tensor]:
    """Per-user retention score and expert level from logged rows (N,).

    Returns ``users`` (U,) the distinct user ids and ``level`` (U,) long in 0..K (0: not an expert).
    ``return_day``: score = mean ``return_day`` over the user's session ends with an observed return (> 0);
    level = ceil(score) if score ≤ K. ``active_days``: score = distinct ``day`` values; level = the first k with
    score ≥ ``active_thresholds[k-1]``."""
    users, inv = torch.unique(user, return_inverse=True)
    U = len(users)
    if criterion == "return_day":
        seen = session_end & (return_day > 0)
        n = torch.zeros(U).index_add_(0, inv[seen], torch.ones(int(seen.sum())))
        total = torch.zeros(U).index_add_(0, inv[seen], return_day[seen].float())
        score = torch.where(n > 0, total / n.clamp_min(1), torch.full((U,), math.inf))
        level = torch.where(score <= levels, torch.ceil(score - 1e-9).clamp(min=1), torch.zeros(U)).long()
        return users, level
    if criterion == "active_days":
        if day is None:
            raise RetentionRLError("sec: criterion 'active_days' needs a 'day' key in the logs (calendar day per row)")
        if active_thresholds is None or len(active_thresholds) != levels:
            raise RetentionRLError(f"sec: criterion 'active_days' needs active_thresholds with {levels} values")
        pairs = torch.unique(torch.stack([inv, day.long()], 1), dim=0)
        score = torch.bincount(pairs[:, 0], minlength=U).float()
        level = torch.zeros(U, dtype=torch.long)
        for k in range(levels, 0, -1):  # the first (best) satisfied level wins: assign from the worst up
            level[score >= active_thresholds[k - 1]] = k
        return users, level
    raise RetentionRLError(f"sec: unknown criterion '{criterion}' (known: return_day, active_days)")


def level_distances(z: Tensor, centroids: Tensor, valid: Tensor) -> Tensor:
    """z (B, S), centroids (K, C, S), valid (K, C) bool -> d (B, K) = min over level k's valid centroids of ‖z − μ‖."""
    d = torch.cdist(z.unsqueeze(0).expand(centroids.shape[0], -1, -1), centroids)  # (K, B, C)
    d = d.masked_fill(~valid.unsqueeze(1), math.inf)
    return d.min(2).values.T


def select_level(d: Tensor, delta: Tensor, r_h: Tensor | None = None) -> Tensor:
    """d (B, K), delta (K,), r_h (B,) long or None -> (B,) long k* in 1..K: the first level whose nearest centroid
    is within its threshold, else the nearest level; then ``min(k*, r_h)``."""
    within = d <= delta
    first = within.float().argmax(1)  # index of the first True (0 when none: overridden below)
    k = torch.where(within.any(1), first, d.argmin(1)) + 1
    return k if r_h is None else torch.minimum(k, r_h)


def centroid_threshold(centroids: np.ndarray, states: np.ndarray, fraction: float = 0.5) -> float:
    """δ_k: ``fraction`` (the paper: half) of the mean pairwise distance between a level's centroids (C, S); with
    one centroid, of the mean distance of the level's states (n, S) to it."""
    if len(centroids) < 2:
        return fraction * float(np.linalg.norm(states - centroids[0], axis=1).mean())
    diff = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)
    C = len(centroids)
    return fraction * float(diff.sum() / (C * (C - 1)))


class SECNet(nn.Module):
    """Shared encoder f_φ and K heads: ``forward(obs, level (B,) 0-based) -> (B, out)`` through the row's head."""

    def __init__(self, spec: AgentSpec, cfg: SECConfig, levels: int, out: int) -> None:
        super().__init__()
        self.enc = encoder(spec, cfg.state_dim, cfg.token_dim, cfg.encoder)
        self.heads = GroupedMLP([self.enc.out_dim, *cfg.hidden, out], levels)

    def forward(self, obs: Obs, level: Tensor) -> Tensor:
        return self.heads(self.enc(obs), level)


class SEC(Agent):
    learns = True

    def __init__(self, spec: AgentSpec, cfg: SECConfig, seed: int = 0) -> None:
        if cfg.action == "discrete" and cfg.n_actions < 0:
            raise RetentionRLError("agent: n_actions must be >= 0")
        if cfg.levels < 1:
            raise RetentionRLError(f"agent: levels must be >= 1, got {cfg.levels}")
        torch.manual_seed(seed)
        self.cfg, self.spec, self.seed, self.batch_size = cfg, spec, seed, cfg.batch_size
        self.action_mode = "fusion" if cfg.action == "continuous" else "items"
        self.K = cfg.levels if cfg.multi_level else 1
        self.n_updates, self._fit_at = 0, -1
        self.net: SECNet | None = None
        if cfg.action == "continuous" or cfg.n_actions > 0:
            self._build_net(spec.n_behaviours if cfg.action == "continuous" else cfg.n_actions)
        self.user_ids = torch.empty(0, dtype=torch.long)  # the logs' users and their levels (inspection)
        self.user_level = torch.empty(0, dtype=torch.long)
        self._cluster_obs: dict[str, Tensor] | None = None  # level-k training states for k-means refits
        self._cluster_level: Tensor | None = None
        self.centroids = torch.zeros(self.K, 1, cfg.state_dim)
        self.valid = torch.zeros(self.K, 1, dtype=torch.bool)
        self.delta = torch.zeros(self.K)
        self.last_levels = torch.zeros(self.K)  # share of users each level served in the last act()

    def _build_net(self, out: int) -> None:
        self.net = SECNet(self.spec, self.cfg, self.K, out)
        self.opt = adam(self.net.parameters(), lr=self.cfg.lr)

    # --- data ------------------------------------------------------------------------------------------------
    def check_logs(self, logs: dict[str, Tensor], source: str) -> None:
        a = logs["action"]
        if self.cfg.action == "continuous" and (not a.is_floating_point() or a.shape[1:] != (self.spec.n_behaviours,)):
            raise RetentionRLError(f"sec (continuous) clones fusion actions (N, {self.spec.n_behaviours}) float; "
                                   f"{source} hold {tuple(a.shape)} {a.dtype}")
        if self.cfg.action == "discrete" and (a.is_floating_point() or a.dim() != 1):
            raise RetentionRLError(f"sec (discrete) clones class ids (N,) long; {source} hold {tuple(a.shape)} {a.dtype}")

    def prepare_logs(self, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Stratify the logs' users, keep the expert rows and add their 0-based ``level`` (M,)."""
        cfg = self.cfg
        users, level = user_levels(logs["user"], logs["session_end"], logs["return_day"], cfg.levels, cfg.criterion,
                                   logs.get("day"), cfg.active_thresholds)
        if not cfg.multi_level:
            level = (level > 0).long()
        self.user_ids, self.user_level = users, level
        row_level = level[torch.searchsorted(users, logs["user"])]
        keep = row_level > 0
        if not keep.any():
            raise RetentionRLError(f"sec: no expert users in the logs ({len(users)} users, none with a retention "
                                   f"score within {cfg.levels} levels under criterion '{cfg.criterion}')")
        out = {k: v[keep] for k, v in logs.items()}
        out["level"] = row_level[keep] - 1
        if self.net is None:  # discrete with n_actions 0: as many classes as the logs show
            self._build_net(int(logs["action"].max()) + 1)
        # A seeded subsample of each level's states for k-means.
        gen = torch.Generator().manual_seed(self.seed + 7)
        picks = []
        for k in range(self.K):
            rows = torch.nonzero(out["level"] == k).squeeze(1)
            if len(rows) > cfg.max_cluster_states:
                rows = rows[torch.randperm(len(rows), generator=gen)[: cfg.max_cluster_states]]
            picks.append(rows)
        idx = torch.cat(picks)
        self._cluster_obs = {f: out[f][idx] for f in OBS_FIELDS}
        self._cluster_level = out["level"][idx]
        self._fit_at = -1
        return out

    # --- training --------------------------------------------------------------------------------------------
    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        if "level" not in batch:
            raise RetentionRLError("sec: batches need the 'level' key that prepare_logs adds (train with train_offline)")
        cfg, net = self.cfg, self.net
        net.train()
        level, a = batch["level"], batch["action"]
        out = net(obs_from_batch(batch), level)  # (M, d) actions or (M, C) logits, each row through its own head
        if cfg.action == "continuous":
            bc_rows = ((out - a) ** 2).sum(1)
        else:
            bc_rows = nn.functional.cross_entropy(out, a, reduction="none")
        bc, aer = out.new_zeros(()), out.new_zeros(())
        for k in range(self.K):
            m = level == k
            bc = bc + bc_rows[m].sum()
            aer = aer + (nuclear_aer(out[m]) if cfg.action == "continuous" else entropy_aer(out[m]))
        loss = bc + cfg.lam * aer
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.n_updates += 1
        return {"loss": float(loss.detach()), "bc": float(bc.detach()) / len(level), "aer": float(aer.detach())}

    # --- selection and acting --------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_centroids(self) -> None:
        """k-means on f_φ(s) of each level's training states (refitted when the encoder changed)."""
        if self._cluster_obs is None or self._fit_at == self.n_updates:
            return
        self.net.eval()
        z = torch.cat([self.net.enc(obs_from_batch({k: v[i:i + 4096] for k, v in self._cluster_obs.items()}))
                       for i in range(0, len(self._cluster_level), 4096)]).numpy().astype(np.float64)
        cents, deltas = [], []
        for k in range(self.K):
            zk = z[(self._cluster_level == k).numpy()]
            if len(zk) == 0:
                cents.append(np.zeros((0, z.shape[1])))
                deltas.append(-math.inf)  # an empty level is never within its threshold
                continue
            C = int(max(1, min(self.cfg.n_clusters, len(zk) // self.cfg.states_per_cluster)))
            km = KMeans(n_clusters=C, n_init=1, max_iter=100, random_state=self.seed).fit(zk)
            cents.append(km.cluster_centers_)
            deltas.append(centroid_threshold(km.cluster_centers_, zk, self.cfg.delta_fraction))
        Cmax = max(1, max(len(c) for c in cents))
        self.centroids = torch.zeros(self.K, Cmax, z.shape[1])
        self.valid = torch.zeros(self.K, Cmax, dtype=torch.bool)
        for k, c in enumerate(cents):
            self.centroids[k, : len(c)] = torch.as_tensor(c, dtype=torch.float32)
            self.valid[k, : len(c)] = True
        self.delta = torch.tensor(deltas, dtype=torch.float32)
        self._fit_at = self.n_updates

    def history_level(self, obs: Obs) -> Tensor:
        """r_h (B,) long: the gap that started this session (days), K + 1 (no cap) in a first session."""
        gap = obs.days_since_last.round().long().clamp(min=1)
        return torch.where(obs.session_index > 0, gap, torch.full_like(gap, self.K + 1))

    @torch.no_grad()
    def levels_for(self, obs: Obs, z: Tensor) -> Tensor:
        """(B,) 0-based selected level of each user."""
        if self.K == 1:
            return torch.zeros(z.shape[0], dtype=torch.long)
        self.fit_centroids()
        if not self.valid.any():
            raise RetentionRLError("sec: no centroids (train on logs first, or load a trained checkpoint)")
        d = level_distances(z, self.centroids, self.valid)
        return select_level(d, self.delta, self.history_level(obs) if self.cfg.history_cap else None) - 1

    @torch.no_grad()
    def _heads(self, obs: Obs) -> Tensor:
        if self.net is None:
            raise RetentionRLError("sec: the network is built from the logs (n_actions 0); train first")
        self.net.eval()
        z = self.net.enc(obs)
        k = self.levels_for(obs, z)
        self.last_levels = torch.bincount(k, minlength=self.K).float() / max(1, len(k))
        return self.net.heads(z, k)

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        """Continuous: (B, 7) the selected level's cloned fusion weights (deterministic; no exploration)."""
        if self.cfg.action != "continuous":
            raise RetentionRLError("sec: a discrete SEC scores item clusters (class_probs); it has no fusion action")
        a = self._heads(obs)
        return a.clamp(-self.cfg.bound, self.cfg.bound) if self.cfg.bound is not None else a

    @torch.no_grad()
    def class_probs(self, obs: Obs) -> Tensor:
        """Discrete: (B, C) the selected level's class probabilities."""
        return torch.softmax(self._heads(obs), dim=1)

    # --- checkpoint ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.fit_centroids()  # the centroids saved always belong to the saved encoder
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "n_updates": self.n_updates,
                "n_out": int(self.net.heads.weights[-1].shape[2]), "centroids": self.centroids, "valid": self.valid,
                "delta": self.delta, "fit_at": self._fit_at, "user_ids": self.user_ids, "user_level": self.user_level}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.net is None:
            self._build_net(int(state["n_out"]))
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.n_updates, self._fit_at = int(state["n_updates"]), int(state["fit_at"])
        self.centroids, self.valid, self.delta = state["centroids"], state["valid"], state["delta"]
        self.user_ids, self.user_level = state["user_ids"], state["user_level"]


class ClusterRanker(Agent):
    """Discrete SEC in the ranking stage (the paper's Fig. 7), an items-mode policy: every candidate's score is the
    ranking stage's click probability times the selected expert's probability of the candidate's cluster,

        score(i) = log σ(click logit(s, i)) + β · log p_k*(cluster(i) | s)                      (B, C)

    The ranking stage is the bundle's response model (what the click-ranking baseline ranks by): β = 0 is click
    ranking exactly, and β > 0 moves exposure towards the clusters the selected experts were shown."""

    action_mode = "items"

    def __init__(self, sec: SEC, labels: Tensor, response, beta: float = 1.0) -> None:
        if sec.cfg.action != "discrete":
            raise RetentionRLError("ClusterRanker needs a discrete SEC (action: discrete)")
        self.sec, self.labels, self.response, self.beta = sec, labels, response.eval(), float(beta)
        with torch.no_grad():
            self.item_vecs = response.item_vectors()  # (N, D)
            self.click_bias = response.item_bias.weight[:, 0] + response.out_bias[0]  # (N,)

    @torch.no_grad()
    def click_logits(self, obs: Obs) -> Tensor:
        """(B, C) the response model's click logits of the candidates after each user's history."""
        state = self.response.states(obs.user, obs.hist_items, obs.hist_resp, obs.hist_pad, self.item_vecs)[:, -1]
        q = self.response.queries(state)[:, 0]  # (B, D) the click query
        return q @ self.item_vecs[obs.candidates].T + self.click_bias[obs.candidates]

    @torch.no_grad()
    def act(self, obs: Obs, explore: bool = False) -> Tensor:
        score = nn.functional.logsigmoid(self.click_logits(obs))
        if self.beta:
            p = self.sec.class_probs(obs)  # (B, n_clusters)
            score = score + self.beta * torch.log(p[:, self.labels[obs.candidates]].clamp_min(1e-12))
        return score

    def state_dict(self) -> dict[str, Any]:
        return {"sec": self.sec.state_dict(), "labels": self.labels, "beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sec.load_state_dict(state["sec"])
        self.labels, self.beta = state["labels"], float(state["beta"])


def build(sim, cfg: dict[str, Any], seed: int, env: EnvConfig | None = None) -> SEC:
    """Registry entry: ``cfg`` holds :class:`SECConfig` fields (unknown keys are errors)."""
    return SEC(agent_spec(sim, env), from_dict(SECConfig, cfg, "agent"), seed=seed)
