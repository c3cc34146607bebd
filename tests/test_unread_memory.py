"""Memory given back after unread streams, through a running `spanlake serve` (issue 28): 50 Flight SQL
streams of 13 MiB batches that nobody reads, stopped by their time limit and then cancelled, leave the
server's RSS within 50 MB of its level before them (it stayed 160 to 320 MB above with mimalloc's
default options: server/startup.py, ALLOCATOR_OPTIONS). 50 unread `/api/query-stream` answers still
leave 70 to 100 MB (120 with mimalloc's defaults): docs/flightsql.md, Memory given back.

"Before" and "after" are both measured after the same small queries: their own working set is then in
both figures, and they let the thread heaps collect what other threads freed."""

from __future__ import annotations

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
# 13 MiB batches, endless: each stream soon blocks in gRPC's write, its client not reading.
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"
SMALL_QUERY = "SELECT value, repeat('x', 200) AS pad FROM range(131072)"
SMALL_QUERIES = 50


@pytest.fixture
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


def test_memory_comes_back_after_unread_flight_streams(server: SpanlakeServer) -> None:
    before = _settled_rss_mb(server)
    _unread_flight_streams(server)
    after = _settled_rss_mb(server)
    assert after - before < BACK_WITHIN_MB, (before, after)
