"""The Ray engine of the grid (``retentionrl grid --engine ray``): cells as Ray tasks of one CPU each.

On an existing cluster (``address``, e.g. ``ray://head:10001`` or ``auto`` on a node of it) or on a local one
started for the run with ``workers`` CPUs, dashboard and usage statistics off. Each bundle is loaded once here and
put in the object store; every task gets it from there, not from the bundle's path, so a worker node needs the
package (same version) and a view of the runs folder (a shared filesystem), not the bundle. A task is the local
engine's cell (``grid.run_cell`` with one thread), so the same cells give the same numbers on either engine.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from retentionrl.bench.grid import Cell, failure, load_bundle, run_cell
from retentionrl.errors import RetentionRLError


@ray.remote(num_cpus=1, max_retries=0)  # the grid retries failed cells itself, and says so
def _run_cell_task(cell: Cell, sim: Any, tensorboard: bool) -> str:
    return run_cell(cell, threads=1, sim=sim, tensorboard=tensorboard)


class RayEngine:
    def __init__(self, workers: int, address: str | None, bundles: list[str], tensorboard: bool = False) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env = {"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}}
        self._started = not ray.is_initialized()
        if self._started:
            try:
                if address:
                    ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(1, workers), runtime_env=env, include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise RetentionRLError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = cpus if address else min(cpus, max(1, workers))  # cells in flight = free CPUs
        self.tensorboard = tensorboard
        self._bundles = {path: ray.put(load_bundle(path)) for path in bundles}  # once, not per cell
        self._tasks: dict[ray.ObjectRef, Cell] = {}

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        for ref in self._tasks:
            ray.cancel(ref, force=True)
        if self._started:
            ray.shutdown()

    def submit(self, cell: Cell) -> None:
        self._tasks[_run_cell_task.remote(cell, self._bundles[cell.simulator], self.tensorboard)] = cell

    def next_done(self) -> tuple[Cell, str | None]:
        [ref], _ = ray.wait(list(self._tasks), num_returns=1)
        cell = self._tasks.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            return cell, failure(exc.cause if exc.cause is not None else exc)
        except ray.exceptions.RayError as exc:  # the worker died, the node went away, ...
            return cell, failure(exc)
        return cell, None
