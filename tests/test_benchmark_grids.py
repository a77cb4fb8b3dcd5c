"""The benchmark grids are grid files (``grids/*.yaml``). A table compares methods only if every cell acts in one
environment: the table's env must win over whatever a method's own config says (an RLIV-UA yaml once leaked its
satisfaction leave model into the learned-preset part; the provenance check refused the table after 20 cells had
run). Planning reads the bundles' fingerprints, so these tests stub the bundle loader (no bundle is needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from retentionrl.bench import grid as grid_mod
from retentionrl.bench.gridfile import load_grid

GRIDS = Path(__file__).resolve().parents[1] / "grids"


@pytest.fixture(autouse=True)
def _no_bundles(monkeypatch):
    monkeypatch.setattr(grid_mod, "load_bundle", lambda path: SimpleNamespace(fingerprint=f"fp-{Path(path).name}"))


@pytest.mark.parametrize("grid_file", sorted(p.name for p in GRIDS.glob("*.yaml")))
def test_every_table_of_every_grid_file_acts_in_one_environment(grid_file: str) -> None:
    tables = load_grid(GRIDS / grid_file)
    assert tables
    for t in tables:
        seen = {}
        for e in t.entries:
            raw = grid_mod.resolved_config(e.config, e.overrides, t.seeds[0], e.label)
            seen[e.label] = (raw["preset"], raw["env"], raw["eval"], raw.get("task"))
        first = next(iter(seen.values()))
        assert all(v == first for v in seen.values()), (t.name, {k: v[1] for k, v in seen.items() if v != first})


@pytest.mark.parametrize("part, preset", [("kuaisim", "kuaisim"), ("learned", "learned"), ("kuaisim_gain", "kuaisim")])
@pytest.mark.parametrize("task", ["return_time", "session_length", "both"])
def test_resact_task_tables_have_their_preset_task_and_the_nine_methods(part: str, preset: str, task: str) -> None:
    [t] = [t for t in load_grid(GRIDS / "resact.yaml") if t.name == f"resact_{part}_{task}"]
    labels = [e.label for e in t.entries]
    assert labels == [f"{m}-{part}-{task}" for m in
                      ("resact", "ddpg", "td3", "td3bc", "bcq", "iql", "bc", "il_cvae", "cql")]
    assert [e.label for e in t.entries if not e.baseline] == [f"resact-{part}-{task}"]
    raw = grid_mod.resolved_config(t.entries[0].config, t.entries[0].overrides, 0, labels[0])
    assert raw["preset"] == preset and raw["task"] == task and raw["agent"]["retention_weight"] == 1.0
    assert len(t.cells()) == 45


def test_the_paper_budget_grid_changes_only_the_budget_and_its_cadence() -> None:
    """Issue 16: the 100,000-step runs keep the benchmark configs' algorithm and hyper-parameters."""
    [t] = load_grid(GRIDS / "paper_budget.yaml")
    assert [e.label for e in t.entries] == [f"{m}-kuaisim" for m in ("td3", "sac", "cem", "rlur", "gfn4retention")]
    for e in t.entries:
        raw = grid_mod.resolved_config(e.config, e.overrides, 0, e.label)
        base = grid_mod.resolved_config(e.config, {}, 0, e.label)  # the 2,000-step benchmark cell
        changed = {k for k in set(raw) | set(base) if raw.get(k) != base.get(k)}
        assert raw["total_steps"] == 100_000 and base["total_steps"] == 2_000
        assert changed == {"total_steps", "eval_every", "checkpoint_every", "log_every"}, (e.label, changed)
