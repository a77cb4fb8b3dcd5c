"""Grid files: a benchmark grid (methods × variants × seeds on a bundle) and the tables it makes, in YAML.

``retentionrl grid GRID.yaml`` plans every table's cells (``bench.grid``: keyed by resolved config and bundle
fingerprint, so a grid resumes and reruns exactly the cells whose inputs changed), runs the unfinished ones on an
engine (local process pool or Ray) and writes each table from its finished cells. The schema::

    root: ..                      # paths are relative to this folder (default: the grid file's folder)
    bundles: {kuairand: bundles/kuairand-pure}
    seeds: [0, 1, 2, 3, 4]        # default of every table
    results: docs/results         # a table <name> is written to <results>/<name>/
    tables:
      resact_kuaisim_{task}:      # {var}: one table per combination of the table's matrix
        matrix: {task: [return_time, both]}
        bundle: kuairand          # a name in bundles (default: the first)
        runs: runs/resact-kuaisim # the cells' run folders, <runs>/<label>/seed<k>-<key> (a cell may name its own)
        seeds: [0, 1, 2]          # optional
        overrides: {task: "{task}"}       # merged into every cell's config
        cells:
          - configs/train/td3-kuaisim.yaml                  # label: the file's stem
          - {config: "configs/train/offline/{m}-kuaisim.yaml", label: "{m}-kuaisim-{task}",
             matrix: {m: [iql, cql]}, overrides: {...}, baseline: true, runs: runs/other}
        reference: iql-kuaisim-both     # the t-tests' reference; default: the best baseline cell (else best cell)
        columns: retention        # or author (report.COLUMNS)
        leverage: {preset: kuaisim, env: {...}, metric: session_length, file: leverage.md, what: "..."}
        notes: [grids/notes/paper_table.md]   # markdown appended to the table (e.g. the paper's numbers)
        sweep: {key: agent.lam, xlabel: lambda, file: lambda_sweep, log_x: false, floor: 1e-4, metrics: [...]}
                                  # x: each cell's value of key (cells whose config lacks it are not drawn);
                                  # values: {label: x} for cells that leave the key at its default

Top-level keys starting with ``x-`` are free, for YAML anchors (``x-methods: &methods [...]``, ``cells: *methods``).
A string that is exactly ``"{var}"`` takes the matrix value itself (a number stays a number); inside a longer
string a float is written with ``:g`` (``lam0.5``, ``alpha0``). Unknown keys, missing files and bad types are
errors naming the file and the key.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from retentionrl.bench.grid import Cell, cells, load_bundle, resolved_config
from retentionrl.bench.leverage import bounds_markdown, measured_bounds
from retentionrl.bench.report import load_runs, sweep_plot, write_comparison
from retentionrl.config import load_yaml, merge
from retentionrl.errors import RetentionRLError
from retentionrl.evaluation.protocol import EvalConfig
from retentionrl.utils.io import write_text_atomic

TOP_KEYS = {"root", "bundles", "seeds", "results", "tables"}
TABLE_KEYS = {"matrix", "bundle", "runs", "seeds", "overrides", "cells", "reference", "columns", "leverage", "notes",
              "sweep"}
CELL_KEYS = {"config", "label", "matrix", "overrides", "baseline", "runs"}
LEVERAGE_KEYS = {"preset", "env", "metric", "columns", "file", "what"}
SWEEP_KEYS = {"key", "values", "xlabel", "file", "log_x", "floor", "metrics"}
# The leverage protocol of every benchmark table: 256 users x 512 episodes x 3 evaluation seeds, frozen.
LEVERAGE_EVAL = {"n_users": 256, "n_episodes": 512, "seeds": [10_000, 10_001, 10_002]}


@dataclass
class Entry:
    label: str
    config: Path
    overrides: dict[str, Any]
    runs: Path
    baseline: bool = False


@dataclass
class Table:
    name: str
    bundle: Path
    out: Path
    seeds: list[int]
    entries: list[Entry]
    reference: str | None = None
    columns: str = "retention"
    leverage: dict[str, Any] | None = None
    notes: list[Path] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    where: str = ""  # "<file>: tables.<name>" for errors

    @property
    def n_cells(self) -> int:
        """How many cells the table has (entries × seeds), finished or not."""
        return len(self.entries) * len(self.seeds)

    def cells(self) -> list[Cell]:
        return [c for e in self.entries
                for c in cells([(e.label, e.config, e.overrides)], self.seeds, e.runs, str(self.bundle))]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def substitute(obj: Any, values: dict[str, Any]) -> Any:
    """``obj`` with ``{var}`` replaced by ``values[var]`` in every string (keys included); see the module doc."""
    if isinstance(obj, str):
        whole = re.fullmatch(r"\{(\w+)\}", obj)
        if whole and whole[1] in values:
            return values[whole[1]]
        return re.sub(r"\{(\w+)\}", lambda m: _fmt(values[m[1]]) if m[1] in values else m[0], obj)
    if isinstance(obj, dict):
        return {substitute(k, values): substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values) for v in obj]
    return obj


def expand(spec: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """One copy of ``spec`` per combination of its ``matrix`` (itself, without a matrix), values substituted."""
    matrix = spec.get("matrix")
    if matrix is None:
        return [spec]
    if not isinstance(matrix, dict) or not matrix or not all(isinstance(v, list) and v for v in matrix.values()):
        raise RetentionRLError(f"{where}.matrix: a mapping of names to non-empty lists")
    rest = {k: v for k, v in spec.items() if k != "matrix"}
    names = list(matrix)
    return [substitute(rest, dict(zip(names, combo))) for combo in itertools.product(*matrix.values())]


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RetentionRLError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise RetentionRLError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return obj


def _seeds(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                         for s in value):
        raise RetentionRLError(f"{where}: a non-empty list of integer seeds")
    return value


def _file(root: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise RetentionRLError(f"{where}: a path")
    path = root / value
    if not path.is_file():
        raise RetentionRLError(f"{where}: no such file {path}")
    return path


def _entries(raw: Any, root: Path, runs: Any, where: str) -> list[Entry]:
    if not isinstance(raw, list) or not raw:
        raise RetentionRLError(f"{where}: a non-empty list of cells")
    out: list[Entry] = []
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        item = {"config": item} if isinstance(item, str) else _check_keys(item, CELL_KEYS, w)
        for spec in expand(item, w):
            config = _file(root, spec.get("config"), f"{w}.config")
            over = spec.get("overrides", {})
            if not isinstance(over, dict):
                raise RetentionRLError(f"{w}.overrides: a mapping")
            label = spec.get("label", config.stem)
            if not isinstance(label, str) or not label or "/" in label:
                raise RetentionRLError(f"{w}.label: a name without '/'")
            folder = spec.get("runs", runs)
            if not isinstance(folder, str) or not folder:
                raise RetentionRLError(f"{w}.runs: the folder of the cell's runs (or the table's runs) is missing")
            out.append(Entry(label, config, over, root / folder, bool(spec.get("baseline", False))))
    labels = [e.label for e in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise RetentionRLError(f"{where}: label {twice[0]!r} names two cells (give each its own label)")
    return out


def load_grid(path: str | Path) -> list[Table]:
    """The tables of a grid file, every matrix expanded and every path resolved (errors name file and key)."""
    path = Path(path)
    raw = load_yaml(path)
    # x-<name>: free keys for YAML anchors (shared cell lists), as in docker compose files
    raw = _check_keys({k: v for k, v in raw.items() if not str(k).startswith("x-")}, TOP_KEYS, str(path))
    root = (path.parent / raw.get("root", ".")).resolve()
    bundles = raw.get("bundles", {})
    if not isinstance(bundles, dict) or not bundles:
        raise RetentionRLError(f"{path}: bundles: a mapping of names to bundle folders")
    seeds = _seeds(raw.get("seeds", [0, 1, 2, 3, 4]), f"{path}: seeds")
    results = root / str(raw.get("results", "docs/results"))
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, dict) or not tables_raw:
        raise RetentionRLError(f"{path}: tables: a mapping of table names to tables")
    tables: list[Table] = []
    for name, spec in tables_raw.items():
        where = f"{path}: tables.{name}"
        spec = _check_keys(spec, TABLE_KEYS, where)
        for t in expand({**spec, "_name": name}, where):
            tname = t.pop("_name")
            w = f"{path}: tables.{tname}"
            bname = t.get("bundle", next(iter(bundles)))
            if bname not in bundles:
                raise RetentionRLError(f"{w}.bundle: one of {', '.join(bundles)}")
            over = t.get("overrides", {})
            if not isinstance(over, dict):
                raise RetentionRLError(f"{w}.overrides: a mapping")
            entries = _entries(t.get("cells"), root, t.get("runs"), f"{w}.cells")
            for e in entries:
                e.overrides = merge(over, e.overrides)
            if t.get("columns", "retention") not in ("retention", "author"):
                raise RetentionRLError(f"{w}.columns: retention or author")
            lev = t.get("leverage")
            if lev is not None:
                _check_keys(lev, LEVERAGE_KEYS, f"{w}.leverage")
            sweep = t.get("sweep")
            if sweep is not None:
                _check_keys(sweep, SWEEP_KEYS, f"{w}.sweep")
                if not isinstance(sweep.get("key"), str):
                    raise RetentionRLError(f"{w}.sweep.key: a dotted config key, e.g. agent.lam")
            notes = t.get("notes", [])
            tables.append(Table(tname, root / str(bundles[bname]), results / tname,
                                _seeds(t.get("seeds", seeds), f"{w}.seeds"), entries, t.get("reference"),
                                t.get("columns", "retention"), lev,
                                [_file(root, n, f"{w}.notes") for n in (notes if isinstance(notes, list) else [notes])],
                                sweep, w))
    return tables


def select(tables: list[Table], globs: list[str] | None) -> list[Table]:
    """The tables whose name matches one of ``globs`` (all without globs); none matching is an error."""
    if not globs:
        return tables
    chosen = [t for t in tables if any(fnmatch(t.name, g) for g in globs)]
    if not chosen:
        raise RetentionRLError(f"no table matches {' '.join(globs)} (tables: {', '.join(t.name for t in tables)})")
    return chosen


def leverage_text(table: Table) -> str:
    """The measured leverage beside a table, cached in its folder per bundle fingerprint (it costs minutes)."""
    spec = table.leverage or {}
    sim = load_bundle(table.bundle)
    cache = table.out / spec.get("file", "leverage.md")
    if cache.is_file() and sim.short_fingerprint in cache.read_text():
        return cache.read_text()
    env = spec.get("env", {})
    preset = spec.get("preset", "kuaisim")
    ev = EvalConfig(preset=preset, env_overrides=env, **LEVERAGE_EVAL)
    what = spec.get("what", f"the {preset} preset" + (f" with {env}" if env else ""))
    kw = {"columns": tuple(spec["columns"])} if "columns" in spec else {}
    text = bounds_markdown(measured_bounds(sim, ev), sim, what, metric=spec.get("metric", "return_time"), **kw)
    write_text_atomic(cache, text)
    return text


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return None
        raw = raw[part]
    return raw


def cells_on_disk(out: Path) -> int:
    """How many cells the table written under ``out`` was made from (the seeds column of its comparison.csv
    summed; 0 when there is none)."""
    try:
        with open(out / "comparison.csv", newline="") as f:
            return sum(int(row["seeds"]) for row in csv.DictReader(f))
    except (OSError, KeyError, ValueError):
        return 0


def write_table(table: Table, done: list[str], overwrite_partial: bool = False) -> str:
    """comparison.md / .csv / curves of the finished cells, with the leverage, notes and sweep the table asks for.
    A table with unfinished cells does not replace one on disk made from more cells (a ``--only`` run, or a new
    machine whose runs/ holds a few cells, would otherwise shrink a committed table) unless ``overwrite_partial``."""
    if not done:
        return f"{table.name}: no finished cells yet\n"
    before = cells_on_disk(table.out)
    if len(done) < table.n_cells and before > len(done) and not overwrite_partial:
        return (f"{table.name}: {len(done)} of {table.n_cells} cells finished here; {table.out} left as is (made from {before} "
                f"cells; --overwrite-partial replaces it)\n")
    extra = leverage_text(table) if table.leverage is not None else ""
    for note in table.notes:
        extra += ("\n" if extra else "") + note.read_text()
    baselines = [e.label for e in table.entries if e.baseline]
    md = write_comparison(done, table.out, table.reference, reference_among=baselines or None, extra=extra,
                          columns=table.columns)[0]
    if table.sweep is not None:
        s = table.sweep
        values = {}
        for e in table.entries:
            x = _lookup(resolved_config(e.config, e.overrides, table.seeds[0], e.label), s["key"])
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                values[e.label] = float(x)
        values.update({k: float(v) for k, v in s.get("values", {}).items()})  # cells that take the key's default
        values = {k: max(v, float(s.get("floor", float("-inf")))) for k, v in values.items()}  # floor: 0 on log x
        name = s.get("file", f"{s['key'].split('.')[-1]}_sweep")
        sweep_md = sweep_plot({m: r for m, r in load_runs(done).items() if m in values}, values,
                              table.out / f"{name}.png", s.get("xlabel", s["key"]), log_x=bool(s.get("log_x")),
                              **({"metrics": tuple(s["metrics"])} if "metrics" in s else {}))
        write_text_atomic(table.out / f"{name}.md", sweep_md)
        md += "\n" + sweep_md
    return md


def plan(tables: list[Table], only: list[str] | None = None) -> tuple[list[Cell], list[Cell]]:
    """(every cell of ``tables`` once — tables may share cells —, the ones to run: those whose label matches one of
    the globs ``only``, all without)."""
    unique: dict[str, Cell] = {}
    for t in tables:
        for c in t.cells():
            unique.setdefault(c.run_dir, c)
    every = list(unique.values())
    return every, every if not only else [c for c in every if any(fnmatch(c.method, g) for g in only)]
