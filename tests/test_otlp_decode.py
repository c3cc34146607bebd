"""Stored OTLP blocks → log_entries, measures and async_events rows."""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import numpy as np
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from spanlake.lakehouse.otlp.decode import OtlpBlockError, otlp_block
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock
from spanlake.server.otlp import blocks_from_request
from spanlake.views import async_events, jsonb, log_entries, measures, otel_spans
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.properties import decode_jsonb_object
from spanlake.views.scope import scope_hash
from spanlake.views.view import View

PROTOBUF = "application/x-protobuf"
T0 = 1_700_000_000_000_000_000
INSERT_NS = T0 + 3_600_000_000_000
RESOURCE = [
    KeyValue(key="service.name", value=AnyValue(string_value="svc")),
    KeyValue(key="host.name", value=AnyValue(string_value="box")),
]


def stored(signal: str, request: Any) -> tuple[bytes, ProcessMeta, BlockMeta]:
    """What ingestion stored for a one-resource request, and the metadata materialization reads."""
    [block] = blocks_from_request(signal, request.SerializeToString(), PROTOBUF, None)
    return block.payload, process_meta(block), block_meta(block)


def process_meta(block: OtlpResourceBlock) -> ProcessMeta:
    p = block.process
    return ProcessMeta(
        str(p.process_id), p.exe, p.username, p.computer, p.start_time_ns, p.start_ticks, p.tsc_frequency, p.properties
    )


def block_meta(block: OtlpResourceBlock) -> BlockMeta:
    b = block.block
    return BlockMeta(
        str(b.block_id),
        str(b.stream_id),
        str(b.process_id),
        b.begin_time_ns,
        b.begin_ticks,
        b.end_time_ns,
        b.end_ticks,
        b.nb_objects,
        b.object_offset,
        INSERT_NS,
    )


def read_jsonb(data: bytes) -> Any:
    """An independent reader of databend-jsonb (containers, strings, numbers, booleans, null)."""
    header = struct.unpack_from(">I", data)[0]
    kind, count = header & 0xE0000000, header & 0x1FFFFFFF
    n_entries = 2 * count if kind == 0x40000000 else count
    entries = struct.unpack_from(f">{n_entries}I", data, 4)
    position = 4 + 4 * n_entries
    values = []
    for entry in entries:
        size = entry & 0x0FFFFFFF
        values.append(_scalar(entry & 0x70000000, data[position : position + size]))
        position += size
    if kind == 0x20000000:
        return values[0]
    if kind == 0x80000000:
        return values
    return dict(zip(values[:count], values[count:], strict=True))


def _scalar(tag: int, raw: bytes) -> Any:
    if tag == 0x10000000:
        return raw.decode()
    if tag == 0x20000000:
        if raw == b"\x00":
            return 0
        if raw[0] == 0x40:
            return int.from_bytes(raw[1:], "big", signed=True)
        assert raw[0] == 0x60
        return struct.unpack(">d", raw[1:])[0]
    if tag == 0x50000000:
        return read_jsonb(raw)
    return {0x00000000: None, 0x30000000: False, 0x40000000: True}[tag]


def column(batch: pa.RecordBatch, name: str) -> list[Any]:
    return batch.column(name).to_pylist()


def view_batch(view: View, payload: bytes, process: ProcessMeta, block: BlockMeta, stream_format: str | None = None):
    """The rows of `view` from one stored OTLP block, through the view's contract."""
    [batch] = view.rows_from_otlp([otlp_block(view, stream_format or view.otlp_format, payload, process, block)])
    return batch


def log_entries_batch(payload: bytes, process: ProcessMeta, block: BlockMeta) -> pa.RecordBatch:
    return view_batch(log_entries.VIEW, payload, process, block)


def measures_batch(payload: bytes, process: ProcessMeta, block: BlockMeta) -> pa.RecordBatch:
    return view_batch(measures.VIEW, payload, process, block)


def async_events_batch(payload: bytes, process: ProcessMeta, block: BlockMeta) -> pa.RecordBatch:
    return view_batch(async_events.VIEW, payload, process, block)


# --- logs ------------------------------------------------------------------------------------------


def logs_request(records: list[LogRecord], scope_name: str = "app.module") -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    resource.resource.attributes.extend(RESOURCE)
    scope_logs = resource.scope_logs.add()
    scope_logs.scope.name = scope_name
    scope_logs.scope.version = "1.2"
    scope_logs.scope.attributes.append(KeyValue(key="lib", value=AnyValue(string_value="x")))
    scope_logs.schema_url = "https://schema/1"
    scope_logs.log_records.extend(records)
    return request


def test_log_levels_bodies_times_and_constant_columns() -> None:
    severities = [9, 17, 22, 0, 1, 5, 13, 24, 25, -3]
    records = [
        LogRecord(time_unix_nano=T0 + i, severity_number=s, body=AnyValue(string_value=f"m{i}"))
        for i, s in enumerate(severities)
    ]
    records[1].time_unix_nano = 0
    records[1].observed_time_unix_nano = T0 + 500
    payload, process, block = stored("logs", logs_request(records))
    batch = log_entries_batch(payload, process, block)

    assert batch.schema == log_entries.SCHEMA
    assert column(batch, "level") == [4, 2, 1, 4, 6, 5, 3, 1, 4, 4]
    assert column(batch, "msg") == [f"m{i}" for i in range(10)]
    times = batch.column("time").cast(pa.int64()).to_pylist()
    assert times == [T0, T0 + 500] + [T0 + i for i in range(2, 10)]
    assert set(column(batch, "target")) == {"app.module"}
    assert set(column(batch, "process_id")) == {process.process_id}
    assert set(column(batch, "stream_id")) == {block.stream_id}
    assert set(column(batch, "block_id")) == {block.block_id}
    assert set(batch.column("insert_time").cast(pa.int64()).to_pylist()) == {INSERT_NS}
    assert (set(column(batch, "exe")), set(column(batch, "username")), set(column(batch, "computer"))) == (
        {"svc"},
        {""},
        {"box"},
    )
    assert decode_jsonb_object(column(batch, "process_properties")[0]) == {
        "otel.resource.service.name": "svc",
        "otel.resource.host.name": "box",
    }


def test_log_without_any_time_takes_the_block_begin_time() -> None:
    payload, process, block = stored("logs", logs_request([LogRecord(body=AnyValue(string_value="late"))]))
    batch = log_entries_batch(payload, process, block)
    assert batch.column("time").cast(pa.int64()).to_pylist() == [block.begin_time_ns]


def test_log_properties() -> None:
    record = LogRecord(
        time_unix_nano=T0,
        severity_number=13,
        severity_text="WARN",
        event_name="login",
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        body=AnyValue(string_value="b"),
    )
    record.attributes.extend(
        [
            KeyValue(key="user", value=AnyValue(string_value="ann")),
            KeyValue(key="retries", value=AnyValue(int_value=3)),
            KeyValue(key="ok", value=AnyValue(bool_value=False)),
            KeyValue(key="ratio", value=AnyValue(double_value=0.5)),
            KeyValue(key="raw", value=AnyValue(bytes_value=b"\x00\xff")),
            KeyValue(key="empty"),
            KeyValue(key="big", value=AnyValue(int_value=-(2**40))),
            KeyValue(key="user", value=AnyValue(string_value="bob")),  # repeated: the last one is kept
        ]
    )
    nested = KeyValue(key="tags")
    nested.value.array_value.values.add(string_value="a")
    nested.value.array_value.values.add().kvlist_value.values.add(key="k", value=AnyValue(int_value=0))
    record.attributes.append(nested)
    short_ids = LogRecord(time_unix_nano=T0, trace_id=b"\x01" * 8, span_id=b"\x02" * 4)
    payload, process, block = stored("logs", logs_request([record, short_ids]))
    batch = log_entries_batch(payload, process, block)

    scope = {
        "otel.scope.name": "app.module",
        "otel.scope.version": "1.2",
        "otel.scope.attr.lib": "x",
        "otel.scope.schema_url": "https://schema/1",
    }
    first, second = (read_jsonb(value) for value in column(batch, "properties"))
    assert first == {
        **scope,
        "user": "bob",
        "retries": 3,
        "ok": False,
        "ratio": 0.5,
        "raw": "AP8=",
        "empty": None,
        "big": -(2**40),
        "tags": ["a", {"k": 0}],
        "otel.trace_id": "000102030405060708090a0b0c0d0e0f",
        "otel.span_id": "0001020304050607",
        "otel.severity_text": "WARN",
        "otel.event_name": "login",
    }
    assert second == scope  # ids of the wrong size are left out
    assert decode_jsonb_object(column(batch, "properties")[1]) == scope  # the shared string-only reader agrees


def test_structured_log_bodies_become_text() -> None:
    bodies = [
        AnyValue(int_value=42),
        AnyValue(double_value=1.0),
        AnyValue(double_value=1e21),
        AnyValue(bool_value=True),
        AnyValue(bytes_value=b"hi"),
        AnyValue(),
    ]
    kvlist = AnyValue()
    kvlist.kvlist_value.values.add(key="b", value=AnyValue(double_value=0.25))
    kvlist.kvlist_value.values.add(key="a", value=AnyValue(string_value='q"x'))
    array = AnyValue()
    array.array_value.values.add(int_value=1)
    array.array_value.values.add(double_value=1e-7)
    array.array_value.values.add(bool_value=False)
    records = [LogRecord(time_unix_nano=T0, body=body) for body in [*bodies, kvlist, array]]
    records.append(LogRecord(time_unix_nano=T0))  # no body at all
    payload, process, block = stored("logs", logs_request(records))
    assert column(log_entries_batch(payload, process, block), "msg") == [
        "42",
        "1",
        "1000000000000000000000",
        "true",
        "aGk=",
        "",
        '{"a":"q\\"x","b":0.25}',
        "[1,1e-7,false]",
        "",
    ]


def test_logs_of_several_scopes_keep_their_targets() -> None:
    request = logs_request([LogRecord(time_unix_nano=T0, body=AnyValue(string_value="one"))], "first")
    second = request.resource_logs[0].scope_logs.add()
    second.scope.name = "second"
    second.log_records.add(time_unix_nano=T0 + 1, body=AnyValue(string_value="two"))
    payload, process, block = stored("logs", request)
    batch = log_entries_batch(payload, process, block)
    assert list(zip(column(batch, "target"), column(batch, "msg"), strict=True)) == [
        ("first", "one"),
        ("second", "two"),
    ]
    assert read_jsonb(column(batch, "properties")[1]) == {"otel.scope.name": "second"}


def test_jsonb_bytes_follow_the_crate_layout() -> None:
    # {"a": [1.5, -300], "b": {"c": 0}, "d": true, "e": null}, laid out by hand from jsonb 0.5.6 ser.rs
    expected = bytes.fromhex(
        "40000004"
        "10000001"
        "10000001"
        "10000001"
        "10000001"  # object of 4, 4 key entries
        "50000018"
        "5000000e"
        "40000000"
        "00000000"  # array (24 bytes), object (14 bytes), true, null
        "61626465"  # keys
        "80000002"
        "20000009"
        "20000003"
        "60"
        "3ff8000000000000"
        "40"
        "fed4"  # [1.5, -300]
        "40000001"
        "10000001"
        "20000001"
        "63"
        "00"
    )  # {"c": 0}
    assert jsonb.encode({"e": None, "d": True, "b": {"c": 0}, "a": [1.5, -300]}) == expected
    assert jsonb.encode("x") == bytes.fromhex("200000011000000178")


# --- metrics ---------------------------------------------------------------------------------------


def metrics_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend(RESOURCE)
    scope = resource.scope_metrics.add()
    scope.scope.name = "meter"
    gauge = scope.metrics.add(name="memory", unit="By").gauge
    point = gauge.data_points.add(time_unix_nano=T0 + 1, as_int=2048)
    point.attributes.add(key="pool", value=AnyValue(string_value="heap"))
    gauge.data_points.add(time_unix_nano=T0 + 2, as_double=0.5)
    gauge.data_points.add(time_unix_nano=0, as_double=9.0)  # no time: dropped
    gauge.data_points.add(time_unix_nano=T0 + 3)  # no value: dropped
    total = scope.metrics.add(name="requests", unit="1").sum
    total.aggregation_temporality = 2
    total.is_monotonic = True
    total.data_points.add(time_unix_nano=T0 + 4, as_int=7)
    scope.metrics.add(name="latency", unit="ms").histogram.data_points.add(time_unix_nano=T0 + 5, count=1)
    summary = scope.metrics.add(name="size", unit="By").summary
    point = summary.data_points.add(time_unix_nano=T0 + 6, count=4, sum=100.0)
    point.attributes.add(key="route", value=AnyValue(string_value="/a"))
    for quantile, value in [(0.5, 20.0), (1.0, 60.0), (0.0, 5.0), (0.0, 1.0)]:
        point.quantile_values.add(quantile=quantile, value=value)
    summary.data_points.add(time_unix_nano=T0 + 7, count=1, sum=1.0, flags=1)  # NO_RECORDED_VALUE: dropped
    return request


def test_metric_rows() -> None:
    payload, process, block = stored("metrics", metrics_request())
    batch = measures_batch(payload, process, block)
    assert batch.schema == measures.SCHEMA
    rows = list(
        zip(
            batch.column("time").cast(pa.int64()).to_pylist(),
            column(batch, "name"),
            column(batch, "unit"),
            column(batch, "value"),
            strict=True,
        )
    )
    assert rows == [
        (T0 + 1, "memory", "By", 2048.0),
        (T0 + 2, "memory", "By", 0.5),
        (T0 + 4, "requests", "1", 7.0),
        (T0 + 6, "size_count", "", 4.0),
        (T0 + 6, "size_sum", "By", 100.0),
        (T0 + 6, "size_max", "By", 60.0),
        (T0 + 6, "size_min", "By", 5.0),
    ]
    assert set(column(batch, "target")) == {"meter"}
    properties = [read_jsonb(value) for value in column(batch, "properties")]
    assert properties[:3] == [
        {"pool": "heap", "otel.metric.kind": "gauge"},
        {"otel.metric.kind": "gauge"},
        {"otel.metric.aggregation_temporality": 2, "otel.metric.is_monotonic": True, "otel.metric.kind": "sum"},
    ]
    assert properties[3:] == [{"route": "/a"}] * 4
    assert set(column(batch, "exe")) == {"svc"}
    assert set(batch.column("insert_time").cast(pa.int64()).to_pylist()) == {INSERT_NS}


def test_metrics_without_scalar_points_give_no_rows() -> None:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend(RESOURCE)
    resource.scope_metrics.add().metrics.add(name="h").histogram.data_points.add(time_unix_nano=T0, count=2)
    payload, process, block = stored("metrics", request)
    batch = measures_batch(payload, process, block)
    assert (batch.num_rows, batch.schema) == (0, measures.SCHEMA)


# --- traces ----------------------------------------------------------------------------------------

TRACE_A, TRACE_B = b"\xaa" * 16, b"\xbb" * 16


def span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


def traces_request(spans: list[dict[str, Any]], scope_name: str = "tracer") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.extend(RESOURCE)
    scope = resource.scope_spans.add()
    scope.scope.name = scope_name
    for span in spans:
        scope.spans.add(**span)
    return request


def span(name: str, sid: int, parent: int | None, start: int, end: int, trace: bytes = TRACE_A) -> dict[str, Any]:
    return {
        "name": name,
        "trace_id": trace,
        "span_id": span_id(sid),
        "parent_span_id": b"" if parent is None else span_id(parent),
        "start_time_unix_nano": T0 + start,
        "end_time_unix_nano": T0 + end,
    }


def span_rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    return list(
        zip(
            batch.column("time").cast(pa.int64()).to_pylist(),
            column(batch, "event_type"),
            column(batch, "name"),
            column(batch, "span_id"),
            column(batch, "parent_span_id"),
            column(batch, "depth"),
            strict=True,
        )
    )


def test_spans_become_begin_and_end_rows_with_depth() -> None:
    spans = [  # exported children first, as batch processors do
        span("grandchild", 3, 2, 30, 40),
        span("child", 2, 1, 20, 50),
        span("sibling", 4, 1, 60, 70),
        span("root", 1, None, 10, 100),
        span("other-trace", 5, 1, 15, 16, trace=TRACE_B),
    ]
    payload, process, block = stored("traces", traces_request(spans))
    batch = async_events_batch(payload, process, block)
    assert batch.schema == async_events.SCHEMA
    assert span_rows(batch) == [
        (T0 + 10, "begin", "root", 1, 0, 0),
        (T0 + 15, "begin", "other-trace", 5, 1, 0),  # its parent id names a span of another trace
        (T0 + 16, "end", "other-trace", 5, 1, 0),
        (T0 + 20, "begin", "child", 2, 1, 1),
        (T0 + 30, "begin", "grandchild", 3, 2, 2),
        (T0 + 40, "end", "grandchild", 3, 2, 2),
        (T0 + 50, "end", "child", 2, 1, 1),
        (T0 + 60, "begin", "sibling", 4, 1, 1),
        (T0 + 70, "end", "sibling", 4, 1, 1),
        (T0 + 100, "end", "root", 1, 0, 0),
    ]
    assert set(column(batch, "target")) == {"tracer"}
    assert set(column(batch, "filename")) == {""}
    assert set(column(batch, "line")) == {0}
    assert set(column(batch, "stream_id")) == {block.stream_id}
    assert set(column(batch, "block_id")) == {block.block_id}
    hashes = dict(zip(column(batch, "name"), column(batch, "hash"), strict=True))
    assert hashes == {name: scope_hash(name, "", "tracer", 0) for name in hashes}


def test_span_ids_are_big_endian_int64() -> None:
    spans = [
        {
            "name": "s",
            "trace_id": TRACE_A,
            "span_id": b"\xff" * 8,
            "parent_span_id": b"\x80" + bytes(7),
            "start_time_unix_nano": T0,
            "end_time_unix_nano": T0 + 1,
        },
        {
            "name": "t",
            "trace_id": TRACE_A,
            "span_id": bytes.fromhex("0123456789abcdef"),
            "start_time_unix_nano": T0 + 2,
            "end_time_unix_nano": T0 + 3,
        },
    ]
    payload, process, block = stored("traces", traces_request(spans))
    batch = async_events_batch(payload, process, block)
    assert column(batch, "span_id") == [-1, -1, 0x0123456789ABCDEF, 0x0123456789ABCDEF]
    assert column(batch, "parent_span_id") == [-(2**63), -(2**63), 0, 0]
    assert column(batch, "depth") == [0, 0, 0, 0]  # the parent is not in this block


def test_spans_without_times_or_with_bad_ids_are_skipped() -> None:
    spans = [
        span("kept", 1, None, 1, 2),
        span("no-end", 2, None, 3, 0),
        span("no-start", 3, None, 0, 4),
        {**span("short-trace", 4, None, 5, 6), "trace_id": b"\x01" * 8},
        {**span("short-span", 5, None, 5, 6), "span_id": b"\x01" * 4},
    ]
    spans[1]["end_time_unix_nano"] = 0
    spans[2]["start_time_unix_nano"] = 0
    payload, process, block = stored("traces", traces_request(spans))
    assert set(column(async_events_batch(payload, process, block), "name")) == {"kept"}


def test_parent_cycles_do_not_hang() -> None:
    spans = [span("a", 1, 2, 1, 10), span("b", 2, 1, 2, 9), span("self", 3, 3, 3, 4), span("c", 4, 1, 5, 6)]
    payload, process, block = stored("traces", traces_request(spans))
    batch = async_events_batch(payload, process, block)
    assert set(column(batch, "depth")) == {0}


def begin_depths(batch: pa.RecordBatch) -> dict[str, int]:
    rows = zip(column(batch, "name"), column(batch, "event_type"), column(batch, "depth"), strict=True)
    return {name: depth for name, kind, depth in rows if kind == "begin"}


def test_span_depths_resolve_across_the_blocks_of_a_partition() -> None:
    """One resolver, one rule: a parent is the span of the same trace id with that span id, found in
    any block of the partition (exporters send children before their parents, in other requests)."""
    late_root = [span("root", 1, None, 10, 100), span("other-trace", 7, 3, 15, 16, trace=TRACE_B)]
    children = [span("grandchild", 3, 2, 30, 40), span("child", 2, 1, 20, 50)]
    inputs = []
    for spans in (children, late_root):
        payload, process, block = stored("traces", traces_request(spans))
        inputs.append(otlp_block(async_events.VIEW, "otlp/v1/traces", payload, process, block))
    first, second = async_events.VIEW.rows_from_otlp(inputs)
    assert begin_depths(first) == {"child": 1, "grandchild": 2}
    assert begin_depths(second) == {"root": 0, "other-trace": 0}  # span 3 of trace A is not its parent
    assert column(first, "block_id")[0] == inputs[0].block.block_id


def _metrics_request_at(offset_ns: int) -> ExportMetricsServiceRequest:
    """`metrics_request` with its first point `offset_ns` later: another block (ids follow content)."""
    request = metrics_request()
    request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].time_unix_nano += offset_ns
    return request


def test_otlp_views_built_per_run_give_the_rows_built_block_by_block() -> None:
    """The blocks of one process become one batch (a batch per run of blocks, not per block) holding the
    rows each block gives alone, each row naming its own block."""
    logs = [
        logs_request(
            [LogRecord(time_unix_nano=T0 + 10 * i + j, body=AnyValue(string_value=f"m{i}.{j}")) for j in range(i)]
        )
        for i in range(1, 5)
    ]
    traces = [traces_request([span(f"s{i}", i + 1, 1 if i else None, i, i + 5)]) for i in range(3)]
    for view, signal, requests in (
        (log_entries.VIEW, "logs", logs),
        (measures.VIEW, "metrics", [_metrics_request_at(i) for i in range(3)]),
        (otel_spans.VIEW, "traces", traces),
    ):
        assert view.rows_from_otlp is not None and view.otlp_format is not None
        blocks = [otlp_block(view, view.otlp_format, *stored(signal, request)) for request in requests]
        batches = list(view.rows_from_otlp(blocks))
        assert len(batches) == 1, view.name
        alone = [batch for block in blocks for batch in view.rows_from_otlp([block])]
        expected = pa.Table.from_batches(alone, view.schema).to_pylist()
        assert pa.Table.from_batches(batches, view.schema).to_pylist() == expected, view.name
        assert [row["block_id"] for row in expected] == [
            block.block.block_id for block, batch in zip(blocks, alone, strict=True) for _ in range(batch.num_rows)
        ]
        assert len(blocks) == len({row["block_id"] for row in expected}) > 1, view.name


def test_span_depths_by_trace_and_parent_id() -> None:
    trace_ids = np.array([TRACE_A, TRACE_A, TRACE_B, TRACE_A], dtype="S16")
    span_ids = np.array([1, 2, 2, 3], np.int64)
    parents = np.array([0, 1, 1, 2], np.int64)
    assert async_events.span_depths(trace_ids, span_ids, parents).tolist() == [0, 1, 0, 2]
    assert async_events.span_depths(trace_ids[:0], span_ids[:0], parents[:0]).tolist() == []


def test_chain_depths_by_pointer_jumping() -> None:
    n = 1000
    chain = np.arange(-1, n - 1)  # row i's parent is row i-1
    assert async_events.chain_depths(chain).tolist() == list(range(n))
    forest = np.array([-1, 0, 0, 1, 3, -1, 5, 4])
    assert async_events.chain_depths(forest).tolist() == [0, 1, 1, 2, 3, 0, 1, 4]
    assert async_events.chain_depths(np.zeros(0, np.int64)).tolist() == []


def test_sdk_spans_through_ingestion_and_decoding() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("sdk.tracer")
    with tracer.start_as_current_span("request"):
        with tracer.start_as_current_span("query"), tracer.start_as_current_span("fetch"):
            pass
        with tracer.start_as_current_span("render"):
            pass
    provider.shutdown()
    payload, process, block = stored("traces", encode_spans(exporter.get_finished_spans()))
    batch = async_events_batch(payload, process, block)
    begins = {
        name: depth
        for name, kind, depth in zip(
            column(batch, "name"), column(batch, "event_type"), column(batch, "depth"), strict=True
        )
        if kind == "begin"
    }
    assert begins == {"request": 0, "query": 1, "fetch": 2, "render": 1}
    assert column(batch, "event_type")[0] == "begin" and column(batch, "name")[0] == "request"
    assert column(batch, "name")[-1] == "request" and column(batch, "event_type")[-1] == "end"


# --- dispatch and bad blocks -----------------------------------------------------------------------


def test_view_dispatch() -> None:
    payload, process, block = stored("traces", traces_request([span("s", 1, None, 1, 2)]))
    batch = view_batch(async_events.VIEW, payload, process, block, "otlp/v1/traces")
    assert batch.num_rows == 2
    with pytest.raises(OtlpBlockError, match="view 'log_entries' has no rows for blocks of format 'otlp/v1/traces'"):
        view_batch(log_entries.VIEW, payload, process, block, "otlp/v1/traces")


@pytest.mark.parametrize(
    "payload,fragment",
    [
        (b"\xff\x00", "not CBOR"),
        (cbor2.dumps([1, 2]), "must be a map with an 'objects' byte string"),
        (cbor2.dumps({"dependencies": b"", "objects": b"\x0a\xff"}), "not a ResourceLogs"),
    ],
)
def test_corrupt_blocks_raise_a_clear_error(payload: bytes, fragment: str) -> None:
    _, process, block = stored("logs", logs_request([LogRecord(time_unix_nano=T0)]))
    with pytest.raises(OtlpBlockError, match=fragment):
        log_entries_batch(payload, process, block)
