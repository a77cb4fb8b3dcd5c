"""A replay buffer of cross-session transitions in preallocated torch tensors (ring overwrite, seeded sampling).

One row is one user's step ``(obs, action, reward, retention_reward, session_reward, session_end, episode_end,
return_day, next_obs)``. Two flags are kept apart on purpose:

* ``session_end`` — the user left the session and comes back after ``return_day`` days. It is *not* terminal:
  the same user continues, and the retention reward is earned exactly there, so value targets must bootstrap
  through it.
* ``episode_end`` — ``max_sessions`` reached; a time-limit truncation, not a true terminal state either (bootstrap
  from ``next_obs``, which is the true successor, not the auto-reset row). Its ``session_index`` is
  ``max_sessions``, never seen in a stored ``obs``: agents that bootstrap through the cut therefore keep the
  episode clock out of their state (:func:`~retentionrl.nets.actor_critic.time_aware`).

``obs.candidates`` is shared by the batch and is not stored (item-level agents store the shown slate as the
action instead); :func:`~retentionrl.spaces.obs_from_batch` rebuilds an :class:`Obs` from a sampled batch.

The buffer sits below both the agents (DQN keeps one inside) and the training loops, which import it from here
or from :mod:`retentionrl.training.buffer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from retentionrl.errors import RetentionRLError
from retentionrl.spaces import OBS_FIELDS, Obs, StepOutput

# Per-row scalar fields of StepOutput that are stored, with their storage dtype.
_STEP_FIELDS: dict[str, torch.dtype] = {
    "reward": torch.float32,
    "retention_reward": torch.float32,
    "session_reward": torch.float32,
    "session_end": torch.bool,
    "episode_end": torch.bool,
    "return_day": torch.long,
}


class ReplayBuffer:
    """Ring buffer of capacity ``N``; ``add`` writes B rows at once, ``sample`` draws uniformly with replacement.

    Storage (``self.data``), all with leading dim N:

    * ``<f>`` and ``next_<f>`` for every ``f`` in :data:`OBS_FIELDS`, with the per-row shape and dtype of
      ``obs_example`` (e.g. ``hist_resp`` (N, H, 8) float32, ``user`` (N,) long);
    * ``action`` (N, *action_shape) of ``action_dtype`` — (N, 7) fusion weights, or (N, K) long slate item ids;
    * ``reward``, ``retention_reward``, ``session_reward`` (N,) float32; ``session_end``, ``episode_end`` (N,) bool;
      ``return_day`` (N,) long.
    """

    def __init__(
        self,
        capacity: int,
        obs_example: Obs,
        action_shape: Sequence[int] | int,
        action_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        if int(capacity) < 1:
            raise RetentionRLError(f"replay buffer capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self.action_shape: tuple[int, ...] = (int(action_shape),) if isinstance(action_shape, int) else tuple(
            int(s) for s in action_shape
        )
        self.action_dtype = action_dtype
        N = self.capacity
        self.data: dict[str, Tensor] = {}
        for name in OBS_FIELDS:
            ex = getattr(obs_example, name)
            if ex.dim() < 1:
                raise RetentionRLError(f"obs_example.{name} must have a batch dimension, got a scalar")
            for key in (name, f"next_{name}"):
                self.data[key] = torch.zeros((N, *ex.shape[1:]), dtype=ex.dtype)
        self.data["action"] = torch.zeros((N, *self.action_shape), dtype=action_dtype)
        for name, dtype in _STEP_FIELDS.items():
            self.data[name] = torch.zeros(N, dtype=dtype)
        self.ptr = 0  # next row to write
        self.size = 0  # rows filled (<= capacity)
        self.n_added = 0  # transitions ever added (for diagnostics / warm-up checks)
        self.gen = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.size

    # --- writing -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, obs: Obs, action: Tensor, out: StepOutput) -> None:
        """Store the B transitions of one env step: ``obs`` is what the agent acted on, ``action`` (B, *action_shape),
        ``out`` the env's :class:`StepOutput` (its ``next_obs`` is the pre-reset successor)."""
        B = int(obs.user.shape[0])
        rows: dict[str, Tensor] = {}
        for name in OBS_FIELDS:
            rows[name] = getattr(obs, name)
            rows[f"next_{name}"] = getattr(out.next_obs, name)
        rows["action"] = torch.as_tensor(action)
        for name in _STEP_FIELDS:
            rows[name] = getattr(out, name)
        for key, value in rows.items():
            want = (B, *self.data[key].shape[1:])
            if tuple(value.shape) != want:
                raise RetentionRLError(f"replay buffer add: '{key}' must have shape {want}, got {tuple(value.shape)}")
        if B == 0:
            return
        # More rows than capacity: only the last N survive. Writing just those avoids duplicate indices in the
        # scatter, whose winner would be unspecified; they land where B sequential adds would put them.
        skip = max(0, B - self.capacity)
        idx = (self.ptr + skip + torch.arange(B - skip)) % self.capacity  # wraps correctly for any B, N
        for key, value in rows.items():
            # detach: a value that requires grad would otherwise turn the storage into a graph node.
            self.data[key][idx] = value[skip:].detach().to(self.data[key].dtype)
        self.ptr = (self.ptr + B) % self.capacity
        self.size = min(self.size + B, self.capacity)
        self.n_added += B

    # --- reading -------------------------------------------------------------------------------------------
    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """Uniform sample (with replacement) of ``batch_size`` stored transitions: every key of ``self.data``
        with leading dim ``batch_size`` (fresh tensors, safe to modify)."""
        if self.size == 0:
            raise RetentionRLError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (int(batch_size),), generator=self.gen)
        return {key: value[idx] for key, value in self.data.items()}

    def chronological(self, key: str) -> Tensor:
        """The stored rows of ``key`` oldest first, (len(self), ...). A copy; meant for tests and diagnostics."""
        start = self.ptr if self.size == self.capacity else 0
        idx = (start + torch.arange(self.size)) % self.capacity
        return self.data[key][idx]

    # --- persistence ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (loads with ``torch.load(weights_only=True)``).

        Only the filled rows are saved. A full buffer returns its live storage (no copy; save it before adding
        more); a partly filled one returns copies of the filled prefix (a saved view would drag the whole
        storage into the file).
        """
        if self.size == self.capacity:
            data = dict(self.data)
        else:
            data = {key: value[: self.size].clone() for key, value in self.data.items()}
        return {
            "capacity": self.capacity,
            "action_shape": list(self.action_shape),
            "ptr": self.ptr,
            "size": self.size,
            "n_added": self.n_added,
            "generator": self.gen.get_state(),  # uint8 tensor
            "data": data,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore contents, write position and the sampling stream; the buffer must have the same layout."""
        if int(state["capacity"]) != self.capacity:
            raise RetentionRLError(
                f"replay buffer capacity mismatch: saved {state['capacity']}, this buffer {self.capacity}"
            )
        size = int(state["size"])
        data = state["data"]
        if set(data) != set(self.data):
            missing, extra = sorted(set(self.data) - set(data)), sorted(set(data) - set(self.data))
            raise RetentionRLError(f"replay buffer state has different fields (missing {missing}, unexpected {extra})")
        for key, value in data.items():
            want = (size, *self.data[key].shape[1:])
            if tuple(value.shape) != want or value.dtype != self.data[key].dtype:
                raise RetentionRLError(
                    f"replay buffer state '{key}': expected {want} {self.data[key].dtype}, "
                    f"got {tuple(value.shape)} {value.dtype}"
                )
        for key, value in data.items():
            self.data[key][:size] = value
            self.data[key][size:] = 0  # rows past `size` are never sampled; zero them for a clean state
        self.ptr, self.size, self.n_added = int(state["ptr"]), size, int(state["n_added"])
        self.gen.set_state(state["generator"])

