"""Result batches taken a run at a time (`ResultBatches.next_batches`), as the Flight door streams them:
a small result comes with its end in one step, a larger one in runs of about READ_AHEAD_BYTES, and every
row arrives once, in order, counted in the audit; through the runner and through a real Flight server."""

from __future__ import annotations

from collections.abc import Iterator

import datafusion
import pyarrow.flight as flight
import pytest
from test_flightsql_support import running_server, statement_ticket

from spanlake.lakehouse.query.context import QueryContext
from spanlake.lakehouse.query.runner import READ_AHEAD_BYTES, BatchRun, QueryRequest, QueryRunner

ROWS = 10_000
BATCH_ROWS = 1_000  # int64 rows: 8,000 bytes a batch, so READ_AHEAD_BYTES (64 KiB) holds 9 of the 10
NUMBERS = f"SELECT value FROM range({ROWS}) ORDER BY value"


def small_batches(_: QueryContext) -> datafusion.SessionContext:
    """A session whose plans make batches of BATCH_ROWS rows."""
    return datafusion.SessionContext(datafusion.SessionConfig().with_batch_size(BATCH_ROWS))


@pytest.fixture
def runner() -> Iterator[QueryRunner]:
    """A runner over `small_batches` sessions."""
    made = QueryRunner(small_batches)
    yield made
    made.shutdown()


def runs_of(runner: QueryRunner, sql: str) -> tuple[list[BatchRun], int]:
    """The runs of the query's result, taken a step each until the one that ends it, and the audit's rows."""
    query = runner.open(QueryRequest("test", "test.query", sql, None), lambda: False)
    try:
        started = query.run(query.start)
        runs = [query.run(started.results.next_batches)]
        while not runs[-1].ended:
            runs.append(query.run(started.results.next_batches))
        started.results.close()
        return runs, query.audit.rows
    finally:
        query.close()


def test_a_small_result_comes_with_its_end_in_one_step(runner: QueryRunner) -> None:
    runs, rows = runs_of(runner, "SELECT 1 AS one")
    assert [(len(run.batches), run.ended) for run in runs] == [(1, True)]
    assert runs[0].batches[0].to_pylist() == [{"one": 1}]
    assert rows == 1


def test_a_larger_result_comes_in_runs_of_about_read_ahead_bytes(runner: QueryRunner) -> None:
    runs, rows = runs_of(runner, NUMBERS)
    assert [(len(run.batches), run.ended) for run in runs] == [(9, False), (1, True)]
    for run in runs:  # a run stops at the batch that reaches the bound
        sizes = [batch.get_total_buffer_size() for batch in run.batches]
        assert sum(sizes[:-1]) < READ_AHEAD_BYTES
    values = [row["value"] for run in runs for batch in run.batches for row in batch.to_pylist()]
    assert values == list(range(ROWS))
    assert rows == ROWS


def test_flight_streams_every_run_in_order() -> None:
    with running_server(small_batches) as uri:
        client = flight.connect(uri)
        table = client.do_get(statement_ticket(NUMBERS)).read_all()
        one = client.do_get(statement_ticket("SELECT 1 AS one")).read_all()
    assert table.column("value").to_pylist() == list(range(ROWS))
    assert table.num_rows == ROWS
    assert one.to_pylist() == [{"one": 1}]
