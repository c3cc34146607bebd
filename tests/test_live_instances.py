"""A live process through a running server: blocks posted while clients query its view instances.

Every query must see each block it saw at all exactly whole (every span of it, once), and every
block acknowledged before the query began; the catalog must end with non-overlapping partitions.
"""

from __future__ import annotations

from collections.abc import Iterator

import micromegas
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from live_process import ASYNC_PER_BLOCK, THREAD_PER_BLOCK, LiveProcess, check, per_block, post_while_querying

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


def test_concurrent_posters_and_queriers_see_every_block_exactly_once(server: SpanlakeServer) -> None:
    live = LiveProcess(server.http_url)
    live.announce()
    queries = post_while_querying(live, server.flightsql_url, BLOCKS, POSTERS, QUERIERS)
    assert queries > 2 * QUERIERS  # the queries did overlap the posting

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

    checks = []  # the partitions each check saw (the last named if they never settle)

    def settled() -> bool:
        # Each query checks the rows and queues the merges its fresh instance calls for.
        check(per_block(client, sql), set(range(64)), 4, None)
        checks.append(
            client.query(
                "SELECT view_set_name, begin_insert_time, end_insert_time, num_rows FROM list_partitions()"
                f" WHERE view_instance_id = '{live.process_id}' ORDER BY view_set_name, begin_insert_time"
            )
        )
        return len(checks[-1]) <= 2

    # 64 one-block partitions settle by tiers of eight (8 × 1 → 8, 8 × 8 → 64): one remains.
    try:
        wait_until(settled, 30, "the tail partitions to settle")
    except TimeoutError as timeout:
        raise AssertionError(f"{len(checks)} checks; the last saw:\n{checks[-1].to_string()}") from timeout
