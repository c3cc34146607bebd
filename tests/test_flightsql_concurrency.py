"""Several clients at once: a client that leaves mid-stream frees its query, a slow query or a slow
reader does not hold up other clients, and several server processes serve behind one address."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import datafusion
import micromegas
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pytest
from datafusion import udtf
from harness import PROJECT_ROOT, free_port, wait_until
from test_flightsql_support import (
    EVENT_ROWS,
    RecordingFactory,
    audit_records,
    capture_audit,
    events_table,
    running_server,
    statement_ticket,
)

from spanlake.server.flightsql import protocol

N = EVENT_ROWS
ENDLESS_ROWS = 10_000_000_000  # far more than any loopback can carry before the test gives up


class Gate:
    """A table function that blocks planning until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def register(self, ctx: datafusion.SessionContext) -> None:
        @udtf("gated_view")
        def gated_view(*_args: Any) -> ds.Dataset:
            self.entered.set()
            if not self.opened.wait(60):
                raise TimeoutError("the gate was never opened")
            return ds.dataset(pa.table({"answer": [42]}))

        ctx.register_udtf(gated_view)


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def uri(gate: Gate) -> Iterator[str]:
    with running_server(RecordingFactory({"events": events_table()}, configure=gate.register)) as server_uri:
        yield server_uri


def _ids(uri: str) -> np.ndarray:
    table = micromegas.connect(uri).query_arrow("SELECT id FROM events ORDER BY id")
    return table.column("id").to_numpy()


def test_a_client_leaving_mid_stream_frees_its_query(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    capture_audit(caplog)
    with flight.connect(uri) as client:
        reader = client.do_get(statement_ticket(f"SELECT value FROM range({ENDLESS_ROWS})"))
        first = reader.read_chunk().data
        assert first.column(0)[0].as_py() == 0
        reader.cancel()

    def left() -> list[dict[str, Any]]:
        return [r for r in audit_records(caplog) if r["status"] == "incomplete"]

    wait_until(lambda: left(), 60, "the abandoned query's audit record")
    [record] = left()
    assert 0 < record["rows"] < ENDLESS_ROWS and record["error_class"] is None
    np.testing.assert_array_equal(_ids(uri), np.arange(N))  # and the server keeps serving


def test_a_slow_query_does_not_stall_another_client(uri: str, gate: Gate) -> None:
    answers: list[Any] = []
    slow = threading.Thread(
        target=lambda: answers.append(micromegas.connect(uri).query("SELECT answer FROM gated_view()")["answer"][0])
    )
    slow.start()
    try:
        assert gate.entered.wait(30)
        np.testing.assert_array_equal(_ids(uri), np.arange(N))  # served while the slow query plans
        assert slow.is_alive() and answers == []
    finally:
        gate.opened.set()
        slow.join(60)
    assert answers == [42]


def test_a_slow_reader_does_not_stall_another_client(uri: str) -> None:
    with flight.connect(uri) as client:
        reader = client.do_get(statement_ticket("SELECT id FROM events ORDER BY id"))
        head = reader.read_chunk().data
        np.testing.assert_array_equal(_ids(uri), np.arange(N))  # while the first reader pauses
        rest = reader.read_all()
    ids = np.concatenate([head.column(0).to_numpy(), rest.column("id").to_numpy()])
    np.testing.assert_array_equal(ids, np.arange(N))


# ------------------------------------------------------------------------------------------------
# several processes behind one address

SERVER_PROCESS = """
import logging, os, sys
import datafusion, pyarrow as pa
from spanlake.server.flightsql import default_session_config, run_flightsql

def factory(query):
    ctx = datafusion.SessionContext(default_session_config())
    ctx.register_record_batches("server", [[pa.record_batch({"pid": [os.getpid()]})]])
    return ctx

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
run_flightsql("127.0.0.1", int(sys.argv[1]), factory, None)
"""


def _start_server_process(port: int) -> tuple[subprocess.Popen[str], str]:
    """Starts a `spanlake flightsql`-like process; returns it with the stderr it wrote until it
    listened (or until it exited)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_PROCESS, str(port)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "Flight SQL listening on 127.0.0.1:" in line:
            break
    return process, "".join(lines)


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    code = process.wait(30)
    assert process.stderr is not None
    process.stderr.close()
    return code


class RoundRobinRelay:
    """A minimal TCP (L4) balancer standing in for HAProxy/Envoy: each new connection goes to the
    next backend port."""

    def __init__(self, backend_ports: list[int]) -> None:
        self._backends = itertools.cycle(backend_ports)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", next(self._backends)))
            self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def _pid_behind(uri: str) -> int:
    # A private subchannel pool makes each client open its own TCP connection.
    with flight.connect(uri, generic_options=[("grpc.use_local_subchannel_pool", 1)]) as client:
        return client.do_get(statement_ticket("SELECT pid FROM server")).read_all().column(0)[0].as_py()


def test_server_processes_behind_one_balanced_address() -> None:
    first_port, second_port = free_port(), free_port()
    first, _ = _start_server_process(first_port)
    processes = [first]
    try:
        # Arrow's gRPC transport disables SO_REUSEPORT: a second process cannot take the same port...
        clash, clash_log = _start_server_process(first_port)
        assert clash.wait(30) == 1
        assert f"Flight SQL cannot listen on grpc://127.0.0.1:{first_port} (address in use?)" in clash_log
        assert clash.stderr is not None
        clash.stderr.close()
        # ...so each process gets its own port, and a TCP balancer gives them one address.
        second, _ = _start_server_process(second_port)
        processes.append(second)
        relay = RoundRobinRelay([first_port, second_port])
        try:
            uri = f"grpc://127.0.0.1:{relay.port}"
            assert {_pid_behind(uri), _pid_behind(uri)} == {first.pid, second.pid}
            # Handles are stateless: a ticket planned by one process is served by the other.
            with (
                flight.connect(f"grpc://127.0.0.1:{first_port}") as a,
                flight.connect(f"grpc://127.0.0.1:{second_port}") as b,
            ):
                info = a.get_flight_info(
                    flight.FlightDescriptor.for_command(
                        protocol.pack(protocol.CommandStatementQuery(query="SELECT pid FROM server"))
                    )
                )
                assert b.do_get(info.endpoints[0].ticket).read_all().column(0).to_pylist() == [second.pid]
        finally:
            relay.close()
    finally:
        codes = [_stop(process) for process in processes]
    assert codes == [0, 0]
