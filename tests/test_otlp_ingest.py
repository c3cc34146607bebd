"""OTLP/HTTP export requests → stored blocks: identities, process rows, bounds, encodings, refusals."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
import zlib
from typing import Any

import cbor2
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from harness import SpanlakeServer, post
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint, ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanlake.lakehouse.otlp import identity
from spanlake.lakehouse.protobuf_wire import length_delimited
from spanlake.server import otlp
from spanlake.server.otlp import OtlpRequestError, blocks_from_request

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
T0 = 1_700_000_000_000_000_000


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def resource_attrs(instance: str = "instance-1", **extra: Any) -> list[KeyValue]:
    base = {
        "service.name": "checkout",
        "service.namespace": "shop",
        "host.name": "web-1",
        "process.pid": 4242,
        "service.instance.id": instance,
    }
    base.update({key.replace("_", "."): value for key, value in extra.items()})
    return [kv(key, value) for key, value in base.items()]


def logs_request(*records: LogRecord, attrs: list[KeyValue] | None = None) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    resource.resource.attributes.extend(attrs if attrs is not None else resource_attrs())
    scope = resource.scope_logs.add()
    scope.scope.name = "app.module"
    scope.log_records.extend(records)
    return request


def log(time_ns: int, body: str = "hello", severity: int = 9, observed_ns: int = 0) -> LogRecord:
    return LogRecord(
        time_unix_nano=time_ns,
        observed_time_unix_nano=observed_ns,
        severity_number=severity,
        body=AnyValue(string_value=body),
    )


def traces_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.extend(resource_attrs())
    scope = resource.scope_spans.add()
    scope.scope.name = "app.tracer"
    root = scope.spans.add(
        trace_id=bytes(range(16)),
        span_id=b"\x00\x00\x00\x00\x00\x00\x00\x01",
        name="root",
        kind=2,
        start_time_unix_nano=T0 + 100,
        end_time_unix_nano=T0 + 900,
    )
    scope.spans.add(
        trace_id=root.trace_id,
        span_id=b"\x00\x00\x00\x00\x00\x00\x00\x02",
        parent_span_id=root.span_id,
        name="child",
        start_time_unix_nano=T0 + 200,
        end_time_unix_nano=T0 + 950,
    )
    return request


def metrics_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend(resource_attrs())
    scope = resource.scope_metrics.add()
    scope.scope.name = "app.meter"
    gauge = scope.metrics.add(name="memory", unit="By")
    gauge.gauge.data_points.add(time_unix_nano=T0 + 50, as_int=1024)
    gauge.gauge.data_points.add(time_unix_nano=0, as_double=1.5)  # counted, but no time for the bounds
    total = scope.metrics.add(name="requests", unit="1")
    total.sum.is_monotonic = True
    total.sum.aggregation_temporality = 2
    total.sum.data_points.add(time_unix_nano=T0 + 10, as_double=7.0)
    histogram = scope.metrics.add(name="latency", unit="ms")
    histogram.histogram.data_points.add(time_unix_nano=T0 + 70, count=3, bucket_counts=[1, 2], explicit_bounds=[10.0])
    summary = scope.metrics.add(name="sizes", unit="By")
    summary.summary.data_points.add(time_unix_nano=T0 + 30, count=2, sum=10.0)
    return request


def otlp_json(message: Any) -> bytes:
    """OTLP-JSON as exporters write it: proto3 JSON, but trace/span ids in hex."""

    def hex_ids(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: base64.b64decode(value).hex() if key in ("traceId", "spanId", "parentSpanId") else hex_ids(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [hex_ids(item) for item in node]
        return node

    import json

    return json.dumps(hex_ids(json_format.MessageToDict(message))).encode()


def single(blocks: list[identity.OtlpResourceBlock]) -> identity.OtlpResourceBlock:
    assert len(blocks) == 1
    return blocks[0]


def stored_objects(block: identity.OtlpResourceBlock) -> bytes:
    envelope = cbor2.loads(block.payload)
    assert envelope == {"dependencies": b"", "objects": envelope["objects"]}
    return envelope["objects"]


# --- identities ------------------------------------------------------------------------------------


def test_process_id_matches_micromegas_regression_value() -> None:
    # micromegas otel-ingestion/tests/identity_tests.rs::process_id_is_stable_with_new_fields
    attrs = [
        kv(k, v)
        for k, v in [
            ("host.name", "my-host"),
            ("service.name", "my-service"),
            ("os.type", "linux"),
            ("os.version", "5.15.0"),
            ("host.arch", "x86_64"),
            ("service.version", "2.3.1"),
            ("telemetry.sdk.name", "opentelemetry"),
            ("telemetry.sdk.language", "rust"),
            ("telemetry.sdk.version", "0.28.0"),
            ("process.runtime.name", "rustc"),
            ("process.runtime.version", "1.88.0"),
        ]
    ]
    assert str(identity.process_id_from_attributes(attrs)) == "92267645-021b-5d0f-960b-c74719552658"


def test_process_id_ignores_order_case_and_blanks_but_not_pid() -> None:
    base = identity.process_id_from_attributes(resource_attrs())
    permuted = identity.process_id_from_attributes(list(reversed(resource_attrs())))
    recased = identity.process_id_from_attributes(resource_attrs(host_name="  WEB-1 "))
    assert base == permuted == recased
    # process.pid is hashed raw; the owner falls back to user.name
    assert identity.process_id_from_attributes(resource_attrs(process_pid="4242 ")) != base
    assert identity.process_id_from_attributes(
        resource_attrs(process_owner="alice")
    ) == identity.process_id_from_attributes(resource_attrs(user_name="alice"))
    # \x1f is not whitespace for Rust's trim: it must stay in the key
    assert identity.process_id_from_attributes(resource_attrs(host_name="web-1\x1f")) != base


def test_same_bytes_give_the_same_block() -> None:
    body = logs_request(log(T0), log(T0 + 5)).SerializeToString()
    first = single(blocks_from_request("logs", body, PROTOBUF, None))
    again = single(blocks_from_request("logs", body, PROTOBUF, None))
    assert first == again
    other = single(blocks_from_request("logs", logs_request(log(T0), log(T0 + 6)).SerializeToString(), PROTOBUF, None))
    assert other.block.block_id != first.block.block_id
    assert other.process == first.process


def test_identity_formulas() -> None:
    block = single(blocks_from_request("traces", traces_request().SerializeToString(), PROTOBUF, None))
    objects = stored_objects(block)
    assert block.block.block_id == identity.uuid5_bytes(identity.NS_OTEL_BLOCK_V1, objects)
    assert block.block.block_id.version == 5
    assert block.stream.stream_id == uuid.uuid5(identity.NS_OTEL_STREAM_V1, f"{block.process.process_id}\x1ftraces")
    assert block.block.stream_id == block.stream.stream_id
    assert block.block.process_id == block.stream.process_id == block.process.process_id


def test_service_instance_id_separates_processes() -> None:
    request = logs_request(log(T0))
    second = request.resource_logs.add()
    second.CopyFrom(request.resource_logs[0])
    second.resource.attributes[4].value.string_value = "instance-2"
    blocks = blocks_from_request("logs", request.SerializeToString(), PROTOBUF, None)
    assert len(blocks) == 2
    assert blocks[0].process.process_id != blocks[1].process.process_id
    assert blocks[0].stream.stream_id != blocks[1].stream.stream_id
    assert blocks[0].block.block_id != blocks[1].block.block_id


def test_signals_get_their_own_streams() -> None:
    logs = single(blocks_from_request("logs", logs_request(log(T0)).SerializeToString(), PROTOBUF, None))
    traces = single(blocks_from_request("traces", traces_request().SerializeToString(), PROTOBUF, None))
    metrics = single(blocks_from_request("metrics", metrics_request().SerializeToString(), PROTOBUF, None))
    assert logs.process.process_id == traces.process.process_id == metrics.process.process_id
    assert [(b.stream.tags, b.stream.format) for b in (logs, metrics, traces)] == [
        (["log"], "otlp/v1/logs"),
        (["metrics"], "otlp/v1/metrics"),
        (["trace"], "otlp/v1/traces"),
    ]
    for block in (logs, metrics, traces):
        assert block.stream.dependencies_metadata == block.stream.objects_metadata == b"\x80"
        assert block.stream.properties == {}


# --- process rows ----------------------------------------------------------------------------------


def test_process_fields_come_from_resource_attributes() -> None:
    attrs = resource_attrs(
        process_owner="",
        process_user_name="svc-user",
        os_description="Ubuntu 24.04",
        host_cpu_model_name="Xeon",
        process_creation_time="2024-05-01T12:00:00.5Z",
        sampled=True,
        ratio=0.25,
    )
    attrs.append(KeyValue(key="process.command_args", value=AnyValue()))
    attrs[-1].value.array_value.values.add(string_value="python")
    attrs[-1].value.array_value.values.add(int_value=3)
    attrs.append(kv("service.name", "shadowed"))  # a repeated key: the first occurrence counts
    block = single(blocks_from_request("logs", logs_request(log(T0), attrs=attrs).SerializeToString(), PROTOBUF, None))
    process = block.process
    start = 1_714_564_800_500_000_000
    assert (process.exe, process.username, process.realname, process.computer, process.distro, process.cpu_brand) == (
        "shop/checkout",
        "svc-user",
        "svc-user",
        "web-1",
        "Ubuntu 24.04",
        "Xeon",
    )
    assert (process.tsc_frequency, process.start_time_ns, process.start_ticks) == (1_000_000_000, start, start)
    assert process.parent_process_id is None
    assert process.properties == {
        "otel.resource.service.name": "checkout",
        "otel.resource.service.namespace": "shop",
        "otel.resource.host.name": "web-1",
        "otel.resource.process.pid": "4242",
        "otel.resource.service.instance.id": "instance-1",
        "otel.resource.process.owner": "",
        "otel.resource.process.user.name": "svc-user",
        "otel.resource.os.description": "Ubuntu 24.04",
        "otel.resource.host.cpu.model.name": "Xeon",
        "otel.resource.process.creation.time": "2024-05-01T12:00:00.5Z",
        "otel.resource.sampled": "true",
        "otel.resource.ratio": "0.25",
        "otel.resource.process.command_args": (
            'Some(ArrayValue(ArrayValue { values: [AnyValue { value: Some(StringValue("python")) }, '
            "AnyValue { value: Some(IntValue(3)) }] }))"
        ),
    }


def test_process_without_service_namespace_or_start_time() -> None:
    attrs = [
        kv("service.name", "worker"),
        kv("process.creation.time", "yesterday"),
        kv("process.start_time", "2024-05-01T12:00:00Z"),
        kv("os.description", "é" * 300),
    ]
    process = single(
        blocks_from_request(
            "logs", logs_request(log(T0 + 7), log(T0 + 3), attrs=attrs).SerializeToString(), PROTOBUF, None
        )
    ).process
    assert process.exe == "worker"
    # an unparseable process.creation.time wins over process.start_time, then falls back to the first event
    assert process.start_time_ns == process.start_ticks == T0 + 3
    assert process.distro == "é" * 255
    assert process.username == process.computer == process.cpu_brand == ""


def test_legacy_process_start_time_and_double_rendering() -> None:
    attrs = [
        kv("service.name", "w"),
        kv("process.start_time", "2024-05-01T14:00:00+02:00"),
        kv("big", 1e20),
        kv("one", 1.0),
    ]
    process = single(
        blocks_from_request("logs", logs_request(log(T0), attrs=attrs).SerializeToString(), PROTOBUF, None)
    ).process
    assert process.start_time_ns == 1_714_564_800_000_000_000
    assert process.properties["otel.resource.big"] == "100000000000000000000"  # Rust Display, not 1e+20
    assert process.properties["otel.resource.one"] == "1"


# --- block rows ------------------------------------------------------------------------------------


def test_log_block_bounds_use_time_then_observed_time() -> None:
    records = [log(T0 + 50), log(0, observed_ns=T0 + 10), log(0), log(T0 + 90, observed_ns=T0 + 1)]
    block = single(blocks_from_request("logs", logs_request(*records).SerializeToString(), PROTOBUF, None)).block
    assert (block.begin_time_ns, block.end_time_ns, block.begin_ticks, block.end_ticks) == (
        T0 + 10,
        T0 + 90,
        T0 + 10,
        T0 + 90,
    )
    assert (block.nb_objects, block.object_offset) == (4, 0)


def test_records_without_times_take_the_arrival_time() -> None:
    before = time.time_ns()
    block = single(blocks_from_request("logs", logs_request(log(0), log(0)).SerializeToString(), PROTOBUF, None)).block
    after = time.time_ns()
    assert before <= block.begin_time_ns == block.end_time_ns == block.begin_ticks <= after
    assert block.nb_objects == 2


def test_span_block_bounds() -> None:
    block = single(blocks_from_request("traces", traces_request().SerializeToString(), PROTOBUF, None)).block
    assert (block.begin_time_ns, block.end_time_ns, block.nb_objects) == (T0 + 100, T0 + 950, 2)


def test_metric_block_bounds_and_counts() -> None:
    block = single(blocks_from_request("metrics", metrics_request().SerializeToString(), PROTOBUF, None)).block
    # gauge 2 + sum 1 + histogram 1 + summary 4 (its _count/_sum/_min/_max rows)
    assert (block.begin_time_ns, block.end_time_ns, block.nb_objects) == (T0 + 10, T0 + 70, 8)


def test_payload_is_the_cbor_envelope_of_the_resource() -> None:
    request = traces_request()
    block = single(blocks_from_request("traces", request.SerializeToString(), PROTOBUF, None))
    objects = stored_objects(block)
    assert objects == request.resource_spans[0].SerializeToString()
    assert block.payload == cbor2.dumps({"dependencies": b"", "objects": objects})
    assert block.block.payload_size == len(block.payload)
    assert ResourceSpans.FromString(objects) == request.resource_spans[0]


def test_unknown_fields_are_not_stored() -> None:
    request = logs_request(log(T0))
    plain = single(blocks_from_request("logs", request.SerializeToString(), PROTOBUF, None))
    # field 99 (varint 1) appended to the ResourceLogs: micromegas's decoder drops it
    resource = request.resource_logs[0].SerializeToString() + b"\x98\x06\x01"
    body = length_delimited(1, resource)  # the request's field 1: its ResourceLogs
    with_unknown = single(blocks_from_request("logs", body, PROTOBUF, None))
    assert with_unknown == plain


def test_int_exemplars_are_stored_in_prost_field_order() -> None:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.append(kv("service.name", "m"))
    point = resource.scope_metrics.add().metrics.add(name="n").gauge.data_points.add(time_unix_nano=5, as_int=7)
    point.exemplars.add(time_unix_nano=1, as_int=3, span_id=b"12345678")
    objects = stored_objects(single(blocks_from_request("metrics", request.SerializeToString(), PROTOBUF, None)))

    # time (2), then as_int (6) at the oneof's lowest tag (3), then span_id (4)
    exemplar = bytes.fromhex("110100000000000000") + bytes.fromhex("310300000000000000") + b"\x22\x0812345678"
    # time (3), then as_int (6) at the oneof's lowest tag (4), then exemplars (5)
    data_point = (
        bytes.fromhex("190500000000000000")
        + bytes.fromhex("310700000000000000")
        + b"\x2a"
        + bytes([len(exemplar)])
        + exemplar
    )
    assert data_point != NumberDataPoint.FromString(data_point).SerializeToString()  # the runtime's order differs
    gauge = b"\x0a" + bytes([len(data_point)]) + data_point
    metric = b"\x0a\x01n" + b"\x2a" + bytes([len(gauge)]) + gauge
    scope = b"\x12" + bytes([len(metric)]) + metric
    resource_bytes = resource.resource.SerializeToString()
    expected = b"\x0a" + bytes([len(resource_bytes)]) + resource_bytes + b"\x12" + bytes([len(scope)]) + scope
    assert objects == expected
    assert ResourceMetrics.FromString(objects) == resource


# --- encodings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signal,request_message",
    [
        ("logs", logs_request(log(T0, "a"), log(T0 + 1, "b"))),
        ("traces", traces_request()),
        ("metrics", metrics_request()),
    ],
)
def test_json_protobuf_and_gzip_store_the_same_block(signal: str, request_message: Any) -> None:
    protobuf = blocks_from_request(signal, request_message.SerializeToString(), PROTOBUF, None)
    as_json = blocks_from_request(signal, otlp_json(request_message), "application/json; charset=utf-8", None)
    gzipped = blocks_from_request(
        signal, gzip.compress(request_message.SerializeToString()), "Application/X-Protobuf", "gzip"
    )
    gzipped_json = blocks_from_request(signal, gzip.compress(otlp_json(request_message)), JSON, "GZIP")
    assert protobuf == as_json == gzipped == gzipped_json
    assert len(protobuf) == 1


def test_canonical_otlp_json() -> None:
    body = b"""{"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}},
                                    {"key": "process.pid", "value": {"intValue": "77"}}]},
        "scopeSpans": [{"scope": {"name": "sc"}, "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "", "name": "op", "kind": 2, "futureField": {"x": 1},
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000000500000000,
            "status": {"code": 2, "message": "bad"},
            "links": [{"traceId": "00000000000000000000000000000001", "spanId": "0000000000000002"}]}]}]}]}"""
    block = single(blocks_from_request("traces", body, JSON, None))
    span = ResourceSpans.FromString(stored_objects(block)).scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert span.span_id == bytes.fromhex("eee19b7ec3c1b174")
    assert span.parent_span_id == b""
    assert (span.kind, span.status.code, span.status.message) == (2, 2, "bad")
    assert span.links[0].span_id == bytes.fromhex("0000000000000002")
    assert (block.block.begin_time_ns, block.block.end_time_ns) == (T0, T0 + 500_000_000)
    assert block.process.properties["otel.resource.process.pid"] == "77"


def test_empty_requests_store_nothing() -> None:
    assert blocks_from_request("logs", b"", PROTOBUF, None) == []
    assert blocks_from_request("metrics", b"{}", JSON, None) == []
    assert blocks_from_request("traces", b'{"resourceSpans": []}', JSON, None) == []
    empty_resource = ExportLogsServiceRequest(resource_logs=[ResourceLogs()])
    empty_resource.resource_logs[0].scope_logs.add()
    assert blocks_from_request("logs", empty_resource.SerializeToString(), PROTOBUF, None) == []
    no_points = ExportMetricsServiceRequest()
    no_points.resource_metrics.add().scope_metrics.add().metrics.add(name="x").gauge.SetInParent()
    assert blocks_from_request("metrics", no_points.SerializeToString(), PROTOBUF, None) == []


# --- refusals --------------------------------------------------------------------------------------


def refusal(
    signal: str, body: bytes, content_type: str | None, encoding: str | None = None, ratio: int = 100
) -> OtlpRequestError:
    with pytest.raises(OtlpRequestError) as caught:
        blocks_from_request(signal, body, content_type, encoding, ratio)
    return caught.value


def test_bad_content_type_is_415() -> None:
    body = logs_request(log(T0)).SerializeToString()
    for content_type in (None, "", "text/plain", "application/protobuf", "application/jsonx"):
        error = refusal("logs", body, content_type)
        assert error.status == 415
        assert "application/x-protobuf" in error.message
    assert refusal("logs", body, PROTOBUF, "br").status == 415


@pytest.mark.parametrize(
    "body,content_type,encoding,fragment",
    [
        (b"\xff\xff\xff", PROTOBUF, None, "decoding logs (protobuf)"),
        (b"{not json", JSON, None, "decoding logs (json)"),
        (b'{"resourceLogs": 3}', JSON, None, "decoding logs (json)"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "xyz"}]}]}]}', JSON, None, "traceId"),
        (
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}',
            JSON,
            None,
            "timeUnixNano",
        ),
        (b"\xff\xfe", JSON, None, "decoding logs (json)"),
        (b'{"resourceLogs": ' + b"[" * 100_000, JSON, None, "decoding logs (json)"),
        (b"\x0a\x05\x0a", PROTOBUF, None, "decoding logs (protobuf)"),  # truncated ResourceLogs
        (b"not gzip at all", PROTOBUF, "gzip", "malformed gzip"),
        (gzip.compress(bytes(range(256)) * 64)[:-30], PROTOBUF, "gzip", "truncated"),
    ],
)
def test_undecodable_bodies_are_400(body: bytes, content_type: str, encoding: str | None, fragment: str) -> None:
    error = refusal("logs", body, content_type, encoding)
    assert error.status == 400
    assert fragment in error.message


def test_bodies_over_the_limits_are_413() -> None:
    assert refusal("logs", b"\x00" * (otlp.WIRE_BODY_LIMIT + 1), PROTOBUF).status == 413
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    chunk = b"\x00" * (1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(otlp.DECOMPRESSED_BODY_LIMIT // len(chunk) + 1))
    bomb += compressor.flush()
    assert len(bomb) < otlp.WIRE_BODY_LIMIT
    error = refusal("logs", bomb, PROTOBUF, "gzip", ratio=100_000)  # the absolute limit, whatever the ratio
    assert (error.status, error.message) == (413, f"decompressed body is over {otlp.DECOMPRESSED_BODY_LIMIT} bytes")


def test_gzip_bodies_past_the_inflation_ratio_are_400() -> None:
    compressible = logs_request(*(log(T0 + i) for i in range(50_000))).SerializeToString()
    body = gzip.compress(compressible)
    ratio = len(compressible) // len(body)
    assert len(compressible) > otlp.RATIO_FLOOR and ratio > 2
    assert otlp.gunzip(body, ratio + 1) == compressible  # within its ratio
    error = refusal("logs", body, PROTOBUF, "gzip", ratio=ratio - 1)
    assert error.status == 400
    assert f"gzip body of {len(body)} bytes inflates past {ratio - 1} times its size" in error.message
    small = gzip.compress(logs_request(log(T0)).SerializeToString())
    assert blocks_from_request("logs", small, PROTOBUF, "gzip", 1)  # under RATIO_FLOOR: never refused


def test_unknown_signal_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown OTLP signal 'profiles'"):
        blocks_from_request("profiles", b"", PROTOBUF, None)


# --- response bodies -------------------------------------------------------------------------------


def test_success_bodies_mirror_the_request_encoding() -> None:
    for signal, response_type in (
        ("logs", ExportLogsServiceResponse),
        ("metrics", ExportMetricsServiceResponse),
        ("traces", ExportTraceServiceResponse),
    ):
        data, content_type = otlp.response_body(signal, PROTOBUF)
        assert (content_type, response_type.FromString(data)) == (PROTOBUF, response_type())
        data, content_type = otlp.response_body(signal, "application/json; charset=utf-8")
        assert (content_type, data) == (JSON, b"{}")


def test_error_bodies_are_google_rpc_status() -> None:
    data, content_type = otlp.error_body(400, "parse error", PROTOBUF)
    status = status_pb2.Status.FromString(data)
    assert (content_type, status.code, status.message) == (PROTOBUF, 3, "parse error")
    data, content_type = otlp.error_body(415, "Content-Type must be ...", "text/plain")
    assert content_type == PROTOBUF  # the request's encoding is unknown: protobuf, as micromegas
    assert status_pb2.Status.FromString(data).code == 3
    data, content_type = otlp.error_body(413, "too big", JSON)
    assert (content_type, json_format.Parse(data, status_pb2.Status())) == (
        JSON,
        status_pb2.Status(code=8, message="too big"),
    )
    assert status_pb2.Status.FromString(otlp.error_body(503, "later", None)[0]).code == 14


# --- through a real server and the OpenTelemetry SDK's exporter ------------------------------------


def test_sdk_exporter_against_the_server(spanlake_server: SpanlakeServer) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    instance = str(uuid.uuid4())
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-test", "service.instance.id": instance}))
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(
                endpoint=f"{spanlake_server.http_url}/ingestion/otlp/v1/traces", compression=Compression.Gzip
            )
        )
    )
    tracer = provider.get_tracer("sdk.scope")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner"):
        pass
    provider.shutdown()

    rows = spanlake_server.sql("SELECT * FROM processes WHERE exe = 'sdk-test'")
    assert len(rows) == 1
    process_id = rows[0]["process_id"]
    properties = {p["key"]: p["value"] for p in rows[0]["properties"]}
    assert properties["otel.resource.service.instance.id"] == instance
    assert properties["otel.resource.telemetry.sdk.language"] == "python"
    streams = spanlake_server.stream_rows(process_id)
    assert [(s["tags"], s["format"]) for s in streams] == [(["trace"], "otlp/v1/traces")]
    stored = spanlake_server.stored_blocks(process_id)
    assert len(stored) == 2  # one export per span with the simple processor
    names = sorted(
        ResourceSpans.FromString(cbor2.loads(payload)["objects"]).scope_spans[0].spans[0].name for _, payload in stored
    )
    assert names == ["inner", "outer"]
    for row, payload in stored:
        assert row["block_id"] == identity.uuid5_bytes(identity.NS_OTEL_BLOCK_V1, cbor2.loads(payload)["objects"])
        assert (row["nb_objects"], row["object_offset"], row["payload_size"]) == (1, 0, len(payload))


def test_server_answers_in_the_request_encoding(spanlake_server: SpanlakeServer) -> None:
    url = f"{spanlake_server.http_url}/ingestion/otlp/v1/logs"
    request = logs_request(log(T0), attrs=resource_attrs(instance=str(uuid.uuid4())))
    status, data = post(url, request.SerializeToString(), {"Content-Type": PROTOBUF})
    assert (status, data) == (200, b"")
    status, data = post(url, otlp_json(request), {"Content-Type": JSON})
    assert (status, data) == (200, b"{}")
    expected = single(blocks_from_request("logs", request.SerializeToString(), PROTOBUF, None))
    assert [row["block_id"] for row in spanlake_server.block_rows(expected.process.process_id)] == [
        expected.block.block_id
    ]  # the JSON copy of the same request deduplicated onto one block
    status, data = post(url, request.SerializeToString(), {"Content-Type": "text/plain"})
    assert status == 415
    assert status_pb2.Status.FromString(data).code == 3
    status, data = post(url, b"{oops", {"Content-Type": JSON})
    assert status == 400
    assert json_format.Parse(data, status_pb2.Status()).code == 3
