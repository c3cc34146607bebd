"""A stored OTLP traces block's `ResourceSpans` → the columns of `otel_spans` and `async_events`, read
from the protobuf wire format with numpy (`wire`) and encoded to jsonb as arrays (`jsonb_arrays`):
no Python step per span, attribute, event or link, so materializing a 100,000-span trace costs array
operations over its bytes.

The values are those `decode` gave when it walked protobuf objects (the tests compare both on a varied
corpus): `properties` are the span attributes (a repeated key keeps its last value) with the scope's
`otel.scope.*` on top; events and links are jsonb arrays of objects (attribute values as
`value_arrays` reads them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from spanlake.lakehouse.otlp import jsonb_arrays as jb
from spanlake.lakehouse.otlp.value_arrays import (
    SCOPE_TAGS,
    as_i32,
    as_i64,
    check_message,
    field_bytes,
    field_text,
    jsonb_records,
    key_values,
    objects_of,
    pick,
    scope_extras_of_records,
    stamps,
    tags_of,
)
from spanlake.lakehouse.otlp.wire import LEN, VARINT, Bodies, Buffer, Fields, read_fields

_RESOURCE_SPANS = tags_of(ResourceSpans.DESCRIPTOR)
_SCOPE_SPANS = tags_of(ScopeSpans.DESCRIPTOR)
_SPAN = tags_of(Span.DESCRIPTOR)
_EVENT = tags_of(Span.Event.DESCRIPTOR)
_LINK = tags_of(Span.Link.DESCRIPTOR)
_STATUS = tags_of(Status.DESCRIPTOR)
TRACE_ID_BYTES, SPAN_ID_BYTES = 16, 8


@dataclass(frozen=True)
class SpanFields:
    """The spans of a ResourceSpans as wire fields, with what every column needs."""

    buffer: Buffer
    spans: Fields
    scope_spans: Fields
    span_scope: np.ndarray  # the ScopeSpans (index) of each span
    start_ns: np.ndarray  # int64
    end_ns: np.ndarray
    trace_id: np.ndarray  # index of the field, -1 if none (as for the other ids)
    span_id: np.ndarray
    parent_span_id: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Which spans have a start, an end, a 16-byte trace id and an 8-byte span id."""
        has_times = (self.start_ns != 0) & (self.end_ns != 0)
        return has_times & self.has_id(self.trace_id, TRACE_ID_BYTES) & self.has_id(self.span_id, SPAN_ID_BYTES)

    def has_id(self, index: np.ndarray, width: int) -> np.ndarray:
        """Whether the field at `index` is an id of `width` bytes."""
        return (index >= 0) & (pick(self.spans.end - self.spans.start, index, -1) == width)

    def id_bytes(self, index: np.ndarray, width: int) -> np.ndarray:
        """The ids of the fields at `index` as `S{width}` (zeros where the id is not `width` bytes)."""
        rows = self.buffer.fixed_width(pick(self.spans.start, index), width) * self.has_id(index, width)[:, None]
        return np.ascontiguousarray(rows).view(f"S{width}").reshape(len(index))

    def kinds(self) -> np.ndarray:
        """The kind (enum number) of every span, 0 when absent."""
        return as_i32(pick(self.spans.varint, self.spans.last(6, VARINT)))

    def text(self, number: int) -> pa.Array:
        """A string field of every span (empty when absent)."""
        return field_text(self.buffer, self.spans, self.spans.last(number, LEN))

    def scope_names(self) -> pa.Array:
        """The scope name of every ScopeSpans (empty when absent)."""
        scopes = read_fields(self.buffer, self.scope_spans.merged(1), SCOPE_TAGS)
        return field_text(self.buffer, scopes, scopes.last(1, LEN))


def span_fields(objects: bytes) -> SpanFields:
    """The spans of a serialized ResourceSpans (WireError if it is not one)."""
    buffer = Buffer.of(objects)
    resource = read_fields(buffer, Bodies.whole(buffer), _RESOURCE_SPANS)
    scope_spans = read_fields(buffer, resource.repeated(2)[0], _SCOPE_SPANS)
    check_message(buffer, resource.merged(1), Resource.DESCRIPTOR)
    field_text(buffer, resource, resource.select(3, LEN))  # schema_url: read by no column, checked as protobuf does
    check_message(buffer, scope_spans.merged(1), InstrumentationScope.DESCRIPTOR)  # every body, not the last only
    span_bodies, span_scope = scope_spans.repeated(2)
    spans = read_fields(buffer, span_bodies, _SPAN)
    field_text(buffer, spans, spans.select(3, LEN))  # trace_state: read by no column, checked as protobuf does
    return SpanFields(
        buffer=buffer,
        spans=spans,
        scope_spans=scope_spans,
        span_scope=span_scope,
        start_ns=as_i64(stamps(buffer, spans, 7)),
        end_ns=as_i64(stamps(buffer, spans, 8)),
        trace_id=spans.last(1, LEN),
        span_id=spans.last(2, LEN),
        parent_span_id=spans.last(4, LEN),
    )


def properties(spans: SpanFields) -> pa.Array:
    """Per span, its attributes with its scope's `otel.scope.*` on top, as jsonb objects."""
    attribute_bodies, attribute_span = spans.spans.repeated(9)
    attributes = key_values(spans.buffer, attribute_bodies)
    extras = scope_extras_of_records(spans.buffer, spans.scope_spans, spans.span_scope)
    return objects_of([(attributes.keys, attributes.values, attribute_span), extras], spans.spans.count)


def events(spans: SpanFields) -> pa.Array:
    """Per span, the jsonb array of its events `{time, name, attributes}`."""
    bodies, event_span = spans.spans.repeated(11)
    found = read_fields(spans.buffer, bodies, _EVENT)
    attribute_bodies, attribute_event = found.repeated(3)
    attributes, attribute_event = key_values(spans.buffer, attribute_bodies).valued(attribute_event)
    record = jsonb_records(
        {
            "attributes": jb.containers(attributes.objects(attribute_event, bodies.count)),
            "name": jb.strings(field_text(spans.buffer, found, found.last(2, LEN))),
            "time": jb.integers(as_i64(stamps(spans.buffer, found, 1))),
        },
        bodies.count,
    )
    return jb.arrays(jb.containers(record), event_span, spans.spans.count)


def links(spans: SpanFields) -> pa.Array:
    """Per span, the jsonb array of its links `{trace_id, span_id, attributes}` (ids in hex)."""
    bodies, link_span = spans.spans.repeated(13)
    found = read_fields(spans.buffer, bodies, _LINK)
    field_text(spans.buffer, found, found.select(3, LEN))  # trace_state
    attribute_bodies, attribute_link = found.repeated(4)
    attributes, attribute_link = key_values(spans.buffer, attribute_bodies).valued(attribute_link)
    record = jsonb_records(
        {
            "attributes": jb.containers(attributes.objects(attribute_link, bodies.count)),
            "span_id": jb.strings(jb.hex_strings(field_bytes(spans.buffer, found, found.last(2, LEN)))),
            "trace_id": jb.strings(jb.hex_strings(field_bytes(spans.buffer, found, found.last(1, LEN)))),
        },
        bodies.count,
    )
    return jb.arrays(jb.containers(record), link_span, spans.spans.count)


def status(spans: SpanFields) -> tuple[np.ndarray, pa.Array]:
    """Per span, its status code (int32) and message (null when empty or without a status)."""
    found = read_fields(spans.buffer, spans.spans.merged(15), _STATUS)
    codes = as_i32(pick(found.varint, found.last(3, VARINT)))
    messages = field_text(spans.buffer, found, found.last(2, LEN))
    empty = pc.equal(pc.binary_length(messages), 0)
    return codes, pc.if_else(empty, pa.scalar(None, pa.large_utf8()), messages)
