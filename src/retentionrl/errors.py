"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations

from pathlib import Path


class RetentionRLError(Exception):
    """An error caused by the user's input or configuration, not by a bug."""


class DataError(RetentionRLError):
    """Bad input data. The message names the file, the column and the first bad row where they apply.

    ``row`` is the 1-based data row (header not counted); ``line`` is the 1-based line in the file.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        column: str | None = None,
        row: int | None = None,
        line: int | None = None,
    ) -> None:
        self.file, self.column, self.row, self.line = file, column, row, line
        where = []
        if file is not None:
            where.append(str(file))
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
