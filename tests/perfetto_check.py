"""Decodes a Perfetto trace with the Perfetto protobuf definitions and checks it the way
trace_processor reads it: sequence flags, interning, tracks described before use, proper nesting.
Also a reference writer (one protobuf message per packet) that spanlake's bytes and speed are
compared with."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from google.protobuf.internal.encoder import _VarintBytes
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TracePacket, TrackEvent

from spanlake.views.perfetto.writer import unique_pid, unique_tids

SLICE_BEGIN = TrackEvent.TYPE_SLICE_BEGIN
SLICE_END = TrackEvent.TYPE_SLICE_END

Slice = tuple[str, int, int]  # name, begin, end


@dataclass
class DecodedTrace:
    tracks: dict[int, object]
    slices: dict[int, list[Slice]]  # per track uuid
    enclosing: dict[Slice, Slice | None]  # the slice each slice is drawn inside, on its track

    def all_slices(self) -> Counter:
        return Counter(s for track in self.slices.values() for s in track)


def decode_and_check(data: bytes) -> DecodedTrace:
    """Structural checks of a whole trace, and its slices as trace_processor would pair them.

    Events of a track are sorted by timestamp (stably, in packet order, like trace_processor's sorter)
    and paired with a stack; each END must close the BEGIN written right before it (the writer emits
    a span's two packets back to back), which holds only if the track's slices nest properly."""
    packets = Trace.FromString(data).packet
    assert packets, "empty trace"
    assert packets[0].sequence_flags == 3 and packets[0].first_packet_on_sequence
    interned: dict[str, dict[int, object]] = {"categories": {}, "names": {}, "locations": {}}
    tracks: dict[int, object] = {}
    events: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for index, packet in enumerate(packets):
        assert packet.trusted_packet_sequence_id == 1
        if index:
            assert packet.sequence_flags == 2 and not packet.HasField("first_packet_on_sequence")
        data_field = packet.interned_data
        for table, entries in (
            ("categories", data_field.event_categories),
            ("names", data_field.event_names),
            ("locations", data_field.source_locations),
        ):
            for entry in entries:
                assert entry.iid == len(interned[table]) + 1, f"{table} iid {entry.iid} out of sequence"
                interned[table][entry.iid] = entry
        if packet.HasField("track_descriptor"):
            descriptor = packet.track_descriptor
            assert descriptor.uuid not in tracks, f"track {descriptor.uuid} described twice"
            assert not descriptor.HasField("parent_uuid") or descriptor.parent_uuid in tracks
            tracks[descriptor.uuid] = descriptor
            continue
        event = packet.track_event
        assert event.track_uuid in tracks, f"packet {index} uses undescribed track {event.track_uuid}"
        assert event.name_iid in interned["names"], f"packet {index}: name iid {event.name_iid} undefined"
        assert all(iid in interned["categories"] for iid in event.category_iids)
        assert event.source_location_iid in interned["locations"]
        if event.type == SLICE_BEGIN:
            assert packets[index + 1].track_event.type == SLICE_END
        events[event.track_uuid].append((packet.timestamp, index, event.type, event.name_iid))
    slices: dict[int, list[Slice]] = {}
    enclosing: dict[Slice, Slice | None] = {}
    for track, track_events in events.items():
        stack: list[tuple[int, int, int]] = []  # begin packet index, begin, index of the enclosing one
        slices[track] = []
        by_begin_index: dict[int, Slice] = {}
        outer_of: dict[int, int | None] = {}
        for timestamp, index, kind, name_iid in sorted(track_events, key=lambda e: (e[0], e[1])):
            if kind == SLICE_BEGIN:
                outer_of[index] = stack[-1][0] if stack else None
                stack.append((index, timestamp, index))
                continue
            assert stack, f"track {track}: end at {timestamp} with no open slice"
            begin_index, begin, _ = stack.pop()
            assert begin_index == index - 1, f"track {track}: end at {timestamp} closes the wrong slice"
            by_begin_index[begin_index] = (interned["names"][name_iid].name, begin, timestamp)
            slices[track].append(by_begin_index[begin_index])
        assert not stack, f"track {track}: slices left open"
        for index, outer in outer_of.items():
            enclosing[by_begin_index[index]] = by_begin_index[outer] if outer is not None else None
    return DecodedTrace(tracks, slices, enclosing)


class ReferenceWriter:
    """micromegas' writer and ChunkSender, one protobuf message per packet, prost field order: slow and
    plainly right. Rows of spans are (begin, end, name, target, filename, line). Its pid and tids are
    spanlake's (`TrackIds.UNIQUE`) unless `micromegas_ids`."""

    def __init__(self, process_id: str, threshold: int = 8192, micromegas_ids: bool = False) -> None:
        self.process_uuid = xxhash.xxh64_intdigest(process_id.encode())
        self.micromegas_ids = micromegas_ids
        if micromegas_ids:
            self.pid = int(np.array(self.process_uuid, dtype=np.uint64).astype(np.int32))
        else:
            self.pid = unique_pid(self.process_uuid)
        self.async_uuid = xxhash.xxh64_intdigest(b"async_track", self.process_uuid)
        self.threshold = threshold
        self.buffer = b""
        self.chunks: list[bytes] = []
        self.tables: dict[str, dict] = {"categories": {}, "names": {}, "locations": {}}

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.threshold:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.chunks.append(self.buffer)
            self.buffer = b""

    def packet(self, packet: TracePacket) -> None:
        packet.trusted_packet_sequence_id = 1
        if not packet.HasField("sequence_flags"):
            packet.sequence_flags = 2
        which = packet.WhichOneof("data")
        payload = getattr(packet, which).SerializeToString()
        rest = TracePacket()
        rest.CopyFrom(packet)
        rest.ClearField(which)
        tag = {"track_event": b"\x5a", "track_descriptor": b"\xe2\x03"}[which]
        body = tag + _VarintBytes(len(payload)) + payload + rest.SerializeToString()
        self.write(b"\x0a" + _VarintBytes(len(body)))
        self.write(body)

    def descriptors(self, exe: str, threads: Sequence[Any], with_async: bool) -> None:
        """The process, thread and (optionally) async track descriptors, with micromegas's flushes."""
        packet = TracePacket(sequence_flags=3, first_packet_on_sequence=True)
        packet.track_descriptor.uuid = self.process_uuid
        packet.track_descriptor.process.pid = self.pid
        packet.track_descriptor.process.process_name = exe
        self.packet(packet)
        self.flush()
        if self.micromegas_ids:
            tids = [int(np.array(thread.tid).astype(np.int32)) for thread in threads]
        else:
            tids = unique_tids(self.pid, [thread.stream_id for thread in threads])
        for thread, tid in zip(threads, tids, strict=True):
            packet = TracePacket()
            packet.track_descriptor.uuid = xxhash.xxh64_intdigest(thread.stream_id.encode())
            packet.track_descriptor.parent_uuid = self.process_uuid
            packet.track_descriptor.thread.pid = self.pid
            packet.track_descriptor.thread.tid = tid
            packet.track_descriptor.thread.thread_name = thread.thread_name
            self.packet(packet)
        if threads:
            self.flush()
        if with_async:
            packet = TracePacket()
            packet.track_descriptor.uuid = self.async_uuid
            packet.track_descriptor.parent_uuid = self.process_uuid
            packet.track_descriptor.name = "Async Operations"
            self.packet(packet)
            self.flush()

    def spans(self, rows: Iterable[tuple], track: int) -> None:
        """SLICE_BEGIN + SLICE_END per span on `track`, a flush after every 10th span."""
        for count, (begin, end, name, target, filename, line) in enumerate(rows, start=1):
            for kind, timestamp in ((SLICE_BEGIN, begin), (SLICE_END, end)):
                packet = TracePacket(timestamp=timestamp % (1 << 64))
                event = packet.track_event
                event.type = kind
                event.track_uuid = track
                event.category_iids.append(self.iid(packet, "categories", target))
                event.name_iid = self.iid(packet, "names", name)
                event.source_location_iid = self.iid(packet, "locations", (filename, line))
                self.packet(packet)
            if count % 10 == 0:
                self.flush()

    def iid(self, packet: TracePacket, table: str, key: object) -> int:
        iids = self.tables[table]
        if key in iids:
            return iids[key]
        iid = iids[key] = len(iids) + 1
        if table == "categories":
            packet.interned_data.event_categories.add(iid=iid, name=key)
        elif table == "names":
            packet.interned_data.event_names.add(iid=iid, name=key)
        else:
            packet.interned_data.source_locations.add(iid=iid, file_name=key[0], line_number=key[1])
        return iid
