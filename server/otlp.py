"""OTLP/HTTP export requests → stored blocks, with micromegas's deterministic identities.

One block per `Resource*` of the request (resources without records are skipped):

* `process_id = uuid5(NS_OTEL_PROCESS_V1, 31 resource attributes joined by \\x1F)`, so every export
  of one process lands on one process row;
* `stream_id = uuid5(NS_OTEL_STREAM_V1, f"{process_id}\\x1F{signal}")`, one stream per signal;
* `block_id = uuid5(NS_OTEL_BLOCK_V1, <the stored Resource* protobuf bytes>)`, so a retried export
  stores nothing new.

The stored object is the CBOR envelope `{dependencies: b"", objects: <Resource* protobuf>}`, encoded
the way micromegas's encoder (prost) writes it, so the same request gives the same ids in both.
Rules and constants come from micromegas `otel-ingestion` (`identity.rs`, `block.rs`, `handler.rs`).
"""

from __future__ import annotations

import base64
import json
import time
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from hashlib import sha1
from typing import Any

import cbor2
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanlake.lakehouse.otlp.rust_text import rust_display_f64
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.timestamps import parse_rfc3339_ns

WIRE_BODY_LIMIT = 20 * 1024 * 1024
DECOMPRESSED_BODY_LIMIT = 300 * 1024 * 1024
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Load-bearing namespaces of micromegas's OTLP identities (otel-ingestion/src/identity.rs).
NS_OTEL_PROCESS_V1 = uuid.UUID("80a447b8-fcdd-42a6-a613-f6c8719cd5fe")
NS_OTEL_STREAM_V1 = uuid.UUID("fe93bacf-e851-4cf6-8526-05f8454b3488")
NS_OTEL_BLOCK_V1 = uuid.UUID("5829a6f7-0577-4c8c-862f-cf4fdab445cc")
SEPARATOR = "\x1f"
OTLP_TICKS_PER_SECOND = 1_000_000_000
EMPTY_TRANSIT_METADATA = b"\x80"  # CBOR empty array: OTLP streams carry no transit types
PROCESS_FIELD_MAX_CHARS = 255  # processes columns are VARCHAR(255)
SUMMARY_ROWS_PER_POINT = 4  # a Summary point materializes up to _count/_sum/_min/_max

# (attribute, normalized?) in hash order; normalized values are trimmed and ASCII-lower-cased.
_PROCESS_KEY_ATTRIBUTES: tuple[tuple[str, bool], ...] = (
    ("host.id", True),
    ("host.name", True),
    ("process.pid", False),
    ("process.creation.time", False),
    ("service.namespace", True),
    ("service.name", True),
    ("service.instance.id", True),
    ("process.owner", True),
    ("os.type", True),
    ("os.version", True),
    ("os.name", True),
    ("os.description", True),
    ("os.build_id", True),
    ("host.arch", True),
    ("host.type", True),
    ("host.image.id", True),
    ("host.image.name", True),
    ("host.image.version", True),
    ("host.cpu.model.id", True),
    ("host.cpu.model.name", True),
    ("host.cpu.family", True),
    ("host.cpu.vendor.id", True),
    ("host.cpu.stepping", True),
    ("host.cpu.cache.l2.size", True),
    ("service.version", True),
    ("telemetry.sdk.name", True),
    ("telemetry.sdk.language", True),
    ("telemetry.sdk.version", True),
    ("process.runtime.name", True),
    ("process.runtime.version", True),
    ("process.runtime.description", True),
)
_OWNER_ATTRIBUTES = ("process.owner", "process.user.name", "process.real_user.name", "user.name")
_START_TIME_ATTRIBUTES = ("process.creation.time", "process.start_time")
# Rust's `str::trim` strips Unicode White_Space, which (unlike Python's isspace) excludes \x1c-\x1f.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# OTLP-JSON carries these byte fields as hex, where proto3 JSON would use base64.
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class OtlpRequestError(Exception):
    """A request to refuse: `status` is the HTTP status, `message` is safe to send to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class OtlpBlock:
    """What one resource of an export request stores: three rows and one object."""

    process: ProcessRecord
    stream: StreamRecord
    block: BlockRecord
    payload: bytes


@dataclass(frozen=True)
class _Bounds:
    begin_ns: int
    end_ns: int
    nb_objects: int


@dataclass(frozen=True)
class _Signal:
    request_type: type[Message]
    response_type: type[Message]
    resources_field: str
    tag: str
    format: str
    bounds: Callable[[Any], _Bounds | None]
    encode: Callable[[Any], bytes]


def blocks_from_request(
    signal: str, body: bytes, content_type: str | None, content_encoding: str | None
) -> list[OtlpBlock]:
    """The blocks an OTLP/HTTP export stores, or `OtlpRequestError` (415, 400 or 413)."""
    spec = _signal(signal)
    encoding = request_encoding(content_type)
    if len(body) > WIRE_BODY_LIMIT:
        raise OtlpRequestError(413, f"request body is over {WIRE_BODY_LIMIT} bytes")
    request = _parse(spec, _decompress(body, content_encoding), encoding, signal)
    blocks = (_block(spec, signal, resource) for resource in getattr(request, spec.resources_field))
    return [block for block in blocks if block is not None]


def request_encoding(content_type: str | None) -> str:
    """`PROTOBUF` or `JSON` from a Content-Type header (parameters allowed), else a 415 error."""
    media = _media(content_type)
    if media not in (PROTOBUF, JSON):
        raise OtlpRequestError(415, f"Content-Type must be {PROTOBUF} or {JSON}")
    return media


def response_body(signal: str, content_type: str | None) -> tuple[bytes, str]:
    """The success body, an empty `Export*ServiceResponse` in the request's encoding, and its type."""
    response = _signal(signal).response_type()
    if _media(content_type) == JSON:
        return json_format.MessageToJson(response, indent=None).encode(), JSON
    return response.SerializeToString(), PROTOBUF


def error_body(status: int, message: str, content_type: str | None) -> tuple[bytes, str]:
    """A `google.rpc.Status` body: JSON for JSON requests, protobuf otherwise (as micromegas, even for 415)."""
    code = _GRPC_CODES.get(status, 13 if status >= 500 else 2)  # INTERNAL / UNKNOWN
    if _media(content_type) == JSON:
        return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode(), JSON
    return _Status(code=code, message=message).SerializeToString(), PROTOBUF


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _signal(signal: str) -> _Signal:
    try:
        return _SIGNALS[signal]
    except KeyError:
        raise ValueError(f"unknown OTLP signal {signal!r}: expected one of {sorted(_SIGNALS)}") from None


# --- request body ---------------------------------------------------------------------------------


def _decompress(body: bytes, content_encoding: str | None) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise OtlpRequestError(415, f"unsupported Content-Encoding {content_encoding!r}: expected gzip")
    return _gunzip(body)


def _gunzip(body: bytes) -> bytes:
    """Inflates every gzip member, refusing (413) past DECOMPRESSED_BODY_LIMIT without inflating more."""
    out: list[bytes] = []
    size = 0
    rest = body
    try:
        while rest:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(rest, DECOMPRESSED_BODY_LIMIT - size + 1)
            size += len(chunk)
            if size > DECOMPRESSED_BODY_LIMIT:
                raise OtlpRequestError(413, f"decompressed body is over {DECOMPRESSED_BODY_LIMIT} bytes")
            if not inflater.eof:
                raise OtlpRequestError(400, "malformed gzip body: truncated stream")
            out.append(chunk)
            rest = inflater.unused_data
    except zlib.error as err:
        raise OtlpRequestError(400, f"malformed gzip body: {err}") from None
    return b"".join(out)


def _parse(spec: _Signal, body: bytes, encoding: str, signal: str) -> Message:
    request = spec.request_type()
    try:
        if encoding == PROTOBUF:
            request.ParseFromString(body)
            # prost (micromegas) drops fields it does not know; re-encoding must not carry them either.
            request.DiscardUnknownFields()
        else:
            json_format.ParseDict(json.loads(body, object_hook=_hex_ids_to_base64), request, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as err:
        kind = "protobuf" if encoding == PROTOBUF else "json"
        raise OtlpRequestError(400, f"decoding {signal} ({kind}): {err}") from None
    return request


def _hex_ids_to_base64(obj: dict[str, Any]) -> dict[str, Any]:
    """OTLP-JSON trace/span ids are hex strings; proto3 JSON parsing expects base64 for bytes."""
    for key in _HEX_ID_KEYS.intersection(obj):
        value = obj[key]
        if isinstance(value, str):
            try:
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise ValueError(f"{key} is not a hex string: {value!r}") from None
    return obj


# --- one resource → one block ----------------------------------------------------------------------


def _block(spec: _Signal, signal: str, resource: Any) -> OtlpBlock | None:
    bounds = spec.bounds(resource)
    if bounds is None:
        return None
    if bounds.begin_ns == 0 and bounds.end_ns == 0:  # no record carries a time: arrival time
        now = time.time_ns()
        bounds = _Bounds(now, now, bounds.nb_objects)
    attributes = resource.resource.attributes
    objects = spec.encode(resource)
    process_id = process_id_from_attributes(attributes)
    stream_id = uuid5_bytes(NS_OTEL_STREAM_V1, f"{process_id}{SEPARATOR}{signal}".encode())
    payload = cbor2.dumps({"dependencies": b"", "objects": objects})
    return OtlpBlock(
        process=_process(process_id, attributes, bounds.begin_ns),
        stream=StreamRecord(
            stream_id=stream_id,
            process_id=process_id,
            dependencies_metadata=EMPTY_TRANSIT_METADATA,
            objects_metadata=EMPTY_TRANSIT_METADATA,
            tags=[spec.tag],
            properties={},
            format=spec.format,
        ),
        block=BlockRecord(
            block_id=uuid5_bytes(NS_OTEL_BLOCK_V1, objects),
            stream_id=stream_id,
            process_id=process_id,
            begin_time_ns=bounds.begin_ns,
            begin_ticks=bounds.begin_ns,
            end_time_ns=bounds.end_ns,
            end_ticks=bounds.end_ns,
            nb_objects=bounds.nb_objects,
            object_offset=0,
            payload_size=len(payload),
        ),
        payload=payload,
    )


def uuid5_bytes(namespace: uuid.UUID, name: bytes) -> uuid.UUID:
    """RFC 4122 version-5 UUID of raw bytes (Python 3.11's uuid.uuid5 only takes str)."""
    return uuid.UUID(bytes=sha1(namespace.bytes + name).digest()[:16], version=5)


def process_id_from_attributes(attributes: Sequence[KeyValue]) -> uuid.UUID:
    """micromegas `process_id_from_resource` without an audience."""
    attrs = _first_values(attributes)
    fields = []
    for key, normalized in _PROCESS_KEY_ATTRIBUTES:
        if key == "process.owner":
            fields.append(_normalize(_first_non_empty(attrs, _OWNER_ATTRIBUTES)))
        elif key == "process.creation.time":
            fields.append(_first_non_empty(attrs, _START_TIME_ATTRIBUTES))
        else:
            value = _attr_string(attrs, key)
            fields.append(_normalize(value) if normalized else value)
    return uuid5_bytes(NS_OTEL_PROCESS_V1, SEPARATOR.join(fields).encode())


def _process(process_id: uuid.UUID, attributes: Sequence[KeyValue], fallback_start_ns: int) -> ProcessRecord:
    attrs = _first_values(attributes)
    namespace, name = _attr_string(attrs, "service.namespace"), _attr_string(attrs, "service.name")
    username = _truncate(_first_non_empty(attrs, _OWNER_ATTRIBUTES))
    start_ns = _start_time_ns(attrs, fallback_start_ns)
    properties: dict[str, str] = {}
    for kv in attributes:  # an unset value reads as an empty AnyValue: ""
        properties.setdefault(f"otel.resource.{kv.key}", attr_to_string(kv.value))
    return ProcessRecord(
        process_id=process_id,
        exe=_truncate(f"{namespace}/{name}" if namespace else name),
        username=username,
        realname=username,
        computer=_truncate(_attr_string(attrs, "host.name")),
        distro=_truncate(_attr_string(attrs, "os.description")),
        cpu_brand=_truncate(_attr_string(attrs, "host.cpu.model.name")),
        tsc_frequency=OTLP_TICKS_PER_SECOND,
        start_time_ns=start_ns,
        start_ticks=start_ns,
        parent_process_id=None,
        properties=properties,
    )


def _first_values(attributes: Sequence[KeyValue]) -> dict[str, AnyValue | None]:
    """key → value of its first occurrence (None when that KeyValue has no value), as micromegas looks up."""
    found: dict[str, AnyValue | None] = {}
    for kv in attributes:
        if kv.key not in found:
            found[kv.key] = kv.value if kv.HasField("value") else None
    return found


def _attr_string(attrs: dict[str, AnyValue | None], key: str) -> str:
    value = attrs.get(key)
    return "" if value is None else attr_to_string(value)


def _first_non_empty(attrs: dict[str, AnyValue | None], keys: Sequence[str]) -> str:
    return next((text for key in keys if (text := _attr_string(attrs, key))), "")


def _normalize(text: str) -> str:
    return text.strip(_RUST_WHITESPACE).translate(_ASCII_LOWER)


def _truncate(text: str) -> str:
    return text[:PROCESS_FIELD_MAX_CHARS]


def _start_time_ns(attrs: dict[str, AnyValue | None], fallback_ns: int) -> int:
    """`process.creation.time` (else the legacy `process.start_time`) as RFC3339, else the fallback."""
    key = next((k for k in _START_TIME_ATTRIBUTES if attrs.get(k) is not None), None)
    text = _attr_string(attrs, key) if key else ""
    if not text or text != text.strip():  # chrono's RFC3339 parser refuses surrounding blanks
        return fallback_ns
    try:
        return parse_rfc3339_ns(text)
    except ValueError:
        return fallback_ns


# --- attribute values as micromegas renders them into strings --------------------------------------


def attr_to_string(value: AnyValue) -> str:
    """micromegas `attr_to_string`: Rust `Display` of scalars, `Debug` of bytes, arrays and kvlists."""
    kind = value.WhichOneof("value")
    if kind is None or kind == "string_value_strindex":  # profiling-only reference: absent here
        return ""
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return rust_display_f64(value.double_value)
    if kind == "bytes_value":
        return _rust_debug_bytes(value.bytes_value)
    return f"Some({_rust_debug_oneof(value)})"


def _rust_debug_f64(number: float) -> str:
    if number != number or number in (float("inf"), float("-inf")):
        return rust_display_f64(number)
    if number == 0 or 1e-4 <= abs(number) < 1e16:
        text = rust_display_f64(number)
        return text if "." in text else text + ".0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    scientific = exponent + len(mantissa) - 1
    head = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{head}e{scientific}"


def _rust_debug_bytes(data: bytes) -> str:
    return "[" + ", ".join(map(str, data)) + "]"


def _rust_debug_str(text: str) -> str:
    """Rust `str` Debug: quoted, escaped like `char::escape_debug` (non-printables approximated)."""
    named = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}
    out = []
    for ch in text:
        if ch in named:
            out.append(named[ch])
        elif not ch.isprintable() or unicodedata.category(ch) in ("Mn", "Me"):
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _rust_debug_oneof(value: AnyValue) -> str:
    """Debug of prost's `any_value::Value` variant, e.g. `ArrayValue(ArrayValue { values: [...] })`."""
    kind = value.WhichOneof("value")
    variant = "".join(part.capitalize() for part in kind.split("_"))
    if kind == "string_value":
        inner = _rust_debug_str(value.string_value)
    elif kind == "bool_value":
        inner = "true" if value.bool_value else "false"
    elif kind == "int_value":
        inner = str(value.int_value)
    elif kind == "double_value":
        inner = _rust_debug_f64(value.double_value)
    elif kind == "bytes_value":
        inner = _rust_debug_bytes(value.bytes_value)
    elif kind == "string_value_strindex":
        inner = str(value.string_value_strindex)
    elif kind == "array_value":
        inner = f"ArrayValue {{ values: [{', '.join(map(_rust_debug_any, value.array_value.values))}] }}"
    else:
        pairs = ", ".join(map(_rust_debug_key_value, value.kvlist_value.values))
        inner = f"KeyValueList {{ values: [{pairs}] }}"
    return f"{variant}({inner})"


def _rust_debug_any(value: AnyValue) -> str:
    variant = f"Some({_rust_debug_oneof(value)})" if value.WhichOneof("value") else "None"
    return f"AnyValue {{ value: {variant} }}"


def _rust_debug_key_value(kv: KeyValue) -> str:
    value = f"Some({_rust_debug_any(kv.value)})" if kv.HasField("value") else "None"
    return f"KeyValue {{ key: {_rust_debug_str(kv.key)}, value: {value}, key_strindex: {kv.key_strindex} }}"


# --- block bounds (begin, end, nb_objects) as micromegas computes them ------------------------------


def _as_i64(values: list[int]) -> np.ndarray:
    """u64 proto timestamps reinterpreted as i64, as micromegas's `as i64` does."""
    return np.array(values, dtype=np.uint64).view(np.int64)


def _logs_bounds(resource: ResourceLogs) -> _Bounds | None:
    records = [record for scope in resource.scope_logs for record in scope.log_records]
    if not records:
        return None
    times = _as_i64([r.time_unix_nano for r in records])
    observed = _as_i64([r.observed_time_unix_nano for r in records])
    times = np.where(times != 0, times, observed)
    return _min_max(times[times != 0], times[times != 0], len(records))


def _spans_bounds(resource: ResourceSpans) -> _Bounds | None:
    spans = [span for scope in resource.scope_spans for span in scope.spans]
    if not spans:
        return None
    starts = _as_i64([s.start_time_unix_nano for s in spans])
    ends = _as_i64([s.end_time_unix_nano for s in spans])
    return _min_max(starts[starts != 0], ends[ends != 0], len(spans))


def _metrics_bounds(resource: ResourceMetrics) -> _Bounds | None:
    times: list[int] = []
    count = 0
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            points = getattr(metric, kind).data_points
            times.extend(point.time_unix_nano for point in points)
            count += len(points) * (SUMMARY_ROWS_PER_POINT if kind == "summary" else 1)
    if count == 0:
        return None
    stamps = _as_i64(times)
    return _min_max(stamps[stamps != 0], stamps[stamps != 0], count)


def _min_max(begins: np.ndarray, ends: np.ndarray, count: int) -> _Bounds:
    if len(begins) == 0 or len(ends) == 0:
        return _Bounds(0, 0, count)
    return _Bounds(int(begins.min()), int(ends.max()), count)


# --- stored bytes: prost's encoding -----------------------------------------------------------------
# prost writes fields in tag order, but a oneof at the position of its *lowest* tag. The protobuf
# runtime writes strict tag order. They differ only where a oneof's later variant is set while a field
# with a tag in between is present: NumberDataPoint.as_int (6) vs exemplars (5), and Exemplar.as_int (6)
# vs span_id (4) / trace_id (5). Such resources are re-encoded field by field.

_PROST_PATH = frozenset(
    f"opentelemetry.proto.metrics.v1.{name}"
    for name in (
        "ResourceMetrics",
        "ScopeMetrics",
        "Metric",
        "Gauge",
        "Sum",
        "Histogram",
        "ExponentialHistogram",
        "NumberDataPoint",
        "HistogramDataPoint",
        "ExponentialHistogramDataPoint",
        "Exemplar",
    )
)


def _serialize(resource: Message) -> bytes:
    return resource.SerializeToString()


def _serialize_metrics(resource: ResourceMetrics) -> bytes:
    if not any(
        _reorders(point)
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if (kind := metric.WhichOneof("data")) in ("gauge", "sum", "histogram", "exponential_histogram")
        for point in getattr(metric, kind).data_points
    ):
        return resource.SerializeToString()
    return prost_encoding(resource)


def _reorders(point: Message) -> bool:
    if not point.exemplars:
        return False
    if point.DESCRIPTOR.name == "NumberDataPoint" and point.WhichOneof("value") == "as_int":
        return True
    return any(e.WhichOneof("value") == "as_int" and (e.span_id or e.trace_id) for e in point.exemplars)


def prost_encoding(message: Message) -> bytes:
    """`message` as prost encodes it (fields by tag, a oneof at its lowest tag), for the metrics types."""
    return b"".join(
        _prost_field(message, field, value) for field, value in sorted(message.ListFields(), key=_prost_rank)
    )


def _prost_rank(item: tuple[Any, Any]) -> int:
    field = item[0]
    oneof = field.containing_oneof
    return min(f.number for f in oneof.fields) if oneof is not None else field.number


def _prost_field(message: Message, field: Any, value: Any) -> bytes:
    if field.message_type is not None and field.message_type.full_name in _PROST_PATH:
        items = value if field.label == field.LABEL_REPEATED else [value]
        key = _varint(field.number << 3 | 2)  # wire type 2: length-delimited
        return b"".join(key + _varint(len(body)) + body for body in map(prost_encoding, items))
    alone = type(message)()
    if field.label == field.LABEL_REPEATED:
        getattr(alone, field.name).extend(value)
    elif field.message_type is not None:
        getattr(alone, field.name).CopyFrom(value)
    else:
        setattr(alone, field.name, value)
    return alone.SerializeToString()


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_SIGNALS = {
    "logs": _Signal(
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "resource_logs",
        "log",
        "otlp/v1/logs",
        _logs_bounds,
        _serialize,
    ),
    "metrics": _Signal(
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "resource_metrics",
        "metrics",
        "otlp/v1/metrics",
        _metrics_bounds,
        _serialize_metrics,
    ),
    "traces": _Signal(
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "resource_spans",
        "trace",
        "otlp/v1/traces",
        _spans_bounds,
        _serialize,
    ),
}

# --- google.rpc.Status, built in a private pool (googleapis-common-protos is not a dependency) -------
# HTTP status → gRPC code: 400/415 INVALID_ARGUMENT (as micromegas), 413 RESOURCE_EXHAUSTED (as gRPC's
# own size limits), 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED,
# 503 UNAVAILABLE.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 503: 14}


def _status_class() -> type[Message]:
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="spanlake/google_rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_Status = _status_class()
