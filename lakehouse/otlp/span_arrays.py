"""A stored OTLP traces block's `ResourceSpans` → the columns of `otel_spans` and `async_events`, read
from the protobuf wire format with numpy (`wire`) and encoded to jsonb as arrays (`jsonb_arrays`):
no Python step per span, attribute, event or link, so materializing a 100,000-span trace costs array
operations over its bytes.

The values are those `decode` gave when it walked protobuf objects (the tests compare both on a varied
corpus): `properties` are the span attributes (a repeated key keeps its last value, an attribute
without a value is null) with the scope's `otel.scope.*` on top; event and link attributes leave out
key-values without a value; bytes values are base64 strings; string_value_strindex is null.
Nested arrays and key-value lists are read level by level, at most `MAX_DEPTH` deep (protobuf's
default recursion limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from spanlake.lakehouse.otlp import jsonb_arrays as jb
from spanlake.lakehouse.otlp.wire import (
    FIXED32,
    FIXED64,
    LEN,
    VARINT,
    Bodies,
    Buffer,
    Fields,
    WireError,
    ranges,
    read_fields,
    tag,
)

MAX_DEPTH = 100
TRACE_ID_BYTES, SPAN_ID_BYTES = 16, 8
_FIXED64_TYPES = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)
_FIXED32_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32)
_LEN_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)


def _wire_type(field: FieldDescriptor) -> int:
    if field.type in _FIXED64_TYPES:
        return FIXED64
    if field.type in _FIXED32_TYPES:
        return FIXED32
    return LEN if field.type in _LEN_TYPES else VARINT


def _tags(descriptor: Descriptor) -> frozenset[int]:
    """The first tag bytes of a message type's fields, where its fields are first looked for."""
    return frozenset(tag(field.number, _wire_type(field)) for field in descriptor.fields)


_RESOURCE_SPANS = _tags(ResourceSpans.DESCRIPTOR)
_SCOPE_SPANS = _tags(ScopeSpans.DESCRIPTOR)
_SCOPE = _tags(InstrumentationScope.DESCRIPTOR)
_SPAN = _tags(Span.DESCRIPTOR)
_EVENT = _tags(Span.Event.DESCRIPTOR)
_LINK = _tags(Span.Link.DESCRIPTOR)
_STATUS = _tags(Status.DESCRIPTOR)
_KEY_VALUE = _tags(KeyValue.DESCRIPTOR)
_ANY_VALUE = _tags(AnyValue.DESCRIPTOR)
_VALUES = _tags(ArrayValue.DESCRIPTOR)  # ArrayValue and KeyValueList: `repeated values = 1`
_ANY_VALUE_WIRES = {field.number: _wire_type(field) for field in AnyValue.DESCRIPTOR.fields}
_STRING, _BOOL, _INT, _DOUBLE, _ARRAY, _KVLIST, _BYTES = 1, 2, 3, 4, 5, 6, 7  # AnyValue's field numbers


def check_message(buffer: Buffer, bodies: Bodies, descriptor: Descriptor, depth: int = 0) -> None:
    """WireError unless the bodies are well-formed messages of `descriptor` with valid UTF-8 strings, as
    the protobuf runtime requires (for the parts of a block no column reads: the resource)."""
    if depth > MAX_DEPTH:
        raise WireError(f"messages nested more than {MAX_DEPTH} deep")
    fields = read_fields(buffer, bodies, _tags(descriptor))
    for field in descriptor.fields:
        found = fields.select(field.number, LEN)
        if field.type == FieldDescriptor.TYPE_STRING:
            _text(buffer, fields, found)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and len(found):
            own = np.arange(len(found), dtype=np.int64)
            check_message(
                buffer, Bodies(fields.start[found], fields.end[found], own, len(found)), field.message_type, depth + 1
            )


def _pick(values: np.ndarray, index: np.ndarray, default: int | float = 0) -> np.ndarray:
    """`values[index]`, `default` where index is -1."""
    picked = np.full(len(index), default, values.dtype)
    found = index >= 0
    picked[found] = values[index[found]]
    return picked


def _bytes(buffer: Buffer, fields: Fields, index: np.ndarray) -> pa.Array:
    """The byte strings of the fields at `index` (empty where -1)."""
    return buffer.binary(_pick(fields.start, index), _pick(fields.end, index))


def _text(buffer: Buffer, fields: Fields, index: np.ndarray) -> pa.Array:
    """The strings of the fields at `index` (empty where -1); WireError for invalid UTF-8, as protobuf."""
    data = _bytes(buffer, fields, index)
    try:
        return data.cast(pa.large_utf8())
    except pa.ArrowInvalid:
        raise WireError("a string field is not valid UTF-8") from None


def _as_i64(values: np.ndarray) -> np.ndarray:
    """u64 stamps as i64, as micromegas's `as i64` casts them."""
    return values.astype(np.uint64).view(np.int64)


def _as_i32(values: np.ndarray) -> np.ndarray:
    """A varint as protobuf reads an int32 (an enum): its low 32 bits, signed."""
    return (values & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32).astype(np.int64)


@dataclass(frozen=True)
class KeyValues:
    """Key-values of many lists: their keys, whether a value was given, the values as jsonb members."""

    keys: pa.Array  # large utf8
    has_value: np.ndarray  # bool
    values: jb.Members

    def valued(self, parent: np.ndarray) -> tuple[KeyValues, np.ndarray]:
        """Only the key-values given a value (event and link attributes), with their parents."""
        rows = np.flatnonzero(self.has_value)
        return KeyValues(self.keys.take(pa.array(rows)), self.has_value[rows], self.values.take(rows)), parent[rows]

    def objects(self, parent: np.ndarray, count: int) -> pa.Array:
        """One jsonb object per parent row."""
        return jb.objects(self.keys, self.values, parent, count)


def key_values(buffer: Buffer, bodies: Bodies, depth: int = 0) -> KeyValues:
    """The KeyValue messages of `bodies`."""
    fields = read_fields(buffer, bodies, _KEY_VALUE)
    values = fields.merged(2)
    has_value = np.zeros(bodies.count, bool)
    has_value[values.owner] = True
    return KeyValues(_text(buffer, fields, fields.last(1, LEN)), has_value, any_values(buffer, values, depth))


def any_values(buffer: Buffer, bodies: Bodies, depth: int = 0) -> jb.Members:
    """The AnyValue messages of `bodies` as jsonb members (null when none of its oneof is set)."""
    if depth > MAX_DEPTH:
        raise WireError(f"values nested more than {MAX_DEPTH} deep")
    fields = read_fields(buffer, bodies, _ANY_VALUE)
    of_oneof = np.zeros(len(fields.number), bool)
    for number, wire in _ANY_VALUE_WIRES.items():
        of_oneof |= (fields.number == number) & (fields.wire == wire)
    found = np.flatnonzero(of_oneof)
    owners = fields.owner[found]
    final = np.r_[owners[1:] != owners[:-1], True] if len(found) else np.zeros(0, bool)
    chosen = np.full(bodies.count, -1, np.int64)
    chosen[owners[final]] = found[final]
    kind = _pick(fields.number, chosen)
    parts, rows = [], []
    for number, members in _value_members(buffer, fields, chosen, kind, depth):
        parts.append(members)
        rows.append(np.flatnonzero(kind == number))
    others = np.flatnonzero(~np.isin(kind, (_STRING, _BOOL, _INT, _DOUBLE, _ARRAY, _KVLIST, _BYTES)))
    parts.append(jb.nulls(len(others)))
    rows.append(others)
    order = np.empty(bodies.count, np.int64)
    order[np.concatenate(rows)] = np.arange(bodies.count)
    return jb.Members.concat(parts).take(order)


def _value_members(
    buffer: Buffer, fields: Fields, chosen: np.ndarray, kind: np.ndarray, depth: int
) -> list[tuple[int, jb.Members]]:
    """The members of each kind of value, for the values of that kind in order."""

    def of(number: int) -> np.ndarray:
        return chosen[kind == number]

    return [
        (_STRING, jb.strings(_text(buffer, fields, of(_STRING)))),
        (_BOOL, jb.booleans(fields.varint[of(_BOOL)] != 0)),
        (_INT, jb.integers(fields.varint[of(_INT)].view(np.int64))),
        (_DOUBLE, jb.floats(buffer.fixed64(fields.start[of(_DOUBLE)]).view(np.float64))),
        (_ARRAY, jb.containers(_nested(buffer, fields, kind, _ARRAY, depth))),
        (_KVLIST, jb.containers(_nested(buffer, fields, kind, _KVLIST, depth))),
        (_BYTES, jb.strings(jb.base64_strings(_bytes(buffer, fields, of(_BYTES))))),
    ]


def _nested(buffer: Buffer, fields: Fields, kind: np.ndarray, number: int, depth: int) -> pa.Array:
    """The jsonb arrays (ArrayValue) or objects (KeyValueList) of the values of that kind; every body
    of the field in a value counts (a message given twice is merged)."""
    is_kind = kind == number
    count = int(is_kind.sum())
    if not count:  # the common case: no nested values, no deeper level to read
        return jb.binary_array(np.zeros(0, np.uint8), np.zeros(1, np.int64))
    rank = np.cumsum(is_kind) - 1
    found = fields.select(number, LEN)
    found = found[is_kind[fields.owner[found]]]
    lists = read_fields(
        buffer, Bodies(fields.start[found], fields.end[found], rank[fields.owner[found]], count), _VALUES
    )
    items, parent = lists.repeated(1)
    if number == _ARRAY:
        return jb.arrays(any_values(buffer, items, depth + 1), parent, count)
    return key_values(buffer, items, depth + 1).objects(parent, count)


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
        return (index >= 0) & (_pick(self.spans.end - self.spans.start, index, -1) == width)

    def id_bytes(self, index: np.ndarray, width: int) -> np.ndarray:
        """The ids of the fields at `index` as `S{width}` (zeros where the id is not `width` bytes)."""
        rows = self.buffer.fixed_width(_pick(self.spans.start, index), width) * self.has_id(index, width)[:, None]
        return np.ascontiguousarray(rows).view(f"S{width}").reshape(len(index))

    def kinds(self) -> np.ndarray:
        """The kind (enum number) of every span, 0 when absent."""
        return _as_i32(_pick(self.spans.varint, self.spans.last(6, VARINT)))

    def text(self, number: int) -> pa.Array:
        """A string field of every span (empty when absent)."""
        return _text(self.buffer, self.spans, self.spans.last(number, LEN))

    def scope_names(self) -> pa.Array:
        """The scope name of every ScopeSpans (empty when absent)."""
        scopes = read_fields(self.buffer, self.scope_spans.merged(1), _SCOPE)
        return _text(self.buffer, scopes, scopes.last(1, LEN))


def span_fields(objects: bytes) -> SpanFields:
    """The spans of a serialized ResourceSpans (WireError if it is not one)."""
    buffer = Buffer.of(objects)
    resource = read_fields(buffer, Bodies.whole(buffer), _RESOURCE_SPANS)
    scope_spans = read_fields(buffer, resource.repeated(2)[0], _SCOPE_SPANS)
    check_message(buffer, resource.merged(1), Resource.DESCRIPTOR)
    span_bodies, span_scope = scope_spans.repeated(2)
    spans = read_fields(buffer, span_bodies, _SPAN)
    _text(buffer, spans, spans.select(3, LEN))  # trace_state: read by no column, checked as protobuf does
    return SpanFields(
        buffer=buffer,
        spans=spans,
        scope_spans=scope_spans,
        span_scope=span_scope,
        start_ns=_as_i64(_stamps(buffer, spans, 7)),
        end_ns=_as_i64(_stamps(buffer, spans, 8)),
        trace_id=spans.last(1, LEN),
        span_id=spans.last(2, LEN),
        parent_span_id=spans.last(4, LEN),
    )


def _stamps(buffer: Buffer, fields: Fields, number: int) -> np.ndarray:
    index = fields.last(number, FIXED64)
    stamps = np.zeros(fields.count, np.uint64)
    found = index >= 0
    stamps[found] = buffer.fixed64(fields.start[index[found]])
    return stamps


def properties(spans: SpanFields) -> pa.Array:
    """Per span, its attributes with its scope's `otel.scope.*` on top, as jsonb objects."""
    attribute_bodies, attribute_span = spans.spans.repeated(9)
    attributes = key_values(spans.buffer, attribute_bodies)
    extras, extras_scope = scope_extras(spans.buffer, spans.scope_spans)
    # Every span gets the extras of its ScopeSpans: span i × extra j for each extra of its scope.
    order = np.argsort(extras_scope, kind="stable")
    extras_scope = extras_scope[order]
    first = np.searchsorted(extras_scope, np.arange(spans.scope_spans.count))
    per_scope = np.diff(np.r_[first, len(extras_scope)])
    per_span = per_scope[spans.span_scope]
    span_rows = np.repeat(np.arange(spans.spans.count), per_span)
    extra_rows = order[ranges(first[spans.span_scope], per_span)]
    keys = pa.concat_arrays([attributes.keys, extras[0].take(pa.array(extra_rows))])
    members = jb.Members.concat([attributes.values, extras[1].take(extra_rows)])
    return jb.objects(keys, members, np.concatenate([attribute_span, span_rows]), spans.spans.count)


def scope_extras(buffer: Buffer, scope_spans: Fields) -> tuple[tuple[pa.Array, jb.Members], np.ndarray]:
    """The `otel.scope.*` (key, member) pairs of each ScopeSpans, in the order they override each
    other (name, version, attributes with a value, schema url), and the ScopeSpans of each."""
    scopes = read_fields(buffer, scope_spans.merged(1), _SCOPE)
    names = _text(buffer, scopes, scopes.last(1, LEN))
    versions = _text(buffer, scopes, scopes.last(2, LEN))
    attribute_bodies, attribute_scope = scopes.repeated(3)
    attributes, attribute_scope = key_values(buffer, attribute_bodies).valued(attribute_scope)
    schema_urls = _text(buffer, scope_spans, scope_spans.last(3, LEN))
    key_parts, member_parts, scope_parts = [], [], []
    for key, texts in (("otel.scope.name", names), ("otel.scope.version", versions)):
        rows = np.flatnonzero(pc.binary_length(texts).to_numpy() > 0)
        key_parts.append(_repeat_text(key, len(rows)))
        member_parts.append(jb.strings(texts.take(pa.array(rows))))
        scope_parts.append(rows)
    prefix = _repeat_text("otel.scope.attr.", len(attributes.keys))
    key_parts.append(pc.binary_join_element_wise(prefix, attributes.keys, pa.scalar("", pa.large_utf8())))
    member_parts.append(attributes.values)
    scope_parts.append(attribute_scope)
    rows = np.flatnonzero(pc.binary_length(schema_urls).to_numpy() > 0)
    key_parts.append(_repeat_text("otel.scope.schema_url", len(rows)))
    member_parts.append(jb.strings(schema_urls.take(pa.array(rows))))
    scope_parts.append(rows)
    keys = pa.concat_arrays([k.cast(pa.large_utf8()) for k in key_parts])
    return (keys, jb.Members.concat(member_parts)), np.concatenate(scope_parts).astype(np.int64)


def _repeat_text(text: str, count: int) -> pa.Array:
    return pa.repeat(pa.scalar(text, pa.large_utf8()), count)


def events(spans: SpanFields) -> pa.Array:
    """Per span, the jsonb array of its events `{time, name, attributes}`."""
    bodies, event_span = spans.spans.repeated(11)
    found = read_fields(spans.buffer, bodies, _EVENT)
    attribute_bodies, attribute_event = found.repeated(3)
    attributes, attribute_event = key_values(spans.buffer, attribute_bodies).valued(attribute_event)
    record = _records(
        {
            "attributes": jb.containers(attributes.objects(attribute_event, bodies.count)),
            "name": jb.strings(_text(spans.buffer, found, found.last(2, LEN))),
            "time": jb.integers(_as_i64(_stamps(spans.buffer, found, 1))),
        },
        bodies.count,
    )
    return jb.arrays(jb.containers(record), event_span, spans.spans.count)


def links(spans: SpanFields) -> pa.Array:
    """Per span, the jsonb array of its links `{trace_id, span_id, attributes}` (ids in hex)."""
    bodies, link_span = spans.spans.repeated(13)
    found = read_fields(spans.buffer, bodies, _LINK)
    _text(spans.buffer, found, found.select(3, LEN))  # trace_state
    attribute_bodies, attribute_link = found.repeated(4)
    attributes, attribute_link = key_values(spans.buffer, attribute_bodies).valued(attribute_link)
    record = _records(
        {
            "attributes": jb.containers(attributes.objects(attribute_link, bodies.count)),
            "span_id": jb.strings(jb.hex_strings(_bytes(spans.buffer, found, found.last(2, LEN)))),
            "trace_id": jb.strings(jb.hex_strings(_bytes(spans.buffer, found, found.last(1, LEN)))),
        },
        bodies.count,
    )
    return jb.arrays(jb.containers(record), link_span, spans.spans.count)


def _records(members: dict[str, jb.Members], count: int) -> pa.Array:
    """`count` jsonb objects of the same keys, member i of each key going to object i."""
    keys = pa.concat_arrays([_repeat_text(key, count) for key in members])
    parent = np.tile(np.arange(count, dtype=np.int64), len(members))
    return jb.objects(keys, jb.Members.concat(list(members.values())), parent, count)


def status(spans: SpanFields) -> tuple[np.ndarray, pa.Array]:
    """Per span, its status code (int32) and message (null when empty or without a status)."""
    found = read_fields(spans.buffer, spans.spans.merged(15), _STATUS)
    codes = _as_i32(_pick(found.varint, found.last(3, VARINT)))
    messages = _text(spans.buffer, found, found.last(2, LEN))
    empty = pc.equal(pc.binary_length(messages), 0)
    return codes, pc.if_else(empty, pa.scalar(None, pa.large_utf8()), messages)
