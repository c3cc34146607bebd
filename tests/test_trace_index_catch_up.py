"""Every trace block indexed, through a running `spanlake serve` (issue 23): spanlake's own spans
(self-tracing), native blocks that arrive before their stream and process, blocks of bulk ingestion
(Flight SQL), and a lake stored before the index (the upgrade) are all found by `trace_spans` and
`traces`; retention trims what the catch-up indexed and queued."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, post, running_server, wait_until
from micromegas.flightsql.client import FlightSQLClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_flightsql_support import statement_ticket

from spanlake import tracing
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock, resource_block
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.retention import delete_expired
from spanlake.lakehouse.settings import Settings
from spanlake.server import wire
from spanlake.tracing.sink import INSERT_BLOCK, INSERT_PROCESS, INSERT_STREAM

DAY_NS = 86_400 * 10**9
OTLP_SPANS = {"GET /orders": None, "load orders": "GET /orders"}  # name → parent name
SDK_SPANS = {"request", "step"}
QUERIES = 5
TIMESTAMP = pa.timestamp("ns", tz="UTC")
PROPERTIES = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))


@dataclass(frozen=True)
class SdkProgram:
    """What a program traced with the SDK sent (the bodies of the ingestion API, in order) and its trace."""

    trace_id: str
    bodies: list[tuple[str, bytes]]  # (ingestion path, body)

    def bodies_of(self, path: str) -> list[bytes]:
        return [body for body_path, body in self.bodies if body_path == path]


def _sdk_program(exe: str) -> SdkProgram:
    """A span `request` with a child `step`, encoded by the SDK into memory."""
    sink = tracing.MemorySink()
    tracing.init(sink=sink, exe=exe, flush_period=3600)

    async def program() -> str:
        with tracing.async_span("request") as request, tracing.async_span("step"):
            await asyncio.sleep(0.001)
        return request.trace_id

    try:
        trace_id = asyncio.run(program())
    finally:
        assert tracing.shutdown()
    return SdkProgram(trace_id, [(path, body) for _, path, body in sink.items])


def _otlp_request(start_ns: int) -> tuple[str, ExportTraceServiceRequest]:
    """An OTLP export of one service's trace: OTLP_SPANS, starting at `start_ns`."""
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    attribute = resource.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", f"orders-{uuid.uuid4().hex[:8]}"
    trace_id, spans = uuid.uuid4().bytes, resource.scope_spans.add().spans
    for i, (name, parent) in enumerate(OTLP_SPANS.items()):
        span = spans.add()
        span.trace_id, span.span_id, span.name = trace_id, (i + 1).to_bytes(8, "big"), name
        if parent is not None:
            span.parent_span_id = (list(OTLP_SPANS).index(parent) + 1).to_bytes(8, "big")
        span.start_time_unix_nano, span.end_time_unix_nano = start_ns + i * 1000, start_ns + 10_000 - i * 1000
    return trace_id.hex(), request


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    """A self-traced server keeping every span of every query."""
    env = {
        "SPANLAKE_SELF_TRACING": "true",
        "MICROMEGAS_FLUSH_PERIOD": "0.3",
        "SPANLAKE_SLOW_QUERY_SECONDS": "0",
        "SPANLAKE_SLOW_SPAN_MS": "0",
    }
    with running_server(postgres, tmp_path_factory.mktemp("catch-up"), extra_env=env) as started:
        yield started


def _query(server: SpanlakeServer, sql: str) -> pa.Table:
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket(sql)).read_all()


def _trace_spans(server: SpanlakeServer, trace_id: str) -> dict[str, dict[str, Any]]:
    """The trace's spans by name."""
    table = _query(server, f"SELECT * FROM trace_spans('{trace_id}')")
    return {row["name"]: row for row in table.to_pylist()}


def _wait_for_spans(server: SpanlakeServer, trace_id: str, names: set[str]) -> dict[str, dict[str, Any]]:
    wait_until(lambda: set(_trace_spans(server, trace_id)) == names, 30, f"trace_spans to find {names}")
    return _trace_spans(server, trace_id)


def _traces_row(server: SpanlakeServer, trace_id: str) -> dict[str, Any]:
    """The trace's `traces` row, once the daemon has materialized it."""
    sql = f"SELECT * FROM traces WHERE trace_id = '{trace_id}'"
    wait_until(lambda: _query(server, sql).num_rows == 1, 30, "the daemon to materialize the trace in traces")
    return _query(server, sql).to_pylist()[0]


def _pending(server: SpanlakeServer, block_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    return server.sql("SELECT * FROM trace_index_pending WHERE block_id = ANY($1::uuid[])", block_ids)


def _assert_sdk_trace(spans: dict[str, dict[str, Any]], trace_id: str, exe: str) -> None:
    assert {row["trace_id"] for row in spans.values()} == {trace_id}
    assert spans["step"]["parent_span_id"] == spans["request"]["span_id"]
    assert [spans["request"]["depth"], spans["step"]["depth"]] == [0, 1]
    assert spans["request"]["exe"] == spans["step"]["exe"] == exe


def _assert_otlp_trace(spans: dict[str, dict[str, Any]], trace_id: str) -> None:
    assert {row["trace_id"] for row in spans.values()} == {trace_id}
    assert spans["load orders"]["parent_span_id"] == spans["GET /orders"]["span_id"] == "0000000000000001"
    assert spans["GET /orders"]["duration"] == 10_000


# ---------------------------------------------------------------------------------------------------
# spanlake's own spans


def test_spanlake_s_own_spans_are_found_by_their_trace_id(server: SpanlakeServer) -> None:
    for _ in range(QUERIES):  # one after the other: on one gRPC thread, whose first events came before
        _query(server, "SELECT count(*) FROM processes")
    [own] = server.sql("SELECT process_id FROM processes WHERE exe = 'spanlake-serve'")
    sql = (
        "SELECT trace_id, root_name, span_count FROM traces WHERE root_exe = 'spanlake-serve'"
        " AND root_name = 'flightsql.do_get' ORDER BY begin DESC"
    )
    wait_until(lambda: _query(server, sql).num_rows >= QUERIES, 30, "spanlake's own traces in the traces view")
    trace = _query(server, sql).to_pylist()[0]  # the last query's
    spans = _trace_spans(server, trace["trace_id"])
    assert len(spans) == trace["span_count"] > 1
    assert {row["process_id"] for row in spans.values()} == {str(own["process_id"])}
    assert {row["exe"] for row in spans.values()} == {"spanlake-serve"}
    roots = [row for row in spans.values() if row["depth"] == 0]
    assert [row["name"] for row in roots] == ["flightsql.do_get"]
    indexed = server.sql("SELECT process_id FROM trace_index WHERE trace_id = $1", bytes.fromhex(trace["trace_id"]))
    assert indexed == [{"process_id": own["process_id"]}]


# ---------------------------------------------------------------------------------------------------
# Native blocks before their stream and process


def test_blocks_sent_before_their_stream_and_process_are_indexed_once_those_arrive(server: SpanlakeServer) -> None:
    program = _sdk_program("early-blocks")
    blocks = program.bodies_of(INSERT_BLOCK)
    for body in blocks:
        status, text = post(server.http_url + INSERT_BLOCK, body)
        assert status == 200, text
    block_ids = [wire.parse_block(body)[0].block_id for body in blocks]
    assert len(_pending(server, block_ids)) == len(blocks)  # queued: their facts cannot be read yet
    assert _trace_spans(server, program.trace_id) == {}
    for path in (INSERT_PROCESS, INSERT_STREAM):
        for body in program.bodies_of(path):
            status, text = post(server.http_url + path, body)
            assert status == 200, text
    spans = _wait_for_spans(server, program.trace_id, SDK_SPANS)
    _assert_sdk_trace(spans, program.trace_id, "early-blocks")
    wait_until(lambda: _pending(server, block_ids) == [], 10, "the catch-up to forget the indexed blocks")


# ---------------------------------------------------------------------------------------------------
# Bulk ingestion (Flight SQL CommandStatementIngest)


def _bulk_tables(
    processes: list[ProcessRecord],
    streams: list[StreamRecord],
    blocks: list[tuple[BlockRecord, bytes]],
    insert_time_ns: int,
) -> dict[str, pa.Table]:
    """The rows a replication tool sends for these records, all inserted at `insert_time_ns`."""
    return {
        "processes": pa.table(
            {
                "process_id": [str(p.process_id) for p in processes],
                **{
                    name: [getattr(p, name) for p in processes]
                    for name in ("exe", "username", "realname", "computer", "distro", "cpu_brand", "tsc_frequency")
                },
                "start_time": pa.array([p.start_time_ns for p in processes], TIMESTAMP),
                "start_ticks": [p.start_ticks for p in processes],
                "insert_time": pa.array([insert_time_ns] * len(processes), TIMESTAMP),
                "parent_process_id": [""] * len(processes),
                "properties": pa.array([_pairs(p.properties) for p in processes], PROPERTIES),
            }
        ),
        "streams": pa.table(
            {
                "stream_id": [str(s.stream_id) for s in streams],
                "process_id": [str(s.process_id) for s in streams],
                "dependencies_metadata": [s.dependencies_metadata for s in streams],
                "objects_metadata": [s.objects_metadata for s in streams],
                "tags": [s.tags for s in streams],
                "properties": pa.array([_pairs(s.properties) for s in streams], PROPERTIES),
                "insert_time": pa.array([insert_time_ns] * len(streams), TIMESTAMP),
                "format": [s.format for s in streams],
            }
        ),
        "blocks": pa.table(
            {
                **{
                    name: [str(getattr(b, name)) for b, _ in blocks] for name in ("block_id", "stream_id", "process_id")
                },
                "begin_time": pa.array([b.begin_time_ns for b, _ in blocks], TIMESTAMP),
                "begin_ticks": [b.begin_ticks for b, _ in blocks],
                "end_time": pa.array([b.end_time_ns for b, _ in blocks], TIMESTAMP),
                "end_ticks": [b.end_ticks for b, _ in blocks],
                "nb_objects": pa.array([b.nb_objects for b, _ in blocks], pa.int32()),
                "object_offset": [b.object_offset for b, _ in blocks],
                "payload_size": [b.payload_size for b, _ in blocks],
                "insert_time": pa.array([insert_time_ns] * len(blocks), TIMESTAMP),
            }
        ),
        "payloads": pa.table(
            {
                **{
                    name: [str(getattr(b, name)) for b, _ in blocks] for name in ("process_id", "stream_id", "block_id")
                },
                "payload": [payload for _, payload in blocks],
            }
        ),
    }


def _pairs(properties: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in properties.items()]


def _sdk_records(
    program: SdkProgram,
) -> tuple[list[ProcessRecord], list[StreamRecord], list[tuple[BlockRecord, bytes]]]:
    return (
        [wire.parse_process(body) for body in program.bodies_of(INSERT_PROCESS)],
        [wire.parse_stream(body) for body in program.bodies_of(INSERT_STREAM)],
        [wire.parse_block(body) for body in program.bodies_of(INSERT_BLOCK)],
    )


def _otlp_records(
    block: OtlpResourceBlock,
) -> tuple[list[ProcessRecord], list[StreamRecord], list[tuple[BlockRecord, bytes]]]:
    return [block.process], [block.stream], [(block.block, block.payload)]


def _bulk_ingest(server: SpanlakeServer, tables: dict[str, pa.Table], order: tuple[str, ...]) -> None:
    client = FlightSQLClient(server.flightsql_url)
    for name in order:
        assert client.bulk_ingest(name, tables[name]).record_count == tables[name].num_rows


def test_bulk_ingested_sdk_and_otlp_blocks_are_indexed(server: SpanlakeServer) -> None:
    program = _sdk_program("replicated")
    otlp_trace_id, request = _otlp_request(time.time_ns() - 10**9)
    otlp_block = resource_block("traces", request.resource_spans[0])
    assert otlp_block is not None
    sdk_processes, sdk_streams, sdk_blocks = _sdk_records(program)
    tables = _bulk_tables(
        [*sdk_processes, otlp_block.process],
        [*sdk_streams, otlp_block.stream],
        [*sdk_blocks, (otlp_block.block, otlp_block.payload)],
        time.time_ns(),
    )
    _bulk_ingest(server, tables, ("processes", "streams", "payloads", "blocks"))
    sdk_spans = _wait_for_spans(server, program.trace_id, SDK_SPANS)
    _assert_sdk_trace(sdk_spans, program.trace_id, "replicated")
    otlp_spans = _wait_for_spans(server, otlp_trace_id, set(OTLP_SPANS))
    _assert_otlp_trace(otlp_spans, otlp_trace_id)
    sdk_row, otlp_row = _traces_row(server, program.trace_id), _traces_row(server, otlp_trace_id)
    assert (sdk_row["root_name"], sdk_row["root_exe"], sdk_row["span_count"]) == ("request", "replicated", 2)
    assert (otlp_row["root_name"], otlp_row["span_count"]) == ("GET /orders", 2)


def test_a_bulk_block_waits_for_its_payload(server: SpanlakeServer) -> None:
    otlp_trace_id, request = _otlp_request(time.time_ns() - 10**9)
    otlp_block = resource_block("traces", request.resource_spans[0])
    assert otlp_block is not None
    tables = _bulk_tables(*_otlp_records(otlp_block), time.time_ns())
    _bulk_ingest(server, tables, ("processes", "streams", "blocks"))
    block_id = otlp_block.block.block_id
    wait_until(lambda: _pending(server, [block_id])[0]["attempts"] >= 1, 10, "the catch-up to try the block")
    assert _trace_spans(server, otlp_trace_id) == {}
    _bulk_ingest(server, tables, ("payloads",))
    # Due again within the doubling delay of its tries so far (a few seconds).
    _assert_otlp_trace(_wait_for_spans(server, otlp_trace_id, set(OTLP_SPANS)), otlp_trace_id)


# ---------------------------------------------------------------------------------------------------
# Retention


def test_retention_trims_what_the_catch_up_indexed_and_queued(server: SpanlakeServer) -> None:
    """A trace ten days old, bulk ingested: indexed by the catch-up, then its index row, its block and
    the queued row of a block whose payload never came are deleted by a 7-day retention."""
    old_ns = time.time_ns() - 10 * DAY_NS
    old_trace_id, request = _otlp_request(old_ns)
    old_block = resource_block("traces", request.resource_spans[0])
    assert old_block is not None
    tables = _bulk_tables(*_otlp_records(old_block), old_ns)
    _bulk_ingest(server, tables, ("processes", "streams", "payloads", "blocks"))
    orphan = uuid.uuid4()  # a replicated block whose payload never comes
    orphan_tables = _bulk_tables([], [], [(_renamed(old_block.block, orphan), b"")], old_ns)
    _bulk_ingest(server, orphan_tables, ("blocks",))
    index_rows = "SELECT process_id, end_ns FROM trace_index WHERE trace_id = $1"
    old_id = bytes.fromhex(old_trace_id)
    wait_until(lambda: len(server.sql(index_rows, old_id)) == 1, 30, "the catch-up to index the old trace")
    assert server.sql(index_rows, old_id) == [{"process_id": old_block.process.process_id, "end_ns": old_ns + 10_000}]
    wait_until(lambda: _pending(server, [orphan])[0]["attempts"] >= 1, 10, "the catch-up to try the orphan")
    settings = Settings(database_url=server.database_url, object_store_uri=server.object_store_uri)
    with Lake.open(settings) as lake:
        report = delete_expired(lake, retention_days=7)
    assert report.trace_index >= 1 and report.trace_index_pending >= 1 and report.blocks >= 1
    assert server.sql(index_rows, old_id) == []
    assert _pending(server, [old_block.block.block_id, orphan]) == []
    assert _trace_spans(server, old_trace_id) == {}


def _renamed(block: BlockRecord, block_id: uuid.UUID) -> BlockRecord:
    return BlockRecord(
        block_id,
        block.stream_id,
        block.process_id,
        block.begin_time_ns,
        block.begin_ticks,
        block.end_time_ns,
        block.end_ticks,
        block.nb_objects,
        block.object_offset,
        block.payload_size,
    )


# ---------------------------------------------------------------------------------------------------
# Upgrade: a lake stored before the index


def test_a_lake_stored_before_the_index_becomes_searchable(postgres: PostgresServer, tmp_path: Path) -> None:
    program = _sdk_program("before-the-index")
    otlp_trace_id, request = _otlp_request(time.time_ns() - 10**9)
    with running_server(postgres, tmp_path) as first:
        for path, body in program.bodies:
            status, text = post(first.http_url + path, body)
            assert status == 200, text
        status, text = post(
            first.http_url + "/ingestion/otlp/v1/traces",
            request.SerializeToString(),
            {"Content-Type": "application/x-protobuf"},
        )
        assert status == 200, text
    # The lake as a spanlake without the index's catch-up (and its traces' rows gone, as before 0008) left it.
    first.sql("DELETE FROM trace_index")
    first.sql("DROP TABLE trace_index_pending")
    first.sql("DELETE FROM spanlake_migrations WHERE version = 11")
    upgraded = SpanlakeServer(first.database_url, first.data_dir, first.object_store_uri).start()
    try:
        _assert_sdk_trace(_wait_for_spans(upgraded, program.trace_id, SDK_SPANS), program.trace_id, "before-the-index")
        _assert_otlp_trace(_wait_for_spans(upgraded, otlp_trace_id, set(OTLP_SPANS)), otlp_trace_id)
        wait_until(
            lambda: upgraded.sql("SELECT count(*) AS n FROM trace_index_pending") == [{"n": 0}],
            30,
            "the catch-up to drain the upgrade's queue",
        )
    finally:
        upgraded.stop()


def test_blocks_sent_now_are_indexed_before_a_backlog_and_retries(postgres: PostgresServer, tmp_path: Path) -> None:
    """The catch-up takes first tries before retries and the newest first: an upgrade's backlog of old
    blocks, or blocks that keep failing, never hold back the blocks being sent now."""
    backlog = [uuid.uuid4() for _ in range(3)]
    retried, fresh = uuid.uuid4(), uuid.uuid4()
    with Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=tmp_path.as_uri())) as lake:
        queue = "INSERT INTO trace_index_pending (block_id, queued_at, attempts) VALUES ($1, now() - $2::interval, $3)"
        for age, block_id in enumerate(backlog, start=1):
            lake.loop.run(lake.pool.execute(queue, block_id, timedelta(days=age), 0))
        lake.loop.run(lake.pool.execute(queue, retried, timedelta(seconds=1), 3))
        lake.loop.run(lake.pool.execute(queue, fresh, timedelta(0), 0))
        assert lake.loop.run(lake.catalog.due_trace_blocks(10)) == [fresh, *backlog, retried]
        assert lake.loop.run(lake.catalog.due_trace_blocks(1)) == [fresh]
