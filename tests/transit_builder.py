"""Builds synthetic transit blocks for tests and benchmarks, laid out like micromegas's Rust producer.

The type catalog below reproduces the metadata of a micromegas thread (`cpu`) stream: object types in
queue order, then secondary types; offsets are those measured on the Rust structs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cbor2
import lz4.frame


def member(name: str, type_name: str, offset: int, size: int, is_reference: bool = False) -> dict:
    return {"name": name, "type_name": type_name, "offset": offset, "size": size, "is_reference": is_reference}


def udt(name: str, size: int, members: Sequence[dict] = (), is_reference: bool = False) -> dict:
    return {"name": name, "size": size, "members": list(members), "is_reference": is_reference}


SPAN_RECORD = udt(
    "SpanRecord",
    48,
    [
        member("id", "u64", 0, 8),
        member("name", "* const u8", 8, 8, True),
        member("target", "* const u8", 16, 8, True),
        member("module_path", "* const u8", 24, 8, True),
        member("file", "* const u8", 32, 8, True),
        member("line", "u32", 40, 4),
        member("lod", "u32", 44, 4),
    ],
)
SPAN_LOCATION_RECORD = udt(
    "SpanLocationRecord",
    40,
    [
        member("id", "u64", 0, 8),
        member("target", "* const u8", 8, 8, True),
        member("module_path", "* const u8", 16, 8, True),
        member("file", "* const u8", 24, 8, True),
        member("line", "u32", 32, 4),
        member("lod", "u32", 36, 4),
    ],
)
STATIC_STRING = udt("StaticString", 0)
STRING_ID = udt("StringId", 16, [member("id", "* const u8", 0, 8, True)], is_reference=True)


def _thread_event(name: str, desc_member: str, desc_type: str) -> dict:
    return udt(name, 16, [member(desc_member, desc_type, 0, 8, True), member("time", "i64", 8, 8)])


def _named_thread_event(name: str) -> dict:
    return udt(
        name,
        32,
        [
            member("thread_span_location", "& 'static SpanLocation", 0, 8, True),
            member("name", "StringId", 8, 16),
            member("time", "i64", 24, 8),
        ],
    )


def _async_event(name: str) -> dict:
    return udt(
        name,
        40,
        [
            member("span_desc", "& 'static SpanMetadata", 0, 8, True),
            member("span_id", "u64", 8, 8),
            member("parent_span_id", "u64", 16, 8),
            member("time", "i64", 24, 8),
            member("depth", "u32", 32, 4),
        ],
    )


def _named_async_event(name: str) -> dict:
    return udt(
        name,
        56,
        [
            member("span_location", "& 'static SpanLocation", 0, 8, True),
            member("name", "StringId", 8, 16),
            member("span_id", "u64", 24, 8),
            member("parent_span_id", "u64", 32, 8),
            member("time", "i64", 40, 8),
            member("depth", "u32", 48, 4),
        ],
    )


THREAD_DEPENDENCY_TYPES = [SPAN_RECORD, SPAN_LOCATION_RECORD, STATIC_STRING]
THREAD_OBJECT_TYPES = [
    _thread_event("BeginThreadSpanEvent", "thread_span_desc", "& 'static SpanMetadata"),
    _thread_event("EndThreadSpanEvent", "thread_span_desc", "& 'static SpanMetadata"),
    _named_thread_event("BeginThreadNamedSpanEvent"),
    _named_thread_event("EndThreadNamedSpanEvent"),
    _async_event("BeginAsyncSpanEvent"),
    _async_event("EndAsyncSpanEvent"),
    _named_async_event("BeginAsyncNamedSpanEvent"),
    _named_async_event("EndAsyncNamedSpanEvent"),
    STRING_ID,
]
THREAD_TYPE_INDEX = {entry["name"]: index for index, entry in enumerate(THREAD_OBJECT_TYPES)}
DEPENDENCY_TYPE_INDEX = {entry["name"]: index for index, entry in enumerate(THREAD_DEPENDENCY_TYPES)}


def dyn_string(text: str, codec: int = 2) -> bytes:
    """A DynString: u8 codec (0 ANSI, 1 UTF-16LE, 2 UTF-8), u32 byte length, bytes."""
    data = text.encode("utf-16-le" if codec == 1 else "utf-8")
    return struct.pack("<BI", codec, len(data)) + data


@dataclass
class BufferWriter:
    """One transit buffer: entries of `u8 type index` + fixed body, or + `u32 size` + dynamic body."""

    parts: list[bytes] = field(default_factory=list)

    def fixed(self, type_index: int, body: bytes) -> BufferWriter:
        self.parts.append(bytes([type_index]) + body)
        return self

    def dynamic(self, type_index: int, body: bytes) -> BufferWriter:
        self.parts.append(bytes([type_index]) + struct.pack("<I", len(body)) + body)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def compress(buffer: bytes) -> bytes:
    """An LZ4 frame like the Rust sink writes (linked blocks, content checksum, level 10)."""
    compressor = lz4.frame.LZ4FrameCompressor(block_linked=True, content_checksum=True, compression_level=10)
    return compressor.begin() + compressor.compress(buffer) + compressor.flush()


def payload(dependencies: bytes, objects: bytes, legacy_int_arrays: bool = False) -> bytes:
    """The stored CBOR envelope `{dependencies, objects}` of LZ4 frames."""
    deps, objs = compress(dependencies), compress(objects)
    if legacy_int_arrays:
        return cbor2.dumps({"dependencies": list(deps), "objects": list(objs)})
    return cbor2.dumps({"dependencies": deps, "objects": objs})


def metadata(types: Iterable[dict]) -> bytes:
    return cbor2.dumps(list(types))


@dataclass
class ThreadBlockWriter:
    """Writes a thread-stream block: interned strings and descriptors first, then events."""

    dependencies: BufferWriter = field(default_factory=BufferWriter)
    objects: BufferWriter = field(default_factory=BufferWriter)
    _strings: dict[str, int] = field(default_factory=dict)
    _next_id: int = 0x5000

    def _new_id(self) -> int:
        self._next_id += 0x40
        return self._next_id

    def string(self, text: str) -> int:
        if text not in self._strings:
            string_id = self._new_id()
            self._strings[text] = string_id
            body = struct.pack("<Q", string_id) + text.encode()
            self.dependencies.dynamic(DEPENDENCY_TYPE_INDEX["StaticString"], body)
        return self._strings[text]

    def span_desc(self, name: str, target: str = "app", file: str = "src/app.rs", line: int = 1) -> int:
        ids = [self.string(text) for text in (name, target, "app::module", file)]
        desc_id = self._new_id()
        body = struct.pack("<QQQQQII", desc_id, ids[0], ids[1], ids[2], ids[3], line, 3)
        self.dependencies.fixed(DEPENDENCY_TYPE_INDEX["SpanRecord"], body)
        return desc_id

    def span_location(self, target: str = "app", file: str = "src/app.rs", line: int = 1) -> int:
        ids = [self.string(text) for text in (target, "app::module", file)]
        location_id = self._new_id()
        body = struct.pack("<QQQQII", location_id, ids[0], ids[1], ids[2], line, 3)
        self.dependencies.fixed(DEPENDENCY_TYPE_INDEX["SpanLocationRecord"], body)
        return location_id

    def thread(self, begin: bool, desc: int, ticks: int) -> None:
        name = "BeginThreadSpanEvent" if begin else "EndThreadSpanEvent"
        self.objects.fixed(THREAD_TYPE_INDEX[name], struct.pack("<Qq", desc, ticks))

    def thread_named(self, begin: bool, location: int, name: str, ticks: int) -> None:
        type_name = "BeginThreadNamedSpanEvent" if begin else "EndThreadNamedSpanEvent"
        body = struct.pack("<QQIIq", location, self.string(name), len(name), 0xDEAD, ticks)
        self.objects.fixed(THREAD_TYPE_INDEX[type_name], body)

    def async_event(self, begin: bool, desc: int, span_id: int, parent: int, ticks: int, depth: int) -> None:
        name = "BeginAsyncSpanEvent" if begin else "EndAsyncSpanEvent"
        body = struct.pack("<QQQqII", desc, span_id, parent, ticks, depth, 0xBAD)  # last u32: padding
        self.objects.fixed(THREAD_TYPE_INDEX[name], body)

    def async_named(
        self, begin: bool, location: int, name: str, span_id: int, parent: int, ticks: int, depth: int
    ) -> None:
        type_name = "BeginAsyncNamedSpanEvent" if begin else "EndAsyncNamedSpanEvent"
        body = struct.pack(
            "<QQIIQQqII", location, self.string(name), len(name), 0xBAD, span_id, parent, ticks, depth, 0xBAD
        )
        self.objects.fixed(THREAD_TYPE_INDEX[type_name], body)

    def payload(self, legacy_int_arrays: bool = False) -> bytes:
        return payload(self.dependencies.getvalue(), self.objects.getvalue(), legacy_int_arrays)


def thread_stream_metadata() -> tuple[bytes, bytes]:
    return metadata(THREAD_DEPENDENCY_TYPES), metadata(THREAD_OBJECT_TYPES)


# A net stream as Unreal's MicromegasTracing describes it (NetEvents.h, NetMetadata.h): uint64 times,
# StaticStringRef names (pointer, size, padding) into StaticStringDependency strings, uint32 bit sizes.
STRING_REF = "StaticStringRef"
NET_OBJECT_TYPES = [
    udt(
        "NetConnectionBeginEvent",
        32,
        [
            member("time", "uint64", 0, 8),
            member("connection_name", STRING_REF, 8, 16, True),
            member("is_outgoing", "uint8", 24, 1),
        ],
    ),
    udt("NetConnectionEndEvent", 16, [member("time", "uint64", 0, 8), member("bit_size", "uint32", 8, 4)]),
    udt("NetObjectBeginEvent", 24, [member("time", "uint64", 0, 8), member("object_name", STRING_REF, 8, 16, True)]),
    udt("NetObjectEndEvent", 16, [member("time", "uint64", 0, 8), member("bit_size", "uint32", 8, 4)]),
    udt(
        "NetPropertyEvent",
        32,
        [
            member("time", "uint64", 0, 8),
            member("property_name", STRING_REF, 8, 16, True),
            member("bit_size", "uint32", 24, 4),
        ],
    ),
    udt("NetRPCBeginEvent", 24, [member("time", "uint64", 0, 8), member("function_name", STRING_REF, 8, 16, True)]),
    udt("NetRPCEndEvent", 16, [member("time", "uint64", 0, 8), member("bit_size", "uint32", 8, 4)]),
]
NET_DEPENDENCY_TYPES = [udt("StaticStringDependency", 0)]
NET_TYPE_INDEX = {entry["name"]: index for index, entry in enumerate(NET_OBJECT_TYPES)}


@dataclass
class NetBlockWriter:
    """One net block: StaticStringDependency entries for its names, then the events."""

    dependencies: BufferWriter = field(default_factory=BufferWriter)
    objects: BufferWriter = field(default_factory=BufferWriter)
    strings: dict[str, int] = field(default_factory=dict)
    count: int = 0

    def _ref(self, text: str) -> bytes:
        if text not in self.strings:
            self.strings[text] = 0x7000 + 0x10 * len(self.strings)
            self.dependencies.dynamic(0, struct.pack("<Q", self.strings[text]) + dyn_string(text))
        return struct.pack("<QII", self.strings[text], len(text), 0xBAD)  # pointer, size, padding

    def event(self, type_name: str, ticks: int, name: str | None = None, bits: int = 0, outgoing: int = 0) -> None:
        body = struct.pack("<Q", ticks)
        if name is not None:
            body += self._ref(name)
        if type_name == "NetConnectionBeginEvent":
            body += struct.pack("<B7x", outgoing)
        elif type_name != "NetObjectBeginEvent" and type_name != "NetRPCBeginEvent":
            body += struct.pack("<I4x", bits)
        self.objects.fixed(NET_TYPE_INDEX[type_name], body)
        self.count += 1

    def payload(self) -> bytes:
        return payload(self.dependencies.getvalue(), self.objects.getvalue())
