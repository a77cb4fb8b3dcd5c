"""The CLI on the shipped sample and the shared slice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retentionrl.cli import main


def test_stats_json_on_sample(capsys):
    """The statistics against the same numbers computed straight from the shipped CSV with pandas."""
    import pandas as pd

    from retentionrl.data import sample_dir

    assert main(["data", "stats", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    raw = pd.read_csv(next(sample_dir().glob("log_standard_*.csv.gz")))
    log = raw.drop_duplicates()
    assert s["source"]["sample"] is True and s["source"]["duplicates_removed"] == len(raw) - len(log) > 0
    assert (s["users"], s["items"], s["interactions"]) == (log.user_id.nunique(), log.video_id.nunique(), len(log))
    assert s["behaviour_rates"]["click"] == pytest.approx(log.is_click.mean())
    assert s["behaviour_rates"]["hate"] == pytest.approx(log.is_hate.mean())
    # User-day sessions; each user's last one has no observed return; gaps in calendar days.
    days = log[["user_id", "date"]].drop_duplicates().sort_values(["user_id", "date"])
    dates = pd.to_datetime(days.date.astype(str), format="%Y%m%d")
    gaps = dates.groupby(days.user_id).diff().dt.days.dropna()
    assert (s["sessions"], s["censored_sessions"], s["observed_returns"]) == (len(days), log.user_id.nunique(), len(gaps))
    assert s["return_day_histogram"]["1"] == pytest.approx((gaps == 1).mean())
    assert s["return_day_histogram"]["10+"] == pytest.approx((gaps >= 10).mean())
    assert s["mean_session_length"] == pytest.approx(len(log) / len(days))


def test_stats_json_on_shared_slice(capsys, shared_data):
    assert main(["data", "stats", "--json", "--data-dir", str(shared_data / "kuairand-pure")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["users"], s["items"], s["interactions"], s["sessions"]) == (24_448, 6_153, 180_384, 96_512)
    assert round(s["return_day_histogram"]["1"], 2) == 0.60


def test_demo_runs_on_an_existing_bundle(tiny_sim, tmp_path):
    """The default job end to end (the bundle is prebuilt here; building is covered in test_simulator)."""
    bundle = tiny_sim.save(tmp_path / "bundle")
    out = subprocess.run([sys.executable, "-m", "retentionrl.cli", "demo", "--bundle", str(bundle),
                          "--runs", str(tmp_path / "runs"), "--td3-steps", "30", "--quick"],
                         capture_output=True, text=True, check=True)
    assert "shipped sample" in out.stdout and "return-day histogram" in out.stdout
    assert "model AUC" in out.stdout and "session-length TV" in out.stdout
    assert (bundle / "report" / "calibration.md").is_file()
    assert "| td3 " in out.stdout and "| ranking" in out.stdout and "return time" in out.stdout
    assert (tmp_path / "runs" / "compare" / "comparison.csv").is_file()
    floor, ceiling = tiny_sim.return_time_range("kuaisim")  # the simulator's leverage, printed beside the table
    assert f"below {floor:.3f} or above {ceiling:.3f} days" in out.stdout


def test_train_cli_bad_input_is_one_line_and_writes_nothing(tiny_sim, tmp_path, capsys):
    from retentionrl.cli import main

    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    run = tmp_path / "run"
    assert main(["train", "--algo", "td4", "--simulator", bundle, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown algorithm 'td4'" in err[0]
    assert not run.exists()  # nothing half-written
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algo: td3\ntotal_step: 5\n")
    assert main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(run)]) == 2
    assert "unknown key 'total_step'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--algo", "td3", "--simulator", bundle]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--simulator", bundle]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_simulator_info_prints_the_fingerprint(tiny_sim, tmp_path, capsys):
    """Short form in the text, all 64 digits in --json: the same one a run made on the bundle records."""
    bundle = str(tiny_sim.save(tmp_path / "bundle"))  # a copy: same fingerprint
    assert main(["simulator", "info", bundle]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["fingerprint", tiny_sim.fingerprint[:16]]
    assert main(["simulator", "info", bundle, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fingerprint"] == tiny_sim.fingerprint and len(info["fingerprint"]) == 64
    assert info["n_users"] == tiny_sim.n_users and "real" not in info


def test_simulator_info_of_a_synthetic_bundle_says_it_has_no_fit_scores(tmp_path, capsys):
    from retentionrl.simulator.synthetic import make_synthetic_simulator

    sim = make_synthetic_simulator(n_users=8, n_items=40, seed=0)
    path = str(sim.save(tmp_path / "syn"))
    assert main(["simulator", "info", path]) == 0
    out = capsys.readouterr().out
    assert "not built from a log" in out and sim.short_fingerprint in out and "held-out NLL" not in out
