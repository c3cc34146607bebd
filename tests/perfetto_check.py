"""Decodes a Perfetto trace with the Perfetto protobuf definitions and checks it the way
trace_processor reads it: sequence flags, interning, tracks described before use, proper nesting."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

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
