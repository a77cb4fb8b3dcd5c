"""Generic event log: CSV and Parquet with a YAML column map give the same object."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from retentionrl.data import load_dataset
from retentionrl.errors import DataError


def _events(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "uid": rng.integers(100, 120, n),
            "video": rng.integers(5000, 5050, n),
            "ts_ms": np.sort(rng.integers(1_650_000_000_000, 1_650_900_000_000, n)),
            "clicked": rng.integers(0, 2, n),
            "liked": rng.integers(0, 2, n),
            "seconds": rng.uniform(0, 60, n).round(3),
        }
    )


def _write(tmp_path, fmt: str, events: pd.DataFrame, **extra) -> str:
    log = f"events.{fmt}"
    if fmt == "csv":
        events.to_csv(tmp_path / log, index=False)
    else:
        events.to_parquet(tmp_path / log, index=False)
    pd.DataFrame({"uid": np.arange(100, 120), "country": list("ab") * 10, "age": np.arange(20)}).to_csv(
        tmp_path / "users.csv", index=False
    )
    spec = {
        "name": "mine",
        "log": log,
        "columns": {"user_id": "uid", "item_id": "video", "timestamp": "ts_ms", "click": "clicked",
                    "like": "liked", "watch_time": "seconds"},
        "timestamp_unit": "ms",
        "tz_offset_hours": 8,
        "user_features": {"file": "users.csv", "key": "uid", "categorical": ["country"], "numeric": ["age"]},
        **extra,
    }
    path = tmp_path / f"{fmt}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_csv_and_parquet_round_trip(tmp_path):
    events = _events()
    a = load_dataset("eventlog", _write(tmp_path, "csv", events))
    b = load_dataset("eventlog", _write(tmp_path, "parquet", events))
    pd.testing.assert_frame_equal(a.log, b.log)
    pd.testing.assert_frame_equal(a.user_features.frame, b.user_features.frame)
    assert np.array_equal(a.user_ids, b.user_ids) and np.array_equal(a.item_ids, b.item_ids)
    assert a.behaviours == b.behaviours == ("click", "like")
    assert a.name == "mine"
    # Values survive: the first exposure of the smallest raw user.
    first = events.sort_values(["uid", "ts_ms"], kind="stable").iloc[0]
    row = a.log.iloc[0]
    assert a.user_ids[int(row["user_id"])] == first["uid"] and a.item_ids[int(row["item_id"])] == first["video"]
    assert row["timestamp"] == pytest.approx(first["ts_ms"] / 1000)
    assert row["day"] == (first["ts_ms"] // 1000 + 8 * 3600) // 86400
    assert row["watch_time"] == pytest.approx(first["seconds"], rel=1e-6)
    assert row["long_view"] == 0  # absent behaviours are zero columns


def test_mapped_column_missing_names_file_and_column(tmp_path):
    spec = _write(tmp_path, "csv", _events())
    data = yaml.safe_load(open(spec))
    data["columns"]["click"] = "clicks"
    open(spec, "w").write(yaml.safe_dump(data))
    with pytest.raises(DataError, match=r"events.csv, column 'clicks': column 'clicks' \(mapped to click"):
        load_dataset("eventlog", spec)


def test_unknown_key_in_column_map_is_an_error(tmp_path):
    spec = _write(tmp_path, "csv", _events(), timestamp_units="ms")
    with pytest.raises(DataError, match="unknown key 'timestamp_units'"):
        load_dataset("eventlog", spec)


def test_iso_timestamps(tmp_path):
    """ISO-8601 text gives the same seconds (and calendar days) as the epoch milliseconds it was written from."""
    events = _events(20)
    ms = load_dataset("eventlog", _write(tmp_path, "csv", events))
    events["ts_ms"] = pd.to_datetime(events["ts_ms"], unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    d = load_dataset("eventlog", _write(tmp_path, "csv", events, timestamp_unit="iso"))
    assert np.allclose(d.log["timestamp"], ms.log["timestamp"], rtol=0, atol=1e-6)
    assert d.log["day"].tolist() == ms.log["day"].tolist()


def test_one_source_column_for_two_targets_is_refused(tmp_path):
    spec = _write(tmp_path, "csv", _events())
    data = yaml.safe_load(open(spec))
    data["columns"]["long_view"] = "clicked"  # already mapped to click
    open(spec, "w").write(yaml.safe_dump(data))
    with pytest.raises(DataError, match=r"csv\.yaml: 'columns' maps column 'clicked' to both 'click' and 'long_view'$"):
        load_dataset("eventlog", spec)


def test_feature_columns_must_be_a_list(tmp_path):
    spec = _write(tmp_path, "csv", _events())
    data = yaml.safe_load(open(spec))
    data["user_features"]["categorical"] = "country"  # not [country]
    open(spec, "w").write(yaml.safe_dump(data))
    with pytest.raises(DataError, match=r"csv\.yaml: 'user_features\.categorical' must be a list of column names, got 'country'$"):
        load_dataset("eventlog", spec)
