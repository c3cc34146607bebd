"""Streams: where events wait between being recorded and being encoded into a block.

Recording is an append to a plain list (atomic under the GIL, no lock). A cpu stream belongs to
one thread and keeps two flat lists of events (`event_records`), name None unless the span is named.
The log and metrics streams are shared by all threads and keep one
(code, time, value, property_set_id) tuple per event. Draining a stream
(when it is full, or on the periodic flush) takes a snapshot of the events under the stream's
lock and closes the block: block N ends at the instant block N+1 begins. A cpu stream found full by
its own thread hands its lists over whole instead (`ThreadStream.full`).
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cbor2
from typing_extensions import override

from spanlake.tracing import udts
from spanlake.tracing.event_records import ASYNC_SLOTS, THREAD_SLOTS, EncodedBuffers
from spanlake.tracing.process_info import DualTime, ProcessInfo, format_rfc3339_ns, now_ticks
from spanlake.tracing.registry import Registry
from spanlake.tracing.sink import INSERT_BLOCK, INSERT_STREAM, Priority

# Events per block before a stream counts as full (read when a stream is created). A full cpu block is
# 1-4 MB before compression.
THREAD_BLOCK_EVENTS = 1 << 16
LOG_BLOCK_EVENTS = 1 << 14
METRICS_BLOCK_EVENTS = 1 << 15


OnFull = Callable[["PendingBlock"], None]


def _encoder() -> ModuleType:
    """The encoding module, imported on the first flush: numpy and pyarrow stay out of `import tracing`."""
    from spanlake.tracing import transit_encode

    return transit_encode


class Stream(ABC):
    """A stream of the process: its identity, its events since the last block, and how they encode."""

    priority: Priority
    layout: udts.StreamLayout

    def __init__(self, process: ProcessInfo, tags: list[str], properties: dict[str, str], on_full: OnFull) -> None:
        self.stream_id = uuid.uuid4()
        self.process = process
        self.tags = tags
        self.properties = properties
        self._on_full = on_full  # called with the drained block when a writer finds the stream full
        self.lock = threading.Lock()
        self.object_offset = 0
        self.block_begin = process.dual_time(now_ticks())
        self.announced = False  # insert_stream is sent just before the stream's first block
        self.finished = False  # the owning thread exited: drop the stream after its last flush

    def info_body(self) -> bytes:
        """The CBOR `StreamInfo` map (POST /ingestion/insert_stream)."""
        return cbor2.dumps(
            {
                "process_id": str(self.process.process_id),
                "stream_id": str(self.stream_id),
                "dependencies_metadata": self.layout.dependencies_metadata(),
                "objects_metadata": self.layout.objects_metadata(),
                "tags": self.tags,
                "properties": self.properties,
            }
        )

    def drain(self, by_owner: bool = False) -> PendingBlock | None:
        """Takes the events recorded so far as a closed block; None if there are none. `by_owner`: the
        caller is the only thread that appends to the stream (see `ThreadStream.full`)."""
        with self.lock:
            taken = self._take(by_owner)
            if taken is None:
                return None
            events, count = taken
            end = self.process.dual_time(now_ticks())
            block = PendingBlock(self, self.block_begin, end, self.object_offset, count, events)
            self.block_begin = end
            self.object_offset += count
            return block

    def full(self) -> None:
        """Drains the stream and hands the block to the flush thread (a writer found it full)."""
        block = self.drain()
        if block is not None:
            self._on_full(block)

    @abstractmethod
    def _take(self, by_owner: bool) -> tuple[Any, int] | None:
        """Removes the recorded events: (events, count), or None if there are none (`by_owner` as in
        `drain`)."""

    @abstractmethod
    def encode(self, events: Any, registry: Registry) -> EncodedBuffers:
        """The buffers of a block holding `events` (as returned by `_take`)."""


def _take_list(events: list) -> list:
    """Removes and returns the first len(events) items; appends racing with it stay for the next block."""
    count = len(events)
    taken = events[:count]
    del events[:count]
    return taken


class ThreadStream(Stream):
    """A thread's cpu stream: its thread spans and the async spans polled on it."""

    priority = Priority.TRACES
    layout = udts.THREAD_LAYOUT

    def __init__(self, process: ProcessInfo, thread: threading.Thread, on_full: OnFull) -> None:
        properties = {"thread-id": str(thread.ident), "thread-name": thread.name}
        super().__init__(process, ["cpu"], properties, on_full)
        self.thread_events: list = []
        self.async_events: list = []
        self.span_facts: list = []  # (span_id, facts JSON) of the spans that have facts
        self.thread_capacity = THREAD_BLOCK_EVENTS * THREAD_SLOTS
        self.async_capacity = THREAD_BLOCK_EVENTS * ASYNC_SLOTS

    @override
    def full(self) -> None:
        """Drains the stream and hands the block to the flush thread: called by the owning thread, the only
        one that appends to it, when a span edge filled it."""
        block = self.drain(by_owner=True)
        if block is not None:
            self._on_full(block)

    def _take(self, by_owner: bool) -> tuple[Any, int] | None:
        if not self.thread_events and not self.async_events:
            return None
        # The owner takes its lists whole and starts new ones: copying a full block's lists (up to 4 MB of
        # references, each counted and uncounted) cost its thread 35-110 ns a span. Every span edge reads
        # the stream's list afresh, so none lands in a list taken. Another thread (the flush thread) must
        # copy, as the owner may be between reading a list and extending it.
        if by_owner:
            thread_values, self.thread_events = self.thread_events, []
            async_values, self.async_events = self.async_events, []
        else:
            thread_values, async_values = _take_list(self.thread_events), _take_list(self.async_events)
        count = len(thread_values) // THREAD_SLOTS + len(async_values) // ASYNC_SLOTS
        return (thread_values, async_values, _take_list(self.span_facts)), count

    @override
    def encode(self, events: Any, registry: Registry) -> EncodedBuffers:
        return _encoder().encode_thread_events(events[0], events[1], registry, events[2])


class TupleStream(Stream):
    """A stream shared by all threads: one (code, time, value, property_set_id) tuple per event."""

    def __init__(self, process: ProcessInfo, tags: list[str], on_full: OnFull, capacity: int) -> None:
        super().__init__(process, tags, {}, on_full)
        self.events: list[tuple] = []
        self.capacity = capacity

    def _take(self, by_owner: bool) -> tuple[Any, int] | None:
        if not self.events:
            return None
        events = _take_list(self.events)
        return events, len(events)


class LogStream(TupleStream):
    """The process's log entries."""

    priority = Priority.LOGS
    layout = udts.LOG_LAYOUT

    def __init__(self, process: ProcessInfo, on_full: OnFull) -> None:
        super().__init__(process, ["log"], on_full, LOG_BLOCK_EVENTS)

    @override
    def encode(self, events: Any, registry: Registry) -> EncodedBuffers:
        return _encoder().encode_log_events(events, registry)


class MetricsStream(TupleStream):
    """The process's metrics."""

    priority = Priority.METRICS
    layout = udts.METRICS_LAYOUT

    def __init__(self, process: ProcessInfo, on_full: OnFull) -> None:
        super().__init__(process, ["metrics"], on_full, METRICS_BLOCK_EVENTS)

    @override
    def encode(self, events: Any, registry: Registry) -> EncodedBuffers:
        return _encoder().encode_metric_events(events, registry)


@dataclass
class PendingBlock:
    """A closed block waiting to be encoded (on the flush thread)."""

    stream: Stream
    begin: DualTime
    end: DualTime
    object_offset: int
    nb_objects: int
    events: Any

    def encode(self, registry: Registry) -> bytes:
        """The block's CBOR body (POST /ingestion/insert_block)."""
        process = self.stream.process
        encoder = _encoder()
        buffers = self.stream.encode(self.events, registry)
        begin = self._begin_at(buffers.earliest_ticks)
        header = encoder.BlockHeader(
            stream_id=self.stream.stream_id,
            process_id=process.process_id,
            begin_time=format_rfc3339_ns(begin.time_ns),
            begin_ticks=begin.ticks - process.start_ticks,
            end_time=format_rfc3339_ns(self.end.time_ns),
            end_ticks=self.end.ticks - process.start_ticks,
            object_offset=self.object_offset,
        )
        return encoder.block_body(header, buffers)

    def _begin_at(self, earliest: int) -> DualTime:
        """The block's begin: its events' earliest time if before `begin`."""
        # An event's time is read before it is appended: one read just before its thread's stream was
        # created, or a drain that closed the block in between, puts it before `begin`. A block must hold
        # its events' times, or queries by time range miss them.
        return self.begin if earliest >= self.begin.ticks else self.stream.process.dual_time(earliest)

    def requests(self, registry: Registry) -> list[tuple[Priority, str, bytes]]:
        """The POSTs for this block: the stream's metadata first if not sent yet, then the block."""
        block = (self.stream.priority, INSERT_BLOCK, self.encode(registry))
        if self.stream.announced:
            return [block]
        self.stream.announced = True
        return [(Priority.METADATA, INSERT_STREAM, self.stream.info_body()), block]


class NullThreadStream:
    """Where a thread's events go while telemetry is not initialized: discarded when it fills up."""

    def __init__(self, capacity: int = THREAD_BLOCK_EVENTS) -> None:
        self.thread_events: list = []
        self.async_events: list = []
        self.span_facts: list = []
        self.thread_capacity = capacity * THREAD_SLOTS
        self.async_capacity = capacity * ASYNC_SLOTS

    def full(self) -> None:
        """Discards the events."""
        self.thread_events.clear()
        self.async_events.clear()
        self.span_facts.clear()


class NullTupleStream:
    """The log or metrics stream while telemetry is not initialized."""

    def __init__(self, capacity: int) -> None:
        self.events: list[tuple] = []
        self.capacity = capacity

    def full(self) -> None:
        """Discards the events."""
        self.events.clear()
