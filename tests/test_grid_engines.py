"""``retentionrl grid``: grid files (matrix expansion, errors naming file and key), the local engine (resume,
bounded retries, a failing cell reported while the others finish, progress with ETA), the Ray engine (the same
cells give the same numbers as the local engine, on a local Ray cluster) and TensorBoard event files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from retentionrl.bench import engines
from retentionrl.bench.gridfile import load_grid, substitute
from retentionrl.cli import main
from retentionrl.errors import RetentionRLError

EVAL = {"n_users": 8, "n_episodes": 8, "seeds": [101]}
# A short online run that learns (TD3 updates after warm-up), so that its numbers depend on every seeded draw.
TD3 = {"algo": "td3", "total_steps": 16, "warmup_steps": 4, "n_users": 4, "log_every": 4, "eval_every": 16,
       "checkpoint_every": 8, "env": {"max_sessions": 2}, "eval": EVAL,
       "agent": {"batch_size": 8, "hidden": [8], "state_dim": 8, "token_dim": 8}}


def _write_grid(tmp_path: Path, bundle: str, tables: dict | None = None) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "td3.yaml").write_text(yaml.safe_dump(TD3))
    (tmp_path / "configs" / "ranking.yaml").write_text(yaml.safe_dump(
        {"algo": "ranking", "total_steps": 1, "warmup_steps": 0, "n_users": 4, "env": {"max_sessions": 2},
         "eval": EVAL, "agent": {"weights": [1, 0, 0, 0, 0, 0, 0]}}))
    tables = tables or {"t": {"runs": "runs", "cells": [
        {"config": "configs/td3.yaml", "label": "td3-w{w}", "matrix": {"w": [8, 16]},
         "overrides": {"agent": {"hidden": ["{w}"]}}, "baseline": True}]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"bundles": {"b": bundle}, "seeds": [0, 1], "results": "results",
                                    "tables": tables}))
    return path


def _seeds(table: str, label: str) -> int:
    """The seeds column of ``label``'s row (the reference row is marked ``(ref)``)."""
    return int(re.search(rf"^\| {re.escape(label)}(?: \(ref\))? \| (\d+) \|", table, re.M)[1])


def _evals(root: Path) -> dict[str, dict]:
    return {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())["eval"]
            for p in sorted(root.glob("*/seed*/summary.json"))}


def test_substitute_keeps_a_whole_value_and_formats_floats_in_text() -> None:
    got = substitute({"label": "x-lam{lam}-{step}", "agent": {"lam": "{lam}", "step": "{step}", "k": "{other}"}},
                     {"lam": 0.5, "step": "state"})
    assert got == {"label": "x-lam0.5-state", "agent": {"lam": 0.5, "step": "state", "k": "{other}"}}
    assert substitute("a{v}", {"v": 0.0}) == "a0" and substitute("{v}", {"v": 10.0}) == 10.0


def test_grid_file_expands_the_matrix_and_merges_overrides(tmp_path) -> None:
    path = _write_grid(tmp_path, "bundle", {"t_{x}": {"matrix": {"x": ["a", "b"]}, "runs": "runs/{x}",
                                                      "overrides": {"env": {"max_sessions": 3}}, "cells": [
        {"config": "configs/td3.yaml", "label": "td3-{x}-{w}", "matrix": {"w": [8, 16]},
         "overrides": {"agent": {"hidden": ["{w}"]}}}, "configs/ranking.yaml"]}})
    tables = load_grid(path)
    assert [t.name for t in tables] == ["t_a", "t_b"]
    a = tables[0]
    assert [e.label for e in a.entries] == ["td3-a-8", "td3-a-16", "ranking"]
    assert a.entries[1].overrides == {"env": {"max_sessions": 3}, "agent": {"hidden": [16]}}
    assert a.entries[0].runs == tmp_path / "runs" / "a" and a.out == tmp_path / "results" / "t_a"


@pytest.mark.parametrize("tables, message", [
    ({"t": {"runs": "r", "cells": ["configs/td3.yaml"], "refrence": "x"}}, "tables.t: unknown key 'refrence'"),
    ({"t": {"runs": "r", "cells": ["configs/nope.yaml"]}}, "tables.t.cells[0].config: no such file"),
    ({"t": {"runs": "r", "cells": ["configs/td3.yaml", "configs/td3.yaml"]}}, "tables.t.cells: label 'td3' names two cells"),
    ({"t": {"runs": "r", "bundle": "other", "cells": ["configs/td3.yaml"]}}, "tables.t.bundle: one of b"),
    ({"t": {"cells": ["configs/td3.yaml"]}}, "tables.t.cells[0].runs: the folder"),
    ({"t": {"runs": "r", "seeds": [0, "1"], "cells": ["configs/td3.yaml"]}}, "tables.t.seeds: a non-empty list"),
    ({"t": {"runs": "r", "matrix": {"x": []}, "cells": ["configs/td3.yaml"]}}, "tables.t.matrix: a mapping"),
])
def test_a_bad_grid_file_is_one_line_naming_file_and_key(tmp_path, capsys, tables, message) -> None:
    path = _write_grid(tmp_path, "bundle", tables)
    with pytest.raises(RetentionRLError, match="grid.yaml: " + message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(path)
    assert main(["grid", str(path), "--no-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_local_grid_runs_resumes_and_writes_the_table(tiny_sim, tmp_path, capsys) -> None:
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    path = _write_grid(tmp_path, bundle)
    assert main(["grid", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "[grid] 4 cells, 0 already finished, 4 to run" in out and "[grid] 4/4 done, 0 running, 0 failed" in out
    assert "ETA" in out  # after the first cell, while others are left
    table = (tmp_path / "results" / "t" / "comparison.md").read_text()
    assert _seeds(table, "td3-w8") == 2 and _seeds(table, "td3-w16") == 2
    first = _evals(tmp_path / "runs")
    assert len(first) == 4
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/seed*/summary.json")}
    assert main(["grid", str(path)]) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rerun


def test_a_partial_grid_does_not_shrink_a_fuller_table_on_disk(tiny_sim, tmp_path, capsys) -> None:
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    path = _write_grid(tmp_path, bundle)
    assert main(["grid", str(path)]) == 0
    table = tmp_path / "results" / "t" / "comparison.md"
    full = table.read_text()
    # A new machine: runs/ lost, one cell rerun with --only. Its 2-cell table must not replace the 4-cell one.
    for p in (tmp_path / "runs").glob("td3-w16/*"):
        p.rename(tmp_path / f"away-{p.name}")
    assert main(["grid", str(path), "--only", "td3-w8"]) == 0
    assert "t: 2 of 4 cells finished here" in capsys.readouterr().out and table.read_text() == full
    assert main(["grid", str(path), "--no-run", "--overwrite-partial"]) == 0
    assert "td3-w16" not in table.read_text() and _seeds(table.read_text(), "td3-w8") == 2
    # Once every cell has finished again the table is written whatever is on disk.
    assert main(["grid", str(path)]) == 0
    assert _seeds(table.read_text(), "td3-w16") == 2


def test_a_failing_cell_is_retried_then_reported_while_the_others_finish(tiny_sim, tmp_path, capsys,
                                                                      monkeypatch) -> None:
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    path = _write_grid(tmp_path, bundle)
    calls: dict[str, int] = {}
    real = engines.run_cell

    def flaky(cell, *a, **k):
        calls[cell.run_dir] = calls.get(cell.run_dir, 0) + 1
        if cell.method == "td3-w16" and cell.seed == 1:
            raise RuntimeError("disk on fire")  # always
        if cell.method == "td3-w8" and cell.seed == 0 and calls[cell.run_dir] == 1:
            raise RetentionRLError("transient")  # once
        return real(cell, *a, **k)

    monkeypatch.setattr(engines, "run_cell", flaky)
    assert main(["grid", str(path), "--retries", "2"]) == 1
    cap = capsys.readouterr()
    assert "FAILED" in cap.out and "transient (trying again)" in cap.out
    assert cap.out.count("RuntimeError: disk on fire") == 3 and "after 3 tries" in cap.out
    assert "1 cell(s) did not finish" in cap.err
    assert len(_evals(tmp_path / "runs")) == 3  # the other three finished, the flaky one on its second try
    assert _seeds((tmp_path / "results" / "t" / "comparison.md").read_text(), "td3-w16") == 1


def test_ray_engine_gives_the_local_engines_numbers(tiny_sim, tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    local = _write_grid(tmp_path / "a", bundle) if (tmp_path / "a").mkdir() is None else None
    remote = _write_grid(tmp_path / "b", bundle) if (tmp_path / "b").mkdir() is None else None
    assert main(["grid", str(local), "--workers", "2"]) == 0
    assert main(["grid", str(remote), "--engine", "ray", "--workers", "2"]) == 0
    assert "[grid] 4/4 done, 0 running, 0 failed" in capsys.readouterr().out
    a, b = _evals(tmp_path / "a" / "runs"), _evals(tmp_path / "b" / "runs")
    assert len(a) == 4 and a == b  # same cell directories (keys), the same numbers to the last bit
    for p in (tmp_path / "a" / "runs").glob("*/seed*/metrics.jsonl"):
        strip = [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in p.read_text().splitlines()]
        q = tmp_path / "b" / "runs" / p.parent.parent.name / p.parent.name / "metrics.jsonl"
        assert strip == [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in q.read_text().splitlines()]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_mirror_metrics_jsonl_and_a_resume_purges_the_replayed_steps(tiny_sim, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    cfg = tmp_path / "td3.yaml"
    cfg.write_text(yaml.safe_dump({**TD3, "seed": 0}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(run), "--stop-after", "8",
                 "--tensorboard"]) == 0
    # A crash after a log record that no checkpoint covers: metrics.jsonl and the events hold a step-12 record
    # that the resumed run replays (and must replace, not duplicate).
    from retentionrl.training.run import RunDir

    RunDir(run, tensorboard=True).log({"step": 12, "event": "train", "critic_loss": 999.0})
    assert main(["train", "--resume", str(run), "--tensorboard"]) == 0
    # The switch belongs to the run: the next run in this process writes no events unless it asks.
    assert main(["train", "--config", str(cfg), "--simulator", bundle, "--out", str(tmp_path / "plain"),
                 "--stop-after", "4"]) == 0
    assert (tmp_path / "plain" / "metrics.jsonl").is_file() and not (tmp_path / "plain" / "tensorboard").exists()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    tb = _scalars(run / "tensorboard")
    want: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                want.setdefault(f"{r['event']}/{k}", []).append((r["step"], pytest.approx(float(v), rel=1e-6)))
    assert set(tb) == set(want) and "train/critic_loss" in tb and "eval/return_time" in tb
    for tag, points in want.items():
        assert tb[tag] == points, tag  # one value per step, the resumed run's
    assert 999.0 not in [v for _, v in tb["train/critic_loss"]]
