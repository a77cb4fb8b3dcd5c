"""Generic event log: a user's own CSV or Parquet exposure log plus a small YAML column map.

Example ``events.yaml`` (paths are relative to the YAML file)::

    name: my-app
    log: events.parquet            # .csv, .csv.gz or .parquet
    columns:                       # canonical name: column in your file
      user_id: uid
      item_id: video
      timestamp: ts
      click: clicked
      like: liked
      watch_time: play_seconds
    timestamp_unit: s              # s | ms | us | ns | iso (ISO-8601 text)
    tz_offset_hours: 8             # local time zone of calendar days (user-day sessions)
    user_features: {file: users.csv, key: uid, categorical: [country], numeric: [age]}
    item_features: {file: items.csv, key: video, categorical: [category], numeric: [length]}

Required columns: ``user_id``, ``item_id``, ``timestamp``. Each behaviour you map is "present"; the others are
absent (all-zero). Unknown keys are errors, so a typo never silently drops a column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from retentionrl.data.schema import BEHAVIOURS, Interactions, build_interactions, calendar_day
from retentionrl.data.tables import binary_column, numeric_column, read_table
from retentionrl.errors import DataError

_TOP_KEYS = {"name", "log", "columns", "timestamp_unit", "tz_offset_hours", "user_features", "item_features"}
_TARGETS = ("user_id", "item_id", "timestamp", "day", *BEHAVIOURS, "watch_time", "duration", "author_id", "tag")
_FEATURE_KEYS = {"file", "key", "categorical", "numeric"}
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def load_eventlog(spec_path: str | Path) -> Interactions:
    """Load the event log described by the YAML column map at ``spec_path``."""
    spec_path = Path(spec_path)
    if spec_path.is_dir():
        hits = sorted(spec_path.glob("*.yaml")) + sorted(spec_path.glob("*.yml"))
        if len(hits) != 1:
            raise DataError("expected exactly one .yaml column map in the folder", file=spec_path)
        spec_path = hits[0]
    spec = _read_spec(spec_path)
    base = spec_path.parent
    cols: dict[str, str] = spec["columns"]
    log_path = base / str(spec["log"])
    raw = read_table(log_path)
    for target, src in cols.items():
        if src not in raw.columns:
            raise DataError(
                f"column '{src}' (mapped to {target} in {spec_path.name}) is not in the file "
                f"(columns found: {', '.join(map(str, raw.columns[:25]))})",
                file=log_path, column=src,
            )

    log = pd.DataFrame(index=raw.index)
    log["user_id"] = numeric_column(raw, cols["user_id"], log_path, integer=True)
    log["item_id"] = numeric_column(raw, cols["item_id"], log_path, integer=True)
    log["timestamp"] = _timestamps(raw, cols["timestamp"], log_path, spec["timestamp_unit"])
    if "day" in cols:
        day = pd.to_datetime(raw[cols["day"]].astype(str), errors="coerce")
        if day.isna().any():
            i = int(np.flatnonzero(day.isna().to_numpy())[0])
            raise DataError("not a date", file=log_path, column=cols["day"], row=i + 1, line=i + 2)
        log["day"] = (day.dt.tz_localize(None) - pd.Timestamp("1970-01-01")).dt.days.astype(np.int64)
    else:
        log["day"] = calendar_day(log["timestamp"], float(spec["tz_offset_hours"]))
    behaviours = [b for b in BEHAVIOURS if b in cols]
    for b in behaviours:
        log[b] = binary_column(raw, cols[b], log_path)
    for col in ("watch_time", "duration"):
        if col in cols:
            log[col] = numeric_column(raw, cols[col], log_path, non_negative=True)
    for col in ("author_id", "tag"):
        if col in cols:
            log[col] = numeric_column(raw, cols[col], log_path, integer=True)

    users, ukw = _features(spec.get("user_features"), base, spec_path, "user_features")
    items, ikw = _features(spec.get("item_features"), base, spec_path, "item_features")
    return build_interactions(
        str(spec.get("name") or spec_path.stem), log, behaviours=behaviours,
        user_features=users, **{f"user_{k}": v for k, v in ukw.items()},
        item_features=items, **{f"item_{k}": v for k, v in ikw.items()},
        log_file=log_path.name,
        source={"format": "eventlog", "spec": spec_path.name, "log_file": log_path.name,
                "rows_read": int(len(raw)), "rows_after_dedup": int(len(log)), "duplicates_removed": 0},
    )


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("column map not found", file=path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML: {str(exc).splitlines()[0]}", file=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start}: {exc.reason})", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read the column map: {exc.strerror or exc}", file=path) from None
    if not isinstance(spec, dict):
        raise DataError("a column map must be a YAML mapping", file=path)
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise DataError(f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_TOP_KEYS))})", file=path)
    for key in ("log", "columns"):
        if key not in spec:
            raise DataError(f"missing key '{key}'", file=path)
    cols = spec["columns"]
    if not isinstance(cols, dict):
        raise DataError("'columns' must map canonical names to your column names", file=path)
    bad = [k for k in cols if k not in _TARGETS]
    if bad:
        raise DataError(f"unknown canonical column '{bad[0]}' in 'columns' (allowed: {', '.join(_TARGETS)})", file=path)
    seen: dict[str, str] = {}
    for target, src in cols.items():
        if not isinstance(src, str) or not src:
            raise DataError(f"'columns' maps '{target}' to {src!r}: expected a column name", file=path)
        if src in seen:  # one source column read as two things would silently duplicate a signal
            raise DataError(f"'columns' maps column '{src}' to both '{seen[src]}' and '{target}'", file=path)
        seen[src] = target
    for req in ("user_id", "item_id", "timestamp"):
        if req not in cols:
            raise DataError(f"'columns' must map '{req}'", file=path)
    spec.setdefault("timestamp_unit", "s")
    spec.setdefault("tz_offset_hours", 0)
    if spec["timestamp_unit"] not in (*_UNITS, "iso"):
        raise DataError(f"timestamp_unit must be one of {', '.join((*_UNITS, 'iso'))}", file=path)
    return spec


def _timestamps(raw: pd.DataFrame, col: str, path: Path, unit: str) -> pd.Series:
    """Seconds since the epoch as float64."""
    if unit == "iso":
        ts = pd.to_datetime(raw[col], errors="coerce", utc=True)
        if ts.isna().any():
            i = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise DataError(f"value {raw[col].iloc[i]!r} is not an ISO-8601 time", file=path, column=col, row=i + 1, line=i + 2)
        secs = (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
        if (secs < 0).any():
            i = int(np.flatnonzero((secs < 0).to_numpy())[0])
            raise DataError("time before 1970", file=path, column=col, row=i + 1, line=i + 2)
        return secs.astype(np.float64)
    return numeric_column(raw, col, path, non_negative=True) * _UNITS[unit]


def _features(fspec: Any, base: Path, spec_path: Path, key: str) -> tuple[pd.DataFrame | None, dict]:
    if fspec is None:
        return None, {}
    if not isinstance(fspec, dict) or "file" not in fspec or "key" not in fspec:
        raise DataError(f"'{key}' needs at least 'file' and 'key'", file=spec_path)
    unknown = sorted(set(fspec) - _FEATURE_KEYS)
    if unknown:
        raise DataError(f"unknown key '{unknown[0]}' in '{key}'", file=spec_path)
    path = base / str(fspec["file"])
    for k in ("categorical", "numeric"):  # a bare name would be read letter by letter
        names = fspec.get(k, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"'{key}.{k}' must be a list of column names, got {names!r}", file=spec_path)
    cat, num = list(fspec.get("categorical", [])), list(fspec.get("numeric", []))
    frame = read_table(path)
    for col in (fspec["key"], *cat, *num):
        if col not in frame.columns:
            raise DataError(f"column '{col}' (named in {spec_path.name} {key}) is not in the file", file=path, column=col)
    frame[fspec["key"]] = numeric_column(frame, fspec["key"], path, integer=True)
    return frame, {"key": fspec["key"], "categorical": cat, "numeric": num, "file": path}
