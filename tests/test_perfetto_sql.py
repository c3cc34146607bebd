"""perfetto_trace_chunks(...) over materialized views: decoded and checked against the views themselves."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator

import pyarrow as pa
import pytest
from harness import PostgresServer
from lakehouse_support import EXPECTED, PROCESS_ID, LocalLake, cpu_streams, local_lake
from perfetto_check import decode_and_check

from spanlake.lakehouse.query import perfetto_trace
from spanlake.lakehouse.timestamps import parse_rfc3339_ns

BEGIN, END = "TIMESTAMP '2026-11-23T08:00:00Z'", "TIMESTAMP '2026-11-23T10:00:00Z'"


@pytest.fixture(scope="module")
def loaded(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLake]:
    # micromegas's chunks: these tests check its chunking rule
    with local_lake(postgres, tmp_path_factory.mktemp("lake"), perfetto_chunk_kib=0) as lake:
        lake.upload()
        yield lake


def trace(lake: LocalLake, span_types: str, begin: str = BEGIN, end: str = END) -> pa.Table:
    return lake.sql(
        f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{PROCESS_ID}', '{span_types}', {begin}, {end})"
    )


def thread_slices(lake: LocalLake) -> collections.Counter:
    found: collections.Counter = collections.Counter()
    for stream in cpu_streams():
        rows = lake.sql(
            f'SELECT name, CAST(begin AS BIGINT) AS b, CAST("end" AS BIGINT) AS e'
            f" FROM view_instance('thread_spans', '{stream['stream_id']}')"
        ).to_pylist()
        found.update((r["name"], r["b"], r["e"]) for r in rows)
    return found


def async_slices(lake: LocalLake) -> collections.Counter:
    rows = lake.sql(f"""
        SELECT b.name, CAST(b.time AS BIGINT) AS b, CAST(e.time AS BIGINT) AS e
        FROM (SELECT * FROM view_instance('async_events', '{PROCESS_ID}') WHERE event_type = 'begin') b
        JOIN (SELECT * FROM view_instance('async_events', '{PROCESS_ID}') WHERE event_type = 'end') e
        ON b.span_id = e.span_id WHERE b.time < e.time""").to_pylist()
    return collections.Counter((r["name"], r["b"], r["e"]) for r in rows)


@pytest.mark.parametrize("span_types", ["thread", "async", "both"])
def test_trace_holds_exactly_the_spans_of_the_views(loaded: LocalLake, span_types: str) -> None:
    table = trace(loaded, span_types)
    ids = table.column("chunk_id").to_pylist()
    chunks = table.column("chunk_data").to_pylist()
    assert ids == list(range(len(ids))) and all(chunks)
    decoded = decode_and_check(b"".join(chunks))
    expected: collections.Counter = collections.Counter()
    if span_types != "async":
        expected += thread_slices(loaded)
    if span_types != "thread":
        expected += async_slices(loaded)
    assert decoded.all_slices() == expected
    # One thread track per cpu stream (+ the process track, + async lanes for async spans).
    threads = [t for t in decoded.tracks.values() if t.HasField("thread")]
    assert sorted(t.thread.thread_name for t in threads) == sorted(
        f"{s['properties']['thread-name']}-{s['properties']['thread-id']}" for s in cpu_streams()
    )
    process = [t for t in decoded.tracks.values() if t.HasField("process")]
    assert [p.process.process_name for p in process] == [EXPECTED["process"]["process_info"]["exe"]]


def test_chunks_follow_the_flush_rule(loaded: LocalLake) -> None:
    sizes = [len(c) for c in trace(loaded, "both").column("chunk_data").to_pylist()]
    # Process descriptor alone, then the thread descriptors, then the async track descriptor.
    assert len(sizes) > 3 and all(0 < size < 8192 for size in sizes)
    assert sizes[0] < 100


def test_a_range_with_no_data_gives_a_trace_of_descriptors(loaded: LocalLake) -> None:
    table = trace(loaded, "both", "TIMESTAMP '2030-01-01T00:00:00Z'", "'2030-01-01T01:00:00Z'")
    decoded = decode_and_check(b"".join(table.column("chunk_data").to_pylist()))
    assert decoded.all_slices() == collections.Counter()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("'not-a-uuid', 'both', " + BEGIN + ", " + END, "must be a valid UUID (the process ID), given 'not-a-uuid'"),
        (f"'{PROCESS_ID}', 'all', {BEGIN}, {END}", "span_types must be 'thread', 'async', or 'both', given: all"),
        (  # micromegas's test_perfetto_trace_chunks_error_handling: the span type is named first
            f"'any-process-id', 'invalid-span-type', {BEGIN}, {END}",
            "span_types must be 'thread', 'async', or 'both', given: invalid-span-type",
        ),
        (
            "'process-id', 'both'",
            "Third argument to perfetto_trace_chunks must be a timestamp (start time), given None",
        ),
        (f"'{PROCESS_ID}', 'both', {END}, {BEGIN}", "begin must be before end"),
        (
            f"'{PROCESS_ID}', 'both', 'yesterday', {END}",
            'Third argument to perfetto_trace_chunks must be a timestamp (start time), given Utf8("yesterday")',
        ),
        (
            f"'{PROCESS_ID}', 42, {BEGIN}, {END}",
            "Second argument to perfetto_trace_chunks must be a string ('thread', 'async', or 'both'), given Int64(42)",
        ),
        (
            f"'{PROCESS_ID}', 'both', {BEGIN}",
            "Fourth argument to perfetto_trace_chunks must be a timestamp (end time), given None",
        ),
        (  # micromegas's test_perfetto_trace_chunks_error_handling: a process id that is no UUID is not found
            f"'non-existent-process-id', 'both', {BEGIN}, {END}",
            "Trace generation failed: Process non-existent-process-id not found",
        ),
        (
            f"NULL, 'both', {BEGIN}, {END}",
            "First argument to perfetto_trace_chunks must be a string (the process ID), given NULL",
        ),
        (
            f"'6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f', 'both', {BEGIN}, {END}",
            "Trace generation failed: Process 6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f not found",
        ),
    ],
)
def test_bad_arguments(loaded: LocalLake, arguments: str, message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        loaded.sql(f"SELECT chunk_id FROM perfetto_trace_chunks({arguments})")


def test_chunks_are_generated_as_the_client_reads(loaded: LocalLake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfetto_trace, "BATCH_BYTES", 4096)  # small batches: the fixture's trace is small
    begin, end = parse_rfc3339_ns("2026-11-23T08:00:00Z"), parse_rfc3339_ns("2026-11-23T10:00:00Z")
    plan = perfetto_trace.plan_trace(loaded.lake, PROCESS_ID, "both", begin, end)
    produced = 0
    chunks = plan.chunks

    def counted() -> Iterator[bytes]:
        nonlocal produced
        for chunk in chunks():
            produced += 1
            yield chunk

    plan.chunks = counted  # type: ignore[method-assign]
    stream = iter(perfetto_trace.trace_dataframe(loaded.session(), plan, loaded.lake.off_runtime).execute_stream())
    first = next(stream).to_pyarrow()
    assert first.column("chunk_id").to_pylist() == list(range(first.num_rows))
    assert sum(len(c) for c in first.column("chunk_data").to_pylist()) >= 4096
    assert produced == first.num_rows  # nothing generated ahead of the client
    rest = [batch.to_pyarrow() for batch in stream]
    assert first.num_rows + sum(batch.num_rows for batch in rest) == produced > 3 * first.num_rows
    assert plan.batch_count > len(rest) + 1  # spare task rows: the estimate is from above


def test_output_schema_is_not_null(loaded: LocalLake) -> None:
    schema = loaded.session().sql(f"SELECT * FROM perfetto_trace_chunks('{PROCESS_ID}', 'both', {BEGIN}, {END})")
    assert schema.schema() == perfetto_trace.OUTPUT_SCHEMA


def test_upper_case_process_id_gives_the_same_trace(loaded: LocalLake) -> None:
    upper = (
        loaded.sql(f"SELECT chunk_data FROM perfetto_trace_chunks('{PROCESS_ID.upper()}', 'thread', {BEGIN}, {END})")
        .column("chunk_data")
        .to_pylist()
    )
    assert upper == trace(loaded, "thread").column("chunk_data").to_pylist()


@pytest.mark.parametrize("span_types", ["thread", "async", "both"])
def test_chunks_cut_by_size_hold_the_same_bytes(loaded: LocalLake, span_types: str) -> None:
    begin, end = parse_rfc3339_ns("2026-11-23T08:00:00Z"), parse_rfc3339_ns("2026-11-23T10:00:00Z")

    def chunks(chunk_bytes: int) -> list[bytes]:
        plan = perfetto_trace.plan_trace(loaded.lake, PROCESS_ID, span_types, begin, end)
        plan.chunk_bytes = chunk_bytes  # as SPANLAKE_PERFETTO_CHUNK_KIB gives it
        return list(plan.chunks())

    rule, sized = chunks(0), chunks(2048)
    assert b"".join(sized) == b"".join(rule) == b"".join(trace(loaded, span_types).column("chunk_data").to_pylist())
    descriptors = 2 if span_types == "thread" else 3  # each group of descriptors still ends its chunk
    assert sized[:descriptors] == rule[:descriptors]
    # The spans: chunks of at least the size (the last one excepted), cut right after the packet reaching it.
    spans = sized[descriptors:]
    assert len(spans) > 2 and len(rule) > 2 * len(sized)
    assert all(2048 <= len(chunk) < 2048 + 1100 for chunk in spans[:-1]) and 0 < len(spans[-1]) < 2048 + 1100
