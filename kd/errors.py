"""Errors that the CLI turns into a one-line message and a non-zero exit code."""
from __future__ import annotations

from pathlib import Path


class KdError(Exception):
    """A problem with the user's input or environment, reported as one line (exit code 2)."""

    exit_code = 2


class DataError(KdError):
    """Malformed input data; names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
