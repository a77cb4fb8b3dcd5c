"""Every kind of bad input: exit status 2, one line on stderr naming file / column / first bad row."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest
import yaml

from retentionrl.cli import main


def _run(capsys, *argv) -> str:
    code = main(["data", "stats", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _log(folder):
    return next(folder.glob("log_standard_*.csv"))


def _corrupt(folder, column, row, value):
    path = _log(folder)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row - 1, column] = value
    frame.to_csv(path, index=False)
    return path


def test_missing_data_dir(capsys, tmp_path):
    msg = _run(capsys, "--data-dir", str(tmp_path / "nope"))
    assert "nope" in msg and "not found" in msg


def test_missing_feature_file(capsys, tiny_kuairand):
    (tiny_kuairand / "user_features_pure.csv.gz").unlink()
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert "user features" in msg and str(tiny_kuairand) in msg


def test_missing_column(capsys, tiny_kuairand):
    path = _log(tiny_kuairand)
    pd.read_csv(path).drop(columns="is_click").to_csv(path, index=False)
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert path.name in msg and "'is_click' is missing" in msg


@pytest.mark.parametrize(
    ("column", "row", "value", "expect"),
    [
        ("user_id", 7, "abc", "column 'user_id', row 7 (line 8): value 'abc' is not a number"),
        ("user_id", 3, "", "column 'user_id', row 3 (line 4): missing value (NaN)"),
        ("video_id", 5, "1.5", "column 'video_id', row 5 (line 6): value 1.5 is not an integer id"),
        ("time_ms", 9, "", "column 'time_ms', row 9 (line 10): missing value (NaN)"),
        ("time_ms", 2, "-5", "column 'time_ms', row 2 (line 3): negative value -5"),
        ("is_like", 4, "3", "column 'is_like', row 4 (line 5): value 3 is not 0 or 1"),
        ("date", 6, "20221399", "column 'date', row 6 (line 7): value 20221399 is not a YYYYMMDD date"),
    ],
)
def test_bad_values_name_file_column_row(capsys, tiny_kuairand, column, row, value, expect):
    path = _corrupt(tiny_kuairand, column, row, value)
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert msg == f"retentionrl: error: {path}, {expect}"


def test_empty_file(capsys, tiny_kuairand):
    _log(tiny_kuairand).write_text("")
    assert "file is empty" in _run(capsys, "--data-dir", str(tiny_kuairand))


def test_header_only_file(capsys, tiny_kuairand):
    path = _log(tiny_kuairand)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert "no data rows" in _run(capsys, "--data-dir", str(tiny_kuairand))


def test_corrupt_gzip(capsys, tiny_kuairand):
    (tiny_kuairand / "user_features_pure.csv.gz").write_bytes(b"\x1f\x8b not really gzip")
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert "user_features_pure.csv.gz" in msg and "cannot parse" in msg


def test_log_user_without_features(capsys, tiny_kuairand):
    _corrupt(tiny_kuairand, "user_id", 1, "99999999")
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert "user_features_pure.csv.gz" in msg and "user_id 99999999 appears in" in msg


def test_unknown_dataset(capsys):
    msg = _run(capsys, "--dataset", "kuairand-full")
    assert "unknown dataset 'kuairand-full'" in msg and "ml-100k" in msg


def test_dataset_without_sample_needs_data_dir(capsys):
    assert "needs --data-dir" in _run(capsys, "--dataset", "ml-100k")


def test_column_map_naming_absent_column(capsys, tmp_path):
    pd.DataFrame({"u": [1, 2], "i": [3, 4], "t": [10, 20]}).to_csv(tmp_path / "ev.csv", index=False)
    spec = {"log": "ev.csv", "columns": {"user_id": "u", "item_id": "i", "timestamp": "time"}}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(spec))
    msg = _run(capsys, "--dataset", "eventlog", "--data-dir", str(tmp_path / "map.yaml"))
    assert "ev.csv, column 'time'" in msg and "mapped to timestamp in map.yaml" in msg


def test_ml100k_non_numeric_id(capsys, tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t3\t881250949\nx\t2\t3\t881250949\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    (tmp_path / "u.item").write_text("2|Toy|01-Jan-1995||url" + "|0" * 19 + "\n")
    msg = _run(capsys, "--dataset", "ml-100k", "--data-dir", str(tmp_path))
    assert msg.endswith("u.data, column 'user_id', line 2: value 'x' is not a number")


def test_nothing_is_written_on_error(capsys, tiny_kuairand):
    before = sorted(p.name for p in tiny_kuairand.iterdir())
    _corrupt(tiny_kuairand, "user_id", 2, "abc")
    _run(capsys, "--data-dir", str(tiny_kuairand))
    assert sorted(p.name for p in tiny_kuairand.iterdir()) == before


def test_gzip_log_also_checked(capsys, tiny_kuairand):
    path = _log(tiny_kuairand)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "user_id"] = "oops"
    with gzip.open(tiny_kuairand / "log_standard_x.csv.gz", "wt") as fh:
        frame.to_csv(fh, index=False)
    path.unlink()
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert "log_standard_x.csv.gz, column 'user_id', row 1 (line 2)" in msg
