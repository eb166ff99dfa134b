"""`kd plan run`'s Dask side against what may answer at an address (issue 27): a real Dask scheduler
passes the handshake check; an HTTP server (python's http.server), a TCP listener that says nothing,
one that sends bytes that are not Dask's, and a closed port are refused within a bounded time with
one line naming --cluster. The local cluster opens no dashboard unless asked, so two plans at once
do not fight over port 8787."""
from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from kd.errors import FieldError
from kd.jobs.executor import ExecutorOptions, check_scheduler, dask_client
from tests.conftest import isolated_store, make_corpora, one_line_error
from tests.test_plan import tiny_plan, write_plan


@contextlib.contextmanager
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def tcp_listener(says: bytes) -> Iterator[str]:
    """Accepts connections and sends `says` on each (nothing: b"")."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                accepted.append(connection)
                if says:
                    connection.sendall(says)
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def closed_port() -> str:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


GARBAGE = b"\xff" * 8 + b"x" * 64  # a first frame length of 2**64 - 1 bytes: Dask asked for exabytes


@pytest.mark.parametrize("server, needle", [
    (http_server, "no handshake within 1 s"),
    (lambda: tcp_listener(b""), "no handshake within 1 s"),
    (lambda: tcp_listener(GARBAGE), "not a Dask scheduler"),
    (lambda: tcp_listener(b"HTTP/1.0 200 OK\r\n\r\n" * 4), "not a Dask scheduler"),
    (lambda: contextlib.nullcontext(closed_port()), "no Dask scheduler answers there"),
], ids=["http", "silent-tcp", "garbage-tcp", "http-reply", "closed"])
def test_anything_but_a_scheduler_is_refused_in_bounded_time(server, needle):
    with server() as address:
        started = time.monotonic()
        with pytest.raises(FieldError) as raised:
            check_scheduler(address, timeout_s=1)
        assert time.monotonic() - started < 5
    assert raised.value.field == "cluster" and needle in str(raised.value), str(raised.value)


def test_a_real_scheduler_passes_and_no_dashboard_is_opened_unless_asked():
    """One kd local cluster while port 8787 is taken (by this test, or by whoever holds it): no
    `Port 8787 is already in use` warning, and its scheduler serves no dashboard page."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):
            stack.enter_context(socket.create_server(("127.0.0.1", 8787)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with dask_client(ExecutorOptions(workers=1)) as client:
                check_scheduler(client.scheduler.address, timeout_s=5)  # a Dask scheduler: passes
                port = client.scheduler_info()["services"]["dashboard"]
                with pytest.raises(urllib.error.HTTPError) as page:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5)
    assert page.value.code == 404
    assert port != 8787 and not [w for w in caught if "already in use" in str(w.message)], \
        [str(w.message) for w in caught]


# End to end through `kd plan run` (the HTTP case waits out the real 10 s handshake timeout): slow;
# the library-level test above checks the same refusals with a 1 s timeout.
@pytest.mark.slow
@pytest.mark.parametrize("server", [http_server, lambda: tcp_listener(GARBAGE)], ids=["http", "garbage-tcp"])
def test_plan_run_at_a_non_scheduler_is_one_line_and_starts_nothing(tmp_path, server):
    data_dir = make_corpora(tmp_path / "corpora")
    plan = write_plan(tmp_path / "plan.yaml", tiny_plan(data_dir))
    with isolated_store(tmp_path) as uri, server() as address:
        started = time.monotonic()
        result = CliRunner().invoke(cli, ["plan", "run", str(plan), "--experiment", "e", "--cluster", address])
        message = one_line_error(result)
        assert time.monotonic() - started < 30, "bounded: the handshake's timeout is 10 s"
        from kd.tracking.backend import open_client

        assert open_client(uri).get_experiment_by_name("e") is None
    assert f"--cluster {address}:" in message, message
