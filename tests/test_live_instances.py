"""A live process through a running server: blocks posted while clients query its view instances.

Every query must see each block it saw at all exactly whole (every span of it, once), and every
block acknowledged before the query began; the catalog must end with non-overlapping partitions.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import micromegas
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from live_process import ASYNC_PER_BLOCK, THREAD_PER_BLOCK, LiveProcess

BLOCKS = 160
POSTERS = 2
QUERIERS = 3


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    # These tests read the partition layout queries leave: tails written before a query reads them
    # (tests/test_memory_tail.py reads them in memory).
    tail_written = {"SPANLAKE_MEMORY_TAIL_OBJECTS": "0"}
    with running_server(postgres, tmp_path_factory.mktemp("live"), extra_env=tail_written) as running:
        yield running


def per_block(client: micromegas.flightsql.client.FlightSQLClient, sql: str) -> dict[str, int]:
    frame = client.query(sql)
    return dict(zip(frame["name"], frame["n"], strict=True))


def check(counts: dict[str, int], acknowledged: set[int], spans: int, root_name: str | None) -> None:
    """Each block seen is whole and once; every block acknowledged before the query is there."""
    blocks = {name: n for name, n in counts.items() if name != root_name}
    wrong = {name: n for name, n in blocks.items() if n != spans}
    assert not wrong, f"blocks with missing or doubled rows: {wrong}"
    missing = {f"b{number}" for number in acknowledged} - set(blocks)
    assert not missing, f"acknowledged blocks missing from the query: {sorted(missing)[:10]}"


def test_concurrent_posters_and_queriers_see_every_block_exactly_once(server: SpanlakeServer) -> None:
    live = LiveProcess(server.http_url)
    live.announce()
    numbers = iter(range(BLOCKS))
    numbers_lock = threading.Lock()
    posting_done = threading.Event()
    errors: list[BaseException] = []
    queries = itertools.count()

    def poster() -> None:
        while True:
            with numbers_lock:
                number = next(numbers, None)
            if number is None:
                return
            live.post_block(number)

    def querier(index: int) -> None:
        client = micromegas.connect(server.flightsql_url)
        while not posting_done.is_set() and not errors:
            acknowledged = live.acknowledged_now()
            if index % 2:
                counts = per_block(client, THREAD_PER_BLOCK.format(stream=live.stream_id))
                check(counts, acknowledged, live.spans_per_block, "main-1")
            else:
                # async_events: a begin and an end row per span
                counts = per_block(client, ASYNC_PER_BLOCK.format(process=live.process_id))
                check(counts, acknowledged, 2 * live.spans_per_block, None)
            next(queries)

    def guarded(target, *args) -> None:
        try:
            target(*args)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    posters = [threading.Thread(target=guarded, args=(poster,)) for _ in range(POSTERS)]
    queriers = [threading.Thread(target=guarded, args=(querier, i)) for i in range(QUERIERS)]
    for thread in queriers + posters:
        thread.start()
    for thread in posters:
        thread.join()
    posting_done.set()
    for thread in queriers:
        thread.join()
    assert not errors, errors[0]
    assert next(queries) > 2 * QUERIERS  # the queries did overlap the posting

    client = micromegas.connect(server.flightsql_url)
    every = set(range(BLOCKS))
    check(per_block(client, ASYNC_PER_BLOCK.format(process=live.process_id)), every, 2 * live.spans_per_block, None)
    check(per_block(client, THREAD_PER_BLOCK.format(stream=live.stream_id)), every, live.spans_per_block, "main-1")
    partitions = client.query(
        "SELECT view_set_name, view_instance_id, begin_insert_time, end_insert_time, num_rows FROM list_partitions()"
        f" WHERE view_instance_id IN ('{live.process_id}', '{live.stream_id}')"
    )
    for _, group in partitions.groupby(["view_set_name", "view_instance_id"]):
        ordered = group.sort_values("begin_insert_time")
        assert (ordered.begin_insert_time.iloc[1:].values >= ordered.end_insert_time.iloc[:-1].values).all()
    async_rows = partitions[partitions.view_set_name == "async_events"].num_rows.sum()
    assert async_rows == BLOCKS * 2 * live.spans_per_block


def test_tail_partitions_settle_while_the_process_runs(server: SpanlakeServer) -> None:
    live = LiveProcess(server.http_url, spans_per_block=2)
    live.announce()
    client = micromegas.connect(server.flightsql_url)
    sql = ASYNC_PER_BLOCK.format(process=live.process_id)
    for number in range(64):
        live.post_block(number)
        check(per_block(client, sql), set(range(number + 1)), 4, None)

    def settled() -> bool:
        # Each query checks the rows and queues the merges its fresh instance calls for.
        check(per_block(client, sql), set(range(64)), 4, None)
        frame = client.query(
            f"SELECT count(*) AS n FROM list_partitions() WHERE view_instance_id = '{live.process_id}'"
        )
        return int(frame.n[0]) <= 2

    # 64 one-block partitions settle by tiers of eight (8 × 1 → 8, 8 × 8 → 64): one remains.
    wait_until(settled, 30, "the tail partitions to settle")
