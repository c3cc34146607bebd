"""Decoding micromegas transit blocks into columns (`views.decoded.DecodedBlock`).

A stored block payload is the CBOR map `{dependencies: bstr, objects: bstr}` (old objects store each
byte string as an array of ints); each byte string is an LZ4 frame. Both decompressed buffers are a
sequence of entries `u8 type_index` + body, where the body is `udt.size` bytes for a fixed-size type and
`u32 size` + `size` bytes for a dynamically sized one (`udt.size == 0`). Everything is little-endian.

Decoding a block:

1. Dependencies (few per block: strings, span/log/metric descriptors, property sets) are read one by
   one into `{id: value}`; a descriptor's reference members are resolved against earlier entries.
2. Object boundaries are found in one pass over the framing (a tight loop: the position of an object
   depends on the size of every object before it; ~0.1 µs per object, see benchmarks/decode.py).
3. Each fixed-size type is then decoded for all its objects at once: the object bodies are gathered
   into a `(n, size)` byte matrix viewed through a numpy structured dtype built from the metadata
   offsets, so every member becomes a numpy column. Reference members (u64 ids) are dictionary-encoded
   and only their distinct ids are looked up in the dependencies, giving `ValueColumn`s.
4. Dynamically sized types: the common log events made of fixed fields + one string
   (`LogStringEventV2`, `TaggedLogString`) are read like fixed types, only their text is decoded per
   object; the rarer ones (interop and legacy logs, images) are read object by object by the readers
   of `lakehouse.transit_dynamic`; an unknown dynamic type is skipped (with a warning) by size.

The result groups objects by type (`ObjectGroup`: positions within the block + columns), which is the
shape the view builders consume. `decode_blocks` decodes consecutive blocks of a stream as one: their
objects buffers joined, framed and decoded in one pass (steps 2–4 once for many blocks), references
resolved against the blocks' dependencies merged (each object's own block must hold what it references),
and each block given as its range of that decoding (`DecodedBlock.part`). `object_values` turns a
block back into one value per object, the way micromegas's own decoder prints a block.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import cbor2
import lz4.frame
import numpy as np
import pyarrow as pa

from spanlake.lakehouse.transit.dynamic import (
    CUSTOM_TYPE_NAMES,
    DYNAMIC_TYPES,
    STRING_TAIL_TYPES,
    DependencyReader,
    StringTail,
    decode_texts,
    nest,
    read_string,
)
from spanlake.lakehouse.transit.metadata import (
    PRIMITIVES,
    Layout,
    TransitError,
    TypeTable,
    UserDefinedType,
    parse_udts,
)
from spanlake.views.decoded import U8, Column, DecodedBlock, ObjectGroup, TransitObject, Value, ValueColumn

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INFLATION",
    "FrameCheck",
    "Framing",
    "InflatedBlock",
    "InflationLimit",
    "StreamLayout",
    "TransitError",
    "decode_block",
    "decode_blocks",
    "decode_buffers",
    "decompress",
    "frame_objects",
    "inflate_block",
    "inflated_chunks",
    "object_values",
    "read_block_dependencies",
    "read_dependencies",
    "split_payload",
    "stream_layout",
]


@dataclass(frozen=True)
class StreamLayout:
    """The type lists of one stream (from `streams.dependencies_metadata` / `objects_metadata`)."""

    dependency_types: TypeTable
    object_types: TypeTable


@lru_cache(maxsize=256)
def stream_layout(dependencies_metadata: bytes, objects_metadata: bytes) -> StreamLayout:
    """Parse (once per distinct metadata) the CBOR type lists stored with a stream."""
    return StreamLayout(
        TypeTable(parse_udts(dependencies_metadata, "dependencies_metadata")),
        TypeTable(parse_udts(objects_metadata, "objects_metadata")),
    )


# ---------------------------------------------------------------------------------------------------
# Payload envelope


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    """The stored CBOR envelope → (dependencies, objects), each still LZ4-compressed."""
    try:
        envelope = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as error:
        raise TransitError(f"block payload: not valid CBOR ({error})") from error
    if not isinstance(envelope, dict):
        raise TransitError(f"block payload: expected a CBOR map, got {type(envelope).__name__}")
    return _byte_buffer(envelope, "dependencies"), _byte_buffer(envelope, "objects")


def _byte_buffer(envelope: dict, key: str) -> bytes:
    value = envelope.get(key)
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):  # legacy serde_byte_buf form: an array of ints
        try:
            return bytes(value)
        except (TypeError, ValueError) as error:
            raise TransitError(f"block payload: {key} is an array but not of bytes ({error})") from error
    raise TransitError(f"block payload: missing or invalid {key!r} (expected a byte string)")


@dataclass(frozen=True)
class InflationLimit:
    """How far a block's LZ4 frame may inflate: at most `max_bytes`, and at most `max_ratio` times its
    compressed size once past `ratio_floor` bytes (tiny frames of repeated data compress very well)."""

    max_bytes: int = 64 * 1024 * 1024
    max_ratio: int = 100
    ratio_floor: int = 1024 * 1024

    def cap(self, compressed_size: int) -> int:
        """The most bytes a frame of `compressed_size` bytes may inflate to."""
        return min(self.max_bytes, max(self.ratio_floor, compressed_size * self.max_ratio))


DEFAULT_INFLATION = InflationLimit()
_INFLATE_CHUNK = 4 * 1024 * 1024
# The pieces `FrameCheck` inflates a frame in: small enough to reuse the same freed memory each time.
_CHECK_CHUNK = 64 * 1024


def inflated_chunks(
    frame: bytes | memoryview, what: str, limit: InflationLimit = DEFAULT_INFLATION, chunk: int = _INFLATE_CHUNK
) -> Iterator[bytes]:
    """The content of an LZ4 frame, in pieces of at most `chunk` bytes: never more than `limit` allows,
    whatever the frame's header declares (a header may claim 2^40 bytes), else `TransitError`. The
    frame is read in place (a view of a request body is never copied)."""
    if not frame:
        return
    cap = limit.cap(len(frame))
    context = lz4.frame.create_decompression_context()
    rest, size = memoryview(frame), 0
    try:
        while True:
            piece, read, end = lz4.frame.decompress_chunk(context, rest, max_length=min(chunk, cap - size + 1))
            rest = rest[read:]
            size += len(piece)
            if size > cap:
                raise TransitError(f"{what}: inflates past {cap} bytes ({len(frame)} compressed); not decoded")
            if not piece and not read and not end:
                raise TransitError(f"{what}: invalid or truncated LZ4 frame (ends before its end mark)")
            yield piece
            if end:
                return
    except RuntimeError as error:
        raise TransitError(f"{what}: invalid or truncated LZ4 frame ({error})") from error


def decompress(frame: bytes, what: str, limit: InflationLimit = DEFAULT_INFLATION) -> bytes:
    """An LZ4 frame → its content (an empty buffer stays empty), within `limit`."""
    return b"".join(inflated_chunks(frame, what, limit))


class FrameCheck:
    """The check that both LZ4 frames of a block inflate within a limit (what ingestion can check of a
    block without its stream's metadata), run in steps: a first part may run where the caller is (the
    event loop, sparing a thread hop) and the rest elsewhere (a thread), never both at once. Keeps no
    inflated byte: it inflates in small pieces, each freed before the next (a 4 MiB piece would be new
    memory, page-faulted, every time)."""

    def __init__(
        self, dependencies: bytes | memoryview, objects: bytes | memoryview, limit: InflationLimit = DEFAULT_INFLATION
    ) -> None:
        self._pieces = itertools.chain(
            inflated_chunks(dependencies, "dependencies buffer", limit, _CHECK_CHUNK),
            inflated_chunks(objects, "objects buffer", limit, _CHECK_CHUNK),
        )

    def run(self, budget: int | None = None) -> bool:
        """Goes on inflating, up to about `budget` more bytes (None: to the end): True once both frames
        are checked, False when the budget ran out first; `TransitError` when a frame is refused."""
        inflated = 0
        for piece in self._pieces:
            inflated += len(piece)
            if budget is not None and inflated >= budget:
                return False
        return True


def decode_block(payload: bytes, layout: StreamLayout, limit: InflationLimit = DEFAULT_INFLATION) -> DecodedBlock:
    """Decode a stored block payload (the object at `blobs/{process}/{stream}/{block}`)."""
    inflated = inflate_block(payload, layout, limit)
    return _decode_with(inflated.objects, layout, _Resolver(inflated.dependencies))


def decode_blocks(
    payloads: Sequence[bytes], layout: StreamLayout, limit: InflationLimit = DEFAULT_INFLATION
) -> list[DecodedBlock | TransitError]:
    """Decode several block payloads of one stream layout in one pass, each block's result being its
    `DecodedBlock` (a part of their joint decoding, `DecodedBlock.part`) or the error that makes it
    undecodable. Their objects buffers are framed and decoded as one, so a block's fixed cost is only
    its envelope and LZ4 frames; when the joint pass fails (a bad block, two blocks giving one
    dependency id different values), the blocks are decoded one by one, so a bad block fails alone."""
    inflated: list[InflatedBlock | TransitError] = []
    for payload in payloads:
        try:
            inflated.append(inflate_block(payload, layout, limit))
        except TransitError as error:
            inflated.append(error)
    good = [index for index, part in enumerate(inflated) if not isinstance(part, TransitError)]
    parts = [inflated[index] for index in good]
    try:
        decoded = _decode_joined(parts, layout) if len(parts) > 1 else [_decode_alone(part, layout) for part in parts]
    except TransitError:
        decoded = [_decode_alone(part, layout) for part in parts]
    results: list[DecodedBlock | TransitError] = list(inflated)  # type: ignore[arg-type]  # errors stay
    for index, block in zip(good, decoded, strict=True):
        results[index] = block
    return results


class InflatedBlock(NamedTuple):
    """A block's objects buffer, inflated, and its dependencies, read."""

    objects: bytes
    dependencies: dict[int, Value]


def inflate_block(payload: bytes, layout: StreamLayout, limit: InflationLimit = DEFAULT_INFLATION) -> InflatedBlock:
    """A payload's inflated objects buffer and its dependencies (read once per repeated buffer)."""
    dependencies, objects = split_payload(payload)
    deps = _known_dependencies.get(layout, dependencies)
    if deps is None:
        inflated = decompress(dependencies, "dependencies buffer", limit)
        deps = read_dependencies(inflated, layout.dependency_types)
        _known_dependencies.add(layout, dependencies, len(inflated), deps)
    return InflatedBlock(decompress(objects, "objects buffer", limit), deps)


def _decode_alone(part: InflatedBlock, layout: StreamLayout) -> DecodedBlock | TransitError:
    try:
        return _decode_with(part.objects, layout, _Resolver(part.dependencies))
    except TransitError as error:
        return error


def _decode_joined(parts: Sequence[InflatedBlock], layout: StreamLayout) -> list[DecodedBlock]:
    """The blocks' objects buffers framed and decoded as one buffer, then cut back into blocks;
    TransitError when any block fails or the blocks give one dependency id different values."""
    buffer = b"".join(objects for objects, _ in parts)
    offsets = np.cumsum([0] + [len(objects) for objects, _ in parts], dtype=np.int64)
    framing = frame_objects(buffer, layout.object_types, "objects buffer")
    firsts = np.searchsorted(framing.entry_start, offsets)  # each block's first object (entries are sorted)
    inside = offsets[:-1] < len(buffer)  # an empty last block starts at the end
    if not np.array_equal(framing.entry_start[firsts[:-1][inside]], offsets[:-1][inside]):
        raise TransitError("objects buffer: a block's last object runs into the next block")
    resolver = _run_resolver([deps for _, deps in parts], firsts[:-1])
    groups = _decode_objects(buffer, framing, layout.object_types, resolver)
    run = DecodedBlock(nb_objects=len(framing.type_index), groups=groups, dependencies=resolver.merged)
    bounds = firsts.tolist()
    return [run.part(start, stop, deps) for start, stop, (_, deps) in zip(bounds[:-1], bounds[1:], parts, strict=True)]


class KnownDependencies:
    """The dependencies read from the latest blocks, by stream layout and compressed buffer: a producer
    sends the same dependencies with block after block of a stream, so they are read once. Bounded in
    entries and in the size of the buffers kept; shared by the threads that decode."""

    def __init__(self, entries: int, max_inflated_bytes: int) -> None:
        """A cache of at most `entries` buffers, each inflating to at most `max_inflated_bytes`."""
        self.entries = entries
        self.max_inflated_bytes = max_inflated_bytes
        self._lock = threading.Lock()
        # The layout is kept with its dependencies: alive, its id is never another layout's.
        self._by_buffer: OrderedDict[tuple[int, bytes], tuple[StreamLayout, dict[int, Value]]] = OrderedDict()

    def get(self, layout: StreamLayout, buffer: bytes) -> dict[int, Value] | None:
        """The dependencies read from this compressed buffer with this layout, or None."""
        with self._lock:
            known = self._by_buffer.get((id(layout), buffer))
        return None if known is None or known[0] is not layout else known[1]

    def add(self, layout: StreamLayout, buffer: bytes, inflated_bytes: int, deps: dict[int, Value]) -> None:
        """Keeps the dependencies read from a buffer (unless it inflated past the size kept)."""
        if inflated_bytes > self.max_inflated_bytes:
            return
        with self._lock:
            self._by_buffer[(id(layout), buffer)] = (layout, deps)
            while len(self._by_buffer) > self.entries:
                self._by_buffer.popitem(last=False)


_known_dependencies = KnownDependencies(entries=64, max_inflated_bytes=256 * 1024)


def read_block_dependencies(
    payload: bytes, layout: StreamLayout, limit: InflationLimit = DEFAULT_INFLATION
) -> dict[int, Value]:
    """The dependencies of a stored block payload alone (its objects stay compressed): enough for
    `views.span_traces.block_traces`."""
    dependencies, _ = split_payload(payload)
    return read_dependencies(decompress(dependencies, "dependencies buffer", limit), layout.dependency_types)


def decode_buffers(dependencies: bytes, objects: bytes, layout: StreamLayout) -> DecodedBlock:
    """Decode the two decompressed buffers of a block."""
    return _decode_with(objects, layout, _Resolver(read_dependencies(dependencies, layout.dependency_types)))


def _decode_with(objects: bytes, layout: StreamLayout, resolver: _Resolver) -> DecodedBlock:
    framing = frame_objects(objects, layout.object_types, "objects buffer")
    groups = _decode_objects(objects, framing, layout.object_types, resolver)
    return DecodedBlock(nb_objects=len(framing.type_index), groups=groups, dependencies=resolver.merged)


# ---------------------------------------------------------------------------------------------------
# Framing


@dataclass(frozen=True)
class Framing:
    """Where each object of a buffer is: its type index and the byte range of its body."""

    type_index: np.ndarray  # uint8
    body_start: np.ndarray  # int64
    body_size: np.ndarray  # int64
    entry_start: np.ndarray  # int64: where the entry (its type byte) starts


def frame_objects(buffer: bytes, udts: Sequence[UserDefinedType], what: str) -> Framing:
    """Find every entry of a transit buffer (raises TransitError on an unknown type index or truncation)."""
    # step = bytes from an entry's type byte to the next entry; 0 = dynamic size; -1 = unknown index.
    steps = [1 + udt.size if udt.size else 0 for udt in udts] + [-1] * (256 - len(udts))
    type_bytes = np.frombuffer(buffer, dtype=np.uint8)
    starts = _uniform_starts(type_bytes, np.array(steps, dtype=np.int64))
    dynamic_starts: list[int] = []
    dynamic_sizes: list[int] = []
    if starts is None:
        starts = _walk_entries(buffer, steps, dynamic_starts, dynamic_sizes, udts, what)
    type_index = type_bytes[starts]
    fixed_sizes = np.array([udt.size for udt in udts] or [0], dtype=np.int64)
    body_start = starts + 1  # a new array: `starts` stays the entries' starts
    body_size = fixed_sizes[type_index]
    if dynamic_starts:
        dynamic = np.array(dynamic_starts, dtype=np.int64)
        body_start[dynamic] += 4
        body_size[dynamic] = dynamic_sizes
    return Framing(type_index, body_start, body_size, starts)


def _uniform_starts(type_bytes: np.ndarray, steps: np.ndarray) -> np.ndarray | None:
    """Vectorized framing when every entry has the size of the first one (e.g. a block of plain
    thread spans); None when that guess does not hold."""
    if len(type_bytes) == 0:
        return np.zeros(0, dtype=np.int64)
    step = int(steps[type_bytes[0]])
    if step <= 0 or len(type_bytes) % step:
        return None
    starts = np.arange(0, len(type_bytes), step, dtype=np.int64)
    return starts if bool(np.all(steps[type_bytes[starts]] == step)) else None


def _walk_entries(
    buffer: bytes,
    steps: list[int],
    dynamic_starts: list[int],
    dynamic_sizes: list[int],
    udts: Sequence[UserDefinedType],
    what: str,
) -> np.ndarray:
    """The general case: each entry's position depends on the sizes of all entries before it, so walk
    them in one tight loop (~0.15 µs per entry, measured by benchmarks/decode.py)."""
    starts: list[int] = []
    add_start = starts.append
    end = len(buffer)
    position = 0
    while position < end:
        step = steps[buffer[position]]
        add_start(position)
        if step > 0:
            position += step
        elif step == 0:
            if position + 5 > end:
                raise TransitError(f"{what}: object at byte {position} is truncated (no size)")
            size = int.from_bytes(buffer[position + 1 : position + 5], "little")
            dynamic_starts.append(len(starts) - 1)
            dynamic_sizes.append(size)
            position += 5 + size
        else:
            raise TransitError(
                f"{what}: invalid type index {buffer[position]} at byte {position} ({len(udts)} types in the metadata)"
            )
    if position > end:
        raise TransitError(
            f"{what}: object at byte {starts[-1]} ({udts[buffer[starts[-1]]].name}) runs past the {end}-byte buffer"
        )
    return np.array(starts, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Dependencies


def read_dependencies(buffer: bytes, types: TypeTable) -> dict[int, Value]:
    """The dependencies buffer → `{id: value}` (strings, descriptor objects, property sets)."""
    framing = frame_objects(buffer, types, "dependencies buffer")
    deps: dict[int, Value] = {}
    reader = DependencyReader(buffer, types, deps)
    for type_index, start, size in zip(
        framing.type_index.tolist(), framing.body_start.tolist(), framing.body_size.tolist(), strict=True
    ):
        udt = types[type_index]
        try:
            entry = _read_dependency(reader, udt, type_index, start, size)
        except (struct.error, IndexError) as error:
            raise TransitError(f"dependencies buffer: {udt.name} at byte {start} is truncated") from error
        if entry is None:
            continue
        dep_id, value = entry
        if dep_id in deps:
            raise TransitError(f"dependencies buffer: duplicate dependency id {dep_id} ({udt.name})")
        deps[dep_id] = value
    return deps


def _read_dependency(
    reader: DependencyReader, udt: UserDefinedType, type_index: int, start: int, size: int
) -> tuple[int, Value] | None:
    buffer = reader.buffer
    if udt.name == "StaticString":
        if size < 8:
            raise TransitError(f"dependencies buffer: StaticString at byte {start} smaller than its id")
        (dep_id,) = struct.unpack_from("<Q", buffer, start)
        try:
            return dep_id, buffer[start + 8 : start + size].decode("utf-8")
        except UnicodeDecodeError as error:
            raise TransitError(f"dependencies buffer: StaticString {dep_id} is not UTF-8") from error
    if udt.name == "StaticStringDependency":
        (dep_id,) = struct.unpack_from("<Q", buffer, start)
        text, _ = read_string(buffer, start + 8, len(buffer), f"StaticStringDependency {dep_id}")
        return dep_id, text
    if udt.name == "PropertySetDependency":
        return reader.property_set(start)
    if udt.name in CUSTOM_TYPE_NAMES:
        raise TransitError(f"dependencies buffer: {udt.name} cannot be a dependency (it has no id)")
    if udt.size == 0:
        raise TransitError(f"dependencies buffer: unknown dynamically sized dependency type {udt.name}")
    value = reader.pod(reader.types.layout(type_index), start)
    if not isinstance(value, TransitObject):
        return None  # a reference type resolves to another dependency; micromegas keeps nothing
    dep_id = value.members.get("id")
    if not isinstance(dep_id, int):
        raise TransitError(f"dependencies buffer: {udt.name} at byte {start} has no integer 'id' member")
    return dep_id & 0xFFFFFFFFFFFFFFFF, value


# ---------------------------------------------------------------------------------------------------
# Objects


def _decode_objects(buffer: bytes, framing: Framing, types: TypeTable, resolver: _Resolver) -> dict[str, ObjectGroup]:
    groups: dict[str, ObjectGroup] = {}
    counts = np.bincount(framing.type_index, minlength=256)
    for type_index in np.flatnonzero(counts).tolist():
        udt = types[type_index]
        positions = np.flatnonzero(framing.type_index == type_index)
        if udt.size:
            group = _decode_fixed(buffer, framing, positions, types.layout(type_index), resolver)
        elif udt.name in STRING_TAIL_TYPES:
            group = _decode_string_tail(buffer, framing, positions, udt.name, STRING_TAIL_TYPES[udt.name], resolver)
        elif udt.name in DYNAMIC_TYPES:
            group = _decode_dynamic(buffer, framing, positions, udt.name, types, resolver)
        else:
            logger.warning("skipping %d objects of unknown dynamically sized type %s", len(positions), udt.name)
            group = ObjectGroup(udt.name, positions, {})
        if udt.name in groups:
            raise TransitError(f"objects buffer: two object types are named {udt.name}")
        groups[udt.name] = group
    return groups


def _decode_fixed(
    buffer: bytes, framing: Framing, positions: np.ndarray, layout: Layout, resolver: _Resolver
) -> ObjectGroup:
    """Decode every object of one fixed-size type at once through a structured dtype."""
    records = _gather(buffer, framing.body_start[positions], layout.dtype)
    columns: dict[str, Column] = {}
    for leaf in layout.leaves:
        values = np.ascontiguousarray(records[leaf.column])
        if leaf.kind == "ref":
            columns[leaf.column] = resolver.resolve(values, positions, f"{layout.udt.name}.{leaf.column}")
        else:
            columns[leaf.column] = values
    return ObjectGroup(
        layout.udt.name,
        positions,
        columns,
        nested_type_names=dict(layout.nested_type_names),
        is_reference=layout.udt.is_reference,
    )


def _gather(buffer: bytes, starts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The records of `dtype` at byte offsets `starts`: one structured array, one column per field."""
    size = dtype.itemsize
    # Row p of `windows` is buffer[p : p + size] (a view, no copy); taking the rows at the object
    # starts copies exactly the objects' bytes, which the structured dtype then reads as columns.
    windows = np.ndarray((len(buffer) - size + 1, size), dtype=np.uint8, buffer=buffer, strides=(1, 1))
    return windows[starts].view(dtype).reshape(len(starts))


def _decode_string_tail(
    buffer: bytes,
    framing: Framing,
    positions: np.ndarray,
    type_name: str,
    tail: StringTail,
    resolver: _Resolver,
) -> ObjectGroup:
    """Fixed fields + one DynString, for all objects at once (only the text decoding is per object)."""
    header_size = tail.string_offset + 5
    starts = framing.body_start[positions]
    available = framing.body_size[positions] - header_size

    def where(row: int) -> str:
        return f"{type_name} object {positions[row]}"

    _fail_at(available < 0, lambda row: f"{where(row)}: truncated")
    offsets = [offset for _, _, offset in tail.fields] + [tail.string_offset, tail.string_offset + 1]
    formats = [PRIMITIVES[kind][0] for _, kind, _ in tail.fields] + ["u1", "<u4"]
    names = [name for name, _, _ in tail.fields] + ["codec", "length"]
    records = _gather(buffer, starts, np.dtype({"names": names, "formats": formats, "offsets": offsets}))
    codecs, lengths = records["codec"], records["length"].astype(np.int64)
    _fail_at(
        lengths > available,
        lambda row: f"{where(row)}: truncated string: need {lengths[row]} bytes, have {available[row]}",
    )
    _fail_at(codecs > 2, lambda row: f"{where(row)}: invalid string codec {codecs[row]}")
    _fail_at((codecs == 1) & (lengths % 2 == 1), lambda row: f"{where(row)}: wrong utf-16 buffer size")
    text_starts = starts + header_size
    texts = decode_texts(
        buffer,
        text_starts.tolist(),
        (text_starts + lengths).tolist(),
        codecs.tolist() if np.any(codecs == 1) else None,
    )
    columns: dict[str, Column] = {tail.string_member: ValueColumn(np.arange(len(texts), dtype=np.int32), texts)}
    for name, kind, _ in tail.fields:
        values = np.ascontiguousarray(records[name])
        columns[name] = resolver.resolve(values, positions, f"{type_name}.{name}") if kind == "ref" else values
    return ObjectGroup(type_name, positions, columns)


def _fail_at(bad: np.ndarray, describe: Callable[[int], str]) -> None:
    """Raise TransitError describing the first row flagged `bad`."""
    flagged = np.flatnonzero(bad)
    if len(flagged):
        raise TransitError(describe(int(flagged[0])))


def _decode_dynamic(
    buffer: bytes,
    framing: Framing,
    positions: np.ndarray,
    type_name: str,
    types: TypeTable,
    resolver: _Resolver,
) -> ObjectGroup:
    """Read a dynamically sized type object by object, then build the same columns as fixed types."""
    dynamic = DYNAMIC_TYPES[type_name]
    starts = framing.body_start[positions]
    spans = zip(positions.tolist(), starts.tolist(), (starts + framing.body_size[positions]).tolist(), strict=True)
    rows = dynamic.read_rows(buffer, list(spans), type_name, types)
    columns: dict[str, Column] = {}
    member_values = zip(*rows, strict=True) if rows else [() for _ in dynamic.members]
    for (name, kind), values in zip(dynamic.members, member_values, strict=True):
        if kind == "value":
            columns[name] = ValueColumn(np.arange(len(values), dtype=np.int32), values)
        elif kind == "ref":
            columns[name] = resolver.resolve(np.array(values, dtype=np.uint64), positions, f"{type_name}.{name}")
        else:
            columns[name] = np.array(values, dtype=PRIMITIVES[kind][0])
    return ObjectGroup(type_name, positions, columns)


@dataclass(frozen=True)
class _Resolver:
    """What reference ids resolve against: one block's dependencies, or (`_run_resolver`) those of
    several blocks decoded together, where each object's own block must hold what it references."""

    merged: Mapping[int, Value]
    owned: Sequence[Mapping[int, Value]] = ()  # the blocks' distinct dependencies (when more than one)
    owner_starts: np.ndarray | None = None  # first object position of each block
    owner_of_block: np.ndarray | None = None  # each block's index into `owned`

    def resolve(self, ids: np.ndarray, positions: np.ndarray, member: str) -> ValueColumn:
        """Per-object dependency ids → indices into the distinct referenced values (TransitError if an
        object's block lacks one)."""
        distinct_ids, indices = _distinct_ids(ids)
        if self.owner_starts is not None and self.owner_of_block is not None:
            blocks = np.searchsorted(self.owner_starts, positions, side="right") - 1
            self._check_owned(distinct_ids, self.owner_of_block[blocks], indices, member)
        values = []
        for dep_id in distinct_ids:
            if dep_id not in self.merged:
                raise TransitError(f"{member}: dependency {dep_id} not found in the block's dependencies")
            values.append(self.merged[dep_id])
        return ValueColumn(indices, values)

    def _check_owned(self, distinct_ids: list[int], owners: np.ndarray, indices: np.ndarray, member: str) -> None:
        pairs = np.unique(owners.astype(np.int64) * len(distinct_ids) + indices).tolist()
        for pair in pairs:
            owner, code = divmod(pair, len(distinct_ids))
            if distinct_ids[code] not in self.owned[owner]:
                raise TransitError(f"{member}: dependency {distinct_ids[code]} not found in the block's dependencies")


def _run_resolver(blocks_deps: Sequence[dict[int, Value]], block_starts: np.ndarray) -> _Resolver:
    """A resolver over the dependencies of consecutive blocks (TransitError when two give one id
    different values). Blocks repeating a buffer share its dependencies (`KnownDependencies`)."""
    index_of: dict[int, int] = {}
    owner_of_block = np.array([index_of.setdefault(id(deps), len(index_of)) for deps in blocks_deps], dtype=np.int64)
    owned = list({id(deps): deps for deps in blocks_deps}.values())  # in the order of index_of
    if len(owned) == 1:
        return _Resolver(owned[0])
    merged: dict[int, Value] = {}
    for deps in owned:
        for dep_id, value in deps.items():
            known = merged.setdefault(dep_id, value)
            if known is not value and known != value:
                raise TransitError(f"dependency {dep_id} differs between the blocks decoded together")
    return _Resolver(merged, owned, block_starts, owner_of_block)


def _distinct_ids(ids: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The distinct ids and each id's index among them."""
    if len(ids) < _SMALL_FROM:  # a small block's few ids: plain Python beats numpy's fixed costs
        id_list = ids.tolist()
        distinct_ids = sorted(set(id_list))
        code_of = {dep_id: code for code, dep_id in enumerate(distinct_ids)}
        indices = np.array([code_of[dep_id] for dep_id in id_list], dtype=np.intp)
    elif len(ids) < _HASH_ENCODE_FROM:
        distinct, indices = np.unique(ids, return_inverse=True)
        distinct_ids = distinct.tolist()
    else:  # a hash-based encode beats sorting on large blocks
        encoded = pa.array(ids, type=pa.uint64()).dictionary_encode()
        distinct_ids, indices = encoded.dictionary.to_pylist(), np.asarray(encoded.indices)
    return distinct_ids, indices


_HASH_ENCODE_FROM = 4096
_SMALL_FROM = 96  # measured: the Python path wins below ~100 ids


# ---------------------------------------------------------------------------------------------------
# Back to one value per object


def object_values(block: DecodedBlock) -> list[Value]:
    """One value per object, in block order: what micromegas's decoder yields for each object.

    Objects are `TransitObject`s (nested structs rebuilt, u8 members as `U8`); an object of a
    reference type is the value it points to; an unknown dynamic object is an empty object.
    """
    values: list[Value] = [None] * block.nb_objects
    for group in block.groups.values():
        rows = _group_rows(group)
        for position, value in zip(group.positions.tolist(), rows, strict=True):
            values[position] = value
    return values


def _group_rows(group: ObjectGroup) -> list[Value]:
    names = list(group.columns)
    columns = [_column_values(group.columns[name]) for name in names]
    if group.is_reference:
        return columns[0] if columns else [None] * len(group)
    if not columns:
        return [TransitObject(group.type_name, {}) for _ in range(len(group))]
    return [
        nest(group.type_name, dict(zip(names, row, strict=True)), group.nested_type_names)
        for row in zip(*columns, strict=True)
    ]


def _column_values(column: Column) -> list[Value]:
    if isinstance(column, ValueColumn):
        return column.to_list()
    if column.dtype == np.uint8:
        return [U8(value) for value in column.tolist()]
    return column.tolist()
