"""The lock a study's storage gives workers that start together (kd/tuning/storage.py), and the
one parent run it buys: checked with threads that hold it, on a journal, sqlite and PostgreSQL."""
from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from kd.tuning.space import load_search_space
from kd.tuning.storage import open_storage, storage_lock
from kd.tuning.study import find_or_create_parent
from tests.test_tune import postgres_databases, with_installed_driver  # noqa: F401 (a fixture)


def storage_url(kind: str, tmp_path, request) -> str:
    if kind == "journal":
        return str(tmp_path / "studies.log")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return with_installed_driver(request.getfixturevalue("postgres_databases")["optuna"])


def order_of_two_holders(storage: str, opened, first_key: str, second_key: str) -> list[str]:
    """The first thread takes the lock and holds it 0.5 s; the second asks for it once the first
    holds it. The events in the order they happened."""
    events: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with storage_lock(storage, opened, first_key):
            events.append("first in")
            holding.set()
            time.sleep(0.5)
            events.append("first out")

    def second() -> None:
        assert holding.wait(10)
        with storage_lock(storage, opened, second_key):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return events


@pytest.mark.parametrize("kind, second_key, order", [
    ("journal", "parent of s", ["first in", "first out", "second in"]),
    ("sqlite", "parent of s", ["first in", "first out", "second in"]),
    ("postgresql", "parent of s", ["first in", "first out", "second in"]),
    ("postgresql", "parent of t", ["first in", "second in", "first out"]),  # another name does not wait
])
def test_a_second_holder_of_the_lock_waits_until_the_first_lets_go(kind, second_key, order, tmp_path, request):
    storage = storage_url(kind, tmp_path, request)
    opened = open_storage(storage, attempts=1)
    try:
        assert order_of_two_holders(storage, opened, "parent of s", second_key) == order
    finally:
        if hasattr(opened, "engine"):
            opened.engine.dispose()


class LateInsertClient:
    """An MlflowClient whose `create_run` in thread "late" stamps its run 10 s early and then waits
    (at most 2 s) for thread "early" to be done before inserting it: a worker whose insert reached
    the store after the other worker had looked, with the earlier start time (the CI failure)."""

    def __init__(self, client: MlflowClient, early_done: threading.Event, late_creating: threading.Event):
        self.client, self.early_done, self.late_creating = client, early_done, late_creating

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def create_run(self, experiment_id: str, **kwargs):
        if threading.current_thread().name != "late":
            return self.client.create_run(experiment_id, **kwargs)
        start_time = int(time.time() * 1000) - 10_000
        self.late_creating.set()
        self.early_done.wait(2)
        return self.client.create_run(experiment_id, start_time=start_time, **kwargs)


def test_workers_starting_together_share_one_parent_run(tmp_path):
    """Without the lock, "early" finds no parent, makes one and sees only its own, while "late"
    makes one stamped earlier and keeps it: two parents. With it, "late" makes the only one."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("e")
    (tmp_path / "space.yaml").write_text("fixed: {epochs: 1}\nparams:\n  alpha: {type: float, low: 0.0, high: 1.0}\n")
    space = load_search_space(str(tmp_path / "space.yaml"))
    storage = str(tmp_path / "studies.log")
    opened = open_storage(storage)
    early_done, late_creating = threading.Event(), threading.Event()
    shared = LateInsertClient(client, early_done, late_creating)
    parents: dict[str, str] = {}

    def worker() -> None:
        name = threading.current_thread().name
        parents[name] = find_or_create_parent(shared, "e", "s", space, storage=storage, opened=opened).run_id
        if name == "early":
            early_done.set()

    late = threading.Thread(target=worker, name="late")
    late.start()
    assert late_creating.wait(30)
    early = threading.Thread(target=worker, name="early")
    early.start()
    for thread in (late, early):
        thread.join(60)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id], "tags.model_kind = 'study'")
    assert len(runs) == 1 and parents == {"late": runs[0].info.run_id, "early": runs[0].info.run_id}, parents
