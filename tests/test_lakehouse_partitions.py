"""Partition lifecycle: reuse, staleness, replacement, concurrency, bad blocks and bad arguments."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import lz4.frame
import pytest
from harness import RUST_FIXTURES, PostgresServer, post
from lakehouse_support import EXPECTED, PROCESS_ID, LocalLake, local_lake

from spanlake.lakehouse.jit_layout import MERGE_FANIN
from spanlake.lakehouse.timestamps import parse_rfc3339_ns

ASYNC_COUNT = f"SELECT count(*) AS n FROM view_instance('async_events', '{PROCESS_ID}')"


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    # These tests read the partition layout a query leaves: tails written before the query reads them.
    with local_lake(postgres, tmp_path, memory_tail_objects=0) as local:
        yield local


def count(lake: LocalLake, sql: str) -> int:
    return lake.sql(sql).column(0)[0].as_py()


def live_partitions(lake: LocalLake, view: str) -> list[dict]:
    return lake.catalog("SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 ORDER BY begin_insert_time", view)


def assert_no_overlap(partitions: list[dict]) -> None:
    by_instance: dict[tuple, list[dict]] = {}
    for p in partitions:
        by_instance.setdefault((p["view_set_name"], p["view_instance_id"]), []).append(p)
    for group in by_instance.values():
        group.sort(key=lambda p: p["begin_insert_time"])
        for earlier, later in itertools.pairwise(group):
            assert earlier["end_insert_time"] <= later["begin_insert_time"], (earlier, later)


def split_upload() -> tuple[list[dict], list[dict]]:
    """The upload sequence cut in two, each half with the metadata its blocks need."""
    steps = EXPECTED["upload_sequence"]
    first = steps[: len(steps) // 2]
    metadata = [s for s in steps if s["endpoint"] != "/ingestion/insert_block"]
    second = metadata + [s for s in steps[len(steps) // 2 :] if s["endpoint"] == "/ingestion/insert_block"]
    return first, second


def test_new_blocks_make_exactly_the_affected_partitions_stale(lake: LocalLake) -> None:
    first, second = split_upload()
    lake.upload(first)
    partial_async = count(lake, ASYNC_COUNT)
    partial_logs = count(lake, f"SELECT count(*) FROM view_instance('log_entries', '{PROCESS_ID}')")
    [old_async] = live_partitions(lake, "async_events")
    assert 0 < partial_async < 1124 and old_async["num_rows"] == partial_async

    # Only cpu blocks arrive: the log partition stays as it is; the async one too (it is still valid),
    # and the new blocks become a new tail partition.
    cpu_streams = {s["stream_id"] for s in EXPECTED["streams"] if "cpu" in s["tags"]}
    lake.upload([s for s in second if s.get("stream_id") in cpu_streams or s["endpoint"] != "/ingestion/insert_block"])
    [log_partition] = live_partitions(lake, "log_entries")
    assert count(lake, ASYNC_COUNT) == 1124  # every cpu block is in now
    assert count(lake, f"SELECT count(*) FROM view_instance('log_entries', '{PROCESS_ID}')") == partial_logs
    assert live_partitions(lake, "log_entries") == [log_partition]
    kept, tail = live_partitions(lake, "async_events")
    assert kept == old_async and tail["num_rows"] == 1124 - partial_async
    assert tail["begin_insert_time"] >= old_async["end_insert_time"]
    assert lake.catalog("SELECT file_path FROM temporary_files") == []


def test_a_block_visible_late_rebuilds_only_the_partition_it_falls_in(lake: LocalLake) -> None:
    # A stream row that arrives after its blocks: the blocks join the view then, with their old insert
    # times, inside the range of the partition already built.
    steps = EXPECTED["upload_sequence"]
    late = next(s for s in steps if s["endpoint"] == "/ingestion/insert_stream" and s["stream_id"] in _cpu())
    lake.upload([s for s in steps if s is not late])
    partial = count(lake, ASYNC_COUNT)
    [before] = live_partitions(lake, "async_events")
    lake.upload([late])
    assert partial < count(lake, ASYNC_COUNT) == 1124
    [after] = live_partitions(lake, "async_events")
    assert after["file_path"] != before["file_path"] and after["num_rows"] == 1124
    retired = lake.catalog("SELECT file_path FROM temporary_files")
    assert retired == [{"file_path": before["file_path"]}]


def _cpu() -> set[str]:
    return {s["stream_id"] for s in EXPECTED["streams"] if "cpu" in s["tags"]}


def test_small_tail_partitions_settle_into_one(postgres: PostgresServer, tmp_path: Path) -> None:
    steps = EXPECTED["upload_sequence"]
    metadata = [s for s in steps if s["endpoint"] != "/ingestion/insert_block"]
    cpu_blocks = [s for s in steps if s["endpoint"] == "/ingestion/insert_block" and s["stream_id"] in _cpu()]
    database_url = postgres.new_database()
    with local_lake(postgres, tmp_path, database_url, memory_tail_objects=0) as lake:
        lake.upload(metadata)
        counts = []
        for block in cpu_blocks[:MERGE_FANIN]:
            lake.upload([block])
            counts.append(count(lake, ASYNC_COUNT))
            if len(counts) == MERGE_FANIN - 1:
                small = live_partitions(lake, "async_events")
    # Each query added a one-block partition; the eighth made a run of eight, merged in the background
    # into one that replaces them all, before the lake closed.
    assert len(small) == MERGE_FANIN - 1 and sum(p["num_rows"] for p in small) == counts[-2]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    with local_lake(postgres, tmp_path, database_url, memory_tail_objects=0) as lake:
        [merged] = live_partitions(lake, "async_events")
        assert merged["num_rows"] == counts[-1] == count(lake, ASYNC_COUNT)
        assert merged["begin_insert_time"] == small[0]["begin_insert_time"]
        retired = {r["file_path"] for r in lake.catalog("SELECT file_path FROM temporary_files")}
        assert {p["file_path"] for p in small if p["file_path"]} < retired


def test_concurrent_materializations_leave_one_consistent_set(lake: LocalLake) -> None:
    lake.upload()
    results: list[int] = []
    errors: list[BaseException] = []

    def query() -> None:
        try:
            results.append(count(lake, ASYNC_COUNT))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [1124] * 4
    partitions = live_partitions(lake, "async_events")
    assert len(partitions) == 1 and partitions[0]["num_rows"] == 1124
    assert_no_overlap(lake.catalog("SELECT * FROM lakehouse_partitions"))
    # Files of redundant writes were removed or queued for deletion: none is orphaned.
    stored = set(lake.lake.store.list("views/async_events"))
    queued = {r["file_path"] for r in lake.catalog("SELECT file_path FROM temporary_files")}
    assert stored <= {partitions[0]["file_path"]} | queued


def corrupt(block: dict) -> bytes:
    message = cbor2.loads((RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes())
    # A valid LZ4 frame (ingestion checks that) of a truncated objects buffer: only decoding sees it.
    message["payload"]["objects"] = lz4.frame.compress(lz4.frame.decompress(message["payload"]["objects"])[:20])
    return cbor2.dumps(message)


def test_undecodable_block_is_skipped_with_a_warning(lake: LocalLake, caplog: pytest.LogCaptureFixture) -> None:
    cpu = next(s for s in EXPECTED["streams"] if "cpu" in s["tags"])
    bad = cpu["blocks"][0]
    lake.upload([s for s in EXPECTED["upload_sequence"] if s.get("block_id") != bad["block_id"]])
    assert post(lake.http_url + "/ingestion/insert_block", corrupt(bad))[0] == 200
    with caplog.at_level(logging.WARNING, logger="spanlake.lakehouse"):
        n = count(lake, ASYNC_COUNT)
    bad_events = sum(1 for e in bad["events"] if "Async" in e["type"])
    assert n == 1124 - bad_events
    assert any(bad["block_id"] in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)
    rows = count(lake, f"SELECT count(*) FROM view_instance('thread_spans', '{cpu['stream_id']}')")
    assert rows > 0


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM view_instance('nope', 'x')", "unknown view set 'nope'"),
        ("SELECT * FROM view_instance('async_events', 'not-a-uuid')", "named by a process id (a UUID)"),
        ("SELECT * FROM view_instance('async_events', 'global')", "async_events has no global instance"),
        ("SELECT * FROM view_instance('async_events', '6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f')", "unknown process"),
        ("SELECT * FROM view_instance('thread_spans', '6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f')", "unknown stream"),
        ("SELECT * FROM view_instance('processes', 'x')", "only a global instance"),
        ("SELECT * FROM view_instance('async_events')", "takes 2 arguments"),
        ("SELECT * FROM view_instance(1, 'x')", "first argument of view_instance must be a string"),
        ("SELECT * FROM retire_partitions('log_entries', 'global', 'yesterday', 'today')", "not an RFC3339 timestamp"),
        (
            "SELECT * FROM materialize_partitions('async_events', TIMESTAMP '2024-01-01T00:00:00Z',"
            " TIMESTAMP '2024-01-02T00:00:00Z')",
            "has no global instance",
        ),
    ],
)
def test_bad_arguments_give_clear_errors(lake: LocalLake, sql: str, message: str) -> None:
    lake.upload(EXPECTED["upload_sequence"][:1])
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        lake.sql(sql)


def test_query_range_limits_rows_and_partitions(lake: LocalLake) -> None:
    lake.upload()
    times = (
        lake.sql(f"SELECT CAST(time AS BIGINT) AS t FROM view_instance('log_entries', '{PROCESS_ID}') ORDER BY t")
        .column("t")
        .to_pylist()
    )
    begin, end = times[10], times[20]
    in_range = lake.sql(f"SELECT count(*) AS n FROM view_instance('log_entries', '{PROCESS_ID}')", (begin, end))
    assert in_range.column("n")[0].as_py() == sum(begin <= t <= end for t in times)
    # Global tables obey the range too.
    lake.maintain()
    assert count(lake, "SELECT count(*) FROM log_entries") == len(times)
    assert lake.sql("SELECT count(*) AS n FROM log_entries", (begin, end)).column("n")[0].as_py() == 11
    late = parse_rfc3339_ns("2100-01-01T00:00:00Z")
    assert lake.sql("SELECT count(*) AS n FROM log_entries", (late, late + 1)).column("n")[0].as_py() == 0


def test_retire_partitions_then_rebuild(lake: LocalLake) -> None:
    lake.upload()
    lake.maintain()
    assert count(lake, "SELECT count(*) FROM measures") == 412
    log = (
        lake.sql(
            "SELECT msg FROM retire_partitions('measures', 'global', TIMESTAMP '2000-01-01T00:00:00Z',"
            " TIMESTAMP '2100-01-01T00:00:00Z')"
        )
        .column("msg")
        .to_pylist()
    )
    assert log[-1] == "retired 1 partitions of measures/global"
    assert live_partitions(lake, "measures") == []
    assert count(lake, "SELECT count(*) FROM measures") == 0
    log = (
        lake.sql("SELECT msg FROM materialize_partitions('measures', now() - INTERVAL '1 day', now(), 3600)")
        .column("msg")
        .to_pylist()
    )
    assert len(log) in (24, 25)  # one row per hour bucket, the range widened to whole hours
    assert sum("built from" in line for line in log) == 1
    assert sum("up to date" in line for line in log) == len(log) - 1
    assert count(lake, "SELECT count(*) FROM measures") == 412
    assert len(live_partitions(lake, "measures")) == 1
