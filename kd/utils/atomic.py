"""Atomic writes: a reader sees the old artefact or the complete new one, never a half-written one."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def _fresh(parent: Path, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """A new file or folder beside the target, made by `make` with the process's umask applied, as a
    plain open() or mkdir() would: tempfile's mkstemp/mkdtemp create 0600/0700, which left every
    artefact (tables, models, caches) unreadable to the rest of a team sharing a folder."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free temporary name after 100 tries")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` for a writer that wants a file name (torch.save,
    numpy); renames it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _fresh(path.parent, f".{path.name}.", ".tmp", _new_file)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator:
    """Opens a temporary file beside `path` and moves it into place only if the block succeeds."""
    with atomic_path(path) as temporary, open(temporary, mode, **open_kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _fresh(path.parent, f".{path.name}.", ".tmp", os.mkdir)
    retired: Path | None = None
    try:
        yield staging
        if path.exists():
            # A folder cannot be replaced in one rename: move the old one aside, and back on failure.
            retired = _fresh(path.parent, f".{path.name}.", ".old", os.mkdir)
            os.replace(path, retired / "old")
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and not path.exists() and (retired / "old").exists():
            os.replace(retired / "old", path)
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
