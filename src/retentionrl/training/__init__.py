"""Training: replay buffer, online and offline loops, checkpoints."""

from __future__ import annotations

from typing import Any, Callable

#: algorithms trained from logs (supervised / offline) rather than by interacting with the simulator
OFFLINE_ALGOS = frozenset({"din", "bc"})


def trainer_for(algo: str) -> tuple[type, Callable[..., Any]]:
    """(config dataclass, train function) of an algorithm: the offline loop for OFFLINE_ALGOS, else online."""
    if algo in OFFLINE_ALGOS:
        from retentionrl.training.offline import OfflineTrainConfig, train_offline

        return OfflineTrainConfig, train_offline
    from retentionrl.training.online import TrainConfig, train

    return TrainConfig, train
