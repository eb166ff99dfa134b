"""Where a study lives: a journal file (the default) or a database, opened for several workers,
and a lock in that storage for what those workers must do once."""
from __future__ import annotations

import contextlib
import hashlib
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from kd.errors import FieldError
from kd.tracking.backend import file_lock

DEFAULT_JOURNAL = "kd-optuna.log"


def import_optuna():
    """Optuna, quiet: its INFO lines and experimental-feature warnings would bury kd's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def describe_storage(storage: str | None) -> str:
    """The storage as logged: the journal path, or the URL without its password."""
    journal = journal_path(storage)
    if journal is not None:
        return str(journal.resolve())
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def open_storage(storage: str | None, attempts: int = 5):
    """A journal file (a path, the default) or a database (a URL). Workers that start together on
    a fresh database race on creating its tables; the loser retries."""
    optuna = import_optuna()
    journal = journal_path(storage)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend

        journal.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    for attempt in range(attempts):
        try:
            # The supported spelling since Optuna 4.9: `failed_trial_callback` and
            # RetryFailedTrialCallback are deprecated and print FutureWarnings before any output.
            return RDBStorage(storage, heartbeat_interval=20, grace_period=60,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except ImportError as error:
            raise FieldError("storage", describe_storage(storage), f"no database driver ({error}); "
                          "for PostgreSQL: pip install 'kd[postgres]'") from None
        except Exception as error:  # a concurrent schema creation, or a server not up yet
            if attempt == attempts - 1:
                raise FieldError("storage", describe_storage(storage), f"{str(error).splitlines()[0]}") from None
            time.sleep(0.5 + random.random() * 2 ** attempt)


@contextlib.contextmanager
def storage_lock(storage: str | None, opened, key: str) -> Iterator[None]:
    """Holds the lock named `key` in the study's storage (`storage` as given, `opened` as
    `open_storage` returned it), so that workers starting together do a thing once: a file lock
    beside a journal or a sqlite file, a transaction-scoped advisory lock on PostgreSQL. Other
    databases get no lock. Workers share the storage by definition, so its lock serialises them
    wherever they run."""
    journal = journal_path(storage)
    engine = None if journal is not None else opened.engine
    if engine is not None and engine.dialect.name == "postgresql":
        from sqlalchemy import text

        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        with engine.begin() as connection:  # released when the transaction ends, however it ends
            connection.execute(text("SELECT pg_advisory_xact_lock(:number)"), {"number": number})
            yield
        return
    beside = journal if journal is not None else _sqlite_file(engine)
    if beside is None:
        yield
        return
    with file_lock(beside.with_name(beside.name + ".kd-lock")):
        yield


def journal_path(storage: str | None) -> Path | None:
    """The journal file a storage names (a path, or none for the default), or None for a URL."""
    return Path(storage or DEFAULT_JOURNAL) if not storage or "://" not in storage else None


def _sqlite_file(engine) -> Path | None:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return Path(database) if database and database != ":memory:" else None
