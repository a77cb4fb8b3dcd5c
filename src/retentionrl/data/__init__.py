"""Data stage: loaders into one canonical :class:`Interactions`, sessions and retention labels."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

from retentionrl.data.eventlog import load_eventlog
from retentionrl.data.kuairand import load_kuairand
from retentionrl.data.movielens import load_ml1m, load_ml100k
from retentionrl.data.schema import BEHAVIOURS, FeatureTable, Interactions
from retentionrl.data.sessions import Sessions, sessionize, user_retention
from retentionrl.errors import DataError

LOADERS: dict[str, Callable[[Path], Interactions]] = {
    "kuairand-pure": load_kuairand,
    "ml-1m": load_ml1m,
    "ml-100k": load_ml100k,
    "eventlog": load_eventlog,
}


def sample_dir() -> Path:
    """The KuaiRand-Pure sample shipped inside the package (CC BY-SA 4.0; see its README)."""
    return Path(str(resources.files("retentionrl.data") / "sample" / "kuairand-pure"))


def load_dataset(name: str = "kuairand-pure", data_dir: str | Path | None = None) -> Interactions:
    """Load a dataset by name. With no ``data_dir``, ``kuairand-pure`` is the shipped sample.

    ``eventlog`` takes the path of its YAML column map (or a folder holding exactly one) as ``data_dir``.
    """
    if name not in LOADERS:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(LOADERS)})")
    if data_dir is None:
        if name != "kuairand-pure":
            raise DataError(f"dataset '{name}' needs --data-dir (only kuairand-pure has a shipped sample)")
        data = load_kuairand(sample_dir())
        data.source["sample"] = True
        return data
    return LOADERS[name](Path(data_dir))


__all__ = [
    "BEHAVIOURS", "FeatureTable", "Interactions", "LOADERS", "Sessions", "load_dataset", "load_eventlog",
    "load_kuairand", "load_ml100k", "load_ml1m", "sample_dir", "sessionize", "user_retention",
]
