"""Memory given back after unread streams, through a running `spanlake serve` (issue 28): 50 Flight SQL
streams, or 50 `/api/query-stream` answers, of 13 MiB batches that nobody reads, stopped by their time
limit and then closed, leave the server's RSS within 50 MB of its level before them (it stayed 160 to
320 MB above with mimalloc's default options: server/startup.py, ALLOCATOR_OPTIONS).

"Before" and "after" are both measured after the same small queries: their own working set is then in
both figures, and they let the thread heaps collect what other threads freed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import psutil
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, running_server
from test_flightsql_support import statement_ticket

TIMEOUT_SECONDS = 4
STREAMS = 50
BACK_WITHIN_MB = 50
# 13 MiB batches, endless: each answer soon blocks in its transport, its client not reading.
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"
SMALL_QUERY = "SELECT value, repeat('x', 200) AS pad FROM range(131072)"
SMALL_QUERIES = 50


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    limits = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "SPANLAKE_RESULT_BUFFER_MB": "64"}
    with running_server(postgres, tmp_path_factory.mktemp("unread-memory"), extra_env=limits) as running:
        yield running


def _settled_rss_mb(server: SpanlakeServer) -> float:
    """The server's RSS after SMALL_QUERIES queries of two 13 MiB batches each, read in full."""
    assert server.process is not None
    with flight.connect(server.flightsql_url) as client:
        for _ in range(SMALL_QUERIES):
            assert client.do_get(statement_ticket(SMALL_QUERY)).read_all().num_rows == 131072
    time.sleep(2)
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def _unread_flight_streams(server: SpanlakeServer) -> None:
    """Opens STREAMS Flight streams, reads none, lets their time limit stop them, cancels them."""
    with flight.connect(server.flightsql_url) as client:
        options = flight.FlightCallOptions(timeout=TIMEOUT_SECONDS + 20)
        readers = [client.do_get(statement_ticket(WIDE_ROWS), options) for _ in range(STREAMS)]
        time.sleep(TIMEOUT_SECONDS + 2)
        for reader in readers:
            reader.cancel()
        time.sleep(3)


def _unread_web_streams(server: SpanlakeServer) -> None:
    """Sends STREAMS `/api/query-stream` requests, reads no answer, lets their time limit stop them,
    closes the connections."""
    body = json.dumps({"sql": WIDE_ROWS}).encode()
    request = (
        f"POST /api/query-stream HTTP/1.1\r\nHost: 127.0.0.1:{server.http_port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    connections = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(STREAMS)]
    try:
        for connection in connections:
            connection.sendall(request)
        assert connections[0].recv(12) == b"HTTP/1.1 200"  # the answers stream (a few bytes read of one)
        time.sleep(TIMEOUT_SECONDS + 2)
    finally:
        for connection in connections:
            connection.close()
    time.sleep(3)


@pytest.mark.parametrize("unread_streams", [_unread_flight_streams, _unread_web_streams], ids=["flight", "web"])
def test_memory_comes_back_after_unread_streams(server: SpanlakeServer, unread_streams: object) -> None:
    before = _settled_rss_mb(server)
    unread_streams(server)  # type: ignore[operator]
    after = _settled_rss_mb(server)
    assert after - before < BACK_WITHIN_MB, (before, after)
