"""How the lakehouse feeds a view its blocks: payloads read, then decoded (transit) or parsed (OTLP)
into the inputs of the view's rows functions (`views/view.py`).

A block that cannot be read (missing payload, unknown process, undecodable payload, a format the view
does not read) is logged and skipped: it never fails the partition of its neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from spanlake import tracing
from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.decode import otlp_block
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.source_blocks import ProcessTiming
from spanlake.lakehouse.transit import decode as transit
from spanlake.views.meta import TRANSIT_FORMAT, SourceBlock
from spanlake.views.time import converter_from_latest_timing
from spanlake.views.view import OtlpBlock, TransitBlock, View

log = logging.getLogger(__name__)

# The timing of every process the blocks belong to, by process id.
Timings = Mapping[str, ProcessTiming]

_io_pool = ThreadPoolExecutor(8, thread_name_prefix="lake-io")


def view_rows(lake: Lake, view: View, timings: Timings, blocks: Sequence[SourceBlock]) -> Iterator[pa.RecordBatch]:
    """The rows of `view` from `blocks` (insert order), as the view's rows functions build them."""
    if view.rows_from_blocks is not None:
        yield from view.rows_from_blocks(blocks)
        return
    transit_blocks = [b for b in blocks if b.stream.format == TRANSIT_FORMAT]
    otlp_blocks = [b for b in blocks if b.stream.format != TRANSIT_FORMAT]
    if transit_blocks and view.rows_from_transit:
        yield from view.rows_from_transit(_decoded(lake, transit_blocks, timings))
    if otlp_blocks and view.rows_from_otlp:
        yield from view.rows_from_otlp(_parsed(lake, view, otlp_blocks, timings))


def fetch_payloads(lake: Lake, blocks: Iterable[SourceBlock]) -> Iterator[tuple[SourceBlock, bytes | None]]:
    """Payloads in block order, read concurrently; a missing payload is logged and yields None."""
    parent = tracing.current_span_context()  # the readers run on the pool's threads

    def read(block: SourceBlock) -> bytes | None:
        try:
            with tracing.async_span("object_store.get_block", parent):
                return lake.store.get(blob_key(block.meta.process_id, block.meta.stream_id, block.meta.block_id))
        except FileNotFoundError:
            log.warning("payload of block %s is missing from the object store; skipped", block.meta.block_id)
            return None

    blocks = list(blocks)
    return zip(blocks, _io_pool.map(read, blocks), strict=True)


def _readable(
    lake: Lake, blocks: Sequence[SourceBlock], timings: Timings
) -> Iterator[tuple[SourceBlock, bytes, ProcessTiming]]:
    for block, payload in fetch_payloads(lake, blocks):
        timing = timings.get(block.meta.process_id)
        if payload is not None and timing is not None:
            yield block, payload, timing


def _decoded(lake: Lake, blocks: Sequence[SourceBlock], timings: Timings) -> Iterator[TransitBlock]:
    for block, payload, timing in _readable(lake, blocks, timings):
        try:
            with tracing.async_span("transit.decode_block"):
                layout = transit.stream_layout(block.stream.dependencies_metadata, block.stream.objects_metadata)
                decoded = transit.decode_block(payload, layout)
        except transit.TransitError as err:
            _skip(block, err)
            continue
        latest = converter_from_latest_timing(
            timing.process, timing.last_block_end_ticks, timing.last_block_end_time_ns
        )
        yield TransitBlock(decoded, block.meta, block.stream.meta, timing.process, latest)


def _parsed(lake: Lake, view: View, blocks: Sequence[SourceBlock], timings: Timings) -> Iterator[OtlpBlock]:
    for block, payload, timing in _readable(lake, blocks, timings):
        try:
            yield otlp_block(view, block.stream.format, payload, timing.process, block.meta)
        except OtlpBlockError as err:
            _skip(block, err)


def _skip(block: SourceBlock, reason: object) -> None:
    log.warning(
        "block %s of stream %s cannot be decoded, skipped: %s", block.meta.block_id, block.meta.stream_id, reason
    )
