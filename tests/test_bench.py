"""Grid runner and comparison report: cells are resumable, the table has CIs and t-test marks."""

from __future__ import annotations

from pathlib import Path

import yaml

from retentionrl.bench.engines import run_grid
from retentionrl.bench.grid import cells
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
    first = Path(grid[0].run_dir) / "summary.json"
    assert first.parent.parent == tmp_path / "runs" / "fixed" and first.parent.name.startswith("seed0-")
    stamp = first.stat().st_mtime_ns
    assert len(run_grid(grid, log=lambda *_: None)) == 6
    assert first.stat().st_mtime_ns == stamp  # skipped

    runs = load_runs(done)
    assert set(runs) == {"fixed", "rand"} and all(len(v) == 3 for v in runs.values())
    md, csv_text, ref = comparison_table(runs, reference="rand")
    assert "| fixed | 3 |" in md and "(ref)" in md and "±" in md
    assert csv_text.splitlines()[0].startswith("method,seeds,return_time_mean")

    assert main(["compare", *done, "--out", str(tmp_path / "cmp"), "--reference", "fixed"]) == 0
    assert (tmp_path / "cmp" / "training_curves.png").is_file()
    assert "Welch t-test against **fixed**" in capsys.readouterr().out


def test_grid_reruns_exactly_the_cells_whose_config_or_bundle_changed(tiny_sim, tmp_path):
    """A cell is keyed by its resolved config and the bundle fingerprint: an edited config reruns its cells (in
    new directories, the old results untouched and not returned), another bundle reruns every cell."""
    from retentionrl.simulator.bundle import Simulator

    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    fixed, rand = _configs(tmp_path)
    log: list[str] = []
    grid = cells([fixed, rand], [0], tmp_path / "runs", bundle)
    before = run_grid(grid, log=lambda *_: None)
    stamps = {d: (Path(d) / "summary.json").stat().st_mtime_ns for d in before}

    edited = yaml.safe_load(fixed.read_text())
    edited["agent"]["weights"] = [-1, 0, 0, 0, 0, 0, 0]
    fixed.write_text(yaml.safe_dump(edited))
    grid2 = cells([fixed, rand], [0], tmp_path / "runs", bundle)
    after = run_grid(grid2, log=log.append)
    assert log[0] == "[grid] 2 cells, 1 already finished, 1 to run"
    assert after[1] == before[1] and after[0] != before[0]  # rand kept, fixed rerun elsewhere
    assert {d: (Path(d) / "summary.json").stat().st_mtime_ns for d in before} == stamps  # nothing overwritten
    runs = load_runs(after)
    assert yaml.safe_load((Path(after[0]) / "config.yaml").read_text())["agent"]["weights"][0] == -1
    assert runs["fixed"][0]["eval"]["click_rate"] < load_runs(before)["fixed"][0]["eval"]["click_rate"]

    other = Simulator(tiny_sim.response, tiny_sim.leave_model, tiny_sim.return_model, dict(tiny_sim.tensors),
                      {**tiny_sim.meta, "reference_reward": tiny_sim.meta["reference_reward"] + 1},
                      tiny_sim.build_config).save(tmp_path / "bundle2")
    log.clear()
    moved = run_grid(cells([fixed, rand], [0], tmp_path / "runs", str(other)), log=log.append)
    assert log[0] == "[grid] 2 cells, 0 already finished, 2 to run" and not set(moved) & set(after)


def test_a_runs_own_config_is_a_grid_config_with_the_same_key(tiny_sim, tmp_path):
    """A finished run's config.yaml (with its recorded bundle section) plans the same cell as the file it came
    from: the record is provenance, not a setting."""
    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    fixed, _ = _configs(tmp_path)
    (first,) = run_grid(cells([fixed], [0], tmp_path / "runs", bundle), log=lambda *_: None)
    copied = tmp_path / "copy" / "fixed.yaml"  # same stem, so the same label
    copied.parent.mkdir()
    copied.write_text((Path(first) / "config.yaml").read_text())
    assert "bundle" in yaml.safe_load(copied.read_text())
    (again,) = cells([copied], [0], tmp_path / "runs", bundle)
    assert again.run_dir == first


def test_compare_rejects_unfinished_or_foreign_dirs(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["compare", str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_grid_variants_sweep_plot_and_reference_among_baselines(tiny_sim, tmp_path):
    """A (label, config, overrides) variant runs its own overrides; the sweep plot and its table come from the
    finished runs; the t-test reference can be restricted to the baselines."""
    from retentionrl.bench.report import sweep_plot, write_comparison

    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    fixed, rand = _configs(tmp_path)
    variants = [(f"fixed-w{w:g}", fixed, {"agent": {"weights": [w, 0, 0, 0, 0, 0, 0]}}) for w in (0.5, -1.0)]
    done = run_grid(cells([*variants, rand], [0, 1], tmp_path / "runs", bundle), log=lambda *_: None)
    runs = load_runs(done)
    assert set(runs) == {"fixed-w0.5", "fixed-w-1", "rand"}
    (run,) = (tmp_path / "runs" / "fixed-w-1").glob("seed0-*")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["agent"]["weights"][0] == -1.0 and cfg["label"] == "fixed-w-1"
    # Ranking against clicks (w = -1) shows fewer clicks than ranking by them (w = 0.5).
    assert runs["fixed-w-1"][0]["eval"]["click_rate"] < runs["fixed-w0.5"][0]["eval"]["click_rate"]

    md = sweep_plot(runs, {"fixed-w0.5": 0.5, "fixed-w-1": -1.0}, tmp_path / "sweep.png", "w")
    assert (tmp_path / "sweep.png").is_file()
    rows = [line for line in md.splitlines() if line.startswith("| -1 |") or line.startswith("| 0.5 |")]
    assert [r.split(" | ")[0] for r in rows] == ["| -1", "| 0.5"]  # sorted by the swept value

    _, ref = write_comparison(done, tmp_path / "cmp", reference_among=["fixed-w-1"])
    assert ref == "fixed-w-1"  # the only "baseline", although it is not the best method


def test_run_parallel_keeps_order_in_worker_processes():
    from retentionrl.bench.grid import run_parallel

    assert list(run_parallel(abs, [-3, 2, -1], workers=2)) == [3, 2, 1]
    assert list(run_parallel(abs, [-3, 2, -1], workers=1)) == [3, 2, 1]


def test_run_selected_runs_only_the_matching_labels_and_returns_every_finished_cell(tiny_sim, tmp_path):
    from retentionrl.bench.engines import run_selected

    bundle = str(tiny_sim.save(tmp_path / "bundle"))
    grid = cells(_configs(tmp_path), [0], tmp_path / "runs", bundle)  # labels "fixed", "rand"
    assert run_selected(grid, only=["r*"], log=lambda *_: None) == [grid[1].run_dir]
    assert run_selected(grid, no_run=True) == [grid[1].run_dir]  # nothing run, the finished cell returned
    assert run_selected(grid, only=["nothing*"]) == [grid[1].run_dir]
    assert run_selected(grid, log=lambda *_: None) == [grid[0].run_dir, grid[1].run_dir]


def test_sweep_table_shows_the_disagreement_columns_when_every_run_has_them(tmp_path):
    from retentionrl.bench.report import sweep_plot

    ev = lambda rt, d: {"return_time": rt, "click_rate": 0.9, "disagreement_click": d, "disagreement_return": d / 2}  # noqa: E731
    runs = {"a": [{"eval": ev(2.0, 0.3)}, {"eval": ev(2.2, 0.5)}], "b": [{"eval": ev(1.0, 0.1)}]}
    md = sweep_plot(runs, {"a": 1.0, "b": 2.0}, tmp_path / "s.png", "x")
    assert "disagree. click" in md and "disagree. return" in md
    assert "| 1 | 2 | 2.100 ± " in md and "| 0.400 ± " in md  # a's mean disagreement, with its CI
    del runs["b"][0]["eval"]["disagreement_click"]  # a run without it (an older bundle): the column is left out
    md = sweep_plot(runs, {"a": 1.0, "b": 2.0}, tmp_path / "s.png", "x")
    assert "disagree. click" not in md and "disagree. return" in md
