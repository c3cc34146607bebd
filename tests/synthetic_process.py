"""Synthetic processes stored straight into a lake: thread streams of nested spans and async spans,
built as transit blocks like the Rust producer's (tests/transit_builder.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from transit_builder import ThreadBlockWriter, thread_stream_metadata

from spanlake.lakehouse.ingest import store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord

TICK_NS = 1_000  # tsc_frequency 1e6: a tick is a microsecond


@dataclass
class SyntheticProcess:
    """A process started 10 minutes ago whose ticks are microseconds since its start."""

    lake: Lake
    process_id: uuid.UUID = field(default_factory=uuid.uuid4)
    start_ns: int = field(default_factory=lambda: (time.time_ns() - 600_000_000_000) // 1000 * 1000)
    exe: str = "synthetic"
    _offsets: dict[uuid.UUID, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        record = ProcessRecord(
            self.process_id, self.exe, "user", "user", "host", "linux", "cpu", 1_000_000, self.start_ns, 0, None, {}
        )
        self.lake.loop.run(self.lake.catalog.insert_process(record))

    def stream(self, properties: dict[str, str]) -> uuid.UUID:
        """A new cpu stream with these properties (`thread-name`, `thread-id`)."""
        stream_id = uuid.uuid4()
        dependencies, objects = thread_stream_metadata()
        record = StreamRecord(stream_id, self.process_id, dependencies, objects, ["cpu"], properties)
        self.lake.loop.run(self.lake.catalog.insert_stream(record))
        self._offsets[stream_id] = 0
        return stream_id

    def block(self, stream_id: uuid.UUID, writer: ThreadBlockWriter, objects: int, ticks: tuple[int, int]) -> None:
        """Stores the writer's events as one block of the stream covering `ticks` (microseconds)."""
        payload = writer.payload()
        offset = self._offsets[stream_id]
        record = BlockRecord(
            uuid.uuid4(),
            stream_id,
            self.process_id,
            self.start_ns + ticks[0] * TICK_NS,
            ticks[0],
            self.start_ns + ticks[1] * TICK_NS,
            ticks[1],
            objects,
            offset,
            len(payload),
        )
        self.lake.loop.run(store_block(self.lake, record, payload))
        self._offsets[stream_id] = offset + objects

    def thread_spans(self, stream_id: uuid.UUID, count: int, name: Callable[[int], str], first_tick: int = 1) -> None:
        """`count` consecutive top-level spans of 2 µs, span i named `name(i)`, in one block."""
        writer = ThreadBlockWriter()
        for i in range(count):
            desc = writer.span_desc(name(i), line=i % 1000)
            writer.thread(True, desc, first_tick + 3 * i)
            writer.thread(False, desc, first_tick + 3 * i + 2)
        self.block(stream_id, writer, 2 * count, (first_tick - 1, first_tick + 3 * count))

    def range_sql(self) -> str:
        """The begin and end arguments of perfetto_trace_chunks covering the whole process."""
        return "now() - INTERVAL '1 hour', now() + INTERVAL '1 hour'"
