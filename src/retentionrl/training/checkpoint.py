"""Training checkpoints: atomic writes, safe (``weights_only``) loads, and the global RNG streams for exact resume.

A checkpoint is a dict of tensors and plain values (ints, floats, strings, lists, dicts, tuples, None): the
agent's and the buffer's ``state_dict()``, counters, and :func:`rng_state`. Loading never unpickles arbitrary
objects, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retentionrl.errors import RetentionRLError
from retentionrl.utils.io import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a crash or an exception mid-write leaves the previous file intact;
    a failed write (full disk) is a :class:`RetentionRLError` naming ``path`` (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it the checkpoint
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``; a missing or unreadable file is a
    :class:`RetentionRLError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise RetentionRLError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError / ... depending on the damage
        raise RetentionRLError(
            f"cannot read checkpoint {path} (corrupt, truncated, or not a retentionrl checkpoint): {_reason(exc)}"
        ) from exc
    if not isinstance(state, dict):
        raise RetentionRLError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _reason(exc: Exception) -> str:
    """One short line from torch's load error. Its weights_only message mostly advises ``weights_only=False``
    (wrong for a damaged file, unsafe for an untrusted one); keep only the unpickler's actual complaint."""
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1]
        msg = next((line.strip() for line in msg.splitlines() if line.strip()), "")
    else:
        msg = msg.strip().splitlines()[0] if msg.strip() else ""
    msg = msg.split(". ", 1)[0][:200]  # first sentence: the rest is torch's advice
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def rng_state() -> dict[str, Any]:
    """Torch's, numpy's and Python's global RNG states as tensors and plain values (``weights_only``-safe)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),  # uint8 tensor
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),  # uint32 MT words; int64 holds them exactly
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),  # 624 MT words + index
            "gauss_next": py_gauss,  # float or None
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].to(device="cpu", dtype=torch.uint8))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
