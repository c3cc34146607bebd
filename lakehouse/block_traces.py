"""The traces of a block, for the trace index (at ingestion, or later for a block stored before they
could be read: `lakehouse.trace_catch_up`): the distinct trace ids its spans carry,
with the earliest begin and latest end of each trace's spans in the block (one entry per trace, not
per span, so indexing a block costs one small upsert). OTLP spans give their start and end; the SDK's
trace facts give span begins only (a span's end event names no trace), so an SDK process's range
ends at its trace's last span begin."""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanlake.lakehouse.errors import BadBlockError, OtlpBlockError
from spanlake.lakehouse.otlp.bounds import Bounds, leaves, spans_bounds, stamps
from spanlake.lakehouse.otlp.envelope import read_envelope
from spanlake.lakehouse.otlp.span_arrays import TRACE_ID_BYTES
from spanlake.lakehouse.records import BlockRecord, block_meta
from spanlake.lakehouse.transit.decode import (
    InflationLimit,
    StreamLayout,
    decompress,
    read_dependencies,
    split_payload,
    stream_layout,
)
from spanlake.views import span_traces
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.time import converter_for_block

if TYPE_CHECKING:  # the lake imports the catalog, which imports this module
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger(__name__)

_FACTS_MARKER = span_traces.MAGIC_PREFIX.encode()  # the text of the SDK's trace facts (any version) begins so


@dataclass(frozen=True)
class BlockTraces:
    """Distinct trace ids (16 bytes each) with their spans' time range in one block."""

    trace_ids: list[bytes]
    begin_ns: list[int]
    end_ns: list[int]


NO_TRACES = BlockTraces([], [], [])


def grouped_traces(trace_ids: bytes, begin_ns: np.ndarray, end_ns: np.ndarray) -> BlockTraces:
    """One entry per distinct trace id of `trace_ids` (16 bytes per span, concatenated): the earliest
    begin and latest end of its spans. All-zero trace ids (invalid in W3C) are left out. Sorted by
    (high, low) halves and reduced per run of equal ids: numpy throughout."""
    halves = np.frombuffer(trace_ids, ">u8").reshape(-1, 2).astype(np.uint64)
    valid = (halves[:, 0] != 0) | (halves[:, 1] != 0)
    high, low, begin_ns, end_ns = halves[valid, 0], halves[valid, 1], begin_ns[valid], end_ns[valid]
    if not len(high):
        return NO_TRACES
    order = np.lexsort((low, high))
    high, low, begin_ns, end_ns = high[order], low[order], begin_ns[order], end_ns[order]
    firsts = np.flatnonzero(np.r_[True, (high[1:] != high[:-1]) | (low[1:] != low[:-1])])
    raw = np.stack([high[firsts], low[firsts]], axis=1).astype(">u8").tobytes()
    ids = [raw[i : i + TRACE_ID_BYTES] for i in range(0, len(raw), TRACE_ID_BYTES)]
    begins = np.minimum.reduceat(begin_ns, firsts)
    ends = np.maximum.reduceat(end_ns, firsts)
    return BlockTraces(ids, begins.tolist(), ends.tolist())


def spans_bounds_and_traces(resource: ResourceSpans) -> tuple[Bounds | None, BlockTraces]:
    """The block bounds of an OTLP spans resource and its traces (spans with a 16-byte trace id and a
    start time): the spans' fields read in C (`bounds.leaves`, `bounds.stamps`), the rest in numpy."""
    spans = leaves(resource.scope_spans, "spans")
    ids = list(map(operator.attrgetter("trace_id"), spans))
    begins, ends = stamps(spans, "start_time_unix_nano"), stamps(spans, "end_time_unix_nano")
    kept = (np.fromiter(map(len, ids), np.int64, len(ids)) == TRACE_ID_BYTES) & (begins != 0)
    raw = b"".join(ids) if kept.all() else b"".join(itertools.compress(ids, kept))
    return spans_bounds(begins, ends), grouped_traces(raw, begins[kept], np.maximum(begins, ends)[kept])


def otlp_block_traces(payload: bytes) -> BlockTraces:
    """The traces of a stored OTLP traces block (its payload as `lakehouse.otlp.envelope` wrote it); none
    when it cannot be read."""
    try:
        resource = ResourceSpans.FromString(read_envelope(payload))
    except (OtlpBlockError, DecodeError) as err:
        log.warning("an OTLP traces block not indexed: %s", err)
        return NO_TRACES
    return spans_bounds_and_traces(resource)[1]


def transit_block_traces(
    payload: bytes, layout: StreamLayout, process: ProcessMeta, block: BlockMeta, inflation: InflationLimit
) -> BlockTraces:
    """The traces of a cpu stream's block, from the SDK's trace facts in its dependencies buffer alone
    (`views.span_traces.block_traces`); none when it has no facts or they cannot be read."""
    try:
        # As read_block_dependencies, but a buffer without the facts' marker (every block of a
        # micromegas client) is not parsed: parsing costs 4 to 50 times the block's checks.
        raw = decompress(split_payload(payload)[0], "dependencies buffer", inflation)
        if _FACTS_MARKER not in raw:
            return NO_TRACES
        dependencies = read_dependencies(raw, layout.dependency_types)
        traces = span_traces.block_traces(dependencies, converter_for_block(process, block))
    except (BadBlockError, ValueError) as err:
        log.warning("block %s: trace facts not indexed: %s", block.block_id, err)
        return NO_TRACES
    return BlockTraces(
        [bytes.fromhex(text) for text in traces.column("trace_id").to_pylist()],  # one per trace, not span
        traces.column("begin_min").cast(pa.int64()).to_pylist(),
        traces.column("begin_max").cast(pa.int64()).to_pylist(),
    )


def cpu_stream_layout(
    tags: list[str] | None, dependencies_metadata: bytes, objects_metadata: bytes
) -> StreamLayout | None:
    """The layout of a stream whose blocks may carry trace facts (tagged `cpu`), else None."""
    if "cpu" not in (tags or []):
        return None
    return stream_layout(dependencies_metadata, objects_metadata)


class _StreamNotStored(Exception):
    """A block's stream row is not in the catalog (yet)."""


class TransitBlockTraces:
    """The traces of native (transit) blocks as ingestion receives them (`transit_block_traces`). What it
    needs of a stream (is it a cpu stream, its dependency types) never changes once stored, so it is
    cached per stream (up to `capacity` streams, then forgotten at once); a stream not stored yet is
    asked again next block."""

    def __init__(self, lake: Lake, capacity: int = 10_000) -> None:
        """An empty cache over the lake's catalog."""
        self.lake = lake
        self.capacity = capacity
        self._layouts: dict[uuid.UUID, StreamLayout | None] = {}  # None: not a cpu stream

    @functools.cached_property
    def _inflation(self) -> InflationLimit:
        settings = self.lake.settings  # read at the first block: the service is built before any lake is needed
        return InflationLimit(settings.max_inflated_block_bytes, settings.max_inflation_ratio)

    async def of(self, record: BlockRecord, payload: bytes, process: ProcessMeta | None) -> BlockTraces | None:
        """The block's traces (none for a block of another stream than cpu, or whose trace facts cannot
        be read: the block itself is stored all the same). None while they cannot be known: its stream
        or, for a cpu stream, its process (the clock of its facts) is not stored yet; the maintenance
        daemon indexes such a block once they are (`lakehouse.trace_catch_up`)."""
        try:
            layout = await self._layout(record.stream_id)
        except _StreamNotStored:
            return None
        if layout is None:
            return NO_TRACES
        if process is None:
            return None
        return transit_block_traces(payload, layout, process, block_meta(record), self._inflation)

    async def _layout(self, stream_id: uuid.UUID) -> StreamLayout | None:
        if stream_id in self._layouts:
            return self._layouts[stream_id]
        row = await self.lake.catalog.stream_for_traces(stream_id)
        if row is None:
            raise _StreamNotStored(stream_id)
        layout = cpu_stream_layout(row["tags"], row["dependencies_metadata"], row["objects_metadata"])
        if len(self._layouts) >= self.capacity:
            self._layouts.clear()
        self._layouts[stream_id] = layout
        return layout
