"""A stored OTLP logs block's `ResourceLogs` → the columns of `log_entries`, read from the protobuf wire
format with numpy (`wire`, `value_arrays`): no Python step per log record.

The values are those `decode` gave when it walked protobuf objects (the tests compare both on a varied
corpus): `properties` are the record's attributes with its scope's `otel.scope.*`, then `otel.trace_id`
and `otel.span_id` (hex, W3C sizes only), `otel.severity_text` and `otel.event_name` (when not empty)
on top. A body's text is micromegas's: strings as they are, integers and booleans as Rust prints them,
bytes in base64; floats (Rust's `Display`) and arrays and key-value lists (serde_json's compact text)
are written one body at a time, by `rust_text` and `jsonb`: bodies of these kinds are rare, and their
text needs ryu's shortest digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanlake.lakehouse.otlp import jsonb_arrays as jb
from spanlake.lakehouse.otlp import value_arrays as va
from spanlake.lakehouse.otlp.rust_text import rust_display_f64
from spanlake.lakehouse.otlp.span_arrays import SPAN_ID_BYTES, TRACE_ID_BYTES
from spanlake.lakehouse.otlp.wire import LEN, VARINT, Bodies, Buffer, Fields, read_fields
from spanlake.views import jsonb

_RESOURCE_LOGS = va.tags_of(ResourceLogs.DESCRIPTOR)
_SCOPE_LOGS = va.tags_of(ScopeLogs.DESCRIPTOR)
_LOG_RECORD = va.tags_of(LogRecord.DESCRIPTOR)
_TEXT = pa.large_utf8()


@dataclass(frozen=True)
class LogFields:
    """The log records of a ResourceLogs as wire fields."""

    buffer: Buffer
    records: Fields
    scope_logs: Fields
    record_scope: np.ndarray  # the ScopeLogs (index) of each record

    def stamps(self, number: int) -> np.ndarray:
        """A time field of every record, as i64 (0 when absent)."""
        return va.as_i64(va.stamps(self.buffer, self.records, number))

    def severities(self) -> np.ndarray:
        """The severity number (enum) of every record, 0 when absent."""
        return va.as_i32(va.pick(self.records.varint, self.records.last(2, VARINT)))

    def scope_names(self) -> pa.Array:
        """The scope name of every record (empty when absent)."""
        scopes = read_fields(self.buffer, self.scope_logs.merged(1), va.SCOPE_TAGS)
        return va.field_text(self.buffer, scopes, scopes.last(1, LEN)).take(pa.array(self.record_scope))


def log_fields(objects: bytes) -> LogFields:
    """The log records of a serialized ResourceLogs (WireError if it is not one)."""
    buffer = Buffer.of(objects)
    resource = read_fields(buffer, Bodies.whole(buffer), _RESOURCE_LOGS)
    va.check_message(buffer, resource.merged(1), Resource.DESCRIPTOR)
    va.field_text(buffer, resource, resource.select(3, LEN))  # schema_url: read by no column, checked
    scope_logs = read_fields(buffer, resource.repeated(2)[0], _SCOPE_LOGS)
    va.check_message(buffer, scope_logs.merged(1), InstrumentationScope.DESCRIPTOR)  # every body, not the last only
    record_bodies, record_scope = scope_logs.repeated(2)
    return LogFields(buffer, read_fields(buffer, record_bodies, _LOG_RECORD), scope_logs, record_scope)


def messages(logs: LogFields) -> pa.Array:
    """Every record's body as text ("" without a body)."""
    values = va.one_of(logs.buffer, logs.records.merged(5))
    fields = values.fields
    doubles = logs.buffer.fixed64(fields.start[values.of(va.DOUBLE)]).view(np.float64)
    structured = [
        (kind, va.nested(logs.buffer, values, kind).to_pylist()) for kind in (va.ARRAY, va.KVLIST)
    ]  # jsonb of each structured body, rendered below
    parts = [
        (va.STRING, va.field_text(logs.buffer, fields, values.of(va.STRING))),
        (va.INT, pa.array(fields.varint[values.of(va.INT)].view(np.int64)).cast(_TEXT)),
        (va.BOOL, pc.if_else(pa.array(fields.varint[values.of(va.BOOL)] != 0), "true", "false").cast(_TEXT)),
        (va.BYTES, jb.base64_strings(va.field_bytes(logs.buffer, fields, values.of(va.BYTES))).cast(_TEXT)),
        (va.DOUBLE, pa.array([rust_display_f64(d) for d in doubles.tolist()], _TEXT)),
        *((kind, pa.array([jsonb.compact_json(jsonb.decode(v)) for v in texts], _TEXT)) for kind, texts in structured),
    ]
    rows = [(np.flatnonzero(values.kind == kind), texts) for kind, texts in parts]
    others = np.flatnonzero(~np.isin(values.kind, va.KINDS))
    rows.append((others, va.repeat_text("", len(others))))
    return va.by_kind(rows, logs.records.count, pa.concat_arrays)


def properties(logs: LogFields) -> pa.Array:
    """Every record's properties as jsonb objects (see the module's docstring)."""
    buffer, records = logs.buffer, logs.records
    attribute_bodies, attribute_record = records.repeated(6)
    attributes = va.key_values(buffer, attribute_bodies)
    parts = [(attributes.keys, attributes.values, attribute_record)]
    parts.append(va.scope_extras_of_records(buffer, logs.scope_logs, logs.record_scope))
    for key, number, width in (("otel.trace_id", 9, TRACE_ID_BYTES), ("otel.span_id", 10, SPAN_ID_BYTES)):
        index = records.last(number, LEN)
        rows = np.flatnonzero((index >= 0) & (va.pick(records.end - records.start, index, -1) == width))
        ids = jb.hex_strings(va.field_bytes(buffer, records, index[rows]))
        parts.append((va.repeat_text(key, len(rows)), jb.strings(ids), rows))
    for key, number in (("otel.severity_text", 3), ("otel.event_name", 12)):
        texts = va.field_text(buffer, records, records.last(number, LEN))
        rows = np.flatnonzero(pc.binary_length(texts).to_numpy() > 0)
        parts.append((va.repeat_text(key, len(rows)), jb.strings(texts.take(pa.array(rows))), rows))
    return va.objects_of(parts, records.count)
