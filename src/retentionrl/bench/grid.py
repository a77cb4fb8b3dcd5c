"""A grid of training runs (methods × seeds) that can be filled over several sittings.

Each cell is an ordinary run directory ``RUNS/<method>/seed<k>``: a finished cell (``summary.json``) is skipped,
an interrupted one is resumed from its checkpoint, a missing one is started. Cells run one after another, or in
worker processes (``workers > 1``); each process uses one torch thread so that workers do not oversubscribe
the cores. The table is rebuilt from whatever cells have finished.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from retentionrl.config import from_dict, load_config, merge


@dataclass
class Cell:
    method: str  # label in the table (the config file's stem, or a variant's own label)
    config: str  # YAML train config
    seed: int
    run_dir: str
    simulator: str
    overrides: dict[str, Any] = field(default_factory=dict)  # merged over the config (a sweep point)


Variant = tuple[str, "str | Path", dict[str, Any]]  # (label, config, overrides)


def cells(configs: list["str | Path | Variant"], seeds: list[int], runs_root: str | Path, simulator: str) -> list[Cell]:
    """One cell per (config, seed). An entry is a config path (labelled by its stem) or a ``(label, config,
    overrides)`` variant, e.g. ``("gfn4retention-lam0.5", "configs/train/gfn4retention-kuaisim.yaml",
    {"agent": {"lam": 0.5}})``. Runs go to ``runs_root/<label>/seed<k>``."""
    out = []
    for entry in configs:
        label, config, over = entry if isinstance(entry, tuple) else (Path(entry).stem, entry, {})
        for s in seeds:
            out.append(Cell(label, str(config), s, str(Path(runs_root) / label / f"seed{s}"), simulator, dict(over)))
    return out


def run_cell(cell: Cell, threads: int | None = None) -> str:
    """Train one cell to completion (resuming if it was interrupted); returns its run directory."""
    import torch

    from retentionrl.simulator.bundle import Simulator
    from retentionrl.training import trainer_for

    if threads:
        torch.set_num_threads(threads)
    run = Path(cell.run_dir)
    if (run / "summary.json").is_file():
        return cell.run_dir
    raw = merge(merge(load_config(cell.config), cell.overrides), {"seed": cell.seed, "label": cell.method})
    config_cls, train = trainer_for(raw.get("algo", "td3"))
    cfg = from_dict(config_cls, raw, cell.config)
    train(cfg, Simulator.load(cell.simulator), run, resume=(run / "config.yaml").is_file(), progress=False)
    return cell.run_dir


def run_parallel(fn: Callable[[Any], Any], items: list[Any], workers: int = 1) -> Iterator[Any]:
    """``fn(item)`` for each item, yielded in order: here, or in ``workers`` processes with one OpenMP thread each
    (two 2-thread processes on 2 cores run 4-10x slower than one each). ``fn`` must be picklable then."""
    if workers <= 1:
        yield from map(fn, items)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)


def run_grid(grid: list[Cell], workers: int = 1, log=print) -> list[str]:
    todo = [c for c in grid if not (Path(c.run_dir) / "summary.json").is_file()]
    log(f"[grid] {len(grid)} cells, {len(grid) - len(todo)} already finished, {len(todo)} to run")
    for done in run_parallel(partial(run_cell, threads=1 if workers > 1 else None), todo, workers):
        log(f"[grid] finished {done}")
    return [c.run_dir for c in grid if (Path(c.run_dir) / "summary.json").is_file()]
