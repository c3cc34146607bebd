"""Perfetto trace writer: a process's thread and async spans as a stream of protobuf `Trace` chunks.

Output and order follow micromegas `perfetto_trace_chunks` (docs/perfetto.md,
shared/spec/micromegas-perfetto.md): one sequence (trusted_packet_sequence_id 1) of `TracePacket`s,
each framed as `Trace.packet` (`0x0A` + varint length), in this order:

1. the process track descriptor (uuid xxh64(process_id), pid its low 31 bits: see `TrackIds`), then
   a flush;
2. one thread track descriptor per thread (uuid xxh64(stream_id), a tid of its own), then a flush if
   any;
3. for 'async'/'both', the "Async Operations" track descriptor, then a flush;
4. for 'thread'/'both', each thread's spans in order, SLICE_BEGIN + SLICE_END per span, a flush after
   every 10th span of the thread (the counter restarts per thread, no flush at a thread's end);
5. for 'async'/'both', the async spans (begin < end only), a flush after every 10th span;
6. a final flush.

Chunks follow the micromegas rule (views/perfetto/chunks.py): an 8192-byte threshold checked after
each write, the framing and the body of a packet being separate writes. Names, categories (targets)
and source locations (file, line) are interned on the sequence: a packet carries, in its
`interned_data`, the entries first used by it. Bytes match micromegas (prost field order: the
`track_event`/`track_descriptor` payload first, then timestamp 8, sequence id 10, interned data 12,
sequence flags 13, first_packet_on_sequence 87).

Async layout. `AsyncLayout.SINGLE_TRACK` is micromegas': every async span on the one
"Async Operations" track, which mis-pairs begin/end events when spans overlap without nesting.
`AsyncLayout.LANES` (default) spreads async spans over lanes so each track holds properly nested
slices only (rules in views/perfetto/lanes.py): lane 0 is the "Async Operations" track itself (same
uuid as micromegas), lane N >= 1 is a child track of it named "Async lane N" with uuid
xxh64(f"async_lane_{N}", seed=process uuid), described just before its first span. A span nests on
its parent's lane (by `parent_span_id`; null: a root) when it fits, so nesting on a lane always
means parenthood. The lane assignment is greedy interval chains followed with numpy (measured in
benchmarks/perfetto.py next to the previous span-by-span assigner).

Speed. Span packets are never built as protobuf messages: per batch of spans, the strings are
dictionary-encoded by pyarrow, interned once per distinct value, and the packets of the whole batch
are laid out with numpy (views/perfetto/wire.py); new interned entries and new lane descriptors are
spliced in with one `np.insert`. Memory is bounded by one slab of at most `SLAB_SPANS` spans of
encoded packets, the open chunk, the interning tables and the open async spans, whatever the trace
size: chunks are produced lazily.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from spanlake.views.perfetto.chunks import ChunkBuffer
from spanlake.views.perfetto.lanes import AsyncLaneAssigner
from spanlake.views.perfetto.wire import (
    LENGTH_DELIMITED,
    VARINT,
    Column,
    Piece,
    binary_column,
    byte_column,
    bytes_field,
    key,
    lookup_column,
    pack_rows,
    piece_lengths,
    string_field,
    varint,
    varint_column,
    varint_field,
)

CHUNK_THRESHOLD = 8 * 1024
SLAB_SPANS = 16 * 1024
SPANS_PER_FLUSH = 10
ASYNC_TRACK_NAME = "Async Operations"
SpanTypes = Literal["thread", "async", "both"]
SPAN_TYPES = ("thread", "async", "both")

_PACKET = key(1, LENGTH_DELIMITED)  # Trace.packet
# TracePacket: track_event 11 / track_descriptor 60 first (prost writes a oneof at its lowest tag,
# and the `data` oneof holds tag 1), then timestamp 8, trusted_packet_sequence_id 10 (always 1),
# interned_data 12, sequence_flags 13 (2: SEQ_NEEDS_INCREMENTAL_STATE; 3 on the first packet, which
# also clears the incremental state) and first_packet_on_sequence 87.
_TRACK_EVENT = key(11, LENGTH_DELIMITED)
_TRACK_DESCRIPTOR = 60
_TIMESTAMP = key(8, VARINT)
_SEQUENCE_ID = varint_field(10, 1)
_INTERNED_DATA = 12
_FLAGS = varint_field(13, 2)
_FIRST_PACKET_FLAGS = varint_field(13, 3) + varint_field(87, 1)
# TrackEvent: category_iids 3 (repeated, unpacked), type 9, name_iid 10, track_uuid 11,
# source_location_iid 34.
_CATEGORY_IID = key(3, VARINT)
# debug_annotations 4: DebugAnnotation {name 10: "unfinished", bool_value 2: true}; trace_processor
# shows it as the slice's arg `debug.unfinished`.
_UNFINISHED = bytes_field(4, string_field(10, "unfinished") + varint_field(2, 1))
_SLICE_TYPES = np.array([[*key(9, VARINT), 1], [*key(9, VARINT), 2]], dtype=np.uint8)  # SLICE_BEGIN, SLICE_END
_NAME_IID = key(10, VARINT)
_TRACK_UUID = key(11, VARINT)
_SOURCE_LOCATION_IID = key(34, VARINT)


class AsyncLayout(enum.Enum):
    """How async spans are laid out on tracks (see the module docstring)."""

    LANES = "lanes"
    SINGLE_TRACK = "single_track"


class TrackIds(enum.Enum):
    """The pid and tids a trace's descriptors carry.

    UNIQUE (default): the pid is the process uuid's low 31 bits, so it reads the same as the
    ProcessDescriptor's and the ThreadDescriptor's pid (trace_processor reads the first unsigned and
    the second signed: a negative pid split a process in two); each thread gets a tid of its own (31
    bits of its stream uuid, made unique within the process), since trace_processor merges threads
    of one pid and tid, and the OS reuses thread ids (it stays in the thread name).
    MICROMEGAS: micromegas's ids (the low 32 bits as int32, the stream's `thread-id`), for byte
    comparisons with its traces."""

    UNIQUE = "unique"
    MICROMEGAS = "micromegas"


@dataclass(frozen=True)
class PerfettoThread:
    """A thread track: `stream_id` of its cpu stream, `tid` (its OS thread id, as micromegas writes it
    with TrackIds.MICROMEGAS), display name."""

    stream_id: str
    tid: int
    thread_name: str


Batches = pa.RecordBatch | pa.Table | Iterable[pa.RecordBatch | pa.Table]


def process_uuid(process_id: str) -> int:
    """Track uuid of a process; `process_id` must be the canonical lowercase hyphenated uuid."""
    return xxhash.xxh64_intdigest(process_id.encode(), 0)


def thread_uuid(stream_id: str) -> int:
    """Track uuid of a thread, from its stream id."""
    return xxhash.xxh64_intdigest(stream_id.encode(), 0)


def async_lane_uuid(process_track_uuid: int, lane: int) -> int:
    """Lane 0 is micromegas' single async track; further lanes are spanlake's."""
    name = "async_track" if lane == 0 else f"async_lane_{lane}"
    return xxhash.xxh64_intdigest(name.encode(), process_track_uuid)


def unique_pid(process_track_uuid: int) -> int:
    """A pid that reads the same signed or unsigned: the uuid's low 31 bits (0 is taken by the idle
    process in trace_processor)."""
    return process_track_uuid & 0x7FFF_FFFF or 1


def unique_tids(pid: int, stream_ids: Sequence[str]) -> list[int]:
    """A distinct positive tid per stream: 31 bits of its uuid, the next free value on a collision,
    never the pid (the process's main thread)."""
    taken = {pid}
    tids = []
    for stream_id in stream_ids:
        tid = thread_uuid(stream_id) & 0x7FFF_FFFF or 1
        while tid in taken:
            tid = tid % 0x7FFF_FFFF + 1
        taken.add(tid)
        tids.append(tid)
    return tids


def _int32(value: int) -> int:
    """Rust's `as i32`: the low 32 bits, read as signed."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _descriptor_packet(descriptor: bytes, flags: bytes = _FLAGS) -> tuple[bytes, bytes]:
    body = bytes_field(_TRACK_DESCRIPTOR, descriptor) + _SEQUENCE_ID + flags
    return _PACKET + varint(len(body)), body


def _named_track(uuid: int, name: str, parent_uuid: int) -> tuple[bytes, bytes]:
    return _descriptor_packet(varint_field(1, uuid) + string_field(2, name) + varint_field(5, parent_uuid))


class _InternTable:
    """One interning table of the sequence: iids from 1 in order of first use."""

    def __init__(self, interned_field: int, entry: Callable[[int, Any], bytes]) -> None:
        self._iids: dict[Hashable, int] = {}
        self._field = interned_field
        self._entry = entry

    def intern(self, codes: np.ndarray, values: list) -> tuple[np.ndarray, list[tuple[int, bytes]]]:
        """iid of each row, and the (row, InternedData entry) of values new to the sequence.

        `codes` index `values` and are numbered by first appearance (as `pc.dictionary_encode` does),
        so new values, taken in code order, get their iids in the order the rows first use them."""
        iids = np.array([self._iids.get(value, 0) for value in values], dtype=np.uint64)
        new_codes = np.flatnonzero(iids == 0).tolist()
        entries = []
        if new_codes:
            first_rows = _first_appearances(codes)
            for code in new_codes:
                iid = len(self._iids) + 1
                self._iids[values[code]] = iid
                iids[code] = iid
                entries.append((int(first_rows[code]), bytes_field(self._field, self._entry(iid, values[code]))))
        return iids[codes], entries


def _first_appearances(codes: np.ndarray) -> np.ndarray:
    """Row where each code first appears, for codes numbered 0, 1, ... by first appearance."""
    return np.flatnonzero(np.diff(np.maximum.accumulate(codes), prepend=-1) > 0)


def _named_entry(iid: int, name: str) -> bytes:
    """EventCategory / EventName: iid 1, name 2."""
    return varint_field(1, iid) + string_field(2, name)


def _source_location_entry(iid: int, location: tuple[str, int]) -> bytes:
    """SourceLocation: iid 1, file_name 2, line_number 4 (written even when 0)."""
    filename, line = location
    return varint_field(1, iid) + string_field(2, filename) + varint_field(4, line)


def _column(batch: pa.RecordBatch, name: str, what: str) -> pa.Array:
    index = batch.schema.get_field_index(name)
    if index < 0:
        raise ValueError(f"{what} lack column {name!r} (columns: {batch.schema.names})")
    return batch.column(index)


def _timestamps(batch: pa.RecordBatch, name: str, what: str) -> np.ndarray:
    """A timestamp (or int64 ns) column as int64 ns since the epoch."""
    column = _column(batch, name, what)
    if column.null_count:
        raise ValueError(f"{what} have null {name!r} values")
    if pa.types.is_timestamp(column.type) and column.type.unit != "ns":
        column = column.cast(pa.timestamp("ns", column.type.tz))
    return column.cast(pa.int64()).to_numpy()


def _string_codes(column: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes of a (dictionary) string column numbered by first appearance, and their values."""
    if column.null_count:  # micromegas reads a null string as ""
        column = pc.fill_null(column.cast(pa.string()), "")
    if pa.types.is_dictionary(column.type):
        encoded = pc.dictionary_encode(column.indices)
        values = column.dictionary.take(encoded.dictionary)
    else:
        encoded = pc.dictionary_encode(column)
        values = encoded.dictionary
    return encoded.indices.to_numpy().astype(np.int64), values.to_pylist()


@dataclass(frozen=True)
class _Spans:
    """One slab of spans, as numpy columns."""

    begin: np.ndarray
    end: np.ndarray
    batch: pa.RecordBatch
    what: str  # "thread spans" or "async spans", for error messages

    @classmethod
    def of(cls, batch: pa.RecordBatch, what: str) -> _Spans:
        return cls(_timestamps(batch, "begin", what), _timestamps(batch, "end", what), batch, what)

    def __len__(self) -> int:
        return len(self.begin)

    def column(self, name: str) -> pa.Array:
        return _column(self.batch, name, self.what)

    def flows(self) -> Column | None:
        """The optional `flows` column (a BEGIN event's TrackEvent flow fields, encoded), as a piece
        of the 2n packets: each span's bytes on its BEGIN packet, nothing on its END packet."""
        index = self.batch.schema.get_field_index("flows")
        if index < 0:
            return None
        return binary_column(self.batch.column(index), every_other=True)

    def unfinished(self) -> np.ndarray | None:
        """The optional `unfinished` column (spans drawn to the end of the data), as a bool mask."""
        index = self.batch.schema.get_field_index("unfinished")
        if index < 0:
            return None
        mask = pc.fill_null(self.batch.column(index), False).to_numpy(zero_copy_only=False)
        return mask if mask.any() else None

    def span_ids(self) -> pa.Array:
        column = self.column("span_id")
        if column.null_count:
            raise ValueError(f"{self.what} have null 'span_id' values")
        return column

    def head(self, rows: int) -> _Spans:
        return _Spans(self.begin[:rows], self.end[:rows], self.batch.slice(0, rows), self.what)

    def where(self, keep: np.ndarray) -> _Spans:
        return _Spans(self.begin[keep], self.end[keep], self.batch.filter(pa.array(keep)), self.what)


def _slabs(batches: Batches) -> Iterator[pa.RecordBatch]:
    """Non-empty record batches of at most SLAB_SPANS rows, lazily."""
    if isinstance(batches, pa.RecordBatch | pa.Table):
        batches = [batches]
    for item in batches:
        for batch in item.to_batches() if isinstance(item, pa.Table) else [item]:
            for offset in range(0, batch.num_rows, SLAB_SPANS):
                yield batch.slice(offset, SLAB_SPANS)


def _first_regression(begin: np.ndarray, previous: int | None) -> int | None:
    """Index of the first begin smaller than the one before it (`previous` precedes the slab)."""
    if previous is not None and len(begin) and begin[0] < previous:
        return 0
    regressions = np.flatnonzero(begin[1:] < begin[:-1])
    return int(regressions[0]) + 1 if len(regressions) else None


class PerfettoTraceWriter:
    """Streaming Perfetto writer for one process; every method returns the chunks it completes.

    Methods are generators: consume each fully, in the micromegas order (see `trace_chunks`), before
    calling the next one."""

    def __init__(
        self,
        process_id: str,
        *,
        async_layout: AsyncLayout = AsyncLayout.LANES,
        chunk_threshold: int = CHUNK_THRESHOLD,
        track_ids: TrackIds = TrackIds.UNIQUE,
    ) -> None:
        self._process_uuid = process_uuid(process_id)
        self._track_ids = track_ids
        self._pid = _int32(self._process_uuid) if track_ids is TrackIds.MICROMEGAS else unique_pid(self._process_uuid)
        self._layout = async_layout
        self._chunks = ChunkBuffer(chunk_threshold)
        self._thread_tracks: dict[str, int] = {}
        self._lane_uuids: list[int] = []
        self._lanes = AsyncLaneAssigner()
        self._async_count = 0
        self._async_previous_begin: int | None = None
        self._categories = _InternTable(1, _named_entry)
        self._names = _InternTable(2, _named_entry)
        self._locations = _InternTable(4, _source_location_entry)

    def process_descriptor(self, exe: str) -> Iterator[bytes]:
        """The process track descriptor; the first packet of the trace."""
        process = varint_field(1, self._pid) + string_field(6, exe)
        descriptor = varint_field(1, self._process_uuid) + bytes_field(3, process)
        yield from self._write_packet(*_descriptor_packet(descriptor, _FIRST_PACKET_FLAGS))
        yield from self._chunks.flush()

    def thread_descriptors(self, threads: Sequence[PerfettoThread]) -> Iterator[bytes]:
        """One track descriptor per thread; must precede each thread's spans."""
        if self._track_ids is TrackIds.MICROMEGAS:
            tids = [_int32(thread.tid) for thread in threads]
        else:
            tids = unique_tids(self._pid, [thread.stream_id for thread in threads])
        for thread, tid in zip(threads, tids, strict=True):
            uuid = thread_uuid(thread.stream_id)
            self._thread_tracks[thread.stream_id] = uuid
            descriptor = varint_field(1, self._pid) + varint_field(2, tid) + string_field(5, thread.thread_name)
            yield from self._write_packet(
                *_descriptor_packet(
                    varint_field(1, uuid) + bytes_field(4, descriptor) + varint_field(5, self._process_uuid)
                )
            )
        if threads:
            yield from self._chunks.flush()

    def async_track_descriptor(self) -> Iterator[bytes]:
        """The async track descriptor (written once); must precede the async spans."""
        if not self._lane_uuids:
            self._lane_uuids.append(async_lane_uuid(self._process_uuid, 0))
            yield from self._write_packet(*_named_track(self._lane_uuids[0], ASYNC_TRACK_NAME, self._process_uuid))
        yield from self._chunks.flush()

    def thread_spans(self, stream_id: str, batches: Batches) -> Iterator[bytes]:
        """One thread's spans (columns begin, end, name, target, filename, line) in begin order."""
        if stream_id not in self._thread_tracks:
            raise ValueError(f"no thread descriptor was written for stream {stream_id}")
        track = _TRACK_UUID + varint(self._thread_tracks[stream_id])
        written = 0
        previous: int | None = None
        for batch in _slabs(batches):
            spans = _Spans.of(batch, "thread spans")
            regression = _first_regression(spans.begin, previous)
            if regression is not None:
                yield from self._write_spans(spans.head(regression), track, written)
                before = int(spans.begin[regression - 1]) if regression else previous
                raise ValueError(
                    f"thread spans out of order for stream {stream_id}: "
                    f"begin {int(spans.begin[regression])} follows {before}"
                )
            yield from self._write_spans(spans, track, written)
            written += len(spans)
            previous = int(spans.begin[-1])

    def async_spans(self, batches: Batches) -> Iterator[bytes]:
        """Async spans in begin order (columns begin, end, name, target, filename, line, and for
        the lane layout span_id, parent_span_id); spans with end <= begin are skipped."""
        if not self._lane_uuids:
            raise ValueError("the async track descriptor must be written before async spans")
        for batch in _slabs(batches):
            spans = _Spans.of(batch, "async spans")
            valid = spans.begin < spans.end
            if not valid.all():
                spans = spans.where(valid)
            regression = _first_regression(spans.begin, self._async_previous_begin)
            if regression is not None:
                yield from self._write_async_spans(spans.head(regression))
                before = int(spans.begin[regression - 1]) if regression else self._async_previous_begin
                raise ValueError(f"async spans out of order: begin {int(spans.begin[regression])} follows {before}")
            yield from self._write_async_spans(spans)

    def finish(self) -> Iterator[bytes]:
        """The last, partial chunk of the trace."""
        yield from self._chunks.flush()

    def _write_packet(self, framing: bytes, body: bytes) -> Iterator[bytes]:
        yield from self._chunks.write(framing)
        yield from self._chunks.write(body)

    def _write_async_spans(self, spans: _Spans) -> Iterator[bytes]:
        if not len(spans):
            return
        if self._layout is AsyncLayout.SINGLE_TRACK:
            yield from self._write_spans(spans, _TRACK_UUID + varint(self._lane_uuids[0]), self._async_count)
        else:
            lanes = self._lanes.assign(spans.span_ids(), spans.column("parent_span_id"), spans.begin, spans.end)
            known = len(self._lane_uuids)
            new_lane_rows = np.flatnonzero(lanes >= known)  # lanes are numbered in order of first use
            first_rows = new_lane_rows[_first_appearances(lanes[new_lane_rows] - known)]
            descriptors = [(row, *self._new_lane(known + n)) for n, row in enumerate(first_rows.tolist())]
            track = lookup_column([_TRACK_UUID + varint(uuid) for uuid in self._lane_uuids], np.repeat(lanes, 2))
            yield from self._write_spans(spans, track, self._async_count, descriptors)
        self._async_count += len(spans)
        self._async_previous_begin = int(spans.begin[-1])

    def _new_lane(self, lane: int) -> tuple[bytes, bytes]:
        uuid = async_lane_uuid(self._process_uuid, lane)
        self._lane_uuids.append(uuid)
        return _named_track(uuid, f"Async lane {lane}", self._lane_uuids[0])

    def _write_spans(
        self,
        spans: _Spans,
        track: Piece,
        written: int,
        descriptors: Sequence[tuple[int, bytes, bytes]] = (),
    ) -> Iterator[bytes]:
        """Encode and chunk a slab of spans, `written` spans of its counter before it.

        `track` is the track_uuid field of every packet (a thread) or of each packet (async lanes);
        `descriptors` (row, framing, body) are track descriptors to write before a span's packets."""
        if not len(spans):
            return
        iids, interned = self._intern(spans)
        packets = _SpanPackets.encode(spans, iids, track, interned, descriptors)
        written_rows = np.arange(written + 1, written + len(spans) + 1)
        flush_rows = np.flatnonzero(written_rows % SPANS_PER_FLUSH == 0)
        yield from self._chunks.write_run(
            packets.data.tobytes(), packets.write_ends, packets.end_packet_ends(flush_rows)
        )

    def _intern(self, spans: _Spans) -> tuple[list[np.ndarray], dict[int, bytes]]:
        """Category, name and source location iids per span, and the interned data per span row
        that first uses a value (its entries in field order: categories, names, source locations)."""
        category_iids, category_entries = self._categories.intern(*_string_codes(spans.column("target")))
        name_iids, name_entries = self._names.intern(*_string_codes(spans.column("name")))
        location_iids, location_entries = self._locations.intern(
            *_location_codes(spans.column("filename"), spans.column("line"))
        )
        by_row: dict[int, bytes] = {}
        for row, entry in category_entries + name_entries + location_entries:
            by_row[row] = by_row.get(row, b"") + entry
        interned = {row: bytes_field(_INTERNED_DATA, data) for row, data in sorted(by_row.items())}
        return [category_iids, name_iids, location_iids], interned


class _SpanPackets:
    """The SLICE_BEGIN and SLICE_END packets of a slab of spans (rows 2i and 2i + 1 for span i),
    as one byte array with the offsets where each write (framing, body) ends."""

    def __init__(self, data: np.ndarray, framing_ends: np.ndarray, body_ends: np.ndarray) -> None:
        self.data = data
        self._framing_ends = framing_ends
        self._body_ends = body_ends
        self._extra_ends = np.empty(0, dtype=np.int64)

    @classmethod
    def encode(
        cls,
        spans: _Spans,
        iids: list[np.ndarray],
        track: Piece,
        interned: dict[int, bytes],
        descriptors: Sequence[tuple[int, bytes, bytes]],
    ) -> _SpanPackets:
        """The packets of `spans`, given their iids, track, interned data (by span row) and the
        descriptor packets to put before some spans (row, framing, body)."""
        category_iids, name_iids, location_iids = (np.repeat(column, 2) for column in iids)
        rows = len(category_iids)
        event = [_CATEGORY_IID, varint_column(category_iids)]
        unfinished = spans.unfinished()
        if unfinished is not None:  # on the BEGIN packet of each such span
            annotated = np.zeros(rows, dtype=np.int64)
            annotated[0::2] = unfinished
            event.append(lookup_column([b"", _UNFINISHED], annotated))
        event += [
            byte_column(np.tile(_SLICE_TYPES, (len(spans), 1))),
            _NAME_IID,
            varint_column(name_iids),
            track,
            _SOURCE_LOCATION_IID,
            varint_column(location_iids),
        ]
        flows = spans.flows()
        if flows is not None:
            event.append(flows)
        timestamps = np.empty(rows, dtype=np.int64)
        timestamps[0::2] = spans.begin
        timestamps[1::2] = spans.end
        event_length = varint_column(piece_lengths(event, rows))
        timestamp = varint_column(timestamps.view(np.uint64))
        body = [_TRACK_EVENT, event_length, *event, _TIMESTAMP, timestamp, _SEQUENCE_ID + _FLAGS]
        interned_length = np.zeros(rows, dtype=np.int64)
        interned_length[2 * np.fromiter(interned, dtype=np.int64, count=len(interned))] = [
            len(data) for data in interned.values()
        ]
        framing_length = varint_column(piece_lengths(body, rows) + interned_length)
        packets = [_PACKET, framing_length, *body]
        starts = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(piece_lengths(packets, rows), out=starts[1:])
        # The lengths count the interned data, which is spliced in once the rows are laid out.
        packets = cls(pack_rows(packets, rows), starts[:-1] + 1 + framing_length.row_lengths(), starts[1:])
        if interned or descriptors:
            packets._splice(interned, descriptors)
        return packets

    def _splice(self, interned: dict[int, bytes], descriptors: Sequence[tuple[int, bytes, bytes]]) -> None:
        """Insert each span's interned data before its BEGIN packet's sequence flags (its last field),
        and the descriptor packets before the BEGIN packet of their span."""
        packet_starts = np.concatenate(([0], self._body_ends[:-1]))
        splice_offsets = [int(packet_starts[2 * row]) for row, _, _ in descriptors]
        splice_offsets += [int(self._body_ends[2 * row]) - len(_FLAGS) for row in interned]
        splices = [framing + body for _, framing, body in descriptors] + list(interned.values())
        order = np.argsort(splice_offsets, kind="stable")
        offsets = np.array(splice_offsets, dtype=np.int64)[order]
        sizes = np.array([len(splices[i]) for i in order], dtype=np.int64)
        inserted = np.frombuffer(b"".join(splices[i] for i in order), dtype=np.uint8)
        self.data = np.insert(self.data, np.repeat(offsets, sizes), inserted)
        shift = np.concatenate(([0], np.cumsum(sizes)))

        def moved(positions: np.ndarray) -> np.ndarray:
            """Where offsets land once the splices strictly before them are in."""
            return positions + shift[np.searchsorted(offsets, positions, side="left")]

        descriptor_starts = moved(np.array(splice_offsets[: len(descriptors)], dtype=np.int64))
        framing_lengths = np.array([len(framing) for _, framing, _ in descriptors], dtype=np.int64)
        packet_lengths = np.array([len(framing) + len(body) for _, framing, body in descriptors], dtype=np.int64)
        self._extra_ends = np.concatenate([descriptor_starts + framing_lengths, descriptor_starts + packet_lengths])
        self._framing_ends = moved(self._framing_ends)
        self._body_ends = moved(self._body_ends)

    @property
    def write_ends(self) -> np.ndarray:
        ends = np.empty(2 * len(self._body_ends), dtype=np.int64)
        ends[0::2] = self._framing_ends
        ends[1::2] = self._body_ends
        return np.sort(np.concatenate([ends, self._extra_ends])) if len(self._extra_ends) else ends

    def end_packet_ends(self, span_rows: np.ndarray) -> np.ndarray:
        """Offsets where the SLICE_END packets of these spans end."""
        return self._body_ends[2 * span_rows + 1]


def _location_codes(filenames: pa.Array, lines: pa.Array) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Codes of (filename, line) pairs numbered by first appearance, and the pairs."""
    file_codes, files = _string_codes(filenames)
    line_values = pc.fill_null(lines, 0).cast(pa.uint32()).to_numpy().astype(np.uint64)
    keys = pc.dictionary_encode(pa.array((file_codes.astype(np.uint64) << np.uint64(32)) | line_values))
    pairs = [(files[key >> 32], key & 0xFFFF_FFFF) for key in keys.dictionary.to_pylist()]
    return keys.indices.to_numpy().astype(np.int64), pairs


def trace_chunks(
    process_id: str,
    exe: str,
    threads: Sequence[PerfettoThread],
    thread_spans: Callable[[str], Batches],
    async_spans: Callable[[], Batches],
    span_types: SpanTypes = "both",
    *,
    async_layout: AsyncLayout = AsyncLayout.LANES,
    chunk_threshold: int = CHUNK_THRESHOLD,
    track_ids: TrackIds = TrackIds.UNIQUE,
) -> Iterator[bytes]:
    """The whole trace of a process as chunks, lazily, in micromegas order.

    `thread_spans(stream_id)` gives a thread's span batches and `async_spans()` the async span
    batches; each is called only when its turn comes (never for span types not requested)."""
    if span_types not in SPAN_TYPES:
        raise ValueError(f"span_types must be 'thread', 'async', or 'both', given: {span_types}")
    writer = PerfettoTraceWriter(
        process_id, async_layout=async_layout, chunk_threshold=chunk_threshold, track_ids=track_ids
    )
    yield from writer.process_descriptor(exe)
    yield from writer.thread_descriptors(threads)
    if span_types != "thread":
        yield from writer.async_track_descriptor()
    if span_types != "async":
        for thread in threads:
            yield from writer.thread_spans(thread.stream_id, thread_spans(thread.stream_id))
    if span_types != "thread":
        yield from writer.async_spans(async_spans())
    yield from writer.finish()
