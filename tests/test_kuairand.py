"""KuaiRand loader on the shared real slice (acceptance numbers) and on the shipped sample."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from retentionrl.data import BEHAVIOURS, load_dataset, sample_dir, sessionize
from retentionrl.data.schema import LOG_COLUMNS


def test_shared_slice_counts_and_rates(kuairand_slice):
    d = kuairand_slice
    assert d.source["rows_read"] == 185_061
    assert d.n_interactions == 180_384
    assert d.n_users == 24_448
    assert d.n_items == 6_153
    rates = d.behaviour_rates()
    assert round(rates["click"], 4) == 0.4501
    assert round(rates["long_view"], 4) == 0.3172
    assert round(rates["like"], 4) == 0.0175
    assert d.behaviours == BEHAVIOURS


def test_shared_slice_sessions(kuairand_slice):
    s = sessionize(kuairand_slice, "day")
    assert len(s) == 96_512
    assert round(s.table["length"].mean(), 2) == 1.87
    obs = s.observed["return_gap"]
    assert (obs >= 1).all()
    assert round(float((obs == 1).mean()), 2) == 0.60
    # Every user's last session, and only it, is censored.
    assert s.table["censored"].sum() == kuairand_slice.n_users
    assert s.table.groupby("user_id")["censored"].last().all()


def test_canonical_log_layout(kuairand_slice):
    log = kuairand_slice.log
    assert tuple(log.columns) == LOG_COLUMNS
    assert log["user_id"].between(0, kuairand_slice.n_users - 1).all()
    assert log["item_id"].between(0, kuairand_slice.n_items - 1).all()
    assert (log.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()
    assert (log["author_id"] >= 0).all()  # every KuaiRand video has an author
    assert len(kuairand_slice.user_features) == kuairand_slice.n_users
    assert len(kuairand_slice.item_features) == kuairand_slice.n_items
    uf = kuairand_slice.user_features
    # 'user_active_degree' has 9 raw values among all users; code 0 is reserved for missing.
    assert uf.frame["user_active_degree"].min() >= 1
    assert uf.categorical["user_active_degree"] <= 10
    assert not uf.frame.isna().any().any()
    assert not kuairand_slice.item_features.frame.isna().any().any()


def test_raw_ids_round_trip(kuairand_slice, shared_data):
    raw = pd.read_csv(next((shared_data / "kuairand-pure").glob("log_standard_*")), nrows=5)
    dense = kuairand_slice.dense_user(raw["user_id"].to_numpy())
    assert np.array_equal(kuairand_slice.user_ids[dense], raw["user_id"].to_numpy())
    with pytest.raises(KeyError):
        kuairand_slice.dense_user([10**9])


def test_sample_is_default_and_small(sample):
    assert sample.source.get("sample") is True
    assert sample.n_users == 6_000
    assert sample.source["rows_read"] == 44_415
    assert sample.source["duplicates_removed"] > 0
    total = sum(p.stat().st_size for p in sample_dir().iterdir())
    assert total <= 5 * 1024 * 1024
    assert "Attribution-ShareAlike 4.0" in (sample_dir() / "LICENSE").read_text()
    assert "doi:10.1145/3511808.3557624" in (sample_dir() / "README.md").read_text()


def test_official_layout_and_multiple_logs_dedup(tmp_path, sample):
    """KuaiRand-Pure/data/*.csv layout; two overlapping log files give the union without duplicates."""
    src = sample_dir()
    data = tmp_path / "KuaiRand-Pure" / "data"
    data.mkdir(parents=True)
    log = pd.read_csv(next(src.glob("log_standard_*.csv.gz")))
    half = len(log) // 2
    log.iloc[: half + 1000].to_csv(data / "log_standard_4_08_to_4_21_pure.csv", index=False)
    log.iloc[half:].to_csv(data / "log_standard_4_22_to_5_08_pure.csv", index=False)
    for name in ("user_features_pure.csv.gz", "video_features_basic_pure.csv.gz"):
        pd.read_csv(src / name).to_csv(data / name.removesuffix(".gz"), index=False)
    again = load_dataset("kuairand-pure", tmp_path)
    assert again.source["rows_read"] == len(log) + 1000
    assert again.n_interactions == sample.n_interactions
    pd.testing.assert_frame_equal(again.log, sample.log)


def test_directory_without_logs_is_an_error(tmp_path):
    from retentionrl.errors import DataError

    shutil.copy(sample_dir() / "user_features_pure.csv.gz", tmp_path)
    with pytest.raises(DataError, match="no KuaiRand standard log"):
        load_dataset("kuairand-pure", tmp_path)
