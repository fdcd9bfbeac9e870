"""User-facing errors. The CLI prints them as one line and exits with status 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class BurstGPTError(Exception):
    """An error caused by the user's input or environment, shown as a single line."""

    exit_code = 2


class InputError(BurstGPTError):
    """Bad input in a file: names the file and, where known, the 1-based line and the column/field."""

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        field = f" column '{column}':" if column is not None else ""
        super().__init__(f"{where}:{field} {message}")
