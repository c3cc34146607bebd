"""Unread Flight SQL streams past their time limit, then cancelled, through a running `spanlake serve`
(issue 28): the server used to die with SIGSEGV in about 1 of 3 such runs, its query watcher asking a
cancelled call's freed gRPC context whether the client was gone. Rounds of the scenario, the server
alive after each."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, running_server
from test_flightsql_support import statement_ticket

TIMEOUT_SECONDS = 1
STREAMS = 50
ROUNDS = 6
# 13 MiB batches, endless: each stream soon blocks in gRPC's write, its client not reading.
WIDE_ROWS = "SELECT value, repeat('x', 200) AS pad FROM range(1000000000)"


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    limits = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "SPANLAKE_RESULT_BUFFER_MB": "64"}
    with running_server(postgres, tmp_path_factory.mktemp("cancelled"), extra_env=limits) as running:
        yield running


def _fault(server: SpanlakeServer) -> str:
    """The faulting thread's Python stack, from the server's log (PYTHONFAULTHANDLER)."""
    log = server.log_text()
    return log[log.find("Current thread") :][:1500]


def _select_one(server: SpanlakeServer) -> list[dict[str, int]]:
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket("SELECT 1 AS one")).read_all().to_pylist()


def _cancel_unread_streams(server: SpanlakeServer) -> None:
    """Opens STREAMS streams, reads none, lets their time limit pass, cancels them."""
    with flight.connect(server.flightsql_url) as client:
        options = flight.FlightCallOptions(timeout=TIMEOUT_SECONDS + 20)
        readers = [client.do_get(statement_ticket(WIDE_ROWS), options) for _ in range(STREAMS)]
        time.sleep(TIMEOUT_SECONDS + 1.5)  # the watcher stops them: past their limit, blocked in gRPC's write
        for reader in readers:
            reader.cancel()
        time.sleep(1.5)  # the watcher's next rounds, while the cancelled calls end


def test_cancelled_unread_streams_leave_the_server_alive(server: SpanlakeServer) -> None:
    assert server.process is not None
    for round_number in range(ROUNDS):
        _cancel_unread_streams(server)
        assert server.process.poll() is None, (round_number, _fault(server))
        assert _select_one(server) == [{"one": 1}]
