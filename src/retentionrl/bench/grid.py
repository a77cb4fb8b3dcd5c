"""A grid of training runs (methods × seeds) that can be filled over several sittings.

Each cell is an ordinary run directory ``RUNS/<method>/seed<k>-<key>``, where ``key`` (:data:`KEY_DIGITS` hex
digits) hashes the cell's resolved config (after ``extends``, the variant's overrides, seed and label) together
with the simulator bundle's fingerprint. A finished cell (``summary.json``) whose key matches is skipped, an
interrupted one is resumed from its checkpoint, a missing one is started: editing a config, or rebuilding the
bundle, reruns exactly the cells it changes, in new directories (old results stay where they were and are not
read). Cells run one after another, or in worker processes (``workers > 1``); each process uses one torch thread
so that workers do not oversubscribe the cores, and loads a bundle once. The table is rebuilt from whatever
cells have finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch

from retentionrl.config import from_dict, load_config, merge, to_dict
from retentionrl.errors import RetentionRLError
from retentionrl.simulator.bundle import Simulator
from retentionrl.training import trainer_for
from retentionrl.training.run import pop_record

KEY_DIGITS = 12


@dataclass
class Cell:
    method: str  # label in the table (the config file's stem, or a variant's own label)
    config: str  # YAML train config
    seed: int
    run_dir: str
    simulator: str
    overrides: dict[str, Any] = field(default_factory=dict)  # merged over the config (a sweep point)
    key: str = ""  # cell_key(resolved config, bundle fingerprint), also the run directory's suffix


Variant = tuple[str, "str | Path", dict[str, Any]]  # (label, config, overrides)


@lru_cache(maxsize=2)
def _load_bundle(path: str, stamp: int) -> Simulator:
    return Simulator.load(path)


def load_bundle(path: str | Path) -> Simulator:
    """A bundle loaded once per process (grid cells of one bundle share it); re-saving it reloads it."""
    path = Path(path).resolve()
    weights = path / "weights.pt"
    return _load_bundle(str(path), weights.stat().st_mtime_ns if weights.is_file() else -1)


def resolved_config(config: str | Path, overrides: dict[str, Any], seed: int, label: str) -> dict[str, Any]:
    """The train config a cell runs, every default filled in: the file (``extends`` resolved), the overrides, then
    seed and label. Keys hash this, so a key changes when a default does, not when a default is merely spelled
    out. A run's own ``config.yaml`` may serve as the file: its ``bundle`` record is dropped (the grid names its
    bundle)."""
    raw = load_config(config)
    pop_record(raw, config)
    raw = merge(merge(raw, overrides), {"seed": seed, "label": label})
    return to_dict(from_dict(trainer_for(raw.get("algo", "td3"), raw.get("loop"), str(config))[0], raw, str(config)))


def cell_key(raw: dict[str, Any], fingerprint: str) -> str:
    """:data:`KEY_DIGITS` hex digits of sha256 over the canonical JSON of the resolved config and the bundle."""
    text = json.dumps({"config": raw, "bundle": fingerprint}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_DIGITS]


def cell_dir(runs_root: str | Path, label: str, seed: int, raw: dict[str, Any], fingerprint: str) -> tuple[Path, str]:
    """(``runs_root/<label>/seed<k>-<key>``, key): where a run of config ``raw`` on bundle ``fingerprint`` lives."""
    key = cell_key(raw, fingerprint)
    return Path(runs_root) / label / f"seed{seed}-{key}", key


def cells(configs: list["str | Path | Variant"], seeds: list[int], runs_root: str | Path, simulator: str) -> list[Cell]:
    """One cell per (config, seed). An entry is a config path (labelled by its stem) or a ``(label, config,
    overrides)`` variant, e.g. ``("gfn4retention-lam0.5", "configs/train/gfn4retention-kuaisim.yaml",
    {"agent": {"lam": 0.5}})``. Runs go to ``runs_root/<label>/seed<k>-<key>``; the bundle is loaded here (once)
    for its fingerprint, so a missing bundle or a bad config fails before anything runs."""
    fingerprint = load_bundle(simulator).fingerprint
    out = []
    for entry in configs:
        label, config, over = entry if isinstance(entry, tuple) else (Path(entry).stem, entry, {})
        for s in seeds:
            run, key = cell_dir(runs_root, label, s, resolved_config(config, over, s, label), fingerprint)
            out.append(Cell(label, str(config), s, str(run), simulator, dict(over), key))
    return out


def run_cell(cell: Cell, threads: int | None = None) -> str:
    """Train one cell to completion (resuming if it was interrupted); returns its run directory."""
    if threads:
        torch.set_num_threads(threads)
    run = Path(cell.run_dir)
    if (run / "summary.json").is_file():
        return cell.run_dir
    raw = resolved_config(cell.config, cell.overrides, cell.seed, cell.method)
    sim = load_bundle(cell.simulator)
    if cell_key(raw, sim.fingerprint) != cell.key:  # edited between planning the grid and running the cell
        raise RetentionRLError(f"{cell.config} or {cell.simulator} changed since the grid was planned "
                               f"(cell {cell.run_dir}); plan it again")
    config_cls, train = trainer_for(raw.get("algo", "td3"), raw.get("loop"), cell.config)
    cfg = from_dict(config_cls, raw, cell.config)
    train(cfg, sim, run, resume=(run / "config.yaml").is_file(), progress=False, where=str(cell.config))
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


def run_selected(grid: list[Cell], workers: int = 1, only: list[str] | None = None, no_run: bool = False,
                 log=print) -> list[str]:
    """The finished run directories of ``grid`` after running its unfinished cells — all of them, or only those
    whose label matches one of the globs ``only`` (``no_run``: none). A table built from the result reads every
    finished cell, so a grid can be filled part by part (e.g. ``only=["sec*"]`` beside reused baselines)."""
    if not no_run:
        chosen = grid if only is None else [c for c in grid if any(fnmatch(c.method, pat) for pat in only)]
        if chosen:
            run_grid(chosen, workers=workers, log=log)
    return [c.run_dir for c in grid if (Path(c.run_dir) / "summary.json").is_file()]


def grid_arguments(ap: argparse.ArgumentParser, parts: list[str], bundles: dict[str, str]) -> None:
    """The command line every benchmark grid shares: ``--parts``, ``--seeds`` (tables, 5), ``--ablation-seeds``
    (3), ``--<name>-bundle`` for each of ``bundles`` (name -> default path), ``--workers``, ``--only`` (globs of
    labels to run; the tables read every finished cell) and ``--no-run``."""
    ap.add_argument("--parts", nargs="+", default=parts, choices=parts)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    for name, default in bundles.items():
        ap.add_argument(f"--{name}-bundle", default=default)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", nargs="+", default=None, metavar="GLOB",
                    help="run only the cells whose label matches one of these globs (the tables still read every "
                         "finished cell), e.g. --only 'sec*'")
    ap.add_argument("--no-run", action="store_true", help="only rebuild the tables from finished runs")

