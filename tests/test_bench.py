"""Grid runner and comparison report: cells are resumable, the table has CIs and t-test marks."""

from __future__ import annotations

import yaml

from retentionrl.bench.grid import cells, run_grid
from retentionrl.bench.report import comparison_table, load_runs
from retentionrl.cli import main


def _configs(tmp_path):
    ev = {"n_users": 8, "n_episodes": 8, "seeds": [101]}
    paths = []
    for name, algo, agent in (("fixed", "ranking", {"weights": [1, 0, 0, 0, 0, 0, 0]}), ("rand", "random", {})):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({"algo": algo, "total_steps": 1, "warmup_steps": 0, "n_users": 4,
                                     "env": {"max_sessions": 2}, "eval": ev, "agent": agent}))
        paths.append(p)
    return paths


def test_grid_runs_skips_finished_and_compares(tiny_sim, tmp_path, capsys):
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    grid = cells(_configs(tmp_path), [0, 1, 2], tmp_path / "runs", bundle)
    done = run_grid(grid, log=lambda *_: None)
    assert len(done) == 6
    stamp = (tmp_path / "runs" / "fixed" / "seed0" / "summary.json").stat().st_mtime_ns
    assert len(run_grid(grid, log=lambda *_: None)) == 6
    assert (tmp_path / "runs" / "fixed" / "seed0" / "summary.json").stat().st_mtime_ns == stamp  # skipped

    runs = load_runs(done)
    assert set(runs) == {"fixed", "rand"} and all(len(v) == 3 for v in runs.values())
    md, csv_text, ref = comparison_table(runs, reference="rand")
    assert "| fixed | 3 |" in md and "(ref)" in md and "±" in md
    assert csv_text.splitlines()[0].startswith("method,seeds,return_time_mean")

    assert main(["compare", *done, "--out", str(tmp_path / "cmp"), "--reference", "fixed"]) == 0
    assert (tmp_path / "cmp" / "training_curves.png").is_file()
    assert "Welch t-test against **fixed**" in capsys.readouterr().out


def test_compare_rejects_unfinished_or_foreign_dirs(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["compare", str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err
