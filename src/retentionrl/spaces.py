"""What agents and the environment exchange, with no dependency on either: the observation :class:`Obs`, the
step result :class:`StepOutput`, their replay-batch form (:data:`OBS_FIELDS`, :func:`obs_from_batch`) and the
flat observation vector (:class:`FlatLayout`, :func:`flat_features`) that the gymnasium adapter exposes and the
agents' ``encoder: flat`` networks read.

Imports only torch, numpy and :mod:`retentionrl.data.schema` / :mod:`retentionrl.errors`, so that the simulator,
the networks, the agents and the training loops can all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from retentionrl.data.schema import BEHAVIOURS

NB = len(BEHAVIOURS)


@dataclass
class Obs:
    """What a policy sees. B users, H history slots (oldest first, left-padded)."""

    user: Tensor  # (B,) dense user id
    profile_cat: Tensor  # (B, Fc) the user's categorical profile codes (0 = missing)
    profile_num: Tensor  # (B, Fn) the user's standardised numeric profile features
    hist_items: Tensor  # (B, H) item ids
    hist_resp: Tensor  # (B, H, 8) 7 behaviours + log-watch feature
    hist_pad: Tensor  # (B, H) True = empty slot
    session_index: Tensor  # (B,) sessions completed in this episode
    step_in_session: Tensor  # (B,) requests made so far in the current session
    days_since_last: Tensor  # (B,) return gap that started this session (0 for the first)
    candidates: Tensor  # (C,) item ids the next request ranks (shared by the batch), or (B, C) per row
    # (B, C, len(UA_KINDS)) this user's counts with each candidate's author so far (exposures, clicks, long views,
    # likes, follows): only when the env keeps user-author pairs (``EnvConfig.ua_counts``), else None.
    ua_counts: Tensor | None = None

    def clone(self) -> "Obs":
        return Obs(**{f.name: None if (v := getattr(self, f.name)) is None else v.clone() for f in fields(self)})


@dataclass
class StepOutput:
    slate: Tensor  # (B, K) item ids shown
    responses: Tensor  # (B, K, 7) sampled 0/1 behaviours
    watch_time: Tensor  # (B, K) seconds
    reward: Tensor  # (B,) immediate reward Σ_b w_b mean_k y_b
    session_end: Tensor  # (B,) bool
    return_day: Tensor  # (B,) long, 1..D at a session end, else 0
    retention_reward: Tensor  # (B,) at a session end, else 0
    session_reward: Tensor  # (B,) immediate reward summed over the session so far, this step included
    episode_end: Tensor  # (B,) bool: max_sessions reached (row auto-resets)
    next_obs: Obs  # successor state of this step (before the auto-reset)
    obs: Obs  # observation for the next action (after the auto-reset)
    users: Tensor  # (B,) the users who acted this step (== next_obs.user)
    slate_ua: Tensor | None = None  # (B, K, len(UA_KINDS)) the shown items' pair counts before this step, or None



#: Per-row fields of :class:`Obs` that replay buffers store (not the candidates nor their pair counts).
OBS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Obs) if f.name not in ("candidates", "ua_counts"))


def obs_from_batch(batch: dict[str, Tensor], prefix: str = "", candidates: Tensor | None = None) -> Obs:
    """Rebuild an :class:`Obs` (batch dim M) from sampled fields: ``prefix=""`` for ``obs``, ``"next_"`` for
    ``next_obs``. ``candidates`` (C,) is attached as given; by default an empty long tensor (not stored)."""
    if candidates is None:
        candidates = torch.empty(0, dtype=torch.long)
    return Obs(**{name: batch[prefix + name] for name in OBS_FIELDS}, candidates=candidates)


def cat_obs(first: Obs, second: Obs) -> Obs:
    """The rows of ``first`` (M) then those of ``second`` (N) as one Obs (M + N), for one network pass over both
    (the per-row fields of :data:`OBS_FIELDS`; ``first``'s candidates, no pair counts). A network without
    cross-row operations gives each row what it gives it alone."""
    return Obs(**{name: torch.cat([getattr(first, name), getattr(second, name)]) for name in OBS_FIELDS},
               candidates=first.candidates)


# --- the flat observation vector -----------------------------------------------------------------------------
STEP_SCALE = 10.0  # step_in_session / 10, clipped to 1: KuaiSim sessions are 5 requests; learned ones vary
WATCH_MAX = 3.0  # history token watch feature is log1p(seconds) / 5; the simulator clamps log-watch at 12 (2.4)
NUM_CLIP = 5.0  # standardised user numerics are clipped to ±5 so that the Box is finite
MAX_CATEGORIES = 16  # only low-cardinality user categoricals (flags, range buckets) are given as scaled codes


@dataclass(frozen=True)
class FlatLayout:
    """What :func:`flat_features` needs besides the observation: the bundle's user-feature sizes and the env
    config's scales. :meth:`from_env` reads them from a live env; :meth:`from_meta` builds them without one (an
    agent's flat state encoder, :class:`~retentionrl.nets.state.FlatEncoder`)."""

    n_user_num: int  # standardised numeric user features
    cat_columns: tuple[int, ...]  # user categorical columns exposed as scaled codes (2..MAX_CATEGORIES values)
    cat_cards: tuple[int, ...]  # their cardinalities
    slate_size: int  # K: the "last slate" mean is over the last K history slots
    max_sessions: int
    max_return_day: int
    # The episode clock session_index / max_sessions as a column ("session_frac"). Off by default: it is 1 only in
    # the successor at the time limit, a state never trained as s when values bootstrap through the cut.
    clock: bool = False

    @classmethod
    def from_meta(cls, user_cards: list[int], n_user_num: int, slate_size: int, max_sessions: int,
                  max_return_day: int, clock: bool = False) -> FlatLayout:
        """``user_cards``: the bundle's ``meta["user_cardinalities"]``; the rest as in the env config."""
        cards = [int(c) for c in user_cards]
        cols = tuple(j for j, c in enumerate(cards) if 2 <= c <= MAX_CATEGORIES)
        return cls(int(n_user_num), cols, tuple(cards[j] for j in cols), int(slate_size), int(max_sessions),
                   int(max_return_day), bool(clock))

    @classmethod
    def from_env(cls, env, clock: bool = False) -> FlatLayout:
        """The layout of a live :class:`~retentionrl.simulator.env.RetentionEnv` (read by attribute: this module
        sits below the simulator)."""
        return cls.from_meta(env.sim.meta["user_cardinalities"], env.model.user_num.shape[1], env.K,
                             env.cfg.max_sessions, env.cfg.max_return_day, clock)

    @property
    def n_context(self) -> int:
        return 4 if self.clock else 3

    @property
    def dim(self) -> int:
        """obs_dim: the length of the flat observation."""
        return 2 * (NB + 1) + self.n_context + self.n_user_num + len(self.cat_columns)

    def names(self) -> list[str]:
        beh = [*BEHAVIOURS, "log_watch"]
        return [
            *(f"hist_mean_{b}" for b in beh),
            *(f"last_slate_mean_{b}" for b in beh),
            "hist_fill", *(["session_frac"] if self.clock else []), "step_in_session", "days_since_last",
            *(f"user_num_{j}" for j in range(self.n_user_num)),
            *(f"user_cat_{j}" for j in self.cat_columns),
        ]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(obs_dim,) float32 low and high of every column."""
        n_num, n_cat = self.n_user_num, len(self.cat_columns)
        resp_hi = np.r_[np.ones(NB), WATCH_MAX]
        low = np.r_[np.zeros(2 * (NB + 1) + self.n_context), np.full(n_num, -NUM_CLIP), np.zeros(n_cat)]
        high = np.r_[resp_hi, resp_hi, np.ones(self.n_context), np.full(n_num, NUM_CLIP), np.ones(n_cat)]
        return low.astype(np.float32), high.astype(np.float32)


@torch.no_grad()
def flat_features(obs: Obs, layout: FlatLayout) -> Tensor:
    """(B, obs_dim) float32 tensor, deterministic, within ``layout.bounds()``. Columns (see
    :meth:`FlatLayout.names`):

    * mean of the 8 history response features over non-pad slots (7 behaviours in [0, 1], log-watch);
    * the same over the last K slots (the most recent slate, or the last logged exposures right after a reset);
    * fraction of non-pad history slots; session_index / max_sessions (only with ``layout.clock``);
      step_in_session / 10 (clipped); days_since_last / max_return_day;
    * the user's standardised numeric profile features (clipped to ±5) and, for categorical columns with at most
      16 categories, ``code / (cardinality - 1)``.
    All-pad histories give zero means. The user features are read from the observation's profile
    (``obs.profile_num`` / ``obs.profile_cat``, the response model's user tables at ``obs.user``), so no env
    is needed.
    """
    K = layout.slate_size
    valid = (~obs.hist_pad).float()  # (B, H)
    resp = obs.hist_resp * valid[..., None]  # (B, H, 8)
    n = valid.sum(1, keepdim=True)  # (B, 1)
    n_last = valid[:, -K:].sum(1, keepdim=True)
    hist_mean = resp.sum(1) / n.clamp(min=1.0)
    last_mean = resp[:, -K:].sum(1) / n_last.clamp(min=1.0)
    ctx = [n[:, 0] / valid.shape[1], obs.step_in_session.float() / STEP_SCALE,
           obs.days_since_last.float() / layout.max_return_day]
    if layout.clock:
        ctx.insert(1, obs.session_index.float() / layout.max_sessions)
    cards = torch.tensor(layout.cat_cards, dtype=torch.float32)
    user_cat = obs.profile_cat[:, torch.tensor(layout.cat_columns, dtype=torch.long)].float() / (cards - 1.0)
    x = torch.cat([hist_mean, last_mean, torch.stack(ctx, 1), obs.profile_num.float(), user_cat], 1)
    low, high = (torch.from_numpy(b) for b in layout.bounds())
    return torch.nan_to_num(x).clamp(low, high)  # clip: logged watch can exceed WATCH_MAX
