"""A live process's late query reads the blocks no partition holds yet in memory (`jit.in_memory`) and
their partition is written after it answers: the rows are the same, the catalog never holds a tail
it has not committed, nothing is missed or doubled, and a crash before the write loses nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import micromegas
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from lakehouse_support import LocalLake, local_lake
from live_process import ASYNC_PER_BLOCK, LiveProcess, post_while_querying

SPANS = 3


def per_block(rows: dict[str, list]) -> dict[str, int]:
    return dict(zip(rows["name"], rows["n"], strict=True))


def committed_rows(lake: LocalLake, instance_id: str) -> int:
    return lake.catalog(
        "SELECT coalesce(sum(num_rows), 0) AS n FROM lakehouse_partitions WHERE view_set_name = 'async_events'"
        " AND view_instance_id = $1",
        instance_id,
    )[0]["n"]


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    with local_lake(postgres, tmp_path) as local:
        yield local


def test_a_tail_is_read_in_memory_and_committed_only_after_the_query(lake: LocalLake) -> None:
    live = LiveProcess(lake.http_url, spans_per_block=SPANS)
    live.announce()
    sql = ASYNC_PER_BLOCK.format(process=live.process_id)
    for number in range(3):
        live.post_block(number)
    assert per_block(lake.sql(sql).to_pydict()) == {f"b{n}": 2 * SPANS for n in range(3)}
    assert committed_rows(lake, live.process_id) == 3 * 2 * SPANS  # a first query writes what it reads

    # The settle queue held: the tail's write waits behind this work.
    release = threading.Event()
    lake.lake.settler.submit("held", release.wait)
    for number in range(3, 5):
        live.post_block(number)
    expected = {f"b{n}": 2 * SPANS for n in range(5)}
    assert per_block(lake.sql(sql).to_pydict()) == expected
    assert committed_rows(lake, live.process_id) == 3 * 2 * SPANS  # the tail is no catalog fact yet
    assert per_block(lake.sql(sql).to_pydict()) == expected  # nor kept as a fresh set without its tail

    release.set()
    wait_until(lambda: committed_rows(lake, live.process_id) == 5 * 2 * SPANS, 30, "the tail's partition")
    assert per_block(lake.sql(sql).to_pydict()) == expected
    partitions = lake.catalog(
        "SELECT begin_insert_time, end_insert_time FROM lakehouse_partitions WHERE view_instance_id = $1"
        " AND view_set_name = 'async_events' ORDER BY begin_insert_time",
        live.process_id,
    )
    assert len(partitions) == 2
    assert partitions[0]["end_insert_time"] <= partitions[1]["begin_insert_time"]


def test_files_only_readers_never_get_a_tail_in_memory(lake: LocalLake) -> None:
    """`instance_files` (the trace and Perfetto functions) reads files only: what it needs is written first."""
    from spanlake.lakehouse.query.instances import instance_files
    from spanlake.lakehouse.view_sets import VIEW_SETS

    live = LiveProcess(lake.http_url, spans_per_block=SPANS)
    live.announce()
    live.post_block(0)
    lake.sql(ASYNC_PER_BLOCK.format(process=live.process_id))
    release = threading.Event()
    lake.lake.settler.submit("held", release.wait)
    try:
        live.post_block(1)
        lake.sql(ASYNC_PER_BLOCK.format(process=live.process_id))  # block 1 read in memory
        files = instance_files(lake.lake, VIEW_SETS["async_events"], live.process_id, None)
        assert committed_rows(lake, live.process_id) == 2 * 2 * SPANS
        assert len(files) == 2
    finally:
        release.set()


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("tail")) as running:
        yield running


def test_concurrent_late_queries_see_every_block_exactly_once(server: SpanlakeServer) -> None:
    live = LiveProcess(server.http_url, spans_per_block=SPANS)
    live.announce()
    queries = post_while_querying(live, server.flightsql_url, 120, posters=2, queriers=3)
    assert queries > 6

    client = micromegas.connect(server.flightsql_url)
    frame = client.query(ASYNC_PER_BLOCK.format(process=live.process_id))
    assert dict(zip(frame["name"], frame["n"], strict=True)) == {f"b{n}": 2 * SPANS for n in range(120)}

    def committed() -> bool:
        partitions = client.query(
            "SELECT begin_insert_time, end_insert_time, num_rows FROM list_partitions()"
            f" WHERE view_set_name = 'async_events' AND view_instance_id = '{live.process_id}'"
            " ORDER BY begin_insert_time"
        )
        ends, begins = partitions.end_insert_time.iloc[:-1].values, partitions.begin_insert_time.iloc[1:].values
        assert (begins >= ends).all()
        return int(partitions.num_rows.sum()) == 120 * 2 * SPANS

    wait_until(committed, 30, "every tail committed")


def test_a_crash_before_the_tail_is_written_loses_nothing(postgres: PostgresServer, tmp_path: Path) -> None:
    with running_server(postgres, tmp_path) as server:
        live = LiveProcess(server.http_url, spans_per_block=SPANS)
        live.announce()
        client = micromegas.connect(server.flightsql_url)
        sql = ASYNC_PER_BLOCK.format(process=live.process_id)
        for number in range(12):
            live.post_block(number)
            client.query(sql)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)  # tails read in memory may not be written yet
        server.process.wait()
        server.process = None
        restarted = SpanlakeServer(
            database_url=server.database_url, data_dir=server.data_dir, object_store_uri=server.object_store_uri
        ).start()
        try:
            frame = micromegas.connect(restarted.flightsql_url).query(sql)
            assert dict(zip(frame["name"], frame["n"], strict=True)) == {f"b{n}": 2 * SPANS for n in range(12)}
        finally:
            restarted.stop()
