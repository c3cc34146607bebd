"""The view sets spanlake materializes, and how the lakehouse feeds each one its blocks.

A `ViewSet` joins a view module of `views/` (schema, schema hash, rows from a decoded block) with what
the lakehouse needs to materialize it: which streams feed it, how its instances are keyed, which
columns bound a partition's event times, and the row filter a query time range implies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import col, lit
from datafusion.expr import Expr

from spanlake import tracing
from spanlake.lakehouse.metadata_views import collapse_processes, collapse_streams, metadata_batches
from spanlake.lakehouse.otlp.decode import chain_depths, otlp_view_batch
from spanlake.lakehouse.source_blocks import ProcessTiming, SourceBlock
from spanlake.lakehouse.transit import decode as transit
from spanlake.views import async_events, log_entries, measures, thread_spans
from spanlake.views import blocks as blocks_view
from spanlake.views import processes as processes_view
from spanlake.views import streams as streams_view
from spanlake.views.decoded import BlockRowsError
from spanlake.views.time import TickConverter, converter_for_block, converter_from_latest_timing

log = logging.getLogger(__name__)

TRANSIT_FORMAT = "micromegas-transit"
HOUR_SECONDS = 3600
DAY_SECONDS = 24 * HOUR_SECONDS

# Rows of a view instance from its blocks (with payloads; None when the payload is missing), given the
# timing of every process the blocks belong to, by process id.
Timings = Mapping[str, ProcessTiming]
Builder = Callable[[Timings, Iterable[tuple[SourceBlock, bytes | None]]], Iterator[pa.RecordBatch]]
# Which rows a query time range [begin, end] (ns) keeps (micromegas's TableScanRewrite filter).
TimeFilter = Callable[[int, int], Expr]


@dataclass(frozen=True)
class ViewSet:
    name: str
    schema: pa.Schema
    file_schema_hash: bytes
    instance_kind: str | None  # "process" or "stream": what a view_instance id names; None: global only
    has_global_instance: bool  # also materialized over every process, as instance 'global'
    stream_tags: tuple[str, ...]  # blocks of streams with one of these tags feed it (empty: every stream)
    event_time_columns: tuple[str, str]  # (column of the earliest, column of the latest) event time
    time_filter: TimeFilter
    build: Builder
    reads_payloads: bool = True  # False: rows come from the block rows alone
    counts_blocks: bool = False  # staleness by number of source blocks instead of source objects
    max_partition_seconds: int = DAY_SECONDS  # global instance: merges stop at partitions this long
    merge: Callable[[pa.Table], pa.Table] | None = None  # rows of merged partitions; None: concatenated


def _ts(ns: int) -> Expr:
    return lit(pa.scalar(ns, pa.timestamp("ns", tz="+00:00")))


def _time_between(column: str) -> TimeFilter:
    return lambda begin, end: (col(column) >= _ts(begin)) & (col(column) <= _ts(end))


def _overlapping(begin_column: str, end_column: str) -> TimeFilter:
    return lambda begin, end: (col(begin_column) <= _ts(end)) & (col(end_column) >= _ts(begin))


def _decode(block: SourceBlock, payload: bytes) -> transit.DecodedBlock:
    with tracing.async_span("transit.decode_block"):
        layout = transit.stream_layout(block.stream.dependencies_metadata, block.stream.objects_metadata)
        return transit.decode_block(payload, layout)


def _skip(block: SourceBlock, err: Exception) -> None:
    log.warning("block %s of stream %s cannot be decoded, skipped: %s", block.meta.block_id, block.meta.stream_id, err)


def _decoded(items: Iterable[tuple[SourceBlock, bytes | None]]) -> Iterator[tuple[SourceBlock, transit.DecodedBlock]]:
    """Decodes each transit block; a block that cannot be decoded is logged and skipped."""
    for block, payload in items:
        if payload is None or block.stream.format != TRANSIT_FORMAT:
            continue
        try:
            yield block, _decode(block, payload)
        except transit.TransitError as err:
            _skip(block, err)


TransitRows = Callable[[SourceBlock, transit.DecodedBlock, ProcessTiming], pa.RecordBatch]


def _block_batches(
    view_set_name: str, transit_rows: TransitRows, timings: Timings, items: Iterable[tuple[SourceBlock, bytes | None]]
) -> Iterator[tuple[SourceBlock, pa.RecordBatch]]:
    """Rows of each block: transit blocks through `transit_rows`, OTLP blocks through the OTLP decoder.
    A block that cannot be read is logged and skipped."""
    for block, payload in items:
        timing = timings.get(block.meta.process_id)
        if payload is None or timing is None:
            continue
        try:
            if block.stream.format == TRANSIT_FORMAT:
                yield block, transit_rows(block, _decode(block, payload), timing)
            else:
                yield block, otlp_view_batch(view_set_name, block.stream.format, payload, timing.process, block.meta)
        except (ValueError, BlockRowsError) as err:  # TransitError and OtlpBlockError are ValueErrors
            _skip(block, err)


def _per_block(view_set_name: str, transit_rows: TransitRows) -> Builder:
    def build(timings: Timings, items: Iterable[tuple[SourceBlock, bytes | None]]) -> Iterator[pa.RecordBatch]:
        return (batch for _, batch in _block_batches(view_set_name, transit_rows, timings, items))

    return build


def _async_event_batches(
    timings: Timings, items: Iterable[tuple[SourceBlock, bytes | None]]
) -> Iterator[pa.RecordBatch]:
    """Transit async events carry the depth their producer computed. OTLP spans only name their parent,
    and a parent exported in an earlier request sits in another block: their depths are resolved over
    the whole partition."""
    otlp = []
    for block, batch in _block_batches(async_events.VIEW_SET_NAME, _async_rows, timings, items):
        if block.stream.format == TRANSIT_FORMAT:
            yield batch
        else:
            otlp.append(batch)
    if otlp:
        yield _with_span_depths(pa.Table.from_batches(otlp).combine_chunks().to_batches()[0])


def _with_span_depths(batch: pa.RecordBatch) -> pa.RecordBatch:
    span_ids = batch.column("span_id").to_numpy()
    is_begin = pc.equal(batch.column("event_type").cast(pa.utf8()), "begin").to_numpy(zero_copy_only=False)
    spans, parents = span_ids[is_begin], batch.column("parent_span_id").to_numpy()[is_begin]
    order = np.argsort(spans, kind="stable")
    slots = np.minimum(np.searchsorted(spans[order], parents), max(len(spans) - 1, 0))
    found = (len(spans) > 0) & (spans[order][slots] == parents) & (parents != 0)
    depths = chain_depths(np.where(found, order[slots], -1))
    row_depths = depths[order][np.searchsorted(spans[order], span_ids)]
    index = batch.schema.get_field_index("depth")
    return batch.set_column(index, batch.schema.field(index), pa.array(row_depths, pa.uint32()))


def _latest_timing(timing: ProcessTiming) -> TickConverter:
    return converter_from_latest_timing(timing.process, timing.last_block_end_ticks, timing.last_block_end_time_ns)


def _log_rows(block: SourceBlock, decoded: transit.DecodedBlock, timing: ProcessTiming) -> pa.RecordBatch:
    convert = converter_for_block(timing.process, block.meta)
    return log_entries.build_batch(decoded, block.meta, timing.process, convert)


def _measure_rows(block: SourceBlock, decoded: transit.DecodedBlock, timing: ProcessTiming) -> pa.RecordBatch:
    convert = converter_for_block(timing.process, block.meta)
    return measures.build_batch(decoded, block.meta, timing.process, convert)


def _async_rows(block: SourceBlock, decoded: transit.DecodedBlock, timing: ProcessTiming) -> pa.RecordBatch:
    return async_events.build_batch(decoded, block.meta, _latest_timing(timing))


def _thread_span_rows(timings: Timings, items: Iterable[tuple[SourceBlock, bytes | None]]) -> Iterator[pa.RecordBatch]:
    decoded = list(_decoded(items))
    if not decoded:
        return
    timing = timings[decoded[0][0].meta.process_id]
    # Call trees follow event time: order the blocks by their ticks, not by arrival.
    decoded.sort(key=lambda item: (item[0].meta.begin_ticks, item[0].meta.end_ticks))
    try:
        yield thread_spans.build_batch(
            [(block.meta, d) for block, d in decoded], decoded[0][0].stream.meta, _latest_timing(timing)
        )
    except BlockRowsError as err:
        log.warning("thread spans of stream %s not built: %s", decoded[0][0].meta.stream_id, err)


def _metadata_rows(kind: str) -> Builder:
    def build(timings: Timings, items: Iterable[tuple[SourceBlock, bytes | None]]) -> Iterator[pa.RecordBatch]:
        return metadata_batches(kind, [block for block, _ in items])

    return build


def _metadata_view(
    module: ModuleType,
    time_filter: TimeFilter,
    bounds: tuple[str, str],
    merge: Callable[[pa.Table], pa.Table] | None = None,
) -> ViewSet:
    return ViewSet(
        module.VIEW_SET_NAME,
        module.SCHEMA,
        module.FILE_SCHEMA_HASH,
        None,
        True,
        (),
        bounds,
        time_filter,
        _metadata_rows(module.VIEW_SET_NAME),
        reads_payloads=False,
        counts_blocks=True,
        merge=merge,
    )


VIEW_SETS: dict[str, ViewSet] = {
    view.name: view
    for view in (
        ViewSet(
            log_entries.VIEW_SET_NAME,
            log_entries.SCHEMA,
            log_entries.FILE_SCHEMA_HASH,
            "process",
            True,
            ("log",),
            ("time", "time"),
            _time_between("time"),
            _per_block(log_entries.VIEW_SET_NAME, _log_rows),
            max_partition_seconds=HOUR_SECONDS,
        ),
        ViewSet(
            measures.VIEW_SET_NAME,
            measures.SCHEMA,
            measures.FILE_SCHEMA_HASH,
            "process",
            True,
            ("metrics",),
            ("time", "time"),
            _time_between("time"),
            _per_block(measures.VIEW_SET_NAME, _measure_rows),
            max_partition_seconds=HOUR_SECONDS,
        ),
        # OTLP trace spans land in async_events too (micromegas has no OTLP source for it).
        ViewSet(
            async_events.VIEW_SET_NAME,
            async_events.SCHEMA,
            async_events.FILE_SCHEMA_HASH,
            "process",
            False,
            ("cpu", "trace"),
            ("time", "time"),
            _time_between("time"),
            _async_event_batches,
        ),
        ViewSet(
            thread_spans.VIEW_SET_NAME,
            thread_spans.SCHEMA,
            thread_spans.FILE_SCHEMA_HASH,
            "stream",
            False,
            ("cpu",),
            ("begin", "end"),
            _overlapping("begin", "end"),
            _thread_span_rows,
        ),
        _metadata_view(blocks_view, _overlapping("begin_time", "insert_time"), ("begin_time", "insert_time")),
        _metadata_view(
            processes_view,
            _overlapping("insert_time", "last_update_time"),
            ("insert_time", "last_update_time"),
            collapse_processes,
        ),
        _metadata_view(
            streams_view,
            _overlapping("insert_time", "last_update_time"),
            ("insert_time", "last_update_time"),
            collapse_streams,
        ),
    )
}
GLOBAL_TABLES = ("log_entries", "measures", "processes", "streams", "blocks")
# The order the maintenance daemon materializes global views in (metadata first, as micromegas's groups).
MAINTAINED = ("blocks", "processes", "streams", "log_entries", "measures")
