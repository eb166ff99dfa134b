"""Errors that the CLI turns into a one-line message and a non-zero exit code."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class KdError(Exception):
    """A problem with the user's input or environment, reported as one line (exit code 2)."""

    exit_code = 2


class FieldError(KdError):
    """A bad value of one option, named by its field (`output`, `cache_run`), not by how a caller
    spells it: the CLI words it as `--output x: ...`, tuning as `space.yaml: params.output: ...`."""

    def __init__(self, field: str, value: object, message: str) -> None:
        self.field = field
        self.value = value
        self.message = message
        shown = f" {value!r}" if isinstance(value, str) and value else ("" if value in (None, "") else f" {value}")
        super().__init__(f"{field}{shown}: {message}")

    def worded(self, name: str) -> str:
        """The message with the field called `name` (`--output`, `space.yaml: params.output`)."""
        shown = "" if self.value in (None, "") else f" {self.value}"
        return f"{name}{shown}: {self.message}"


class DataError(KdError):
    """Malformed input data; names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class DiskFullError(KdError):
    """A write ran out of space; names where kd was writing (the OSError often does not)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: no space left on device")


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """An OSError of a full disk or quota, also when wrapped the way shutil.copytree wraps it
    (a shutil.Error listing each failed copy's message, with no errno of its own)."""
    if not isinstance(error, OSError):
        return False
    return error.errno in _FULL or any(os.strerror(code) in str(error) for code in _FULL)


@contextlib.contextmanager
def disk_full_names(path: str | Path) -> Iterator[None]:
    """Turns a full disk met inside the block into a DiskFullError naming `path`: the one place
    that words ENOSPC, used by every writer of checkpoints, artifacts, caches and predictions."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(path) from None
        raise
