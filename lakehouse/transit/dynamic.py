"""The hand-coded transit types: dependencies read one by one and dynamically sized objects.

These follow micromegas's `transit/src/parser.rs` (dependencies) and `tracing/src/parsing.rs` (custom
readers). Strings inside dynamic objects are `DynString`s: `u8 codec, u32 byte length, bytes`, codec 0
(ANSI, read as UTF-8) / 2 (UTF-8) decoded with replacement of invalid bytes, codec 1 UTF-16LE.
The rare dynamic types (interop and legacy logs, images) are read object by object; the common
log events, fixed fields followed by one string, are described by a `StringTail` and read in bulk by
`lakehouse.transit`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from spanlake.lakehouse.transit.metadata import (
    Layout,
    TransitError,
    TypeTable,
)
from spanlake.views.decoded import U8, TransitObject, Value

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_STRING_HEADER = struct.Struct("<BI")
_DESC_TIME = struct.Struct("<Qq")
_TIME_LEVEL32 = struct.Struct("<qI")
_TIME_LEVEL8 = struct.Struct("<qB")
_LEAF_STRUCTS = {
    kind: struct.Struct(fmt)
    for kind, fmt in {"u8": "<B", "u32": "<I", "u64": "<Q", "i64": "<q", "f64": "<d", "ref": "<Q"}.items()
}


def read_string(buffer: bytes, position: int, end: int, what: str) -> tuple[str, int]:
    """Read a DynString at `position` (not past `end`) → (text, position after it)."""
    try:
        return _read_string(buffer, position, end)
    except _StringError as error:
        raise TransitError(f"{what}: {error}") from None


class _StringError(Exception):
    """What is wrong with a DynString; the caller says where it is."""


def _read_string(buffer: bytes, position: int, end: int) -> tuple[str, int]:
    if position + 5 > end:
        raise _StringError("string header truncated")
    codec, length = _STRING_HEADER.unpack_from(buffer, position)
    start = position + 5
    if start + length > end:
        raise _StringError(f"truncated string: need {length} bytes, have {end - start}")
    raw = buffer[start : start + length]
    if codec == 2 or codec == 0:  # UTF-8; ANSI (windows-1252) is read as UTF-8 too, like micromegas
        return raw.decode("utf-8", "replace"), start + length
    if codec == 1:
        if length % 2:
            raise _StringError(f"wrong utf-16 buffer size ({length} bytes)")
        return raw.decode("utf-16-le", "replace"), start + length
    raise _StringError(f"invalid string codec {codec}")


def nest(type_name: str, flat: Mapping[str, Value], nested_type_names: Mapping[str, str]) -> TransitObject:
    """Rebuild nested objects from flattened `a.b` member paths."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def build(name: str, node: dict, prefix: str) -> TransitObject:
        members = {
            key: build(nested_type_names.get(prefix + key, key), value, f"{prefix}{key}.")
            if isinstance(value, dict)
            else value
            for key, value in node.items()
        }
        return TransitObject(name, members)

    return build(type_name, tree, "")


# ---------------------------------------------------------------------------------------------------
# Dependencies


class DependencyReader:
    """Reads dependency entries against the dependencies already read (they only point backwards)."""

    def __init__(self, buffer: bytes, types: TypeTable, deps: dict[int, Value]) -> None:
        self.buffer = buffer
        self.types = types
        self.deps = deps

    def pod(self, layout: Layout, start: int) -> Value:
        """One fixed-size instance (micromegas's `parse_pod_instance`)."""
        if start + layout.udt.size > len(self.buffer):
            raise TransitError(f"{layout.udt.name} at byte {start} runs past the buffer")
        flat: dict[str, Value] = {}
        for leaf in layout.leaves:
            (value,) = _LEAF_STRUCTS[leaf.kind].unpack_from(self.buffer, start + leaf.offset)
            if leaf.kind == "ref":
                if value not in self.deps:
                    raise TransitError(f"{layout.udt.name}.{leaf.column}: dependency {value} not found")
                value = self.deps[value]
            elif leaf.kind == "u8":
                value = U8(value)
            flat[leaf.column] = value
        if layout.udt.is_reference:
            return flat[layout.leaves[0].column]
        return nest(layout.udt.name, flat, dict(layout.nested_type_names))

    def property_set(self, start: int) -> tuple[int, Value]:
        """`PropertySetDependency`: u64 id, u32 count, count × `Property {name, value}` string refs."""
        layout = self.types.layout_of("Property", "PropertySetDependency")
        (set_id,) = _U64.unpack_from(self.buffer, start)
        (count,) = _U32.unpack_from(self.buffer, start + 8)
        first = start + 12
        if count > (len(self.buffer) - first) // layout.udt.size:
            raise TransitError(f"PropertySetDependency {set_id}: {count} properties exceed the buffer")
        members: dict[str, Value] = {}
        for index in range(count):
            prop = self.pod(layout, first + index * layout.udt.size)
            name = prop.members.get("name") if isinstance(prop, TransitObject) else None
            value = prop.members.get("value") if isinstance(prop, TransitObject) else None
            if not isinstance(name, str) or not isinstance(value, str):
                raise TransitError(f"PropertySetDependency {set_id}: property {index} is not a pair of strings")
            members[name] = value
        return set_id, TransitObject("property_set", members)


# ---------------------------------------------------------------------------------------------------
# Dynamically sized objects


class ObjectCursor:
    """Reads the body of one object at a time, never past its end (one cursor per object type)."""

    __slots__ = ("buffer", "end", "object_position", "position", "type_name", "types")

    def __init__(self, buffer: bytes, types: TypeTable, type_name: str) -> None:
        self.buffer = buffer
        self.types = types
        self.type_name = type_name
        self.object_position = self.position = self.end = 0

    def at(self, object_position: int, start: int, end: int) -> ObjectCursor:
        """Points the cursor at the body [start, end) of object number `object_position`."""
        self.object_position, self.position, self.end = object_position, start, end
        return self

    @property
    def what(self) -> str:
        """The object being read, for error messages."""
        return f"{self.type_name} object {self.object_position}"

    def unpack(self, layout: struct.Struct) -> tuple:
        """The next values of the fixed layout `layout` (TransitError if past the object's end)."""
        if self.position + layout.size > self.end:
            raise TransitError(f"{self.what}: truncated")
        values = layout.unpack_from(self.buffer, self.position)
        self.position += layout.size
        return values

    def string(self) -> str:
        """The next length-prefixed transit string."""
        try:
            text, self.position = _read_string(self.buffer, self.position, self.end)
        except _StringError as error:
            raise TransitError(f"{self.what}: {error}") from None
        return text

    def legacy_string(self) -> str:
        """The rest of the object as strict UTF-8 (legacy events)."""
        try:
            return self.buffer[self.position : self.end].decode("utf-8")
        except UnicodeDecodeError as error:
            raise TransitError(f"{self.what}: legacy message is not UTF-8") from error

    def reference(self, type_name: str) -> int:
        """A nested reference type (`StringId`, `StaticStringRef`) sized by the metadata → its id."""
        layout = self.types.layout_of(type_name, self.what)
        if not layout.udt.is_reference or layout.leaves[0].kind != "ref":
            raise TransitError(f"{self.what}: {type_name} is not a reference type")
        if self.position + layout.udt.size > self.end:
            raise TransitError(f"{self.what}: object shorter than {type_name}")
        (dep_id,) = _U64.unpack_from(self.buffer, self.position + layout.leaves[0].offset)
        self.position += layout.udt.size
        return dep_id

    def blob(self) -> bytes:
        """The next u32-length-prefixed byte blob (image data)."""
        (length,) = self.unpack(_U32)
        if self.position + length > self.end:
            raise TransitError(f"{self.what}: invalid image blob: {length} bytes exceed the object")
        data = self.buffer[self.position : self.position + length]
        self.position += length
        return data


@dataclass(frozen=True)
class DynamicType:
    """A custom reader: the members it yields, `(name, kind)`, and how to read one object."""

    members: tuple[tuple[str, str], ...]  # kind: u8/u32/u64/i64, "ref" (dependency id) or "value"
    read: Callable[[ObjectCursor], tuple]

    def read_rows(
        self,
        buffer: bytes,
        spans: Sequence[tuple[int, int, int]],
        type_name: str,
        types: TypeTable,
    ) -> list[tuple]:
        """One tuple of member values per `(position, body start, body end)`."""
        cursor = ObjectCursor(buffer, types, type_name)
        read = self.read
        return [read(cursor.at(position, start, end)) for position, start, end in spans]


def _log_string_event(cursor: ObjectCursor) -> tuple:
    desc, time = cursor.unpack(_DESC_TIME)
    return time, cursor.legacy_string(), desc


def _log_string_interop_event_v2(cursor: ObjectCursor) -> tuple:
    time, level = cursor.unpack(_TIME_LEVEL32)
    target = cursor.reference("StringId")
    return time, level, target, cursor.legacy_string()


def _log_string_interop_event_v3(cursor: ObjectCursor) -> tuple:
    time, level = cursor.unpack(_TIME_LEVEL8)
    target = cursor.reference("StaticStringRef")
    return time, level, target, cursor.string()


def _tagged_log_interop_event(cursor: ObjectCursor) -> tuple:
    time, level = cursor.unpack(_TIME_LEVEL8)
    target = cursor.reference("StaticStringRef")
    (properties,) = cursor.unpack(_U64)
    return time, level, target, properties, cursor.string()


def _image_event(cursor: ObjectCursor) -> tuple:
    (time,) = cursor.unpack(_I64)
    name = cursor.string()
    image_format = cursor.string()
    return time, name, image_format, cursor.blob()


DYNAMIC_TYPES: dict[str, DynamicType] = {
    "LogStringEvent": DynamicType((("time", "i64"), ("msg", "value"), ("desc", "ref")), _log_string_event),
    "LogStringInteropEventV2": DynamicType(
        (("time", "i64"), ("level", "u32"), ("target", "ref"), ("msg", "value")),
        _log_string_interop_event_v2,
    ),
    "LogStringInteropEventV3": DynamicType(
        (("time", "i64"), ("level", "u8"), ("target", "ref"), ("msg", "value")),
        _log_string_interop_event_v3,
    ),
    "TaggedLogInteropEvent": DynamicType(
        (("time", "i64"), ("level", "u8"), ("target", "ref"), ("properties", "ref"), ("msg", "value")),
        _tagged_log_interop_event,
    ),
    "ImageEvent": DynamicType(
        (("time", "i64"), ("name", "value"), ("format", "value"), ("data", "value")), _image_event
    ),
}


@dataclass(frozen=True)
class StringTail:
    """A dynamic type made of fixed fields then one DynString: read for all its objects at once."""

    fields: tuple[tuple[str, str, int], ...]  # (member, kind, offset): kind u8/u32/u64/i64 or "ref"
    string_offset: int  # where the DynString (u8 codec, u32 length, bytes) starts
    string_member: str = "msg"


# The log events micromegas's Rust SDK writes most (`log!` with arguments, tagged logs).
STRING_TAIL_TYPES: dict[str, StringTail] = {
    "LogStringEventV2": StringTail((("desc", "ref", 0), ("time", "i64", 8)), 16),
    "TaggedLogString": StringTail((("desc", "ref", 0), ("properties", "ref", 8), ("time", "i64", 16)), 24),
}

CUSTOM_TYPE_NAMES = frozenset(DYNAMIC_TYPES) | frozenset(STRING_TAIL_TYPES)


def decode_texts(buffer: bytes, starts: list[int], ends: list[int], codecs: list[int] | None) -> list[str]:
    """DynString bodies → text (codecs None: all UTF-8), replacing invalid sequences like micromegas."""
    if codecs is None:
        return [buffer[start:end].decode("utf-8", "replace") for start, end in zip(starts, ends, strict=True)]
    return [
        buffer[start:end].decode("utf-16-le" if codec == 1 else "utf-8", "replace")
        for start, end, codec in zip(starts, ends, codecs, strict=True)
    ]
