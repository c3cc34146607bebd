"""`trace_spans(trace_id)` through a running `spanlake serve`: a trace of two OpenTelemetry Python SDK
services exporting OTLP/HTTP, W3C propagation between them, read back as one table over Flight SQL;
the trace index behind it (and its retention); bad trace ids; a 100,000-span trace; an SDK span
ending in a later block; the `traces` rows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, post, running_server, wait_until
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from test_flightsql_support import grpc_status, statement_ticket

from spanlake import tracing
from spanlake.lakehouse.block_traces import BlockTraces
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.retention import delete_expired
from spanlake.lakehouse.settings import Settings
from spanlake.views import jsonb

BIG_TRACE_SPANS = 100_000
CHAIN_LENGTH = 1_000  # the big trace's first spans form one chain (deep), the rest a binary tree


@dataclass(frozen=True)
class TwoServices:
    """What the two services sent: the trace id and the span ids of interest (hex)."""

    server: SpanlakeServer
    trace_id: str
    spans: dict[str, str]  # span name → span id (16 hex)
    other_trace_id: str


def _provider(server: SpanlakeServer, service: str) -> TracerProvider:
    resource = Resource.create({"service.name": service, "service.instance.id": str(uuid.uuid4())})
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=server.http_url + "/ingestion/otlp/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _two_services(server: SpanlakeServer) -> TwoServices:
    """`frontend` handles a request and calls `backend` over W3C traceparent; `backend` answers with an
    error in a nested span and links to a span of another trace."""
    frontend, backend = _provider(server, "frontend"), _provider(server, "backend")
    front_tracer, back_tracer = frontend.get_tracer("shop.frontend"), backend.get_tracer("shop.backend")
    propagator = TraceContextTextMapPropagator()
    spans: dict[str, str] = {}
    with back_tracer.start_as_current_span("nightly_job") as other:
        other_context = other.get_span_context()
    with front_tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as root:
        with front_tracer.start_as_current_span("call backend", kind=SpanKind.CLIENT) as client:
            headers: dict[str, str] = {}
            propagator.inject(headers)
            remote = propagator.extract(headers)
            with back_tracer.start_as_current_span(
                "POST /charge", context=remote, kind=SpanKind.SERVER, links=[Link(other_context)]
            ) as handler:
                handler.set_attribute("http.route", "/charge")
                with back_tracer.start_as_current_span("charge card") as charge:
                    charge.set_status(Status(StatusCode.ERROR, "card declined"))
                    spans["charge card"] = format_span_id(charge.get_span_context().span_id)
                spans["POST /charge"] = format_span_id(handler.get_span_context().span_id)
            spans["call backend"] = format_span_id(client.get_span_context().span_id)
        spans["GET /checkout"] = format_span_id(root.get_span_context().span_id)
        trace_id = format_trace_id(root.get_span_context().trace_id)
    for provider in (frontend, backend):
        provider.shutdown()
    return TwoServices(server, trace_id, spans, format_trace_id(other_context.trace_id))


@pytest.fixture(scope="module")
def services(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoServices]:
    with running_server(postgres, tmp_path_factory.mktemp("trace-spans")) as server:
        yield _two_services(server)


def _query(server: SpanlakeServer, sql: str) -> pa.Table:
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket(sql)).read_all()


def _by_name(table: pa.Table) -> dict[str, dict]:
    return {row["name"]: row for row in table.to_pylist()}


def test_a_trace_across_two_otel_services_is_one_table(services: TwoServices) -> None:
    table = _query(services.server, f"SELECT * FROM trace_spans('{services.trace_id}')")
    spans = _by_name(table)
    assert set(spans) == {"GET /checkout", "call backend", "POST /charge", "charge card"}
    assert {row["trace_id"] for row in spans.values()} == {services.trace_id}
    assert {name: row["span_id"] for name, row in spans.items()} == services.spans
    # Parents across the process boundary: the backend's server span is the frontend client's child.
    assert spans["GET /checkout"]["parent_span_id"] is None
    assert spans["call backend"]["parent_span_id"] == services.spans["GET /checkout"]
    assert spans["POST /charge"]["parent_span_id"] == services.spans["call backend"]
    assert spans["charge card"]["parent_span_id"] == services.spans["POST /charge"]
    assert [spans[n]["depth"] for n in ("GET /checkout", "call backend", "POST /charge", "charge card")] == [0, 1, 2, 3]
    assert spans["GET /checkout"]["exe"] == spans["call backend"]["exe"] == "frontend"
    assert spans["POST /charge"]["exe"] == spans["charge card"]["exe"] == "backend"
    assert spans["GET /checkout"]["process_id"] != spans["POST /charge"]["process_id"]
    assert [spans[n]["kind"] for n in ("GET /checkout", "call backend", "POST /charge", "charge card")] == [
        "server",
        "client",
        "server",
        "internal",
    ]
    assert spans["charge card"]["status"] == "ERROR" and spans["POST /charge"]["status"] == "UNSET"
    assert spans["POST /charge"]["target"] == "shop.backend"
    assert jsonb.decode(spans["POST /charge"]["attributes"])["http.route"] == "/charge"
    assert spans["POST /charge"]["links"] == [{"trace_id": services.other_trace_id, "span_id": _other_span(services)}]
    begin, end = (table.column(name).cast(pa.int64()).to_pylist() for name in ("begin", "end"))
    assert table.column("duration").to_pylist() == [e - b for b, e in zip(begin, end, strict=True)]
    assert all(d > 0 for d in table.column("duration").to_pylist())
    assert begin == sorted(begin)


def _other_span(services: TwoServices) -> str:
    rows = _query(services.server, f"SELECT span_id FROM trace_spans('{services.other_trace_id}')").to_pylist()
    assert len(rows) == 1
    return rows[0]["span_id"]


def test_the_trace_index_names_the_trace_s_processes_only(services: TwoServices) -> None:
    rows = services.server.sql(
        "SELECT process_id, begin_ns, end_ns FROM trace_index WHERE trace_id = $1", bytes.fromhex(services.trace_id)
    )
    spans = _query(services.server, f"SELECT process_id, begin, \"end\" FROM trace_spans('{services.trace_id}')")
    assert len(rows) == 2
    assert sorted(str(r["process_id"]) for r in rows) == sorted(set(spans.column("process_id").to_pylist()))
    assert min(r["begin_ns"] for r in rows) == min(spans.column("begin").cast(pa.int64()).to_pylist())
    assert max(r["end_ns"] for r in rows) == max(spans.column("end").cast(pa.int64()).to_pylist())


def test_an_unknown_trace_is_empty(services: TwoServices) -> None:
    table = _query(services.server, f"SELECT * FROM trace_spans('{uuid.uuid4().hex}')")
    assert table.num_rows == 0
    assert table.schema.names[:6] == ["trace_id", "process_id", "exe", "stream_id", "span_id", "parent_span_id"]


@pytest.mark.parametrize("bad", ["not-a-trace", "0" * 32, "abc", "g" * 32, "12" * 17])
def test_a_malformed_trace_id_is_an_invalid_argument_naming_it(services: TwoServices, bad: str) -> None:
    with pytest.raises(pa.ArrowException) as caught:
        _query(services.server, f"SELECT * FROM trace_spans('{bad}')")
    code, message = grpc_status(caught.value)
    assert code == "INVALID_ARGUMENT", message
    assert "trace id" in message and bad in message, message


def test_an_upper_case_trace_id_finds_the_trace(services: TwoServices) -> None:
    table = _query(services.server, f"SELECT span_id FROM trace_spans('{services.trace_id.upper()}')")
    assert table.num_rows == 4


def _big_trace_request(trace_id: bytes, start_ns: int) -> bytes:
    """One OTLP export of a BIG_TRACE_SPANS-span trace: a chain of CHAIN_LENGTH spans, then a binary tree
    hanging from the chain's last span. Span i has id i + 1."""
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    attribute = resource.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "bulk"
    scope = resource.scope_spans.add()
    scope.scope.name = "bulk.scope"
    spans = scope.spans
    for i in range(BIG_TRACE_SPANS):
        span = spans.add()
        span.trace_id = trace_id
        span.span_id = (i + 1).to_bytes(8, "big")
        if i:
            span.parent_span_id = (_parent(i) + 1).to_bytes(8, "big")
        span.name = f"step {i % 7}"
        span.kind = ProtoSpan.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = start_ns + i * 1000
        span.end_time_unix_nano = start_ns + i * 1000 + 500
    return request.SerializeToString()


def _parent(i: int) -> int:
    """The big trace's span i's parent (i > 0)."""
    return i - 1 if i < CHAIN_LENGTH else CHAIN_LENGTH - 1 + (i - CHAIN_LENGTH) // 2


def _expected_depths() -> list[int]:
    depths = [0] * BIG_TRACE_SPANS
    for i in range(1, BIG_TRACE_SPANS):
        depths[i] = depths[_parent(i)] + 1
    return depths


def test_a_trace_of_100k_spans_comes_back_with_its_depths_and_perfetto_chunks_cut_by_size(
    services: TwoServices,
) -> None:
    trace_id = uuid.uuid4().bytes
    body = _big_trace_request(trace_id, time.time_ns() - 10**9)
    status, text = post(
        services.server.http_url + "/ingestion/otlp/v1/traces", body, {"Content-Type": "application/x-protobuf"}
    )
    assert status == 200, text
    sql = f"SELECT span_id, parent_span_id, depth FROM trace_spans('{trace_id.hex()}')"
    table = _query(services.server, sql)  # speed: benchmarks/trace_page.py
    assert table.num_rows == BIG_TRACE_SPANS
    depth_by_id = dict(zip(table.column("span_id").to_pylist(), table.column("depth").to_pylist(), strict=True))
    expected = {(i + 1).to_bytes(8, "big").hex(): depth for i, depth in enumerate(_expected_depths())}
    assert depth_by_id == expected
    assert max(expected.values()) > CHAIN_LENGTH  # the chain and the tree below it
    # Its Perfetto trace comes in chunks of about SPANLAKE_PERFETTO_CHUNK_KIB (64), as perfetto_trace_chunks'
    # do; micromegas's chunking (every 10 spans) would give about 10,000 chunks of 1 KiB.
    chunks = _query(services.server, f"SELECT chunk_data FROM perfetto_trace_of('{trace_id.hex()}')")
    sizes = pc.binary_length(chunks.column("chunk_data")).to_pylist()
    assert sum(sizes) > 5 * 2**20
    assert len(sizes) < sum(sizes) // (32 * 1024)


def test_the_traces_view_has_one_row_per_trace_with_its_root_and_error(services: TwoServices) -> None:
    both = f"'{services.trace_id}', '{services.other_trace_id}'"
    sql = f"SELECT * FROM traces WHERE trace_id IN ({both}) ORDER BY span_count DESC"

    def complete() -> bool:  # the daemon materializes each second's blocks about 2 s after it
        rows = _query(services.server, sql).to_pylist()
        return [row["span_count"] for row in rows] == [4, 1]

    wait_until(complete, 30, "the maintenance daemon to materialize both traces")
    traces = _query(services.server, sql)
    shop, nightly = traces.to_pylist()
    spans = _query(services.server, f"SELECT * FROM trace_spans('{services.trace_id}')")
    root = next(span for span in spans.to_pylist() if span["parent_span_id"] is None)
    assert (shop["trace_id"], shop["root_name"], shop["root_exe"]) == (services.trace_id, "GET /checkout", "frontend")
    assert shop["root_process_id"] == root["process_id"]
    assert (shop["process_count"], shop["has_error"]) == (2, True)  # "charge card" failed
    assert sorted(shop["process_ids"]) == sorted(set(spans.column("process_id").to_pylist()))
    begin, end = (traces.column(name).cast(pa.int64()).to_pylist()[0] for name in ("begin", "end"))
    assert begin == pc.min(spans.column("begin").cast(pa.int64())).as_py()
    assert end == pc.max(spans.column("end").cast(pa.int64())).as_py()
    assert shop["duration"] == end - begin
    assert (nightly["root_name"], nightly["root_exe"], nightly["process_count"], nightly["has_error"]) == (
        "nightly_job",
        "backend",
        1,
        False,
    )


def test_an_sdk_span_open_then_ended_in_a_later_block(services: TwoServices) -> None:
    """A span still open shows with a NULL end; once its end event arrives in a later block (after
    its begin was materialized), it shows with that end. A span that raised is an error."""
    tracing.init(services.server.http_url, exe="late-end", flush_period=3600)
    seen: dict[str, pa.Table] = {}

    async def program() -> str:
        with tracing.async_span("long") as long:
            with tracing.async_span("short") as short:
                await asyncio.sleep(0.01)
            assert tracing.flush()
            seen["open"] = _query(services.server, f"SELECT * FROM trace_spans('{long.trace_id}')")
            await asyncio.sleep(0.01)
            with pytest.raises(KeyError), tracing.async_span("fails", links=[short]):
                raise KeyError("missing")
        return long.trace_id

    try:
        trace_id = asyncio.run(program())
    finally:
        assert tracing.shutdown()
    opened = _by_name(seen["open"])
    assert opened["long"]["end"] is None and opened["long"]["duration"] is None
    assert opened["short"]["end"] is not None and opened["short"]["parent_span_id"] == opened["long"]["span_id"]
    ended = _by_name(_query(services.server, f"SELECT * FROM trace_spans('{trace_id}')"))
    assert ended["long"]["duration"] > ended["short"]["duration"] >= 10_000_000
    assert [ended["long"]["depth"], ended["short"]["depth"]] == [0, 1]
    assert ended["long"]["exe"] == "late-end" and ended["long"]["kind"] == "internal"
    statuses = {name: span["status"] for name, span in ended.items()}
    assert statuses == {"long": "UNSET", "short": "UNSET", "fails": "ERROR"}
    assert jsonb.decode(ended["fails"]["attributes"]) == {"error": "KeyError"}
    assert ended["fails"]["links"] == [{"trace_id": trace_id, "span_id": ended["short"]["span_id"]}]
    assert ended["short"]["links"] == []
    row = f"SELECT root_name, span_count, has_error FROM traces WHERE trace_id = '{trace_id}'"
    wait_until(
        lambda: _query(services.server, row).to_pylist() == [{"root_name": "long", "span_count": 3, "has_error": True}],
        30,
        "the daemon to materialize the SDK trace in traces",
    )


def test_retention_deletes_the_index_rows_of_expired_traces(postgres: PostgresServer, tmp_path: Path) -> None:
    settings = Settings(database_url=postgres.new_database(), object_store_uri=(tmp_path / "lake").as_uri())
    with Lake.open(settings) as lake:
        now_ns = time.time_ns()
        old, recent = uuid.uuid4().bytes, uuid.uuid4().bytes
        process = uuid.uuid4()
        week_ns = 7 * 86_400 * 10**9
        traces = BlockTraces([old, recent], [now_ns - 2 * week_ns, now_ns], [now_ns - 2 * week_ns + 1, now_ns + 1])
        lake.loop.run(lake.catalog.index_traces(process, traces))
        report = delete_expired(lake, retention_days=7)
        assert report.trace_index == 1
        left = lake.loop.run(lake.pool.fetch("SELECT trace_id, process_id FROM trace_index"))
        assert [(r["trace_id"], r["process_id"]) for r in left] == [(recent, process)]
