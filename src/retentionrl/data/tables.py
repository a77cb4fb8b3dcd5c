"""Reading tabular files with errors that name the file, the column and the first bad row."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from retentionrl.errors import DataError


def read_table(
    path: str | Path,
    *,
    required: Sequence[str] = (),
    sep: str = ",",
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    usecols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a CSV (optionally gzip'd, by extension) or Parquet file.

    ``names`` is for header-less formats (MovieLens); then ``required`` is implied and every line must have
    exactly ``len(names)`` fields. The returned frame's index is the 0-based data row, so that callers can
    report ``row = index + 1``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", file=path)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif names is not None:
            frame = _read_headerless(path, sep, list(names), encoding)
        else:
            frame = pd.read_csv(path, sep=sep, encoding=encoding, low_memory=False)
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a cut-off download, a damaged archive
        msg = f"cannot parse file: truncated or corrupt compressed data ({_first_line(exc)})"
        raise DataError(msg, file=path) from None
    except UnicodeDecodeError as exc:  # no byte offset: pandas' is relative to a chunk
        raise DataError(f"cannot parse file: not {encoding} text ({exc.reason})", file=path) from None
    except PermissionError:
        raise DataError("cannot read file: permission denied", file=path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise DataError(f"cannot parse file: {_first_line(exc)}", file=path) from None
    if len(frame) == 0:
        raise DataError("file has a header but no data rows", file=path)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:25]))
        raise DataError(f"required column '{missing[0]}' is missing (columns found: {found})", file=path)
    if usecols is not None:
        frame = frame[[c for c in usecols if c in frame.columns]]
    return frame.reset_index(drop=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _read_headerless(path: Path, sep: str, names: list[str], encoding: str) -> pd.DataFrame:
    """Header-less files with a multi-character separator (MovieLens ``::``) are split by hand: the python
    engine of pandas is slow and silently pads short lines."""
    with open(path, encoding=encoding, newline="") as fh:
        lines = fh.read().splitlines()
    if not any(lines):
        raise DataError("file is empty", file=path)
    rows = [ln.split(sep) for ln in lines]
    for i, r in enumerate(rows):
        if len(r) != len(names):
            raise DataError(
                f"expected {len(names)} fields separated by '{sep}' ({', '.join(names)}), found {len(r)}",
                file=path,
                line=i + 1,
            )
    return pd.DataFrame(rows, columns=names)


def numeric_column(
    frame: pd.DataFrame,
    column: str,
    file: str | Path,
    *,
    integer: bool = False,
    non_negative: bool = False,
    allow_nan: bool = False,
    header: bool = True,
) -> pd.Series:
    """Return ``frame[column]`` as int64/float64, or raise naming the first non-numeric / NaN / negative row."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad_text = values.isna() & raw.notna()
    if bad_text.any():
        i = int(np.flatnonzero(bad_text.to_numpy())[0])
        raise DataError(f"value {show(raw.iloc[i])} is not a number", **_where(file, column, i, header))
    if not allow_nan and values.isna().any():
        i = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError("missing value (NaN)", **_where(file, column, i, header))
    if non_negative and (values < 0).any():
        i = int(np.flatnonzero((values < 0).to_numpy())[0])
        raise DataError(f"negative value {show(raw.iloc[i])}", **_where(file, column, i, header))
    if integer:
        finite = values.dropna()
        frac = finite != np.floor(finite)
        if frac.any():
            i = int(frame.index.get_loc(frac[frac].index[0]))
            raise DataError(f"value {show(raw.iloc[i])} is not an integer id", **_where(file, column, i, header))
        if not values.isna().any():
            return values.astype(np.int64)
    return values.astype(np.float64)


def binary_column(frame: pd.DataFrame, column: str, file: str | Path, *, header: bool = True) -> pd.Series:
    """A 0/1 behaviour column as int8; any other value is an error naming the row."""
    values = numeric_column(frame, column, file, header=header)
    bad = ~values.isin((0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"value {show(frame[column].iloc[i])} is not 0 or 1", **_where(file, column, i, header))
    return values.astype(np.int8)


def show(value: object) -> str:
    """A cell value as a user would have typed it: text quoted, numbers plain (3, 1.5)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _where(file: str | Path, column: str, i: int, header: bool) -> dict:
    """Location of 0-based data row ``i``: row and line for files with a header, just the line without one."""
    if header:
        return {"file": file, "column": column, "row": i + 1, "line": i + 2}
    return {"file": file, "column": column, "line": i + 1}


def find_one(directory: Path, patterns: Sequence[str], what: str) -> Path:
    """The single file in ``directory`` matching the first pattern that matches, or a clear error."""
    for pattern in patterns:
        hits = sorted(directory.glob(pattern))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(h.name for h in hits)
            raise DataError(f"more than one {what} file matches '{pattern}': {names}", file=directory)
    raise DataError(f"no {what} file found (looked for {' or '.join(patterns)})", file=directory)
