"""The blocks a server ingests of a live process are decoded as they arrive (`lakehouse/decode_ahead.py`): a
late query unions their rows without reading their payloads, their partition is written from them, what is
held stays within its bound and is dropped once written, and blocks ingested elsewhere or of processes
nobody queries are left to the queries. The worker builds the views' rows of the unwritten blocks it decoded,
which a late query takes instead of building them. The partitions written from a tail keep its rows for the
next late queries (`WrittenTails`)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pytest
from datafusion import DataFrame
from harness import PostgresServer, wait_until
from lakehouse_support import LocalLake, local_lake
from live_process import ASYNC_PER_BLOCK, THREAD_PER_BLOCK, LiveProcess

from spanlake.lakehouse.catalog.partitions import Partition
from spanlake.lakehouse.decode_ahead import DecodeAhead, WrittenTails
from spanlake.lakehouse.query import session
from spanlake.lakehouse.query.rows_frames import rows_context as _rows_context
from spanlake.lakehouse.query.rows_frames import rows_frame as _rows_frame
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.view import View

SPANS = 3
OBJECTS = 4 * SPANS  # a LiveProcess block's objects


def counts(lake: LocalLake, sql: str) -> dict[str, int]:
    """Rows per block (`name` → `n`), the thread root left out."""
    table = lake.sql(sql).to_pydict()
    return {name: n for name, n in zip(table["name"], table["n"], strict=True) if name.startswith("b")}


def expected(blocks: range) -> tuple[dict[str, int], dict[str, int]]:
    """What the async_events and thread_spans per-block counts of these blocks are."""
    return {f"b{n}": 2 * SPANS for n in blocks}, {f"b{n}": SPANS for n in blocks}


def followed(lake: LocalLake, tsc_frequency: int = 1_000_000_000) -> LiveProcess:
    """A live process whose views a late query read in memory (blocks 0-2): its next blocks are decoded ahead."""
    live = LiveProcess(lake.http_url, spans_per_block=SPANS, tsc_frequency=tsc_frequency)
    live.announce()
    for number in range(2):
        live.post_block(number)
    query_both(lake, live, range(2))  # a first query writes what it reads
    live.post_block(2)
    query_both(lake, live, range(3))  # a late one reads its tail in memory, and follows the process
    # Once that tail is written, the blocks posted next are exactly the next late query's tail.
    wait_until(lambda: written_through(lake, live, 3), 30, "the tail of block 2 written")
    return live


def written_through(lake: LocalLake, live: LiveProcess, blocks: int) -> bool:
    """Whether both views' partitions hold the process's first `blocks` blocks."""
    sql = "SELECT insert_time FROM blocks WHERE process_id = $1 ORDER BY insert_time"
    inserted = lake.catalog(sql, live.process_id)
    ends = lake.catalog(
        "SELECT max(end_insert_time) AS end_time FROM lakehouse_partitions WHERE view_instance_id IN ($1, $2)"
        " GROUP BY view_set_name",
        live.process_id,
        live.stream_id,
    )
    return len(ends) == 2 and all(row["end_time"] > inserted[blocks - 1]["insert_time"] for row in ends)


def query_both(lake: LocalLake, live: LiveProcess, blocks: range) -> None:
    """Both views of the live process show exactly these blocks, each whole."""
    async_rows, thread_rows = expected(blocks)
    assert counts(lake, ASYNC_PER_BLOCK.format(process=live.process_id)) == async_rows
    assert counts(lake, THREAD_PER_BLOCK.format(stream=live.stream_id)) == thread_rows


def block_ids(lake: LocalLake, live: LiveProcess) -> list[str]:
    rows = lake.catalog("SELECT block_id FROM blocks WHERE process_id = $1 ORDER BY insert_time", live.process_id)
    return [str(row["block_id"]) for row in rows]


def committed_async_rows(lake: LocalLake, live: LiveProcess) -> int:
    return lake.catalog(
        "SELECT coalesce(sum(num_rows), 0) AS n FROM lakehouse_partitions WHERE view_set_name = 'async_events'"
        " AND view_instance_id = $1",
        live.process_id,
    )[0]["n"]


def decoded_ahead(lake: LocalLake, objects: int) -> None:
    """Waits until nothing is queued and `objects` are held decoded."""
    wait_until(lambda: lake.lake.decode_ahead.held_objects() == (0, objects), 10, f"{objects} objects decoded")


def test_a_late_query_unions_blocks_decoded_ahead_and_their_partition_is_written_from_them(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake)
        for number in range(3, 6):
            live.post_block(number)
        decoded_ahead(lake, 3 * OBJECTS)
        # Their payloads gone, the rows of blocks 3-5 can only come from what was decoded ahead.
        for block_id in block_ids(lake, live)[3:]:
            lake.lake.store.delete(blob_key(live.process_id, live.stream_id, block_id))
        query_both(lake, live, range(6))
        # Dropped once both views' partitions holding them are written (from them: no payload is left).
        wait_until(lambda: lake.lake.decode_ahead.held_objects() == (0, 0), 30, "the tails written and dropped")
        assert committed_async_rows(lake, live) == 6 * 2 * SPANS
        query_both(lake, live, range(6))


def test_a_late_query_takes_the_rows_the_worker_built_of_its_tail(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks decoded ahead and built by the worker (async_events block by block, thread_spans as the whole
    unwritten tail): the late query reading them builds no rows itself, nor their frame, and each block is
    whole."""
    built_on: list[str] = []
    build = DecodeAhead._rows

    def recorded(view: View, found: Sequence) -> list[pa.RecordBatch]:
        built_on.append(threading.current_thread().name)
        return build(view, found)

    framed: list[int] = []
    frame = session.rows_frame

    def recorded_frame(batches: list[pa.RecordBatch], schema: pa.Schema) -> DataFrame:
        framed.append(sum(batch.num_rows for batch in batches))
        return frame(batches, schema)

    monkeypatch.setattr(DecodeAhead, "_rows", staticmethod(recorded))
    monkeypatch.setattr(session, "rows_frame", recorded_frame)
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake)
        for number in range(3, 6):
            live.post_block(number)
        decoded_ahead(lake, 3 * OBJECTS)
        assert built_on and all(name.startswith("decode-ahead") for name in built_on)
        built_on.clear()
        framed.clear()
        query_both(lake, live, range(6))
        assert built_on == []
        assert framed == []


def test_blocks_ingested_by_another_process_are_decoded_by_the_query(postgres: PostgresServer, tmp_path: Path) -> None:
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake)
        with local_lake(postgres, tmp_path, lake.lake.database_url) as other:
            elsewhere = dataclasses.replace(live, http_url=other.http_url)
            live.post_block(3)
            elsewhere.post_block(4)
            live.post_block(5)
            decoded_ahead(lake, 2 * OBJECTS)  # blocks 3 and 5: block 4 is the query's to decode
            assert other.lake.decode_ahead.held_objects() == (0, 0)
            query_both(lake, live, range(6))


def test_a_process_nobody_queries_is_not_decoded_ahead(postgres: PostgresServer, tmp_path: Path) -> None:
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake)
        quiet = LiveProcess(lake.http_url, spans_per_block=SPANS)
        quiet.announce()
        for number in range(3):
            quiet.post_block(number)
        live.post_block(3)
        decoded_ahead(lake, OBJECTS)  # only the followed process's block
        query_both(lake, live, range(4))


def test_a_process_without_a_tsc_frequency_is_not_decoded_ahead(postgres: PostgresServer, tmp_path: Path) -> None:
    """Its rows follow its latest block (the frequency is estimated from it): decoded by the query."""
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake, tsc_frequency=0)
        live.post_block(3)
        wait_until(lambda: lake.lake.decode_ahead.held_objects()[0] == 0, 10, "nothing queued")
        assert lake.lake.decode_ahead.held_objects() == (0, 0)
        query_both(lake, live, range(4))


def test_what_is_decoded_ahead_stays_within_its_bound(postgres: PostgresServer, tmp_path: Path) -> None:
    with local_lake(postgres, tmp_path, decode_ahead_objects=2 * OBJECTS) as lake:
        live = followed(lake)
        for number in range(3, 8):
            live.post_block(number)
        wait_until(lambda: lake.lake.decode_ahead.held_objects()[0] == 0, 10, "nothing queued")
        assert lake.lake.decode_ahead.held_objects()[1] <= 2 * OBJECTS
        query_both(lake, live, range(8))  # the blocks dropped are decoded by the query


def test_rows_decoded_ahead_are_those_a_query_decodes(postgres: PostgresServer, tmp_path: Path) -> None:
    """Both views' rows of a tail decoded ahead (thread spans merged block by block) equal another
    server's, which decodes the same blocks itself."""
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake)
        for number in range(3, 9):
            live.post_block(number)
        decoded_ahead(lake, 6 * OBJECTS)
        release = threading.Event()
        lake.lake.settler.submit("held", release.wait)  # the tail stays in memory: the other server decodes it
        try:
            with local_lake(postgres, tmp_path, lake.lake.database_url, decode_ahead_objects=0) as other:
                for sql in (ALL_ASYNC.format(process=live.process_id), ALL_THREAD.format(stream=live.stream_id)):
                    ahead, decoded = lake.sql(sql), other.sql(sql)
                    assert ahead.num_rows > 0
                    assert ahead.to_pylist() == decoded.to_pylist(), sql
        finally:
            release.set()


ALL_ASYNC = "SELECT * FROM view_instance('async_events', '{process}') ORDER BY time, span_id, event_type"
ALL_THREAD = "SELECT * FROM view_instance('thread_spans', '{stream}') ORDER BY id, begin"


def test_the_partitions_written_from_tails_are_read_from_their_rows_by_the_next_late_queries(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    with local_lake(postgres, tmp_path) as lake:
        live = followed(lake)
        for number in range(3, 5):
            live.post_block(number)
        decoded_ahead(lake, 2 * OBJECTS)
        query_both(lake, live, range(5))  # reads blocks 3-4 decoded ahead; their partitions are written from them
        wait_until(lambda: written_through(lake, live, 5), 30, "the tail of blocks 3-4 written")
        # Both views' rows of 2 blocks, kept once each view's partition is committed.
        wait_until(lambda: lake.lake.decode_ahead.written.held_objects() == 2 * 2 * OBJECTS, 10, "the rows kept")
        # Their files gone, the rows of blocks 3-4 can only come from memory.
        latest = lake.catalog(
            "SELECT DISTINCT ON (view_set_name) file_path FROM lakehouse_partitions"
            " WHERE view_instance_id IN ($1, $2) ORDER BY view_set_name, begin_insert_time DESC",
            live.process_id,
            live.stream_id,
        )
        for row in latest:
            lake.lake.store.delete(row["file_path"])
        live.post_block(5)
        wait_until(lambda: lake.lake.decode_ahead.held_objects()[0] == 0, 10, "nothing queued")
        query_both(lake, live, range(6))


def test_written_tails_keep_the_rows_of_live_partitions_within_their_bound() -> None:
    view = VIEW_SETS["async_events"]

    def partition(instance: str, begin: int) -> Partition:
        return Partition(
            view.name, instance, begin, begin + 1, None, None, f"{instance}/{begin}", 1, view.schema_hash, 4, 1
        )

    def rows(value: int) -> list[pa.RecordBatch]:
        return [pa.record_batch({"n": [value]})]

    written = WrittenTails(budget=10)
    first, second, other = partition("a", 0), partition("a", 1), partition("b", 0)
    written.keep(first, 4, rows(0))
    written.keep(second, 4, rows(1))
    assert written.held_objects() == 8
    kept = written.rows_of(view, "a", [first, second])
    assert {file: batches[0]["n"][0].as_py() for file, batches in kept.items()} == {"a/0": 0, "a/1": 1}
    # A merge replaced the first: its rows are dropped.
    assert list(written.rows_of(view, "a", [second])) == ["a/1"]
    assert written.held_objects() == 4
    # Past the bound, the instance used least recently goes.
    written.keep(other, 4, rows(2))
    written.keep(partition("b", 1), 4, rows(3))
    assert written.held_objects() == 8
    assert written.rows_of(view, "a", [second]) == {}
    assert list(written.rows_of(view, "b", [other])) == ["b/0"]


def test_written_tails_keep_the_rows_as_one_batch_without_notes() -> None:
    view = VIEW_SETS["async_events"]
    partition = Partition(view.name, "a", 0, 1, None, None, "a/0", 1, view.schema_hash, 4, 1)
    noted = pa.schema([("n", pa.int64())], metadata={"merge": "note"})
    written = WrittenTails(budget=10)
    written.keep(
        partition, 4, [pa.record_batch({"n": [1, 2]}, schema=noted), pa.record_batch({"n": [3]}, schema=noted)]
    )
    [batch] = written.rows_of(view, "a", [partition])["a/0"]
    assert batch["n"].to_pylist() == [1, 2, 3]
    assert batch.schema.metadata is None


def test_written_tails_make_one_frame_of_an_instances_kept_rows_while_its_files_stay() -> None:
    view = VIEW_SETS["async_events"]
    schema = pa.schema([("n", pa.int64())])

    def partition(begin: int) -> Partition:
        return Partition(view.name, "a", begin, begin + 1, None, None, f"a/{begin}", 1, view.schema_hash, 4, 1)

    written = WrittenTails(budget=10)
    first, second = partition(0), partition(1)
    written.keep(first, 4, [pa.record_batch({"n": [1, 2]})], schema)
    written.keep(second, 4, [pa.record_batch({"n": [3]})], schema)
    kept = written.rows_of(view, "a", [first, second])
    frame = written.frame_of(view, "a", kept)
    assert frame is not None
    assert sorted(frame.to_arrow_table()["n"].to_pylist()) == [1, 2, 3]
    assert written.frame_of(view, "a", ["a/0"]) is None  # not those files: the query frames the rows itself
    # A merge replaced the first: no frame holds the second's rows alone until a tail is kept again.
    assert written.frame_of(view, "a", written.rows_of(view, "a", [second])) is None
    written.keep(partition(2), 1, [pa.record_batch({"n": [4]})], schema)
    frame = written.frame_of(view, "a", written.rows_of(view, "a", [second, partition(2)]))
    assert frame is not None
    assert sorted(frame.to_arrow_table()["n"].to_pylist()) == [3, 4]


def test_rows_frames_leave_no_table_in_their_shared_context() -> None:
    schema = pa.schema([("n", pa.int64())])
    first = _rows_frame([pa.record_batch({"n": [1, 2]}), pa.record_batch({"n": [3]})], schema)
    second = _rows_frame([], schema)
    assert first.to_arrow_table()["n"].to_pylist() == [1, 2, 3]
    assert second.count() == 0
    assert _rows_context().catalog().schema().names() == set()
