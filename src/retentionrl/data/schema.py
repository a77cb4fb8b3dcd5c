"""The canonical data model every loader produces and every later stage consumes.

One row per exposure (an item shown to a user), dense integer ids, behaviours as 0/1 columns, and user / item
feature tables whose categorical columns are integer-coded (code 0 = missing or unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from retentionrl.errors import DataError

#: The 7 behaviours of the simulator and of every method, in a fixed order (the fusion action is over these).
BEHAVIOURS: tuple[str, ...] = ("click", "long_view", "like", "comment", "forward", "follow", "hate")
#: Interactions counted per user-author pair (RLIV-UA's ``f_ua``), in order; "exposure" counts every shown item.
UA_KINDS: tuple[str, ...] = ("exposure", "click", "long_view", "like", "follow")

#: Columns of :attr:`Interactions.log`, in order.
LOG_COLUMNS: tuple[str, ...] = (
    "user_id", "item_id", "timestamp", "day", *BEHAVIOURS, "watch_time", "duration", "author_id", "tag",
)

SECONDS_PER_DAY = 86_400


@dataclass
class FeatureTable:
    """Side features of users or items. Row ``i`` of :attr:`frame` belongs to dense id ``i``.

    Categorical columns hold codes ``0..vocab_size-1`` (0 = missing / unseen); ``vocab[col][c-1]`` is the raw
    value of code ``c``. Numeric columns are float64 with missing values filled by the column median.
    """

    frame: pd.DataFrame
    categorical: dict[str, int] = field(default_factory=dict)  # column -> vocabulary size (incl. code 0)
    numeric: list[str] = field(default_factory=list)
    vocab: dict[str, list] = field(default_factory=dict)
    fills: dict[str, float] = field(default_factory=dict)  # numeric column -> the median that filled its gaps

    @classmethod
    def empty(cls, n: int) -> "FeatureTable":
        return cls(frame=pd.DataFrame(index=pd.RangeIndex(n)))

    @classmethod
    def encode(
        cls,
        raw: pd.DataFrame,
        *,
        categorical: Sequence[str],
        numeric: Sequence[str],
        file: str | Path,
    ) -> "FeatureTable":
        """Encode ``raw`` (already aligned to dense ids) into codes and floats."""
        out: dict[str, np.ndarray] = {}
        cats: dict[str, int] = {}
        vocab: dict[str, list] = {}
        fills: dict[str, float] = {}
        for col in categorical:
            values = raw[col]
            uniq = pd.unique(values.dropna())
            uniq = sorted(uniq, key=lambda v: (str(type(v)), v))
            codes = pd.Categorical(values, categories=uniq).codes.astype(np.int64) + 1  # NaN -> -1 + 1 = 0
            out[col] = codes
            cats[col] = len(uniq) + 1
            vocab[col] = [v.item() if isinstance(v, np.generic) else v for v in uniq]
        for col in numeric:
            values = pd.to_numeric(raw[col], errors="coerce")
            if values.isna().all():
                raise DataError("numeric feature column has no numeric value", file=file, column=col)
            fills[col] = float(values.median())
            out[col] = values.fillna(fills[col]).to_numpy(np.float64)
        frame = pd.DataFrame(out, index=pd.RangeIndex(len(raw)))
        return cls(frame=frame, categorical=cats, numeric=list(numeric), vocab=vocab, fills=fills)

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class Interactions:
    """A dataset in canonical form.

    Attributes:
        name: dataset name (``kuairand-pure``, ``ml-100k`` ...).
        log: exposures sorted by ``(user_id, timestamp)``; columns :data:`LOG_COLUMNS`. ``timestamp`` is
            float seconds since the epoch; ``day`` the calendar day (days since 1970-01-01 in the data's
            local time); ``watch_time``/``duration`` in seconds; ``author_id``/``tag`` are -1 where unknown.
        user_features, item_features: one row per dense user / item id.
        user_ids, item_ids: raw id of each dense id (``user_ids[u]`` is the source's id of user ``u``).
        behaviours: the behaviours the source actually records (the others are all-zero columns).
        source: provenance: files read, rows read, duplicates removed, notes.
    """

    name: str
    log: pd.DataFrame
    user_features: FeatureTable
    item_features: FeatureTable
    user_ids: np.ndarray
    item_ids: np.ndarray
    behaviours: tuple[str, ...]
    source: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.log)

    @property
    def density(self) -> float:
        return self.n_interactions / float(self.n_users * self.n_items)

    def behaviour_rates(self) -> dict[str, float]:
        """Share of exposures with each recorded behaviour."""
        return {b: float(self.log[b].mean()) for b in self.behaviours}

    def dense_user(self, raw_ids: Sequence | np.ndarray) -> np.ndarray:
        """Map raw user ids to dense ids; unknown ids raise."""
        return _dense(self.user_ids, raw_ids, "user_id")

    def dense_item(self, raw_ids: Sequence | np.ndarray) -> np.ndarray:
        return _dense(self.item_ids, raw_ids, "item_id")

    def subset_users(self, dense_users: np.ndarray) -> "Interactions":
        """The same dataset restricted to some users (ids re-densified; items kept)."""
        keep = np.zeros(self.n_users, dtype=bool)
        keep[dense_users] = True
        new_id = np.cumsum(keep) - 1
        log = self.log[keep[self.log["user_id"].to_numpy()]].copy()
        log["user_id"] = new_id[log["user_id"].to_numpy()]
        uf = FeatureTable(
            frame=self.user_features.frame[keep].reset_index(drop=True),
            categorical=dict(self.user_features.categorical),
            numeric=list(self.user_features.numeric),
            vocab=dict(self.user_features.vocab),
            fills=dict(self.user_features.fills),
        )
        return Interactions(
            name=self.name, log=log.reset_index(drop=True), user_features=uf, item_features=self.item_features,
            user_ids=self.user_ids[keep], item_ids=self.item_ids, behaviours=self.behaviours,
            source=dict(self.source),
        )


def _dense(table: np.ndarray, raw_ids: Sequence | np.ndarray, what: str) -> np.ndarray:
    raw = np.asarray(raw_ids)
    pos = np.searchsorted(table, raw)
    pos_c = np.clip(pos, 0, len(table) - 1)
    bad = table[pos_c] != raw
    if bad.any():
        raise KeyError(f"unknown {what} {raw[np.flatnonzero(bad)[0]]!r}")
    return pos_c


def build_interactions(
    name: str,
    log: pd.DataFrame,
    *,
    behaviours: Sequence[str],
    user_features: pd.DataFrame | None = None,
    user_key: str = "user_id",
    user_categorical: Sequence[str] = (),
    user_numeric: Sequence[str] = (),
    user_file: str | Path = "user features",
    item_features: pd.DataFrame | None = None,
    item_key: str = "item_id",
    item_categorical: Sequence[str] = (),
    item_numeric: Sequence[str] = (),
    item_file: str | Path = "item features",
    log_file: str | Path = "log",
    source: Mapping | None = None,
) -> Interactions:
    """Assemble an :class:`Interactions` from a validated log with raw ids.

    ``log`` must hold ``user_id, item_id, timestamp, day`` (numeric, validated by the loader) and the columns
    named in ``behaviours``; missing behaviour / watch-time / duration / author / tag columns are filled
    (0 or -1). Users and items are those that appear in the log; every one of them must have a feature row
    when a feature table is given.
    """
    unknown = [b for b in behaviours if b not in BEHAVIOURS]
    if unknown:
        raise DataError(f"unknown behaviour '{unknown[0]}' (known: {', '.join(BEHAVIOURS)})")
    log = log.copy()
    for b in BEHAVIOURS:
        if b not in log:
            log[b] = 0
    for col, fill in (("watch_time", 0.0), ("duration", 0.0), ("author_id", -1), ("tag", -1)):
        if col not in log:
            log[col] = fill

    user_ids = np.unique(log["user_id"].to_numpy())
    item_ids = np.unique(log["item_id"].to_numpy())
    log["user_id"] = np.searchsorted(user_ids, log["user_id"].to_numpy())
    log["item_id"] = np.searchsorted(item_ids, log["item_id"].to_numpy())

    uf = _aligned_features(user_features, user_key, user_ids, user_categorical, user_numeric, user_file, log_file)
    itf = _aligned_features(item_features, item_key, item_ids, item_categorical, item_numeric, item_file, log_file)

    log = log[list(LOG_COLUMNS)].astype(
        {
            "user_id": np.int64, "item_id": np.int64, "timestamp": np.float64, "day": np.int64,
            **{b: np.int8 for b in BEHAVIOURS},
            "watch_time": np.float32, "duration": np.float32, "author_id": np.int64, "tag": np.int64,
        }
    )
    log = log.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    return Interactions(
        name=name, log=log, user_features=uf, item_features=itf, user_ids=user_ids, item_ids=item_ids,
        behaviours=tuple(b for b in BEHAVIOURS if b in behaviours), source=dict(source or {}),
    )


def _aligned_features(
    raw: pd.DataFrame | None,
    key: str,
    ids: np.ndarray,
    categorical: Sequence[str],
    numeric: Sequence[str],
    file: str | Path,
    log_file: str | Path,
) -> FeatureTable:
    if raw is None:
        return FeatureTable.empty(len(ids))
    dup = raw[key].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"duplicate id {raw[key].iloc[i]}", file=file, column=key, row=i + 1, line=i + 2)
    indexed = raw.set_index(key)
    missing = ~np.isin(ids, indexed.index.to_numpy())
    if missing.any():
        raise DataError(
            f"{key} {ids[np.flatnonzero(missing)[0]]} appears in {log_file} but has no row here "
            f"({int(missing.sum())} such ids)",
            file=file, column=key,
        )
    aligned = indexed.loc[ids].reset_index(drop=True)
    return FeatureTable.encode(aligned, categorical=categorical, numeric=numeric, file=file)


def calendar_day(timestamp_s: pd.Series | np.ndarray, tz_offset_hours: float = 0.0) -> np.ndarray:
    """Calendar day (days since 1970-01-01) of a Unix time in seconds, in a zone ``tz_offset_hours`` from UTC."""
    ts = np.asarray(timestamp_s, dtype=np.float64) + tz_offset_hours * 3600.0
    return np.floor(ts / SECONDS_PER_DAY).astype(np.int64)
