"""Gymnasium adapters for :class:`~retentionrl.simulator.env.RetentionEnv` (``fusion`` action mode only).

* :func:`flat_observation` — a fixed-length float32 vector per user (see :func:`observation_names`); the
  torch version :func:`~retentionrl.spaces.flat_features` needs only the observation and a
  :class:`~retentionrl.spaces.FlatLayout` (no env), so agents can use the same vector as their state
  (``ActorCriticConfig.encoder = "flat"``).
* :class:`RetentionVectorEnv` — ``gymnasium.vector.VectorEnv`` over one batched env, B = ``num_envs`` users,
  same-step autoreset (the core env refills a finished row in the step that ends it).
* :class:`RetentionGymEnv` — a single-user ``gymnasium.Env`` (B = 1) for libraries such as stable-baselines3.

Action: 7 fusion weights in ``[-1, 1]^7``, the item score being ``Σ_b a_b σ(logit_b)``. Negative weights are
allowed so that a policy can push *down* items likely to be hated; the slate is the top-K of the score, which is
invariant to positive rescaling of ``a``, so the bound loses nothing. Out-of-box (finite) actions are passed
through unchanged.

Reward: ``"immediate"`` (the request's Σ_b w_b mean_k y_b), ``"retention"`` (the return-day reward, non-zero only
at session ends) or ``"both"`` = immediate + ``retention_weight`` × retention.

Episode end: after ``max_sessions`` sessions the user's episode is cut off although the simulated user would come
back again, so it is a time limit: ``truncated=True, terminated=False``. By default the observation has no
episode clock, so a value method that bootstraps on truncation — stable-baselines3's off-policy algorithms do
(``TimeLimit.truncated`` / ``handle_timeout_termination``), from the true last observation — bootstraps from a
state like any other session start with the same history and gap, one it trains on (the time-unaware treatment
of Pardo et al., 2018). ``clock=True`` adds the column ``session_frac = session_index / max_sessions``; it is 1
only in the last observation, so a value method should then treat the cut as terminal (the time-aware
treatment, our agents' ``terminal: episode``). Our ``encoder: flat`` agents see the same vector with the same
choice (:func:`~retentionrl.nets.actor_critic.time_aware`).
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from retentionrl.data.schema import BEHAVIOURS
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.env import ActionError, RetentionEnv
from retentionrl.spaces import FlatLayout, Obs, StepOutput, flat_features

NB = len(BEHAVIOURS)
RewardMode = Literal["retention", "immediate", "both"]
REWARD_MODES = ("retention", "immediate", "both")


# --- observation ---------------------------------------------------------------------------------------------
def observation_names(env: RetentionEnv, clock: bool = False) -> list[str]:
    """Name of each column of :func:`flat_observation` (length ``obs_dim``)."""
    return FlatLayout.from_env(env, clock).names()


def observation_space(env: RetentionEnv, clock: bool = False) -> spaces.Box:
    """The single-user Box of :func:`flat_observation`: every column has finite bounds and values are clipped."""
    low, high = FlatLayout.from_env(env, clock).bounds()
    return spaces.Box(low, high, dtype=np.float32)


def flat_observation(obs: Obs, env: RetentionEnv, clock: bool = False) -> np.ndarray:
    """(B, obs_dim) float32 array, within :func:`observation_space`: :func:`flat_features` with ``env``'s
    layout (``clock``: with the episode clock column, see the module docstring)."""
    return flat_features(obs, FlatLayout.from_env(env, clock)).numpy()


# --- shared pieces -------------------------------------------------------------------------------------------
def _make_core_env(sim: Simulator, preset: str, overrides: dict[str, Any]) -> RetentionEnv:
    env = sim.make_env(preset, **overrides)
    if env.cfg.action_mode != "fusion":
        raise RetentionRLError("the gymnasium adapters support action_mode='fusion' only (7 fusion weights)")
    return env


def _check_reward_mode(reward: str) -> None:
    if reward not in REWARD_MODES:
        raise RetentionRLError(f"unknown reward '{reward}' (known: {', '.join(REWARD_MODES)})")


def _reward(out: StepOutput, mode: RewardMode, retention_weight: float) -> np.ndarray:
    """(B,) float32 reward of one step under ``mode``."""
    if mode == "immediate":
        r = out.reward
    elif mode == "retention":
        r = out.retention_reward
    else:
        r = out.reward + retention_weight * out.retention_reward
    return r.numpy().astype(np.float32)


def _step_info(out: StepOutput) -> dict[str, np.ndarray]:
    """Per-user (B,) arrays describing one step (fresh copies)."""
    return {
        "user": out.users.numpy().copy(),
        "session_end": out.session_end.numpy().copy(),
        "return_day": out.return_day.numpy().copy(),
        "retention_reward": out.retention_reward.numpy().astype(np.float32),
        "immediate_reward": out.reward.numpy().astype(np.float32),
    }


def _reset_core(env: RetentionEnv, seed: int | None, np_random: np.random.Generator, seeded: bool) -> Obs:
    """Seed the core env's torch generator: an explicit seed, else (first reset only) one drawn from
    ``np_random``; an unseeded later reset continues the generator so that fresh users keep coming."""
    if seed is None and not seeded:
        seed = int(np_random.integers(2**62))
    return env.reset(seed)


# --- vector env ----------------------------------------------------------------------------------------------
class RetentionVectorEnv(gymnasium.vector.VectorEnv):
    """B = ``num_envs`` simulated users in one batched :class:`RetentionEnv`, same-step autoreset.

    ``step`` returns obs (B, obs_dim) float32 — for a row whose episode just ended, the *new* user's first
    observation —, reward (B,) float32, terminated (B,) all False, truncated (B,) = episode end, and infos with
    (B,) arrays ``user``, ``session_end``, ``return_day``, ``retention_reward``, ``immediate_reward`` (each with
    the all-True ``_key`` mask). Where ``truncated``, gymnasium's SAME_STEP convention applies:
    ``infos["final_obs"]`` is an object array holding the finished episode's last observation (None elsewhere),
    ``infos["final_info"]`` the step info of those rows, with masks ``_final_obs`` / ``_final_info``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, sim: Simulator, preset: str = "kuaisim", num_envs: int | None = None,
                 reward: RewardMode = "both", retention_weight: float = 1.0, clock: bool = False,
                 **env_overrides: Any) -> None:
        _check_reward_mode(reward)
        if num_envs is not None:
            if env_overrides.get("n_users", num_envs) != num_envs:
                raise RetentionRLError(f"num_envs {num_envs} and n_users {env_overrides['n_users']} disagree")
            env_overrides["n_users"] = num_envs
        self.env = _make_core_env(sim, preset, env_overrides)
        self.num_envs = self.env.B
        self.reward_mode, self.retention_weight, self.clock = reward, float(retention_weight), bool(clock)
        self.single_observation_space = observation_space(self.env, self.clock)
        self.single_action_space = spaces.Box(-1.0, 1.0, (NB,), dtype=np.float32)
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Fresh users in every row. Same seed ⇒ identical trajectories for identical actions; ``options`` is
        ignored. Returns obs (B, obs_dim) float32 and ``{"user": (B,)}``."""
        super().reset(seed=seed)
        obs = _reset_core(self.env, seed, self.np_random, self._seeded)
        self._seeded = True
        B = self.num_envs
        return flat_observation(obs, self.env, self.clock), {"user": obs.user.numpy().copy(), "_user": np.ones(B, bool)}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """actions (B, 7) fusion weights. Raises :class:`ActionError` on a wrong shape or a NaN/inf."""
        try:
            a = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ActionError(f"action must be a numeric (B, {NB}) array of fusion weights: {exc}") from None
        out = self.env.step(a)  # the core env checks shape and finiteness
        B = self.num_envs
        obs = flat_observation(out.obs, self.env, self.clock)
        truncated = out.episode_end.numpy().copy()
        info = _step_info(out)
        infos: dict[str, Any] = {}
        for k, v in info.items():
            infos[k], infos[f"_{k}"] = v, np.ones(B, bool)
        if truncated.any():
            final = flat_observation(out.next_obs, self.env, self.clock)
            final_obs = np.full(B, None, dtype=object)
            for i in np.flatnonzero(truncated):  # object array by convention; only the rows that ended
                final_obs[i] = final[i]
            final_info: dict[str, Any] = {}
            for k, v in info.items():
                final_info[k] = np.where(truncated, v, np.zeros_like(v))
                final_info[f"_{k}"] = truncated.copy()
            infos.update(final_obs=final_obs, _final_obs=truncated.copy(), final_info=final_info,
                         _final_info=truncated.copy())
        return obs, _reward(out, self.reward_mode, self.retention_weight), np.zeros(B, bool), truncated, infos


# --- single-user env -----------------------------------------------------------------------------------------
class RetentionGymEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One simulated user (B = 1). ``step`` returns ``(obs (obs_dim,) float32, reward float, False, truncated,
    info)`` with ``truncated`` True when the user's ``max_sessions`` sessions are over (obs is then the true last
    observation); call ``reset`` to get the next user. ``info`` holds Python scalars ``user``, ``session_end``,
    ``return_day``, ``retention_reward``, ``immediate_reward``."""

    metadata = {"render_modes": []}

    def __init__(self, sim: Simulator, preset: str = "kuaisim", reward: RewardMode = "both",
                 retention_weight: float = 1.0, clock: bool = False, **env_overrides: Any) -> None:
        _check_reward_mode(reward)
        if env_overrides.get("n_users", 1) != 1:
            raise RetentionRLError("RetentionGymEnv simulates one user; use RetentionVectorEnv for a batch")
        self.env = _make_core_env(sim, preset, {**env_overrides, "n_users": 1})
        self.reward_mode, self.retention_weight, self.clock = reward, float(retention_weight), bool(clock)
        self.observation_space = observation_space(self.env, self.clock)
        self.action_space = spaces.Box(-1.0, 1.0, (NB,), dtype=np.float32)
        self._seeded = False
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """A fresh user (``options`` is ignored): obs (obs_dim,) float32 and ``{"user": int}``."""
        super().reset(seed=seed)
        obs = _reset_core(self.env, seed, self.np_random, self._seeded)
        self._seeded, self._needs_reset = True, False
        return flat_observation(obs, self.env, self.clock)[0], {"user": int(obs.user[0])}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """action (7,) fusion weights. Raises :class:`ActionError` on a wrong shape or a NaN/inf."""
        if self._needs_reset:
            raise RetentionRLError("the episode is over (or never started): call reset() before step()")
        try:
            a = np.asarray(action, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ActionError(f"action must be a numeric ({NB},) array of fusion weights: {exc}") from None
        if a.shape != (NB,):
            raise ActionError(f"action must have shape ({NB},) of fusion weights (one per behaviour), got {a.shape}")
        if not np.isfinite(a).all():
            raise ActionError(f"action has a NaN or infinite value at index {int(np.flatnonzero(~np.isfinite(a))[0])}")
        out = self.env.step(torch.as_tensor(a[None].copy()))
        truncated = bool(out.episode_end[0])
        self._needs_reset = truncated
        # next_obs is the true successor; after an episode end the core row already holds the next user.
        obs = flat_observation(out.next_obs, self.env, self.clock)[0]
        info = {k: v[0].item() for k, v in _step_info(out).items()}
        return obs, float(_reward(out, self.reward_mode, self.retention_weight)[0]), False, truncated, info
