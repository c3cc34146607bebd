"""Traces read by Perfetto's own trace_processor: processes, threads, tracks, slices and stats as
Perfetto sees them, for the Rust fixture process, a negative-pid process, reused thread ids and long
names."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pytest
from harness import PostgresServer
from lakehouse_support import EXPECTED, PROCESS_ID, LocalLake, cpu_streams, local_lake
from synthetic_process import TICK_NS, SyntheticProcess
from test_perfetto_sql import BEGIN, END, async_slices, thread_slices
from trace_processor import Table, standard_tables
from transit_builder import ThreadBlockWriter

from spanlake.views.perfetto.writer import (
    CHUNK_THRESHOLD,
    PerfettoThread,
    TrackIds,
    process_uuid,
    trace_chunks,
    unique_pid,
)


@pytest.fixture(scope="module")
def lake(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLake]:
    # micromegas's chunks: these tests check its chunking rule
    with local_lake(postgres, tmp_path_factory.mktemp("lake"), perfetto_chunk_kib=0) as local:
        local.upload()
        yield local


def chunks(lake: LocalLake, process_id: str, span_types: str = "both", window: str | None = None) -> list[bytes]:
    window = window or f"{BEGIN}, {END}"
    table = lake.sql(
        f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{process_id}', '{span_types}', {window})"
    )
    assert table.column("chunk_id").to_pylist() == list(range(table.num_rows))
    return table.column("chunk_data").to_pylist()


def threads_of_process(tables: dict[str, Table]) -> dict[str, list[dict]]:
    """The named threads under each named process (the idle process and main threads left out)."""
    processes = {p["upid"]: p["name"] for p in tables["process"].dicts()}
    by_process: dict[str, list[dict]] = collections.defaultdict(list)
    for thread in tables["thread"].dicts():
        if thread["name"] is not None:
            by_process[processes.get(thread["upid"])].append(thread)
    return dict(by_process)


def assert_clean(tables: dict[str, Table]) -> None:
    assert tables["stats"].dicts() == [], "trace_processor reported errors or data loss"


def negative_pid_process_id() -> str:
    """A process id whose track uuid's low 32 bits read as a negative int32 (micromegas's pid)."""
    for number in range(1000):
        candidate = str(uuid.UUID(int=number + (1 << 64)))
        if process_uuid(candidate) & 0x8000_0000:
            return candidate
    raise AssertionError("no negative-pid process id among 1000 candidates")


def test_the_fixture_process_as_perfetto_reads_it(lake: LocalLake) -> None:
    tables = standard_tables(b"".join(chunks(lake, PROCESS_ID)))
    assert_clean(tables)
    exe = EXPECTED["process"]["process_info"]["exe"]
    assert [(p["pid"], p["name"]) for p in tables["process"].dicts()] == [(unique_pid(process_uuid(PROCESS_ID)), exe)]
    names = sorted(t["name"] for t in threads_of_process(tables)[exe])
    assert names == sorted(f"{s['properties']['thread-name']}-{s['properties']['thread-id']}" for s in cpu_streams())
    assert len(tables["thread_track"].rows) == len(cpu_streams())
    expected = sum((thread_slices(lake) + async_slices(lake)).values())
    assert tables["slice_count"].rows == [[expected]]


def test_a_negative_pid_process_keeps_its_threads() -> None:
    process_id = negative_pid_process_id()
    threads = [PerfettoThread(f"00000000-0000-4000-8000-00000000000{i}", 100 + i, f"worker-{i}") for i in range(3)]
    spans = spans_table([(10 * i, 10 * i + 5, f"work-{i}") for i in range(20)])

    def trace(track_ids: TrackIds) -> bytes:
        return b"".join(
            trace_chunks(process_id, "negative", threads, lambda _: spans, lambda: [], "thread", track_ids=track_ids)
        )

    tables = standard_tables(trace(TrackIds.UNIQUE))
    assert_clean(tables)
    assert [p["name"] for p in tables["process"].dicts()] == ["negative"]
    assert sorted(t["name"] for t in threads_of_process(tables)["negative"]) == ["worker-0", "worker-1", "worker-2"]
    assert sorted(n for _, n in tables["slices_per_thread"].rows) == [20, 20, 20]
    # micromegas's ids: Perfetto splits the process in two, the named one without its threads.
    split = standard_tables(trace(TrackIds.MICROMEGAS))
    assert [p["name"] for p in split["process"].dicts()].count(None) == 1
    assert "negative" not in threads_of_process(split)


def spans_table(rows: list[tuple[int, int, str]]) -> pa.Table:
    timestamp = pa.timestamp("ns", tz="+00:00")
    return pa.table(
        {
            "begin": pa.array([r[0] for r in rows], timestamp),
            "end": pa.array([r[1] for r in rows], timestamp),
            "name": pa.array([r[2] for r in rows]),
            "target": pa.array(["t"] * len(rows)),
            "filename": pa.array(["f.rs"] * len(rows)),
            "line": pa.array([1] * len(rows), pa.uint32()),
        }
    )


def test_streams_sharing_a_thread_id_each_get_a_thread_track(lake: LocalLake) -> None:
    process = SyntheticProcess(lake.lake, exe="reuser")
    streams = [process.stream({"thread-name": "pool", "thread-id": "7"}) for _ in range(4)]
    streams += [process.stream({"thread-name": "anonymous"}) for _ in range(2)]
    for index, stream_id in enumerate(streams):
        process.thread_spans(stream_id, 10 + index, lambda i, index=index: f"task-{index}-{i}")
    tables = standard_tables(b"".join(chunks(lake, str(process.process_id), "thread", process.range_sql())))
    assert_clean(tables)
    assert len(tables["thread_track"].rows) == 6
    assert len(threads_of_process(tables)["reuser"]) == 6
    # Each track holds its stream's spans and the call tree's thread root.
    assert sorted(n for _, n in tables["slices_per_thread"].rows) == [10 + i + 1 for i in range(6)]


def test_long_names_are_chunked_by_the_rule_and_read_whole(lake: LocalLake) -> None:
    process = SyntheticProcess(lake.lake, exe="long-names")
    threads, spans = 20, 150
    for thread in range(threads):
        stream_id = process.stream({"thread-name": f"worker-{thread}", "thread-id": str(thread)})
        process.thread_spans(stream_id, spans, lambda i, thread=thread: f"{thread:02d}-{i:04d}-" + "n" * 892)
    pieces = chunks(lake, str(process.process_id), "thread", process.range_sql())
    # A chunk ends once 8 KiB are buffered: never more than one packet (a span's BEGIN with its
    # interned 900-byte name, about 1 KiB) beyond the threshold.
    assert max(len(piece) for piece in pieces) < CHUNK_THRESHOLD + 1100
    assert sum(len(piece) for piece in pieces) > threads * spans * 900
    tables = standard_tables(b"".join(pieces), {"long": "SELECT count(*) FROM slice WHERE length(name) = 900"})
    assert_clean(tables)
    assert tables["long"].rows == [[threads * spans]]
    assert sorted(t["name"] for t in threads_of_process(tables)["long-names"]) == sorted(
        f"worker-{t}-{t}" for t in range(threads)
    )


def test_unfinished_spans_end_at_the_last_event_marked_unfinished(lake: LocalLake) -> None:
    process = SyntheticProcess(lake.lake, exe="crashed")
    stream_id = process.stream({"thread-name": "main", "thread-id": "1"})
    writer = ThreadBlockWriter()
    outer, inner = writer.span_desc("outer"), writer.span_desc("inner")
    location = writer.span_location()
    writer.thread(True, outer, 1)  # never closed: the process died
    for i in range(3):
        writer.thread(True, inner, 2 + 3 * i)
        writer.thread(False, inner, 3 + 3 * i)
    writer.async_named(True, location, "done", 1, 0, 100, 0)
    writer.async_named(False, location, "done", 1, 0, 200, 0)
    writer.async_named(True, location, "pending-a", 2, 0, 150, 0)
    writer.async_named(True, location, "pending-b", 3, 0, 300, 0)
    process.block(stream_id, writer, 11, (0, 1000))
    trace = b"".join(chunks(lake, str(process.process_id), "both", process.range_sql()))
    sql = "SELECT name, ts, dur, EXTRACT_ARG(arg_set_id, 'debug.unfinished') AS unfinished FROM slice ORDER BY ts, name"
    tables = standard_tables(trace, {"slices": sql})
    assert_clean(tables)
    slices = {row["name"]: row for row in tables["slices"].dicts()}
    last_event_ns = process.start_ns + 1000 * TICK_NS  # the thread's data ends with its block
    for name in ("pending-a", "pending-b", "outer"):
        assert slices[name]["unfinished"] == 1, name
        assert slices[name]["ts"] + slices[name]["dur"] == last_event_ns, name
    assert [slices[name]["unfinished"] for name in ("done", "inner")] == [None, None]
    assert slices["done"]["dur"] == 100 * TICK_NS
