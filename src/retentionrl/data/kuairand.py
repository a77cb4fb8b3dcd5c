"""KuaiRand loader (Gao et al., CIKM 2022; CC BY-SA 4.0).

Accepts the official layout (``DIR/KuaiRand-Pure/data/*.csv``, or ``DIR/data/*.csv``) or a flat folder with
any ``log_standard_*.csv[.gz]`` files beside ``user_features*.csv[.gz]`` and ``video_features_basic*.csv[.gz]``.
All standard logs found are concatenated and exact duplicate rows removed. The random-exposure log
(``log_random_*``) is not read: its exposures come from a different (uniform) policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retentionrl.data.schema import Interactions, build_interactions
from retentionrl.data.tables import binary_column, find_one, numeric_column, read_table
from retentionrl.errors import DataError

# KuaiRand column -> canonical behaviour.
_BEHAVIOUR_COLUMNS = {
    "is_click": "click", "long_view": "long_view", "is_like": "like", "is_comment": "comment",
    "is_forward": "forward", "is_follow": "follow", "is_hate": "hate",
}
LOG_REQUIRED = ("user_id", "video_id", "date", "time_ms", *_BEHAVIOUR_COLUMNS, "play_time_ms", "duration_ms")

USER_CATEGORICAL = (
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)
USER_NUMERIC = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
ITEM_CATEGORICAL = ("author_id", "video_type", "upload_type", "visible_status", "music_type", "tag")
ITEM_NUMERIC = ("video_duration", "server_width", "server_height")

_LOG_PATTERNS = ("log_standard_*.csv", "log_standard_*.csv.gz")


def resolve_dir(data_dir: str | Path) -> Path:
    """The folder holding the CSVs: ``data_dir`` itself, or its ``KuaiRand-Pure/data`` / ``data`` subfolder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError("data directory not found", file=data_dir)
    for cand in (data_dir, data_dir / "KuaiRand-Pure" / "data", data_dir / "data"):
        if cand.is_dir() and any(any(cand.glob(p)) for p in _LOG_PATTERNS):
            return cand
    raise DataError(
        "no KuaiRand standard log found (looked for log_standard_*.csv[.gz] here, in KuaiRand-Pure/data/ and in data/)",
        file=data_dir,
    )


def load_kuairand(data_dir: str | Path, *, name: str = "kuairand-pure") -> Interactions:
    """Load KuaiRand(-Pure) from ``data_dir`` into canonical form.

    ``day`` comes from the log's own ``date`` column (the platform's calendar day, Beijing time), which is
    what user-day sessions are cut on.
    """
    folder = resolve_dir(data_dir)
    log_files = sorted({p for pat in _LOG_PATTERNS for p in folder.glob(pat)})
    frames = []
    for path in log_files:
        raw = read_table(path, required=LOG_REQUIRED)
        frames.append(_canonical_log(raw, path))
    rows_read = sum(len(f) for f in frames)
    log = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # Exact duplicates are logging artefacts (the same exposure written twice): compare every source column.
    log = log.drop_duplicates(subset=[c for c in log.columns if c != "_file"], ignore_index=True)
    log = log.drop(columns="_file")

    user_path = find_one(folder, ("user_features*.csv", "user_features*.csv.gz"), "user features")
    item_path = find_one(folder, ("video_features_basic*.csv", "video_features_basic*.csv.gz"), "video features")
    users = read_table(user_path, required=("user_id", *USER_CATEGORICAL, *USER_NUMERIC))
    items = read_table(item_path, required=("video_id", *ITEM_CATEGORICAL, *ITEM_NUMERIC))
    users["user_id"] = numeric_column(users, "user_id", user_path, integer=True)
    items["video_id"] = numeric_column(items, "video_id", item_path, integer=True)
    # A video may carry several tags ("20,43"); the first is its primary tag.
    items["tag"] = items["tag"].astype("string").str.split(",").str[0].str.strip()
    items["tag"] = pd.to_numeric(items["tag"], errors="coerce").astype("Int64")

    item_idx = items.set_index("video_id")
    known = log["item_id"].isin(item_idx.index)
    log["author_id"] = log["item_id"].map(item_idx["author_id"]).fillna(-1).astype(np.int64).where(known, -1)
    log["tag"] = log["item_id"].map(item_idx["tag"]).fillna(-1).astype(np.int64)

    return build_interactions(
        name, log,
        behaviours=tuple(_BEHAVIOUR_COLUMNS.values()),
        user_features=users, user_key="user_id", user_categorical=USER_CATEGORICAL, user_numeric=USER_NUMERIC,
        user_file=user_path,
        item_features=items, item_key="video_id", item_categorical=ITEM_CATEGORICAL, item_numeric=ITEM_NUMERIC,
        item_file=item_path,
        log_file=", ".join(p.name for p in log_files),
        source={
            "format": "kuairand", "dir": str(folder), "log_files": [p.name for p in log_files],
            "rows_read": int(rows_read), "rows_after_dedup": int(len(log)),
            "duplicates_removed": int(rows_read - len(log)),
            "user_features_file": user_path.name, "item_features_file": item_path.name,
        },
    )


def _canonical_log(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_id": numeric_column(raw, "user_id", path, integer=True),
            "item_id": numeric_column(raw, "video_id", path, integer=True),
            "timestamp": numeric_column(raw, "time_ms", path, non_negative=True) / 1000.0,
        }
    )
    dates = numeric_column(raw, "date", path, integer=True)
    parsed = pd.to_datetime(dates.astype(str), format="%Y%m%d", errors="coerce")
    if parsed.isna().any():
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(f"value {dates.iloc[i]} is not a YYYYMMDD date", file=path, column="date", row=i + 1, line=i + 2)
    out["day"] = (parsed - pd.Timestamp("1970-01-01")).dt.days.astype(np.int64)
    for src, dst in _BEHAVIOUR_COLUMNS.items():
        out[dst] = binary_column(raw, src, path)
    out["watch_time"] = numeric_column(raw, "play_time_ms", path, non_negative=True) / 1000.0
    out["duration"] = numeric_column(raw, "duration_ms", path, non_negative=True) / 1000.0
    # Keep the remaining source columns so that duplicate removal compares whole source rows.
    for extra in raw.columns:
        if extra not in LOG_REQUIRED and extra not in out:
            out[f"_src_{extra}"] = raw[extra]
    out["_file"] = path.name
    return out
