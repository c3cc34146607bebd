"""OTLP's common messages read from the wire format as arrays (`wire`), for the per-signal readers
(`span_arrays`, `log_arrays`): attribute values as jsonb members (`jsonb_arrays`), key-value lists, the scope's
`otel.scope.*` properties, and the checks protobuf makes of the parts no column reads.

The values are those `decode` gives walking protobuf objects: an attribute without a value is null (left
out of event and link attributes: `KeyValues.valued`), bytes are base64 strings, string_value_strindex is
null. Nested arrays and key-value lists are read level by level, at most `MAX_DEPTH` deep (protobuf's
default recursion limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue

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
_FIXED64_TYPES = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)
_FIXED32_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32)
_LEN_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)


def _wire_type(field: FieldDescriptor) -> int:
    if field.type in _FIXED64_TYPES:
        return FIXED64
    if field.type in _FIXED32_TYPES:
        return FIXED32
    return LEN if field.type in _LEN_TYPES else VARINT


def tags_of(descriptor: Descriptor) -> frozenset[int]:
    """The first tag bytes of a message type's fields, where its fields are first looked for."""
    return frozenset(tag(field.number, _wire_type(field)) for field in descriptor.fields)


SCOPE_TAGS = tags_of(InstrumentationScope.DESCRIPTOR)
_KEY_VALUE = tags_of(KeyValue.DESCRIPTOR)
_ANY_VALUE = tags_of(AnyValue.DESCRIPTOR)
_VALUES = tags_of(ArrayValue.DESCRIPTOR)  # ArrayValue and KeyValueList: `repeated values = 1`
_ANY_VALUE_WIRES = {field.number: _wire_type(field) for field in AnyValue.DESCRIPTOR.fields}
STRING, BOOL, INT, DOUBLE, ARRAY, KVLIST, BYTES = 1, 2, 3, 4, 5, 6, 7  # AnyValue's field numbers
KINDS = (STRING, BOOL, INT, DOUBLE, ARRAY, KVLIST, BYTES)
T = TypeVar("T")


def check_message(buffer: Buffer, bodies: Bodies, descriptor: Descriptor, depth: int = 0) -> None:
    """WireError unless the bodies are well-formed messages of `descriptor` with valid UTF-8 strings, as
    the protobuf runtime requires (for the parts of a block no column reads: the resource)."""
    if depth > MAX_DEPTH:
        raise WireError(f"messages nested more than {MAX_DEPTH} deep")
    check_fields(buffer, read_fields(buffer, bodies, tags_of(descriptor)), descriptor, depth)


def check_fields(buffer: Buffer, fields: Fields, descriptor: Descriptor, depth: int = 0) -> None:
    """`check_message` of messages whose fields are read already."""
    for field in descriptor.fields:
        found = fields.select(field.number, LEN)
        if field.label == FieldDescriptor.LABEL_REPEATED and field.type not in _LEN_TYPES:
            _check_packed(buffer, fields.start[found], fields.end[found], _wire_type(field))
        elif field.type == FieldDescriptor.TYPE_STRING:
            field_text(buffer, fields, found)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and len(found):
            own = np.arange(len(found), dtype=np.int64)
            check_message(
                buffer, Bodies(fields.start[found], fields.end[found], own, len(found)), field.message_type, depth + 1
            )


def _check_packed(buffer: Buffer, starts: np.ndarray, ends: np.ndarray, wire: int) -> None:
    """WireError unless the packed values `[starts, ends)` are whole, as protobuf requires: a multiple of
    the fixed width, or varints of at most 10 bytes ending with their field."""
    lengths = ends - starts
    if wire in (FIXED64, FIXED32):
        if np.any(lengths % (8 if wire == FIXED64 else 4)):
            raise WireError("a packed field's length is not a multiple of its values' width")
        return
    nonempty = lengths > 0
    data = buffer.data[ranges(starts[nonempty], lengths[nonempty])]
    ends_varint = np.flatnonzero(data < 0x80)
    cut = np.any(buffer.data[ends[nonempty] - 1] >= 0x80)
    if cut or np.any(np.diff(np.r_[-1, ends_varint]) > 10):
        raise WireError("a packed field holds a truncated or over-long varint")


def pick(values: np.ndarray, index: np.ndarray, default: int | float = 0) -> np.ndarray:
    """`values[index]`, `default` where index is -1."""
    picked = np.full(len(index), default, values.dtype)
    found = index >= 0
    picked[found] = values[index[found]]
    return picked


def field_bytes(buffer: Buffer, fields: Fields, index: np.ndarray) -> pa.Array:
    """The byte strings of the fields at `index` (empty where -1)."""
    return buffer.binary(pick(fields.start, index), pick(fields.end, index))


def field_text(buffer: Buffer, fields: Fields, index: np.ndarray) -> pa.Array:
    """The strings of the fields at `index` (empty where -1); WireError for invalid UTF-8, as protobuf."""
    data = field_bytes(buffer, fields, index)
    try:
        return data.cast(pa.large_utf8())
    except pa.ArrowInvalid:
        raise WireError("a string field is not valid UTF-8") from None


def as_i64(values: np.ndarray) -> np.ndarray:
    """u64 stamps as i64, as micromegas's `as i64` casts them."""
    return values.astype(np.uint64).view(np.int64)


def as_i32(values: np.ndarray) -> np.ndarray:
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
    return KeyValues(field_text(buffer, fields, fields.last(1, LEN)), has_value, any_values(buffer, values, depth))


@dataclass(frozen=True)
class OneOf:
    """AnyValue messages read: their fields, and per value the field of its oneof (the last one set)."""

    fields: Fields
    chosen: np.ndarray  # index of the field, -1 when none is set
    kind: np.ndarray  # its number (STRING, BOOL, ...), 0 when none

    def of(self, number: int) -> np.ndarray:
        """The chosen fields of the values of that kind, in order."""
        return self.chosen[self.kind == number]


def one_of(buffer: Buffer, bodies: Bodies, depth: int = 0) -> OneOf:
    """The AnyValue messages of `bodies`, their oneof resolved."""
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
    return OneOf(fields, chosen, pick(fields.number, chosen))


def by_kind(parts: list[tuple[np.ndarray, T]], count: int, concat: Callable[[list[T]], T]) -> T:
    """Values built kind by kind (each part: the rows it holds, their values) put back in row order."""
    order = np.empty(count, np.int64)
    order[np.concatenate([rows for rows, _ in parts])] = np.arange(count)
    joined = concat([values for _, values in parts])
    return joined.take(order if isinstance(joined, jb.Members) else pa.array(order))


def any_values(buffer: Buffer, bodies: Bodies, depth: int = 0) -> jb.Members:
    """The AnyValue messages of `bodies` as jsonb members (null when none of its oneof is set)."""
    values = one_of(buffer, bodies, depth)
    parts = [
        (np.flatnonzero(values.kind == number), members) for number, members in _value_members(buffer, values, depth)
    ]
    others = np.flatnonzero(~np.isin(values.kind, KINDS))
    return by_kind([*parts, (others, jb.nulls(len(others)))], bodies.count, jb.Members.concat)


def _value_members(buffer: Buffer, values: OneOf, depth: int) -> list[tuple[int, jb.Members]]:
    """The members of each kind of value, for the values of that kind in order."""
    fields = values.fields
    return [
        (STRING, jb.strings(field_text(buffer, fields, values.of(STRING)))),
        (BOOL, jb.booleans(fields.varint[values.of(BOOL)] != 0)),
        (INT, jb.integers(fields.varint[values.of(INT)].view(np.int64))),
        (DOUBLE, jb.floats(buffer.fixed64(fields.start[values.of(DOUBLE)]).view(np.float64))),
        (ARRAY, jb.containers(nested(buffer, values, ARRAY, depth))),
        (KVLIST, jb.containers(nested(buffer, values, KVLIST, depth))),
        (BYTES, jb.strings(jb.base64_strings(field_bytes(buffer, fields, values.of(BYTES))))),
    ]


def nested(buffer: Buffer, values: OneOf, number: int, depth: int = 0) -> pa.Array:
    """The jsonb arrays (ArrayValue) or objects (KeyValueList) of the values of that kind; every body
    of the field in a value counts (a message given twice is merged)."""
    fields, is_kind = values.fields, values.kind == number
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
    if number == ARRAY:
        return jb.arrays(any_values(buffer, items, depth + 1), parent, count)
    return key_values(buffer, items, depth + 1).objects(parent, count)


def stamps(buffer: Buffer, fields: Fields, number: int) -> np.ndarray:
    """A fixed64 field of every message as u64 (0 when absent)."""
    index = fields.last(number, FIXED64)
    stamps = np.zeros(fields.count, np.uint64)
    found = index >= 0
    stamps[found] = buffer.fixed64(fields.start[index[found]])
    return stamps


def scope_extras(buffer: Buffer, scope_spans: Fields) -> tuple[tuple[pa.Array, jb.Members], np.ndarray]:
    """The `otel.scope.*` (key, member) pairs of each ScopeSpans, in the order they override each
    other (name, version, attributes with a value, schema url), and the ScopeSpans of each."""
    scopes = read_fields(buffer, scope_spans.merged(1), SCOPE_TAGS)
    names = field_text(buffer, scopes, scopes.last(1, LEN))
    versions = field_text(buffer, scopes, scopes.last(2, LEN))
    attribute_bodies, attribute_scope = scopes.repeated(3)
    attributes, attribute_scope = key_values(buffer, attribute_bodies).valued(attribute_scope)
    schema_urls = field_text(buffer, scope_spans, scope_spans.last(3, LEN))
    key_parts, member_parts, scope_parts = [], [], []
    for key, texts in (("otel.scope.name", names), ("otel.scope.version", versions)):
        rows = np.flatnonzero(pc.binary_length(texts).to_numpy() > 0)
        key_parts.append(repeat_text(key, len(rows)))
        member_parts.append(jb.strings(texts.take(pa.array(rows))))
        scope_parts.append(rows)
    prefix = repeat_text("otel.scope.attr.", len(attributes.keys))
    key_parts.append(pc.binary_join_element_wise(prefix, attributes.keys, pa.scalar("", pa.large_utf8())))
    member_parts.append(attributes.values)
    scope_parts.append(attribute_scope)
    rows = np.flatnonzero(pc.binary_length(schema_urls).to_numpy() > 0)
    key_parts.append(repeat_text("otel.scope.schema_url", len(rows)))
    member_parts.append(jb.strings(schema_urls.take(pa.array(rows))))
    scope_parts.append(rows)
    keys = pa.concat_arrays([k.cast(pa.large_utf8()) for k in key_parts])
    return (keys, jb.Members.concat(member_parts)), np.concatenate(scope_parts).astype(np.int64)


def scope_extras_of_records(
    buffer: Buffer, scopes: Fields, record_scope: np.ndarray
) -> tuple[pa.Array, jb.Members, np.ndarray]:
    """Every record's `otel.scope.*` (key, member) pairs: those of its scope's (`scope_extras`), and the
    record each pair goes to (record i × extra j for each extra of its scope)."""
    (keys, members), extras_scope = scope_extras(buffer, scopes)
    order = np.argsort(extras_scope, kind="stable")
    first = np.searchsorted(extras_scope[order], np.arange(scopes.count))
    per_scope = np.diff(np.r_[first, len(extras_scope)])
    per_record = per_scope[record_scope]
    rows = order[ranges(first[record_scope], per_record)]
    return keys.take(pa.array(rows)), members.take(rows), np.repeat(np.arange(len(record_scope)), per_record)


def objects_of(parts: list[tuple[pa.Array, jb.Members, np.ndarray]], count: int) -> pa.Array:
    """One jsonb object per record from (keys, members, record) parts; a later part's key wins."""
    keys = pa.concat_arrays([k.cast(pa.large_utf8()) for k, _, _ in parts])
    members = jb.Members.concat([m for _, m, _ in parts])
    return jb.objects(keys, members, np.concatenate([r for _, _, r in parts]).astype(np.int64), count)


def repeat_text(text: str, count: int) -> pa.Array:
    """`count` times the same string."""
    return pa.repeat(pa.scalar(text, pa.large_utf8()), count)


def jsonb_records(members: dict[str, jb.Members], count: int) -> pa.Array:
    """`count` jsonb objects of the same keys, member i of each key going to object i."""
    keys = pa.concat_arrays([repeat_text(key, count) for key in members])
    parent = np.tile(np.arange(count, dtype=np.int64), len(members))
    return jb.objects(keys, jb.Members.concat(list(members.values())), parent, count)
