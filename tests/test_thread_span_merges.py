"""A live thread through a lake: its one-block tail partitions settle into one from their rows, never
decoding the blocks again, and hold what the same blocks built at once give."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, wait_until
from lakehouse_support import LocalLake, local_lake
from live_process import BLOCK_TICKS, LiveProcess
from transit_builder import ThreadBlockWriter

from spanlake.lakehouse import jit
from spanlake.lakehouse.jit_layout import MERGE_FANIN, PartitionSpec
from spanlake.views.call_tree_merge import NOTES_KEY

EVENTS_PER_BLOCK = 8
ROWS_SQL = "SELECT * FROM view_instance('thread_spans', '{stream}') ORDER BY id"


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    # These tests read the partition layout a query leaves: tails written before the query reads them.
    with local_lake(postgres, tmp_path, memory_tail_objects=0) as local:
        yield local


def post_frame(thread: LiveProcess, number: int) -> None:
    """Block `number` of a thread whose `main` span never ends: the `tick` begun at the end of the previous
    block ends at its start, three `work` spans follow, and a new `tick` begins at its end."""
    writer = ThreadBlockWriter()
    main, tick, work = writer.span_desc("main"), writer.span_desc("tick"), writer.span_desc("work")
    start = number * BLOCK_TICKS
    if number == 0:
        writer.thread(True, main, start + 10)
    else:
        writer.thread(False, tick, start + 10)
    for index in range(3):
        writer.thread(True, work, start + 100 * (index + 1))
        writer.thread(False, work, start + 100 * (index + 1) + 50)
    writer.thread(True, tick, start + BLOCK_TICKS - 10)
    thread.post_events(number, writer, EVENTS_PER_BLOCK, number * EVENTS_PER_BLOCK)


def stream_partitions(lake: LocalLake, stream_id: str) -> list[dict]:
    return lake.catalog(
        "SELECT file_path, num_rows FROM lakehouse_partitions WHERE view_set_name = 'thread_spans'"
        " AND view_instance_id = $1 ORDER BY begin_insert_time",
        stream_id,
    )


def test_tail_partitions_merge_from_their_rows_into_the_tree_built_at_once(
    lake: LocalLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[PartitionSpec] = []
    decode = jit.decoded_rows

    def noting_decodes(lake_: object, timings: object, spec: PartitionSpec) -> object:
        decoded.append(spec)
        return decode(lake_, timings, spec)

    monkeypatch.setattr(jit, "decoded_rows", noting_decodes)
    live = LiveProcess(lake.http_url)
    twin = LiveProcess(lake.http_url, start_ns=live.start_ns)  # the same clock: the same times
    live.announce()
    twin.announce()
    for number in range(MERGE_FANIN):
        post_frame(live, number)
        lake.sql(ROWS_SQL.format(stream=live.stream_id))  # one new one-block partition per query
    wait_until(lambda: len(stream_partitions(lake, live.stream_id)) == 1, 30, "the tail partitions to settle")
    for number in range(MERGE_FANIN):
        post_frame(twin, number)

    merged = lake.sql(ROWS_SQL.format(stream=live.stream_id))
    built_at_once = lake.sql(ROWS_SQL.format(stream=twin.stream_id))
    assert merged.to_pylist() == built_at_once.to_pylist()
    assert not [spec for spec in decoded if len(spec.replaces) > 1], "a merge decoded its blocks"
    assert decoded, "the tails and the twin were decoded"

    # main never ends: it is the root; each tick but the last ends 10 ticks into the next block.
    rows = merged.to_pylist()
    assert [(r["name"], r["depth"]) for r in rows[:1]] == [("main", 0)]
    ticks = [r for r in rows if r["name"] == "tick"]
    assert [r["duration"] for r in ticks[:-1]] == [20] * (MERGE_FANIN - 1)
    assert ticks[-1]["end"] == rows[0]["end"]  # the last one is still open: it ends with the blocks
    assert len(rows) == 1 + MERGE_FANIN + 3 * MERGE_FANIN
    [partition] = stream_partitions(lake, live.stream_id)
    assert NOTES_KEY in (jit.partition_rows(lake.lake.store, partition["file_path"]).metadata or {})


def test_a_queried_live_process_is_materialized_as_its_blocks_arrive(postgres: PostgresServer, tmp_path: Path) -> None:
    with local_lake(postgres, tmp_path, live_refresh_seconds=60.0) as lake:
        live = LiveProcess(lake.http_url, spans_per_block=3)
        live.announce()
        live.post_block(0)
        lake.sql(ROWS_SQL.format(stream=live.stream_id))  # follows the thread from now on

        assert len(stream_partitions(lake, live.stream_id)) == 1
        for number in range(1, 4):
            live.post_block(number)
            # No query: the block's announcement brings the instance up to date in the background, a
            # partition per block here (merges take eight).
            held = number + 1
            wait_until(lambda held=held: len(stream_partitions(lake, live.stream_id)) == held, 10, f"block {number}")
        assert len(lake.sql(ROWS_SQL.format(stream=live.stream_id))) == 4 * (1 + 3)  # a root per partition
