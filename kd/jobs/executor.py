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
# A Dask scheduler's first message, its handshake (compression, python, pickle-protocol), measured 58
# bytes with distributed 2026.8.0; anything much larger is not a scheduler speaking.
MAX_HANDSHAKE_BYTES = 1 << 16
HANDSHAKE_KEYS = {"compression", "python", "pickle-protocol"}
DASHBOARD_ADDRESS = "127.0.0.1:8787"


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int | None = None  # local worker processes (default: one per core); ignored with a cluster
    cluster: str | None = None  # a Dask scheduler's address
    threads: int | None = None  # torch threads per cell (default: the cores shared among the local workers)
    dashboard: bool = False  # the local cluster's Dask dashboard, at DASHBOARD_ADDRESS (or the next free port)
    connect_timeout_s: float = CONNECT_TIMEOUT_S  # to connect to `cluster` and hear its handshake
    device: str = "auto"  # where the cells train

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
        check_scheduler(options.cluster, options.connect_timeout_s)
        try:
            client = Client(options.cluster, timeout=options.connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise FieldError("cluster", options.cluster, f"no Dask scheduler answers there "
                          f"({' '.join(str(error).split()) or type(error).__name__})") from None
        with client:
            yield client
        return
    # Processes, not threads: torch holds the GIL in parts of training, and a cell that crashes
    # its process takes only that worker down (the nanny restarts it, the scheduler reschedules).
    # Dask's scheduler always serves HTTP, by default on 8787 (two plans at once warned `Port 8787 is
    # already in use`): without --dashboard, no dashboard and any free loopback port.
    http = {} if options.dashboard else {"scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}}
    with LocalCluster(n_workers=options.local_workers(), threads_per_worker=1, processes=True,
                      dashboard_address=DASHBOARD_ADDRESS if options.dashboard else None,
                      silence_logs=logging.ERROR, **http) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def check_scheduler(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fails within `timeout_s` (a FieldError of `cluster`) unless a Dask scheduler answers at a tcp://
    address: nothing listening, or a server that is not Dask (an HTTP server waits for a request, and
    Dask's Client for a handshake, forever; a server that sends something else had Dask read its
    first bytes as a frame length and ask for exabytes). A scheduler speaks first: its handshake."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme != "tcp" or not parsed.hostname:
        return  # tls://, inproc://, ...: left to Dask
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 8786), timeout=timeout_s) as connection:
            problem = _handshake_problem(connection, timeout_s)
    except OSError as error:
        problem = f"no Dask scheduler answers there ({error.strerror or error})"
    if problem:
        raise FieldError("cluster", address, problem)


def _handshake_problem(connection, timeout_s: float) -> str | None:
    """What is wrong with the first message on `connection`, or None for a Dask handshake: a frame of
    8-byte little-endian lengths (total, frame count, each frame's) around a msgpack mapping."""
    import struct
    import time

    import msgpack

    deadline = time.monotonic() + timeout_s

    def read(size: int) -> bytes:
        data = b""
        while len(data) < size:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = connection.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the connection was closed")
            data += chunk
        return data
    not_dask = "something answers there, but not a Dask scheduler"
    try:
        (total,) = struct.unpack("<Q", read(8))
        if not 16 <= total <= MAX_HANDSHAKE_BYTES:
            return f"{not_dask} (its first message claims {total} bytes)"
        payload = read(total)
        (count,) = struct.unpack_from("<Q", payload)
        lengths = struct.unpack_from(f"<{count}Q", payload, 8) if 8 + 8 * count <= total else ()
        message = msgpack.unpackb(payload[8 + 8 * count:][:sum(lengths)]) if lengths else None
    except TimeoutError:  # socket.timeout
        return f"no Dask scheduler answers there (no handshake within {timeout_s:g} s)"
    except (OSError, ValueError, struct.error) as error:
        return f"{not_dask} ({' '.join(str(error).split()) or type(error).__name__})"
    if not isinstance(message, dict) or not HANDSHAKE_KEYS <= set(message):
        return f"{not_dask} (its first message is not a Dask handshake)"
    return None


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
    waiting = waiting_cells(cells)
    for cell in cells.values():  # in dependency order
        inputs = [futures[d] for d in cell.depends_on]
        futures[cell.cell_id] = client.submit(run_cell, cell, context, *inputs, key=task_key(cell, context),
                                              pure=False, priority=waiting[cell.cell_id])
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


def waiting_cells(cells: dict[str, Cell]) -> dict[str, int]:
    """Per cell, how many cells wait on it, directly or through others: its Dask priority, so that the
    cells that gate the most run first. In submission order, issue 25's plan (132 cells, 2 workers) left
    the seed-1 teacher, which 67 cells wait on, queued behind about 40 students."""
    below: dict[str, set[str]] = {cell_id: set() for cell_id in cells}
    for cell in reversed(list(cells.values())):  # dependency order reversed: a cell's dependents first
        for needed in cell.depends_on:
            below[needed] |= below[cell.cell_id] | {cell.cell_id}
    return {cell_id: len(waiting) for cell_id, waiting in below.items()}
