"""The replay buffer used by the training loops: :class:`~retentionrl.replay.ReplayBuffer` (it lives below the
agents, which also keep one, so that agents never import training)."""

from retentionrl.replay import ReplayBuffer
from retentionrl.spaces import OBS_FIELDS, obs_from_batch

__all__ = ["OBS_FIELDS", "ReplayBuffer", "obs_from_batch"]
