"""A grid of training runs (methods × seeds) that can be filled over several sittings.

Each cell is an ordinary run directory ``RUNS/<method>/seed<k>-<key>``, where ``key`` (:data:`KEY_DIGITS` hex
digits) hashes the cell's resolved config (after ``extends``, the variant's overrides, seed and label) together
with the simulator bundle's fingerprint. A finished cell (``summary.json``) whose key matches is skipped, an
interrupted one is resumed from its checkpoint, a missing one is started: editing a config, or rebuilding the
bundle, reruns exactly the cells it changes, in new directories (old results stay where they were and are not
read). ``bench.engines`` runs the cells (here, in a process pool, or on Ray); ``bench.gridfile`` reads a grid file.
The table is rebuilt from whatever cells have finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
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


def run_cell(cell: Cell, threads: int | None = None, sim: Simulator | None = None, tensorboard: bool = False) -> str:
    """Train one cell to completion (resuming if it was interrupted); returns its run directory. ``sim``: the
    cell's bundle already loaded (the Ray engine's copy from the object store), else it is loaded here once per
    process. ``tensorboard``: also write the run's scalars as TensorBoard event files (``RunDir``)."""
    if threads:
        torch.set_num_threads(threads)
    run = Path(cell.run_dir)
    if (run / "summary.json").is_file():
        return cell.run_dir
    raw = resolved_config(cell.config, cell.overrides, cell.seed, cell.method)
    sim = sim if sim is not None else load_bundle(cell.simulator)
    if cell_key(raw, sim.fingerprint) != cell.key:  # edited between planning the grid and running the cell
        raise RetentionRLError(f"{cell.config} or {cell.simulator} changed since the grid was planned "
                               f"(cell {cell.run_dir}); plan it again")
    config_cls, train = trainer_for(raw.get("algo", "td3"), raw.get("loop"), cell.config)
    cfg = from_dict(config_cls, raw, cell.config)
    train(cfg, sim, run, resume=(run / "config.yaml").is_file(), progress=False, where=str(cell.config),
          tensorboard=tensorboard)
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


def failure(exc: BaseException) -> str:
    """One line saying why a cell failed (our errors are one line already)."""
    text = str(exc).strip().splitlines()
    return (text[-1] if isinstance(exc, RetentionRLError) or not text else f"{type(exc).__name__}: {text[-1]}")[:500]
