"""Engines that run a grid's cells (``bench.grid``): here or in a local process pool (the default, no services), or
on a Ray cluster (``bench.ray_engine``, optional). :func:`run_grid` drives either: it keeps every engine slot busy,
tries a failed cell again a bounded number of times while the others go on, and logs cells done / running / failed
with an ETA.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol

from retentionrl.bench.grid import Cell, failure, run_cell
from retentionrl.errors import RetentionRLError


class Engine(Protocol):
    slots: int  # cells it runs at once

    def __enter__(self) -> "Engine": ...
    def __exit__(self, *exc: object) -> None: ...
    def submit(self, cell: Cell) -> None: ...
    def next_done(self) -> tuple[Cell, str | None]:
        """Blocks until a submitted cell ends: (cell, None) or (cell, one line saying why it failed)."""


class LocalEngine:
    """Cells in this process (``workers`` <= 1, the machine's threads) or in a pool of ``workers`` processes with
    one torch/OpenMP thread each. A crashed worker process (e.g. killed for memory) fails the cells it held and
    the pool is started again, so the other cells go on."""

    def __init__(self, workers: int, tensorboard: bool = False) -> None:
        self.slots = max(1, workers)
        self.tensorboard = tensorboard
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future, Cell] = {}
        self._done: list[tuple[Cell, str | None]] = []
        if workers > 1:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            self._pool = ProcessPoolExecutor(workers)

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def submit(self, cell: Cell) -> None:
        if self._pool is None:
            try:
                run_cell(cell, tensorboard=self.tensorboard)
                self._done.append((cell, None))
            except Exception as exc:  # noqa: BLE001 - a failed cell is reported, the grid goes on
                self._done.append((cell, failure(exc)))
            return
        self._futures[self._pool.submit(run_cell, cell, 1, None, self.tensorboard)] = cell

    def next_done(self) -> tuple[Cell, str | None]:
        if self._done:
            return self._done.pop(0)
        fut = next(iter(wait(self._futures, return_when=FIRST_COMPLETED).done))
        cell = self._futures.pop(fut)
        exc = fut.exception()
        if isinstance(exc, BrokenProcessPool):
            self._pool.shutdown(cancel_futures=True)
            self._pool = ProcessPoolExecutor(self.slots)
            lost = [(c, "worker process died (killed?) while running this cell") for c in self._futures.values()]
            self._futures.clear()
            self._done.extend(lost)
        return cell, None if exc is None else failure(exc)


def make_engine(name: str, workers: int, address: str | None, grid: list[Cell], tensorboard: bool = False) -> Engine:
    if name == "local":
        if address:
            raise RetentionRLError("--address is for --engine ray")
        return LocalEngine(workers, tensorboard)
    if name == "ray":
        # Optional dependency (pip install 'retentionrl[ray]'): imported only when asked for, not a cycle.
        from retentionrl.bench.ray_engine import RayEngine

        return RayEngine(workers, address, sorted({c.simulator for c in grid}), tensorboard)
    raise RetentionRLError(f"unknown grid engine {name!r} (local or ray)")


def _duration(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m"


def run_grid(grid: list[Cell], workers: int = 1, log=print, engine: str = "local", address: str | None = None,
             retries: int = 1, tensorboard: bool = False) -> list[str]:
    """Run the unfinished cells of ``grid`` on ``engine``; returns the finished run directories (in grid order).
    A failing cell is reported and tried again up to ``retries`` times (resuming from its checkpoint) while the
    others go on; progress lines count cells done / running / failed with an ETA from the cells finished so far."""
    todo = [c for c in grid if not (Path(c.run_dir) / "summary.json").is_file()]
    log(f"[grid] {len(grid)} cells, {len(grid) - len(todo)} already finished, {len(todo)} to run")
    if todo:
        pending, tries, failed, done, running = deque(todo), Counter(), [], 0, 0
        start = time.monotonic()
        with make_engine(engine, workers, address, todo, tensorboard) as eng:
            while pending or running:
                while pending and running < eng.slots:
                    eng.submit(pending.popleft())
                    running += 1
                cell, error = eng.next_done()
                running -= 1
                if error is None:
                    done += 1
                    log(f"[grid] finished {cell.run_dir}")
                else:
                    tries[cell.run_dir] += 1
                    again = tries[cell.run_dir] <= retries
                    log(f"[grid] FAILED {cell.run_dir}: {error}" + (" (trying again)" if again else ""))
                    (pending.append if again else failed.append)(cell)
                left = len(pending) + running
                eta = (time.monotonic() - start) / done * left if done else float("nan")
                log(f"[grid] {done}/{len(todo)} done, {running} running, {len(failed)} failed"
                    + (f", ETA {_duration(eta)}" if done and left else ""))
        for cell in failed:
            log(f"[grid] gave up on {cell.run_dir} after {retries + 1} tries")
    return [c.run_dir for c in grid if (Path(c.run_dir) / "summary.json").is_file()]


def run_selected(grid: list[Cell], workers: int = 1, only: list[str] | None = None, no_run: bool = False,
                 log=print, **engine: Any) -> list[str]:
    """The finished run directories of ``grid`` after running its unfinished cells — all of them, or only those
    whose label matches one of the globs ``only`` (``no_run``: none). A table built from the result reads every
    finished cell, so a grid can be filled part by part (e.g. ``only=["sec*"]`` beside reused baselines)."""
    if not no_run:
        chosen = grid if only is None else [c for c in grid if any(fnmatch(c.method, pat) for pat in only)]
        if chosen:
            run_grid(chosen, workers=workers, log=log, **engine)
    return [c.run_dir for c in grid if (Path(c.run_dir) / "summary.json").is_file()]


