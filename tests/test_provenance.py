"""Provenance: every run records which simulator (fingerprint, bundle path) and which evaluation protocol made
it; resume, evaluate, compare and the grid refuse another simulator or protocol instead of mixing them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from retentionrl.cli import main
from conftest import td3_config

from retentionrl.errors import RetentionRLError
from retentionrl.simulator.bundle import Simulator
from retentionrl.simulator.synthetic import make_synthetic_simulator
from retentionrl.training.online import TrainConfig, train
from retentionrl.training.run import portable_path

EVAL = {"n_users": 8, "n_episodes": 8, "seeds": [101]}


def _cfg(**kw) -> TrainConfig:
    return td3_config(12, 8, 4, **{"seed": 1, "n_users": 4, "eval_users": 8, "eval_seeds": [101], "warmup_steps": 4,
                                   "eval_every": 12, **kw})


def _bundle(tmp_path: Path, name: str = "bundle", seed: int = 0) -> Simulator:
    return Simulator.load(make_synthetic_simulator(n_users=32, n_items=60, seed=seed).save(tmp_path / name))


def _variant(sim: Simulator, **meta) -> Simulator:
    return Simulator(sim.response, sim.leave_model, sim.return_model, dict(sim.tensors), {**sim.meta, **meta},
                     sim.build_config)


def test_fingerprint_is_content_not_location_or_build_time(tmp_path):
    mem = make_synthetic_simulator(n_users=32, n_items=60, seed=0)
    fp = mem.fingerprint
    assert len(fp) == 64 and mem.short_fingerprint == fp[:16] and mem.path is None
    a = Simulator.load(mem.save(tmp_path / "a"))
    b = Simulator.load(a.save(tmp_path / "deeper" / "b"))  # a copy, re-saved elsewhere
    assert a.fingerprint == b.fingerprint == fp and b.path == tmp_path / "deeper" / "b"
    assert _variant(a, built_at="2000-01-01T00:00:00Z", build_seconds=1e9).fingerprint == fp
    # Anything the simulation depends on changes it: a setting, one weight, another build.
    assert _variant(a, reference_reward=a.meta["reference_reward"] + 1).fingerprint != fp
    tweaked = Simulator.load(a.save(tmp_path / "c"))
    with torch.no_grad():
        next(tweaked.response.parameters()).view(-1)[0] += 1e-3
    assert tweaked.fingerprint != fp
    assert make_synthetic_simulator(n_users=32, n_items=60, seed=1).fingerprint != fp


def test_portable_path_is_relative_inside_a_tree_absolute_across_roots(tmp_path):
    assert portable_path(tmp_path / "bundles" / "b", tmp_path / "runs" / "r") == "../../bundles/b"
    assert portable_path("/opt/bundles/b", "/srv/runs/r") == "/opt/bundles/b"


def test_run_records_bundle_and_protocol_and_resume_refuses_another_simulator(tmp_path):
    sim = _bundle(tmp_path / "bundles")
    run = tmp_path / "runs" / "r"
    summary = train(_cfg(), sim, run, progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["bundle"] == {"fingerprint": sim.fingerprint, "path": "../../bundles/bundle",
                               "dataset": "synthetic"}
    assert (run / saved["bundle"]["path"]).resolve() == sim.path.resolve()
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["bundle"] == saved["bundle"] == summary["bundle"]
    assert on_disk["eval_config"] == {"preset": "kuaisim", "n_users": 8, "n_episodes": 8, "seeds": [101],
                                      "users": "test", "env_overrides": {"max_sessions": 2}, "max_steps": 10_000,
                                      "disagreement": True}
    assert on_disk["eval_pool_users"] == int(sim.test_users.sum()) > 0

    other = _bundle(tmp_path / "bundles", "other", seed=1)
    part = tmp_path / "runs" / "part"
    assert train(_cfg(), sim, part, progress=False, stop_after=8) is None
    with pytest.raises(RetentionRLError) as e:
        train(_cfg(), other, part, resume=True, progress=False)
    msg = str(e.value)
    assert sim.fingerprint[:16] in msg and other.fingerprint[:16] in msg and "\n" not in msg
    # A copy of the same bundle is the same simulator: resuming on it reaches the uninterrupted result.
    copy = Simulator.load(shutil.copytree(sim.path, tmp_path / "copy"))
    assert train(_cfg(), copy, part, resume=True, progress=False)["eval"] == summary["eval"]


def test_in_memory_simulator_is_recorded_without_a_path(tmp_path, capsys):
    sim = make_synthetic_simulator(n_users=32, n_items=60, seed=0)
    train(_cfg(total_steps=4, warmup_steps=4), sim, tmp_path / "r", progress=False)
    rec = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["bundle"]
    assert rec == {"fingerprint": sim.fingerprint, "path": None, "dataset": "synthetic"}
    assert main(["evaluate", str(tmp_path / "r")]) == 2
    assert "in-memory simulator" in capsys.readouterr().err
    bundle = str(sim.save(tmp_path / "saved"))  # its saved copy is the same simulator
    assert main(["evaluate", str(tmp_path / "r"), "--simulator", bundle]) == 0


def test_cli_resume_alone_evaluate_without_simulator_and_refusals(tmp_path, capsys):
    sim = _bundle(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in vars(_cfg()).items()}))
    run = str(tmp_path / "run")
    assert main(["train", "--config", str(cfg), "--simulator", str(sim.path), "--out", run, "--stop-after", "8"]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint == f"stopped at step 8; continue with: retentionrl train --resume {run}"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**vars(_cfg()), "total_steps": 16, "log_every": 8}))
    assert main(["train", "--resume", run, "--config", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config (differs in: log_every, total_steps)" in err[0]
    assert main(["train", "--resume", run]) == 0  # the run's own config and bundle
    assert capsys.readouterr().out.startswith(f"{run}: return time")

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert main(["evaluate", run]) == 0
    assert json.loads(capsys.readouterr().out) == summary["eval"]
    foreign = _bundle(tmp_path, "foreign", seed=1)
    for argv in (["evaluate", run, "--simulator", str(foreign.path)],
                 ["train", "--resume", run, "--simulator", str(foreign.path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and sim.fingerprint[:16] in err[0] and foreign.fingerprint[:16] in err[0]

    # A run moved together with its bundle still finds it (the recorded path is relative).
    shutil.move(str(tmp_path), str(tmp_path.with_name(tmp_path.name + "-moved")))
    moved = tmp_path.with_name(tmp_path.name + "-moved")
    assert main(["evaluate", str(moved / "run")]) == 0
    assert json.loads(capsys.readouterr().out) == summary["eval"]
    shutil.move(str(moved / "bundle"), str(moved / "elsewhere"))
    assert main(["evaluate", str(moved / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not at" in err[0] and "pass --simulator" in err[0]
    assert main(["evaluate", str(moved / "run"), "--simulator", str(moved / "elsewhere")]) == 0
    shutil.move(str(moved), str(tmp_path))


def test_runs_from_before_provenance_get_a_clear_message(tmp_path, capsys):
    sim = _bundle(tmp_path)
    run = tmp_path / "old"
    train(_cfg(total_steps=4, warmup_steps=4), sim, run, progress=False)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["bundle"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["evaluate", str(run)]) == 2
    assert "records no simulator bundle" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 2
    assert "records no simulator fingerprint" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--simulator", str(sim.path)]) == 0  # the user named the simulator


def _finished(tmp_path: Path, sim: Simulator, name: str, **kw) -> Path:
    cfg = dict(algo="ranking", total_steps=1, warmup_steps=0, n_users=4, env={"max_sessions": 2}, eval=EVAL,
               agent={"weights": [1, 0, 0, 0, 0, 0, 0]})
    cfg.update(kw)
    train(TrainConfig(**cfg), sim, tmp_path / name, progress=False)
    return tmp_path / name


def test_compare_refuses_duplicates_other_bundles_and_other_protocols(tmp_path, capsys):
    from retentionrl.bench.report import comparison_table, load_runs

    sim = _bundle(tmp_path)
    a = _finished(tmp_path, sim, "a", seed=0)
    b = _finished(tmp_path, sim, "b", seed=1)
    md, _, _ = comparison_table(load_runs([a, b]))
    pool = int(sim.test_users.sum())
    assert f"drawn from the {pool} held-out users of bundle `{sim.fingerprint[:16]}` (synthetic)" in md
    assert "8 simulated user episodes per seed x 1 fixed evaluation seeds" in md

    shutil.copytree(a, tmp_path / "a-copy")
    assert main(["compare", str(a), str(b), str(tmp_path / "a-copy"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ranking' seed 0" in err[0] and str(a) in err[0] and "a-copy" in err[0]

    other = _bundle(tmp_path, "other", seed=1)
    c = _finished(tmp_path, other, "c", seed=2)
    with pytest.raises(RetentionRLError, match=f"different simulators \\({sim.fingerprint[:16]} vs "
                                               f"{other.fingerprint[:16]}\\)"):
        load_runs([a, c])
    d = _finished(tmp_path, sim, "d", seed=3, eval={**EVAL, "seeds": [101, 102]})
    with pytest.raises(RetentionRLError, match=r"different protocols \(differ in: seeds\)"):
        load_runs([a, d])
    e = _finished(tmp_path, sim, "e", seed=4, env={"max_sessions": 3})
    with pytest.raises(RetentionRLError, match=r"different protocols \(differ in: env_overrides\)"):
        load_runs([a, e])
    quiet = _finished(tmp_path, sim, "quiet", seed=5, eval={**EVAL, "disagreement": False})
    assert len(load_runs([a, quiet])["ranking"]) == 2  # the disagreement switch only adds columns

    f = _finished(tmp_path, sim, "f", seed=0, eval={**EVAL, "users": "all"})
    g = _finished(tmp_path, sim, "g", seed=1, eval={**EVAL, "users": "all"})
    md, _, _ = comparison_table(load_runs([f, g]))
    assert f"drawn from all {sim.n_users} users (held-out and training)" in md and "held-out users of" not in md


def test_offline_runs_record_and_check_the_simulator_too(tmp_path):
    from retentionrl.training.offline import OfflineTrainConfig, train_offline

    sim, other = _bundle(tmp_path), _bundle(tmp_path, "other", seed=1)
    cfg = OfflineTrainConfig(algo="bc", seed=2, env={"max_sessions": 2}, behaviour="random", n_log_users=4,
                             log_steps=4, total_updates=6, batch_size=8, log_every=3, eval_every=6,
                             checkpoint_every=3, eval=EVAL, agent={"hidden": [8], "state_dim": 8, "token_dim": 8})
    assert train_offline(cfg, sim, tmp_path / "bc", progress=False, stop_after=3) is None
    with pytest.raises(RetentionRLError, match=f"made on simulator {sim.fingerprint[:16]}.*{other.fingerprint[:16]}"):
        train_offline(cfg, other, tmp_path / "bc", resume=True, progress=False)
    summary = train_offline(cfg, sim, tmp_path / "bc", resume=True, progress=False)
    assert summary["bundle"]["fingerprint"] == sim.fingerprint and summary["eval_config"]["n_episodes"] == 8


def test_demo_reuses_its_runs_only_for_the_same_config_and_bundle(tmp_path):
    """The demo's runs are keyed like grid cells: rerunning reuses them, a changed config or a rebuilt bundle
    retrains (before, a rebuilt bundle reused the old runs and the final compare refused the mix)."""
    from retentionrl.bench.grid import cell_key
    from retentionrl.bench.report import load_runs
    from retentionrl.cli import demo_runs

    sim = _bundle(tmp_path / "bundles")
    runs = tmp_path / "runs"
    lines: list[str] = []

    def demo(s: Simulator, steps: int = 3) -> tuple[list[Path], list[str]]:
        lines.clear()
        return demo_runs(s, runs, steps, quick=True, log=lines.append), [ln.split()[1] for ln in lines]

    first, did = demo(sim)
    assert did == ["training"] * 4 and len({d.parent for d in first}) == 3
    assert [d.parent.name for d in first] == ["td3", "td3", "ranking", "random"]
    assert [d.name.split("-")[0] for d in first] == ["seed0", "seed1", "seed0", "seed0"]
    saved = yaml.safe_load((first[0] / "config.yaml").read_text())
    assert saved["total_steps"] == 3 and saved["bundle"]["fingerprint"] == sim.fingerprint
    key = cell_key({k: v for k, v in saved.items() if k != "bundle"}, sim.fingerprint)  # the key is config + bundle
    assert first[0].name == f"seed0-{key}"
    stamps = [(d / "summary.json").stat().st_mtime_ns for d in first]

    again, did = demo(sim)
    assert again == first and did == ["reusing"] * 4
    assert [(d / "summary.json").stat().st_mtime_ns for d in again] == stamps

    longer, did = demo(sim, steps=4)  # an edited demo config: only the TD3 runs change
    assert did == ["training", "training", "reusing", "reusing"]
    assert longer[2:] == first[2:] and not set(longer[:2]) & set(first)

    rebuilt = _bundle(tmp_path / "bundles", seed=1)  # another simulator at the same path
    assert rebuilt.path == sim.path and rebuilt.fingerprint != sim.fingerprint
    fresh, did = demo(rebuilt)
    assert did == ["training"] * 4 and not set(fresh) & set(first + longer)
    runs_ = load_runs(fresh)  # what the demo's compare reads: one simulator
    assert {r["bundle"]["fingerprint"] for rs in runs_.values() for r in rs} == {rebuilt.fingerprint}


def test_train_accepts_a_runs_config_and_starts_on_the_bundle_it_records(tmp_path, capsys):
    sim = _bundle(tmp_path / "bundles")
    a = tmp_path / "runs" / "a"
    first = train(_cfg(total_steps=4, warmup_steps=2, eval_every=4), sim, a, progress=False)
    conf = str(a / "config.yaml")
    b = tmp_path / "runs" / "b"
    assert main(["train", "--config", conf, "--out", str(b)]) == 0  # no --simulator: the recorded bundle
    assert (b / "config.yaml").read_text() == (a / "config.yaml").read_text()
    assert json.loads((b / "summary.json").read_text())["eval"] == first["eval"]

    other = _bundle(tmp_path / "bundles", "other", seed=1)
    c = tmp_path / "runs" / "c"
    assert main(["train", "--config", conf, "--simulator", str(other.path), "--out", str(c), "--seed", "3"]) == 0
    rec = yaml.safe_load((c / "config.yaml").read_text())
    assert rec["seed"] == 3 and rec["bundle"]["fingerprint"] == other.fingerprint  # --simulator wins

    d = tmp_path / "runs" / "d"  # a run's config also works with --resume
    assert main(["train", "--config", conf, "--out", str(d), "--stop-after", "2"]) == 0
    assert main(["train", "--resume", str(d), "--config", conf]) == 0
    assert json.loads((d / "summary.json").read_text())["eval"] == first["eval"]
    capsys.readouterr()

    shutil.copy(conf, tmp_path / "copy.yaml")  # its relative bundle path no longer leads to the bundle
    e = tmp_path / "runs" / "e"
    assert main(["train", "--config", str(tmp_path / "copy.yaml"), "--out", str(e)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not at" in err[0] and "pass --simulator" in err[0] and not e.exists()
    _bundle(tmp_path / "bundles", seed=2)  # the recorded bundle rebuilt in place: another simulator
    assert main(["train", "--config", conf, "--out", str(e)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"records simulator {sim.fingerprint[:16]}" in err[0] and not e.exists()
