"""Running a plan's cells on Dask: long-lived local worker processes by default
(`distributed.LocalCluster`), or the workers of a running scheduler (`--cluster ADDRESS`), through
the same code path. A cell is a task whose arguments are the futures of the cells it uses, so the
order is Dask's task dependencies; a worker that dies has its task rescheduled by the scheduler,
and the cell resumes from its checkpoint (when the checkpoint folder is shared)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kd.errors import FieldError
from kd.jobs.cells import Cell
from kd.jobs.runner import CellContext, CellResult, run_cell

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int | None = None  # local worker processes (default: one per core); ignored with a cluster
    cluster: str | None = None  # a Dask scheduler's address
    threads: int | None = None  # torch threads per cell (default: the cores shared among the local workers)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise FieldError("workers", self.workers, "must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise FieldError("threads", self.threads, "must be at least 1")

    def local_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def cell_threads(self) -> int:
        """Enough threads per cell to use the cores, not more: N workers on C cores get C // N each."""
        if self.threads:
            return self.threads
        if self.cluster:
            return 1
        return max(1, (os.cpu_count() or 1) // self.local_workers())


@contextlib.contextmanager
def dask_client(options: ExecutorOptions) -> Iterator:
    """A Dask client on a local cluster of worker processes, or on the scheduler at `options.cluster`
    (a KdError if it does not answer: before any cell starts)."""
    from distributed import Client, LocalCluster

    if options.cluster:
        check_answers(options.cluster)
        try:
            client = Client(options.cluster, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise FieldError("cluster", options.cluster, f"no Dask scheduler answers there "
                          f"({' '.join(str(error).split()) or type(error).__name__})") from None
        with client:
            yield client
        return
    # Processes, not threads: torch holds the GIL in parts of training, and a cell that crashes
    # its process takes only that worker down (the nanny restarts it, the scheduler reschedules).
    with LocalCluster(n_workers=options.local_workers(), threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def check_answers(address: str) -> None:
    """Fails at once when nothing listens at a tcp:// address (a Client would retry until its timeout)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme != "tcp" or not parsed.hostname:
        return  # tls://, inproc://, ...: left to Dask
    try:
        socket.create_connection((parsed.hostname, parsed.port or 8786), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise FieldError("cluster", address, f"no Dask scheduler answers there ({error.strerror or error})") from None


def task_key(cell: Cell, context: CellContext) -> str:
    """A cell's Dask key: its identity plus where it logs, so two plans on one scheduler that share a
    cell share its task only when they also share the experiment."""
    where = hashlib.sha256(f"{context.tracking_uri}\n{context.experiment}".encode()).hexdigest()[:8]
    return f"kd-cell-{cell.cell_id}-{where}"


def run_cells(client, cells: dict[str, Cell], context: CellContext,
              on_result: Callable[[CellResult], None] = lambda result: None) -> list[CellResult]:
    """Submits every cell with the futures of the cells it uses as arguments and collects the
    results as they come; `on_result` hears each (the live progress)."""
    from distributed import as_completed

    futures = {}
    for cell in cells.values():  # in dependency order
        inputs = [futures[d] for d in cell.depends_on]
        futures[cell.cell_id] = client.submit(run_cell, cell, context, *inputs, key=task_key(cell, context),
                                              pure=False)
    cell_of = {future.key: cells[cell_id] for cell_id, future in futures.items()}
    results = []
    for future in as_completed(list(futures.values()), loop=client.loop):
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: a task that killed workers repeatedly
            cell = cell_of[future.key]
            result = CellResult(cell.cell_id, cell.label, "failed", message=f"{type(error).__name__}: {error}")
        results.append(result)
        on_result(result)
    return results
