"""micromegas's deterministic identities of OTLP data, and the rows one resource of an export stores.

One block per `Resource*` of a request (resources without records store nothing):

* `process_id = uuid5(NS_OTEL_PROCESS_V1, 31 resource attributes joined by \\x1F)`, so every export
  of one process lands on one process row;
* `stream_id = uuid5(NS_OTEL_STREAM_V1, f"{process_id}\\x1F{signal}")`, one stream per signal;
* `block_id = uuid5(NS_OTEL_BLOCK_V1, <the stored Resource* protobuf bytes>)`, so a retried export
  stores nothing new.

The process row takes its fields from the resource attributes (truncated to the column widths), its
start time from `process.creation.time`, else the block's begin. Rules and constants come from
micromegas `otel-ingestion` (`identity.rs`, `block.rs`, `handler.rs`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha1
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from spanlake.lakehouse.block_traces import NO_TRACES, BlockTraces, spans_bounds_and_traces
from spanlake.lakehouse.otlp.bounds import Bounds, logs_bounds, metrics_bounds
from spanlake.lakehouse.otlp.envelope import serialize, serialize_metrics, write_envelope
from spanlake.lakehouse.otlp.rust_text import attr_to_string
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.timestamps import parse_rfc3339_ns
from spanlake.views.meta import OTLP_LOGS_FORMAT, OTLP_METRICS_FORMAT, OTLP_TRACES_FORMAT

# Load-bearing namespaces of micromegas's OTLP identities (otel-ingestion/src/identity.rs).
NS_OTEL_PROCESS_V1 = uuid.UUID("80a447b8-fcdd-42a6-a613-f6c8719cd5fe")
NS_OTEL_STREAM_V1 = uuid.UUID("fe93bacf-e851-4cf6-8526-05f8454b3488")
NS_OTEL_BLOCK_V1 = uuid.UUID("5829a6f7-0577-4c8c-862f-cf4fdab445cc")
SEPARATOR = "\x1f"
OTLP_TICKS_PER_SECOND = 1_000_000_000
EMPTY_TRANSIT_METADATA = b"\x80"  # CBOR empty array: OTLP streams carry no transit types
PROCESS_FIELD_MAX_CHARS = 255  # processes columns are VARCHAR(255)

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


@dataclass(frozen=True)
class OtlpResourceBlock:
    """What one resource of an export request stores: three rows and one object."""

    process: ProcessRecord
    stream: StreamRecord
    block: BlockRecord
    payload: bytes
    traces: BlockTraces = NO_TRACES  # a traces resource's trace ids, for the trace index


@dataclass(frozen=True)
class _SignalBlocks:
    """How a signal's resources become blocks: the stream tag and format, the bounds, the stored bytes."""

    tag: str
    format: str
    bounds_and_traces: Callable[[Any], tuple[Bounds | None, BlockTraces]]  # traces for the trace index
    encode: Callable[[Any], bytes]


def _no_traces(bounds: Callable[[Any], Bounds | None]) -> Callable[[Any], tuple[Bounds | None, BlockTraces]]:
    return lambda resource: (bounds(resource), NO_TRACES)


_SIGNALS = {
    "logs": _SignalBlocks("log", OTLP_LOGS_FORMAT, _no_traces(logs_bounds), serialize),
    "metrics": _SignalBlocks("metrics", OTLP_METRICS_FORMAT, _no_traces(metrics_bounds), serialize_metrics),
    "traces": _SignalBlocks("trace", OTLP_TRACES_FORMAT, spans_bounds_and_traces, serialize),
}


def resource_block(signal: str, resource: Message, extra_hash_input: bytes = b"") -> OtlpResourceBlock | None:
    """The rows and payload one `Resource*` of a `signal` ('logs', 'metrics', 'traces') export stores,
    or None when it has no records. `extra_hash_input` goes into the block id ahead of the objects (the
    webhook's canonical headers, as micromegas's `block_id_with_context`)."""
    spec = _SIGNALS[signal]
    bounds, traces = spec.bounds_and_traces(resource)
    if bounds is None:
        return None
    if bounds.begin_ns == 0 and bounds.end_ns == 0:  # no record carries a time: arrival time
        now = time.time_ns()
        bounds = Bounds(now, now, bounds.nb_objects)
    attributes = resource.resource.attributes
    objects = spec.encode(resource)
    process_id = process_id_from_attributes(attributes)
    stream_id = uuid5_bytes(NS_OTEL_STREAM_V1, f"{process_id}{SEPARATOR}{signal}".encode())
    payload = write_envelope(objects)
    return OtlpResourceBlock(
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
            block_id=uuid5_bytes(NS_OTEL_BLOCK_V1, extra_hash_input + objects),
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
        traces=traces,
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
