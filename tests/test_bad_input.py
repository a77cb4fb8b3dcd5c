"""Every kind of bad input: exit status 2, one line on stderr naming file / column / first bad row."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from retentionrl.cli import main
from retentionrl.data import sample_dir
from retentionrl.errors import RetentionRLError


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


# --- damaged files: a traceback (EOFError, zlib.error) on the old code ----------------------------------------

def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":  # a cut-off download
        path.write_bytes(data[: len(data) // 2])
    else:  # bytes overwritten in the middle of the deflate stream
        n = len(data) // 3
        path.write_bytes(data[:n] + bytes(64) + data[n + 64:])


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_gzip_log_names_the_file(capsys, tiny_kuairand, how):
    plain = _log(tiny_kuairand)
    path = tiny_kuairand / "log_standard_tiny.csv.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    _damage(path, how)
    before = sorted(p.name for p in tiny_kuairand.iterdir())
    msg = _run(capsys, "--data-dir", str(tiny_kuairand))
    assert msg.startswith(f"retentionrl: error: {path}: cannot parse file: truncated or corrupt compressed data")
    assert sorted(p.name for p in tiny_kuairand.iterdir()) == before


def test_damaged_gzip_exit_code_in_a_subprocess(tmp_path):
    """The real exit status and stderr of the installed entry point, not just main()'s return value."""
    (tmp_path / "log_standard_x.csv.gz").write_bytes(
        (sample_dir() / "log_standard_4_25_to_5_05_pure_sample.csv.gz").read_bytes()[:20_000])
    for name in ("user_features_pure.csv.gz", "video_features_basic_pure.csv.gz"):
        (tmp_path / name).write_bytes((sample_dir() / name).read_bytes())
    out = subprocess.run([sys.executable, "-m", "retentionrl.cli", "data", "stats", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"retentionrl: error: {tmp_path / 'log_standard_x.csv.gz'}: cannot parse file: truncated or corrupt "
        "compressed data (Compressed file ended before the end-of-stream marker was reached)"]


def _eventlog(tmp_path, log="ev.csv", **columns):
    pd.DataFrame({"u": [1, 2, 2], "i": [3, 4, 5], "t": [10, 20, 30], "c": [0, 1, 1]}).to_csv(tmp_path / "ev.csv",
                                                                                          index=False)
    spec = {"log": log, "columns": {"user_id": "u", "item_id": "i", "timestamp": "t", **columns}}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "map.yaml")


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_damaged_eventlog_file_names_it(capsys, tmp_path, fmt):
    frame = pd.DataFrame({"u": range(2000), "i": range(2000), "t": range(2000)})
    path = tmp_path / f"ev.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    _damage(path, "truncated")
    msg = _run(capsys, "--dataset", "eventlog", "--data-dir", _eventlog(tmp_path, log=path.name))
    assert msg.startswith(f"retentionrl: error: {path}: cannot parse file: ")


def test_eventlog_not_utf8(capsys, tmp_path):
    spec = _eventlog(tmp_path)
    (tmp_path / "ev.csv").write_bytes(b"u,i,t\n1,2,\xff\xfe\n")
    assert _run(capsys, "--dataset", "eventlog", "--data-dir", spec) == (
        f"retentionrl: error: {tmp_path / 'ev.csv'}: cannot parse file: not utf-8 text (invalid start byte)")
    (tmp_path / "map.yaml").write_bytes(b"log: ev.csv\ncolumns: {user_id: \xe9}\n")
    assert _run(capsys, "--dataset", "eventlog", "--data-dir", spec) == (
        f"retentionrl: error: {spec}: not UTF-8 text (byte 31: invalid continuation byte)")


def test_column_map_one_source_column_twice(capsys, tmp_path):
    spec = _eventlog(tmp_path, click="c", like="c")
    assert _run(capsys, "--dataset", "eventlog", "--data-dir", spec) == (
        f"retentionrl: error: {spec}: 'columns' maps column 'c' to both 'click' and 'like'")


def test_ml100k_unreadable_file(capsys, tmp_path, monkeypatch):
    """Permission denied (root reads anything, so the refusal is simulated at the open() call)."""
    (tmp_path / "u.data").write_text("1\t2\t3\t881250949\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    (tmp_path / "u.item").write_text("2|Toy|01-Jan-1995||url" + "|0" * 19 + "\n")
    real_open = open

    def deny(path, *a, **k):
        if str(path).endswith("u.user"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    msg = _run(capsys, "--dataset", "ml-100k", "--data-dir", str(tmp_path))
    assert msg == f"retentionrl: error: {tmp_path / 'u.user'}: cannot read file: permission denied"


# --- train configs: a traceback or a half-written run directory on the old code -------------------------------

@pytest.fixture(scope="module")
def bundle(tiny_sim, tmp_path_factory):
    return str(tiny_sim.save(tmp_path_factory.mktemp("bad") / "bundle"))


def _train(capsys, tmp_path, bundle, text: str) -> str:
    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(text)
    code = main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not run.exists()  # nothing written
    prefix = f"retentionrl: error: {cfg}"
    assert err.startswith(prefix), err
    return err.strip()[len(prefix):]


@pytest.mark.parametrize(("text", "expect"), [
    ("env: {n_users: 4}", ".env.n_users: the training loop sets this itself; give the training users as the "
                          "top-level 'n_users'"),
    ("env: {users: all}", ".env.users: the training loop sets this itself; training draws the bundle's train users"),
    ("env: {action_mode: items}", ".env.action_mode: the training loop sets this itself; the agent decides it"),
    ("env: {returns: learned}", ".env.returns: expected a mapping, got 'learned'"),
    ("env: {leave: [temper]}", ".env.leave: expected a mapping, got ['temper']"),
    ("env: {slate_size: x}", ".env.slate_size: expected an integer, got 'x'"),
    ("log_every: 0", ".log_every: must be an integer >= 1, got 0"),
    ("eval_every: 0", ".eval_every: must be an integer >= 1, got 0"),
    ("checkpoint_every: 0", ".checkpoint_every: must be an integer >= 1, got 0"),
    ("n_users: 0", ".n_users: must be an integer >= 1, got 0"),
    ("total_steps: -1", ".total_steps: must be an integer >= 1, got -1"),
    ("warmup_steps: -1", ".warmup_steps: must be an integer >= 0, got -1"),
    ("eval: {preset: kuaism}", ": eval.preset: unknown simulator preset 'kuaism' (known: kuaisim, learned)"),
    ("eval: {env_overrides: {returns: 3}}", ": eval.env_overrides.returns: expected a mapping, got 3"),
    ("algo: bc\nepochs: 0", ".epochs: must be an integer >= 1, got 0"),
    ("algo: bc\nn_log_users: 0", ".n_log_users: must be an integer >= 1, got 0"),
    ("algo: bc\nenv: {n_users: 8}", ".env.n_users: the training loop sets this itself"),
    ("agent: {gamma: x}", ".agent.gamma: expected a number, got 'x'"),
    ("agent: {gama: 0.9}", ".agent: unknown key 'gama' (allowed: "),
    ("algo: random\nagent: {weights: 1}", ".agent: unknown key 'weights' (allowed: action_mode, per_user)"),
    ("algo: td3x", ".algo: unknown algorithm 'td3x' (known: td3, "),
    ("algo: bc\nbehaviour_agent: {gamma: 1}", ".behaviour_agent: unknown key 'gamma' (allowed: weights)"),
    ("algo: bc\nbehaviour: rankin", ".behaviour: unknown algorithm 'rankin' (known: "),
])
def test_bad_train_config_names_file_and_key(capsys, tmp_path, bundle, text, expect):
    steps = "" if text.startswith("algo: bc") else "total_steps: 3\n"
    assert _train(capsys, tmp_path, bundle, f"{steps}{text}\n").startswith(expect)


def test_train_config_not_utf8(capsys, tmp_path, bundle):
    (tmp_path / "c.yaml").write_bytes(b"algo: td3\n# \xff\n")
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--simulator", bundle, "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == f"retentionrl: error: {tmp_path / 'c.yaml'}: not UTF-8 text (byte 12: invalid start byte)\n"


def test_train_function_validates_too(tiny_sim, tmp_path):
    """Called from Python, not the CLI: the same checks, before the run directory is written."""
    from retentionrl.config import ConfigError
    from retentionrl.training.offline import OfflineTrainConfig, train_offline
    from retentionrl.training.online import TrainConfig, train

    with pytest.raises(ConfigError, match=r"^train config\.log_every: must be an integer >= 1, got 0$"):
        train(TrainConfig(total_steps=3, log_every=0), tiny_sim, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^train config\.batch_size: must be an integer >= 1, got 0$"):
        train_offline(OfflineTrainConfig(batch_size=0), tiny_sim, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_scalar_where_a_section_is_expected():
    from retentionrl.config import ConfigError, from_dict
    from retentionrl.simulator.build import BuildConfig
    from retentionrl.simulator.env import EnvConfig

    with pytest.raises(ConfigError, match=r"^build\.yaml\.response: expected a mapping, got 16$"):
        from_dict(BuildConfig, {"response": 16}, "build.yaml")
    with pytest.raises(ConfigError, match=r"^x\.leave: expected a mapping, got 'satisfaction'$"):
        from_dict(EnvConfig, {"leave": "satisfaction"}, "x")
    with pytest.raises(ConfigError, match=r"^x: expected a mapping, got \[1\]$"):
        from_dict(EnvConfig, [1], "x")  # type: ignore[arg-type]
    assert from_dict(EnvConfig, {"leave": None}, "x").leave.initial_temper == 5.0  # an empty section: defaults


# --- main(): what user input or the machine raises outside our own checks ------------------------------------

def test_out_path_under_a_file(capsys, tmp_path, bundle):
    (tmp_path / "file").write_text("")
    code = main(["train", "--algo", "random", "--simulator", bundle, "--out", str(tmp_path / "file" / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"retentionrl: error: {tmp_path / 'file' / 'run'}: Not a directory\n"


def _raise(exc):
    def cmd(_args):
        raise exc
    return cmd


@pytest.mark.parametrize(("exc", "expect"), [
    (PermissionError(13, "Permission denied", "/runs/a/metrics.jsonl"), "/runs/a/metrics.jsonl: Permission denied"),
    (OSError(28, "No space left on device", "/runs/a/checkpoints/last.pt"),
     "/runs/a/checkpoints/last.pt: No space left on device"),
    (IsADirectoryError(21, "Is a directory", "/runs/a"), "/runs/a: Is a directory"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
     "cannot decode text as utf-8 (byte 0: invalid start byte)"),
    (__import__("json").JSONDecodeError("Expecting value", "x\n{", 2), "not valid JSON: Expecting value (line 2, column 1)"),
    (yaml.YAMLError("mapping values are not allowed here"), "not valid YAML: mapping values are not allowed here"),
    (pd.errors.ParserError("Error tokenizing data.\nC error: Expected 3 fields in line 5, saw 4"),
     "cannot parse a table: Error tokenizing data. C error: Expected 3 fields in line 5, saw 4"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory (can't allocate memory: you tried to allocate 40000000000000 bytes. Error code 12 (Cannot "
     "allocate memory)); fewer parallel users or a smaller batch or model needs less"),
    (MemoryError(), "out of memory (MemoryError); fewer parallel users or a smaller batch or model needs less"),
    (ZeroDivisionError("division by zero"), "internal error: ZeroDivisionError: division by zero (run with "
                                            "RETENTIONRL_DEBUG=1 for the traceback, and please report it)"),
])
def test_main_turns_outside_errors_into_one_line(capsys, monkeypatch, exc, expect):
    monkeypatch.setattr("retentionrl.cli.cmd_data_stats", _raise(exc))
    monkeypatch.delenv("RETENTIONRL_DEBUG", raising=False)
    assert main(["data", "stats"]) == 2
    assert capsys.readouterr().err == f"retentionrl: error: {expect}\n"


def test_debug_env_var_shows_the_traceback(monkeypatch):
    monkeypatch.setattr("retentionrl.cli.cmd_data_stats", _raise(ZeroDivisionError("division by zero")))
    monkeypatch.setenv("RETENTIONRL_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["data", "stats"])


@pytest.mark.parametrize(("argv", "expect"), [
    (["data", "stats", "--max-day", "0"], "max_day (--max-day) must be an integer >= 1, got 0"),
    (["simulator", "report", "BUNDLE", "--users", "0"], "--users must be at least 1, got 0"),
    (["simulator", "report", "BUNDLE", "--preset", "kuaism"], "--preset: unknown simulator preset 'kuaism'"),
])
def test_bad_command_line_values(capsys, tmp_path, bundle, argv, expect):
    """Silently accepted before (a histogram with one '0+' bucket), or a report of no sessions half-written."""
    out = tmp_path / "report"
    argv = [bundle if a == "BUNDLE" else a for a in argv] + (["--out", str(out)] if argv[0] == "simulator" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"retentionrl: error: {expect}") and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_closed_output_pipe_is_quiet(capsys, monkeypatch):
    """`retentionrl data stats | head -1`: the reader left; no traceback and no error line (it was a traceback)."""
    monkeypatch.setattr("retentionrl.cli.cmd_data_stats", _raise(BrokenPipeError(32, "Broken pipe")))
    assert main(["data", "stats"]) == 141
    assert capsys.readouterr().err == ""


# --- damaged run directories: a traceback (YAMLError, KeyError, JSONDecodeError) on the old code --------------

TINY_RUN = ("algo: random\ntotal_steps: 4\nn_users: 2\nlog_every: 1\neval_every: 4\ncheckpoint_every: 2\n"
            "eval: {n_users: 2, n_episodes: 2, seeds: [1]}\n")


@pytest.fixture(scope="module")
def finished_run(bundle, tmp_path_factory):
    """A finished 4-step random run (metrics.jsonl has 5 lines: 4 train records and the final eval)."""
    base = tmp_path_factory.mktemp("finished")
    (base / "c.yaml").write_text(TINY_RUN)
    assert main(["train", "--config", str(base / "c.yaml"), "--simulator", bundle, "--out", str(base / "run")]) == 0
    return base / "run"


def _copy_run(finished_run, tmp_path):
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _commands(run, bundle, tmp_path):
    return {"evaluate": ["evaluate", run, "--simulator", bundle],
            "resume": ["train", "--resume", run, "--simulator", bundle],
            "compare": ["compare", run, "--out", tmp_path / "cmp"]}


@pytest.mark.parametrize("command", ["evaluate", "resume", "compare"])
@pytest.mark.parametrize(("text", "expect"), [
    ("algo: [random\n", "config.yaml: not valid YAML: while parsing a flow sequence"),
    ("- algo\n- random\n", "config.yaml: a config must be a YAML mapping"),
    ("", "config.yaml: not a run config (no 'algo' and 'seed'; damaged or emptied?)"),
])
def test_damaged_run_config_names_the_file(capsys, tmp_path, bundle, finished_run, command, text, expect):
    run = _copy_run(finished_run, tmp_path)
    (run / "config.yaml").write_text(text)
    before = _files(run)
    assert _fails(capsys, _commands(run, bundle, tmp_path)[command]) == f"retentionrl: error: {run}/{expect}"
    assert _files(run) == before and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(("text", "expect"), [
    ('{"eval": ', "not valid JSON (Expecting value at line 1, column 10)"),
    ("[1, 2]", "not a run summary (no 'eval' results)"),
])
def test_damaged_summary_names_the_file(capsys, tmp_path, finished_run, text, expect):
    run = _copy_run(finished_run, tmp_path)
    (run / "summary.json").write_text(text)
    msg = _fails(capsys, ["compare", run, "--out", tmp_path / "cmp"])
    assert msg == f"retentionrl: error: {run}/summary.json: {expect}"
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("command", ["resume", "compare"])
@pytest.mark.parametrize(("bad", "expect"), [
    ('{"step": 3, "event"', "line 3: not valid JSON (Expecting ':' delimiter at column 20)"),
    ("[3]", "line 3: not a record with an integer 'step'"),
    ('{"step": "3"}', "line 3: not a record with an integer 'step'"),
])
def test_bad_metrics_line_names_file_and_line(capsys, tmp_path, bundle, finished_run, command, bad, expect):
    """A bad line before the last one is damage, not a crash's torn write: refused, naming the line."""
    run = _copy_run(finished_run, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[2] = bad + "\n"
    (run / "metrics.jsonl").write_text("".join(lines))
    before = _files(run)
    msg = _fails(capsys, _commands(run, bundle, tmp_path)[command])
    assert msg == f"retentionrl: error: {run}/metrics.jsonl, {expect}"
    assert _files(run) == before and not (tmp_path / "cmp").exists()


def test_resume_drops_a_torn_last_metrics_line(capsys, tmp_path, bundle, finished_run):
    """A crash mid-append leaves a last line without its newline; resuming replays that step, so it is dropped."""
    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(TINY_RUN)
    argv = ["train", "--config", cfg, "--simulator", bundle, "--out", run]
    assert main([str(a) for a in [*argv, "--stop-after", "2"]]) == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "event": "tr')
    assert main(["train", "--resume", str(run), "--simulator", bundle]) == 0
    capsys.readouterr()
    def records(r):  # all but the wall-clock time
        text = (r / "metrics.jsonl").read_text()
        assert text.endswith("}\n")
        return [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in text.splitlines()]

    assert records(run) == records(finished_run)  # the torn step-3 record replaced by the replayed one


def test_bad_agent_key_in_a_run_config_names_it(capsys, tmp_path, bundle, finished_run):
    run = _copy_run(finished_run, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "agent": {"action_mode": 3, "x": 1}}))
    assert _fails(capsys, ["evaluate", run, "--simulator", bundle]) == (
        f"retentionrl: error: {run}/config.yaml.agent: unknown key 'x' (allowed: action_mode, per_user)")


# --- train --stop-after: 0 or a negative count trained one step and exited 0 on the old code -------------------

@pytest.mark.parametrize("value", ["0", "-3"])
def test_stop_after_below_one_is_refused(capsys, tmp_path, bundle, value):
    run = tmp_path / "run"
    msg = _fails(capsys, ["train", "--algo", "random", "--simulator", bundle, "--out", run, "--stop-after", value])
    assert msg == (f"retentionrl: error: --stop-after must be an integer >= 1 (steps or updates to run before "
                   f"stopping), got {value}")
    assert not run.exists()


def test_train_function_refuses_stop_after_zero(tiny_sim, tmp_path):
    from retentionrl.training.offline import OfflineTrainConfig, train_offline
    from retentionrl.training.online import TrainConfig, train

    with pytest.raises(RetentionRLError, match=r"^stop_after must be an integer >= 1 .*got 0$"):
        train(TrainConfig(algo="random", total_steps=3), tiny_sim, tmp_path / "a", stop_after=0)
    with pytest.raises(RetentionRLError, match=r"^stop_after must be an integer >= 1 .*got -1$"):
        train_offline(OfflineTrainConfig(), tiny_sim, tmp_path / "b", stop_after=-1)
    assert list(tmp_path.iterdir()) == []


# --- a full disk: the one line named no file (torch.save) or a temporary file on the old code ------------------

def _enospc(*_a, **_k):
    raise OSError(28, "No space left on device")


def _partial_then_full(real):
    """``real`` writing half of its data, then the disk is full."""
    def write(self, data, *a, **k):
        real(self, data[: len(data) // 2], *a, **k)
        raise OSError(28, "No space left on device")
    return write


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(capsys, tmp_path, bundle, monkeypatch):
    import torch

    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(TINY_RUN)
    assert main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(run), "--stop-after", "2"]) == 0
    saved = (run / "checkpoints" / "last.pt").read_bytes()
    real_save = torch.save

    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # the bytes go out, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("retentionrl.training.checkpoint.torch.save", save)
    msg = _fails(capsys, ["train", "--resume", run, "--simulator", bundle])
    assert msg == f"retentionrl: error: {run}/checkpoints/last.pt: cannot write: No space left on device"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]  # no temporary file left
    assert (run / "checkpoints" / "last.pt").read_bytes() == saved


@pytest.mark.parametrize("name", ["config.yaml", "summary.json"])
def test_full_disk_while_writing_run_files(capsys, tmp_path, bundle, monkeypatch, name):
    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(TINY_RUN)
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name.startswith(f".{name}."):  # atomic_path's temporary file
            return _partial_then_full(real)(self, *a, **k)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    msg = _fails(capsys, ["train", "--config", cfg, "--simulator", bundle, "--out", run])
    assert msg == f"retentionrl: error: {run}/{name}: cannot write: No space left on device"
    if name == "config.yaml":
        assert not run.exists()  # the run directory it created is removed again
    else:
        assert not (run / name).exists() and not list(run.glob(".*.tmp"))


def test_full_disk_while_logging_leaves_no_half_record(capsys, tmp_path, bundle, monkeypatch):
    import builtins
    import io

    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(TINY_RUN)
    real_open, opened = builtins.open, []

    class Full(io.FileIO):  # the second metrics record: half of it fits, then the disk is full
        def write(self, data):
            if len(opened) < 2:
                return super().write(data)
            if not getattr(self, "_half", False):
                self._half = True
                return super().write(bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            opened.append(path)
            return Full(path, "ab")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    msg = _fails(capsys, ["train", "--config", cfg, "--simulator", bundle, "--out", run])
    assert msg == f"retentionrl: error: {run}/metrics.jsonl: cannot write: No space left on device"
    monkeypatch.undo()
    lines = (run / "metrics.jsonl").read_text().split("\n")
    assert len(lines) == 2 and lines[1] == "" and json.loads(lines[0])["step"] == 1


def test_compile_without_a_cpp_compiler_is_one_line_naming_the_config_key(capsys, tiny_sim, tmp_path, monkeypatch):
    """``compile: true`` needs a C++ compiler; without one the run is refused before anything is written, naming
    the config file and key (inductor would otherwise fail at the first forward with a long trace)."""
    import shutil

    import yaml

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    cfg = tmp_path / "td3.yaml"
    cfg.write_text(yaml.safe_dump({"algo": "td3", "total_steps": 8, "warmup_steps": 2, "n_users": 4, "compile": True,
                                   "agent": {"batch_size": 4, "hidden": [8], "state_dim": 8, "token_dim": 8}}))
    code = main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{cfg}.compile" in err and "C++ compiler" in err
    assert not (tmp_path / "run").exists()
