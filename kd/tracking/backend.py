"""Where runs go: the tracking URI the user chose, or MLflow's embedded sqlite default."""
from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: str | None) -> str:
    """The URI in use: the configured one (e.g. MLFLOW_TRACKING_URI, read by the CLI) or the
    embedded default, a sqlite file in the working directory."""
    return configured or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:///relative.db and sqlite:////absolute.db
    return Path(uri[len("sqlite:///"):])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(uri: str):
    """An MlflowClient on `uri`, with the store's schema created first under a file lock, so
    several processes starting at once on a fresh sqlite store do not race on creating it."""
    from mlflow import MlflowClient

    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    with file_lock(database.with_name(database.name + ".lock")), _quiet("mlflow.store.db.utils", "alembic"):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates and migrates the schema if needed
    return client


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Hides MLflow's schema-creation chatter, which would bury a one-line error."""
    import logging

    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
