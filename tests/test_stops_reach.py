"""Stopping reaches every query, through a running `spanlake serve`: joins that loop over their build
side (cross joins, nested-loop joins) stop within seconds of their deadline, also in queries naming a
function whose rows keep their order, and `SELECT 1` answers meanwhile (lakehouse/query/loop_joins.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_idle
from test_flightsql_support import grpc_status, statement_ticket

TIMEOUT_SECONDS = 3
# 1e12 rows under an aggregate: with 65,536-row batches one probe batch was a minute and more of work
# between two polls (busy 83 s after the deadline in the run).
CROSS_JOIN = "SELECT count(*) AS n FROM range(1000000) a CROSS JOIN range(1000000) b"
NESTED_LOOP_JOIN = "SELECT count(*) AS n FROM range(1000000) a JOIN range(1000000) b ON a.value < b.value"
# A query naming materialize_partitions (or perfetto_trace_chunks) is never split (its rows reach the
# client in the order made): its loop join yielded every 128 probe batches only, minutes of work.
ORDERED_CROSS_JOIN = (
    "SELECT count(*) AS n FROM materialize_partitions('log_entries', TIMESTAMP '2020-01-01T00:00:00Z', "
    "TIMESTAMP '2020-01-01T00:01:00Z') m CROSS JOIN range(1000000) a CROSS JOIN range(1000000) b"
)
# Seconds from the deadline's answer to an idle server: measured 1-5 s on a loaded 2-core machine.
STOPPED_WITHIN = 15


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    limits = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}
    with running_server(postgres, tmp_path_factory.mktemp("stops"), extra_env=limits) as running:
        yield running


def _select_one_seconds(server: SpanlakeServer) -> float:
    started = time.monotonic()
    with flight.connect(server.flightsql_url) as client:
        assert client.do_get(statement_ticket("SELECT 1 AS one")).read_all().to_pylist() == [{"one": 1}]
    return time.monotonic() - started


def _status(server: SpanlakeServer, sql: str) -> str | None:
    with flight.connect(server.flightsql_url) as client, pytest.raises(pa.ArrowException) as caught:
        client.do_get(statement_ticket(sql)).read_all()
    return grpc_status(caught.value)[0]


@pytest.mark.parametrize(
    "sql", [CROSS_JOIN, NESTED_LOOP_JOIN, ORDERED_CROSS_JOIN], ids=["cross", "nested_loop", "ordered_function"]
)
def test_a_loop_join_stops_at_its_deadline_and_select_one_answers(server: SpanlakeServer, sql: str) -> None:
    wait_idle(server, within=30)
    statuses: list[str | None] = []
    running = threading.Thread(target=lambda: statuses.append(_status(server, sql)))
    running.start()
    time.sleep(1)
    # Before, it ran past its own time limit: the join held both of DataFusion's worker threads.
    assert _select_one_seconds(server) < 2
    running.join(TIMEOUT_SECONDS + 10)
    assert statuses == ["DEADLINE_EXCEEDED"]
    assert wait_idle(server, within=STOPPED_WITHIN) < STOPPED_WITHIN
    assert _select_one_seconds(server) < 2
