"""Streams nobody reads, through a running `spanlake serve`: Flight SQL streams and `/api/query-stream`
answers opened and never read hold a bounded buffer (SPANLAKE_RESULT_BUFFER_MB in total): past it
every query waits, then stops at its time limit; the budget then comes back whole."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from test_flightsql_support import grpc_status, statement_ticket

TIMEOUT_SECONDS = 8
RESULT_BUFFER_MB = 64
STREAMS = 50
# 13 MiB batches (65,536 rows of 200 bytes), endless: without the bound, 50 unread streams took the
# server from 217 to 897 MB (and to 1,507 MB in the run).
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"
# What the bound leaves: the buffer, and each waiting query's session, plan and threads (about 2.5 MB).
OPEN_GROWTH_MB = RESULT_BUFFER_MB + 200
# Measured 190 MB after the streams closed: the allocators (DataFusion's and Arrow's mimalloc) keep
# pages freed by threads that exit (docs/flightsql.md, Backpressure).
CLOSED_GROWTH_MB = 250


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    limits = {
        "SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "SPANLAKE_RESULT_BUFFER_MB": str(RESULT_BUFFER_MB),
    }
    with running_server(postgres, tmp_path_factory.mktemp("unread"), extra_env=limits) as running:
        yield running


def _rss_mb(server: SpanlakeServer) -> float:
    assert server.process is not None
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def _answers(server: SpanlakeServer) -> float:
    """Seconds `SELECT 1` takes (it must answer)."""
    started = time.monotonic()
    with flight.connect(server.flightsql_url) as client:
        assert client.do_get(statement_ticket("SELECT 1 AS one")).read_all().to_pylist() == [{"one": 1}]
    return time.monotonic() - started


def _full_read_rows(server: SpanlakeServer) -> int:
    """Rows of a 2-batch wide result read to its end: it needs the budget back."""
    sql = WIDE_ROWS.replace("1000000000", "131072")
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket(sql)).read_all().num_rows


def test_unread_flight_streams_hold_a_bounded_buffer_then_time_out(server: SpanlakeServer) -> None:
    _answers(server)
    time.sleep(1)
    before = _rss_mb(server)
    client = flight.connect(server.flightsql_url)
    # A stream blocked in gRPC's write (its client not reading) is out of the query's reach, time limit
    # included, until its client cancels or its deadline passes: this one's never hangs the test.
    options = flight.FlightCallOptions(timeout=TIMEOUT_SECONDS + 20)
    readers = [client.do_get(statement_ticket(WIDE_ROWS), options) for _ in range(STREAMS)]
    time.sleep(3)
    peak = max(_rss_mb(server) for _ in range(3) if time.sleep(0.5) is None)
    assert peak - before < OPEN_GROWTH_MB, (before, peak)
    time.sleep(TIMEOUT_SECONDS)
    with pytest.raises(pa.ArrowException) as caught:
        readers[-1].read_all()  # it waited for room, then its time limit stopped it
    assert grpc_status(caught.value)[0] == "DEADLINE_EXCEEDED", caught.value
    for reader in readers:
        reader.cancel()
    client.close()
    assert _answers(server) < 2
    assert _full_read_rows(server) == 131072
    time.sleep(2)
    assert _rss_mb(server) - before < CLOSED_GROWTH_MB, (before, _rss_mb(server))


def _unread_query_stream(server: SpanlakeServer) -> socket.socket:
    """A `/api/query-stream` request sent, its answer never read."""
    url = urlsplit(server.http_url)
    body = json.dumps({"sql": WIDE_ROWS}).encode()
    connection = socket.create_connection((url.hostname, url.port))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = (
        f"POST /api/query-stream HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


def test_unread_web_query_streams_give_their_buffers_back(server: SpanlakeServer) -> None:
    """A web answer is compressed: the kernel's socket buffers take about 100 MB of each unread answer's
    batches before its writer waits, and the process's memory is not bounded by the result buffer
    alone (measured +440 to +670 MB for 50 answers; 1,066 MB in the issue): not asserted here."""
    connections = [_unread_query_stream(server) for _ in range(STREAMS)]
    time.sleep(3)
    for connection in connections:
        connection.close()
    time.sleep(TIMEOUT_SECONDS)
    assert _answers(server) < 2
    assert _full_read_rows(server) == 131072


def _connections_held(server: SpanlakeServer, clients: list[socket.socket]) -> int:
    """How many of the clients' connections the server process still holds a socket of."""
    assert server.process is not None
    ports = {client.getsockname()[1] for client in clients}
    held = psutil.Process(server.process.pid).net_connections(kind="tcp")
    return sum(1 for connection in held if connection.raddr and connection.raddr.port in ports)


def test_unread_web_answers_hold_a_bounded_buffer_then_are_aborted(server: SpanlakeServer) -> None:
    """Each answer's kernel send buffer is bounded (query_stream.SEND_BUFFER_BYTES) and a write waiting
    past the query's time limit aborts the connection: before, the answer waited for ever."""
    _answers(server)
    time.sleep(1)
    before = _rss_mb(server)
    connections = [_unread_query_stream(server) for _ in range(STREAMS)]
    time.sleep(3)
    peak = max(_rss_mb(server) for _ in range(3) if time.sleep(0.5) is None)
    assert peak - before < OPEN_GROWTH_MB, (before, peak)
    assert _connections_held(server, connections) == STREAMS
    time.sleep(TIMEOUT_SECONDS + 2)
    assert _answers(server) < 2
    # An answer whose write waited is aborted at the time limit (what the kernel holds drains on its
    # own); one that waited for the result buffer ends with its error frame, its connection kept alive.
    wait_until(lambda: _connections_held(server, connections) < STREAMS, 15, "the unread answers aborted")
    for connection in connections:
        connection.close()
    assert _full_read_rows(server) == 131072


def test_streams_blocked_in_grpc_write_give_their_buffers_back_at_the_time_limit(server: SpanlakeServer) -> None:
    """A stream whose client does not read blocks in gRPC's write, out of its query's steps, holding its
    batch against the total: at its time limit the runner's watch stops it, and its result buffer and
    query thread go back at once (before, until its client cancelled: other queries waited meanwhile)."""
    client = flight.connect(server.flightsql_url)
    options = flight.FlightCallOptions(timeout=TIMEOUT_SECONDS + 30)
    # 4 × 13 MiB: each stream's first batch fits the total; a 2-batch read then does not.
    readers = [client.do_get(statement_ticket(WIDE_ROWS), options) for _ in range(4)]
    time.sleep(TIMEOUT_SECONDS + 2)
    assert _answers(server) < 2
    assert _full_read_rows(server) == 131072  # the budget is back while the streams stay open
    for reader in readers:
        reader.cancel()
    client.close()


def test_a_query_waiting_for_the_full_total_fails_unavailable_after_the_wait_setting(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Past SPANLAKE_RESULT_BUFFER_WAIT_SECONDS of waiting for room in the full total, a query fails
    UNAVAILABLE naming the settings, long before its own time limit."""
    limits = {
        "SPANLAKE_QUERY_TIMEOUT_SECONDS": "60",
        "SPANLAKE_RESULT_BUFFER_MB": "16",
        "SPANLAKE_RESULT_BUFFER_WAIT_SECONDS": "2",
    }
    with running_server(postgres, tmp_path, extra_env=limits) as small:
        client = flight.connect(small.flightsql_url)
        options = flight.FlightCallOptions(timeout=30)
        unread = client.do_get(statement_ticket(WIDE_ROWS), options)  # its first batch fills the total
        time.sleep(2)
        started = time.monotonic()
        with pytest.raises(pa.ArrowException) as caught:
            client.do_get(statement_ticket(WIDE_ROWS), options).read_all()
        assert time.monotonic() - started < 10
        code, message = grpc_status(caught.value)
        assert code == "UNAVAILABLE", caught.value
        assert "SPANLAKE_RESULT_BUFFER_MB" in message and "SPANLAKE_RESULT_BUFFER_WAIT_SECONDS" in message
        unread.cancel()
        client.close()


def test_queries_stopped_while_waiting_for_room_leave_the_server_answering(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Round after round, unread answers fill a small total and the queries waiting for room are stopped
    at their time limit (issue 28: a stop landing in the budget's lock once froze the event loop; the
    deterministic check is tests/test_query_stop_locks.py); the server answers, its budget back whole."""
    limits = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": "2", "SPANLAKE_RESULT_BUFFER_MB": "16"}
    with running_server(postgres, tmp_path, extra_env=limits) as small:
        for _ in range(3):
            connections = [_unread_query_stream(small) for _ in range(20)]
            time.sleep(3)
            for connection in connections:
                connection.close()
            assert _answers(small) < 2
        assert _full_read_rows(small) == 131072
