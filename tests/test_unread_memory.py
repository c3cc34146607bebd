"""Memory given back after unread streams, through a running `spanlake serve` (issue 28): 50 Flight SQL
streams of 13 MiB batches, or 50 `/api/query-stream` answers, that nobody reads, stopped by their time
limit and then closed, leave the server's RSS within 50 MB of its level before them. Flight streams left
160 to 320 MB with mimalloc's default options (server/startup.py, ALLOCATOR_OPTIONS); web answers left
70 to 100 MB while each idle query thread kept the batches it had computed last (query_thread,
IDLE_SECONDS). Flight streams left +66 to +144 MB one run in five while batches freed after their
thread had ended stayed in its abandoned mimalloc segment (lakehouse/query/heap_sweeps.py):
docs/flightsql.md, Memory given back.

"Before" and "after" are both measured after the same small queries through the same door: their own
working set is then in both figures, and they let the thread heaps collect what other threads freed."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator

import psutil
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, running_server
from test_flightsql_support import statement_ticket
from test_unread_streams import _unread_query_stream

TIMEOUT_SECONDS = 4
STREAMS = 50
BACK_WITHIN_MB = 50
# 13 MiB batches, endless: each stream soon blocks in gRPC's write, its client not reading.
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"
SMALL_QUERY = "SELECT value, repeat('x', 200) AS pad FROM range(131072)"
SMALL_QUERIES = 50


@pytest.fixture
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    limits = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "SPANLAKE_RESULT_BUFFER_MB": "64"}
    with running_server(postgres, tmp_path_factory.mktemp("unread-memory"), extra_env=limits) as running:
        yield running


def _small_flight_queries(server: SpanlakeServer) -> None:
    """SMALL_QUERIES Flight queries of two 13 MiB batches each, read in full."""
    with flight.connect(server.flightsql_url) as client:
        for _ in range(SMALL_QUERIES):
            assert client.do_get(statement_ticket(SMALL_QUERY)).read_all().num_rows == 131072


def _small_web_queries(server: SpanlakeServer) -> None:
    """SMALL_QUERIES `/api/query-stream` queries of two 13 MiB batches each, read to their last frame."""
    body = json.dumps({"sql": SMALL_QUERY}).encode()
    for _ in range(SMALL_QUERIES):
        request = urllib.request.Request(f"{server.http_url}/api/query-stream", body, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request) as answer:
            assert answer.read().endswith(b'{"type":"done"}\n')


def _settled_rss_mb(server: SpanlakeServer, small_queries: Callable[[SpanlakeServer], None]) -> float:
    """The server's RSS after `small_queries` and a pause."""
    assert server.process is not None
    small_queries(server)
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


def _unread_web_answers(server: SpanlakeServer) -> None:
    """Sends STREAMS `/api/query-stream` requests, reads no answer, lets their time limit stop them,
    closes the connections."""
    connections = [_unread_query_stream(server) for _ in range(STREAMS)]
    time.sleep(TIMEOUT_SECONDS + 2)
    for connection in connections:
        connection.close()
    time.sleep(3)


def test_memory_comes_back_after_unread_flight_streams(server: SpanlakeServer) -> None:
    before = _settled_rss_mb(server, _small_flight_queries)
    _unread_flight_streams(server)
    after = _settled_rss_mb(server, _small_flight_queries)
    assert after - before < BACK_WITHIN_MB, (before, after)


def test_memory_comes_back_after_unread_web_answers(server: SpanlakeServer) -> None:
    before = _settled_rss_mb(server, _small_web_queries)
    _unread_web_answers(server)
    after = _settled_rss_mb(server, _small_web_queries)
    assert after - before < BACK_WITHIN_MB, (before, after)
