"""A benchmark table compares methods only if every cell of a part acts in one environment: the part's env must
win over whatever a method's own config says (an RLIV-UA yaml once leaked its satisfaction leave model into the
learned-preset part; the provenance check refused the table after 20 cells had run)."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

from retentionrl.bench.grid import resolved_config


@pytest.mark.parametrize("part", ["kuaisim", "learned"])
def test_rliv_ua_table_cells_share_one_environment(part: str) -> None:
    bench = load_benchmark("rliv_ua_methods")
    envs = {}
    for label, config, over in bench.variants(part):
        raw = resolved_config(config, over, 0, label)
        envs[label] = (raw["preset"], raw["env"], raw["eval"])
    first = next(iter(envs.values()))
    assert all(v == first for v in envs.values()), {k: v[1] for k, v in envs.items()}
    assert first[0] == bench.PARTS[part]["preset"]


@pytest.mark.parametrize("part", ["kuairand", "learned", "headroom"])
@pytest.mark.parametrize("task", ["return_time", "session_length", "both"])
def test_resact_table_cells_share_one_environment_and_task(part: str, task: str) -> None:
    bench = load_benchmark("resact_methods")
    suffix, preset, over = bench.TABLES[part]
    seen = {}
    for label, config, o in bench.task_variants(task, over, suffix):
        raw = resolved_config(config, o, 0, label)
        seen[label] = (raw["preset"], raw["env"], raw["eval"], raw["task"])
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), seen
    assert first[0] == preset and first[3] == task
