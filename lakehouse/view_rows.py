"""How the lakehouse feeds a view its blocks: payloads read, then decoded (transit) or parsed (OTLP)
into the inputs of the view's rows functions (`views/view.py`).

A block that cannot be read (missing payload, unknown process, undecodable payload or one inflating
past the limits, a format the view does not read) or whose row contradicts itself (a time outside the
int64 nanosecond range, an end before its begin, a stream of another process, times far from what its
ticks say) is logged and skipped: it never fails the partition of its neighbours. Only
`BadBlockError` means "bad block": any other error is a bug and fails the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from spanlake import tracing
from spanlake.lakehouse.errors import BadBlockError
from spanlake.lakehouse.otlp.decode import otlp_block
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.source_blocks import ProcessTiming
from spanlake.lakehouse.transit import decode as transit
from spanlake.views.meta import TRANSIT_FORMAT, BlockMeta, ProcessMeta, SourceBlock
from spanlake.views.time import TickConverter, converter_for_block, converter_from_latest_timing, estimate_frequency
from spanlake.views.view import RUN_OBJECTS, OtlpBlock, TransitBlock, View

if TYPE_CHECKING:  # the lake holds what decodes blocks ahead (`decode_ahead`), which decodes here
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger(__name__)

# The timing of every process the blocks belong to, by process id.
Timings = Mapping[str, ProcessTiming]

_I64 = (-(2**63), 2**63 - 1)
# How far a block's times may stray from what its ticks say: clocks drift, and a process without a
# TSC frequency has it estimated from its latest block; a minute plus 1% of the process's age.
_CLOCK_SLACK_NS = 60 * 1_000_000_000
_CLOCK_SLACK_FRACTION = 100


def view_rows(lake: Lake, view: View, timings: Timings, blocks: Sequence[SourceBlock]) -> Iterator[pa.RecordBatch]:
    """The rows of `view` from `blocks` (insert order), as the view's rows functions build them."""
    blocks = [block for block in blocks if _kept(block, _row_problem(block))]
    if view.rows_from_blocks is not None:
        yield from view.rows_from_blocks(blocks)
        return
    transit_blocks = [b for b in blocks if b.stream.format == TRANSIT_FORMAT]
    otlp_blocks = [b for b in blocks if b.stream.format != TRANSIT_FORMAT]
    if transit_blocks and view.rows_from_transit:
        yield from view.rows_from_transit(_decoded(lake, transit_blocks, timings))
    if otlp_blocks and view.rows_from_otlp:
        yield from view.rows_from_otlp(_parsed(lake, view, otlp_blocks, timings))


def decoded_transit(lake: Lake, blocks: Sequence[SourceBlock], timings: Timings) -> Iterator[TransitBlock]:
    """Transit blocks (insert order) decoded as `view_rows` decodes them for a view: those it skips are
    left out."""
    return _decoded(lake, [block for block in blocks if _kept(block, _row_problem(block))], timings)


# Local payloads of up to this many blocks are read on the caller's thread: handing a few small reads to
# the pool costs more (a thread woken per read, the interpreter handed over and back) than they take.
INLINE_LOCAL_READS = 32


def fetch_payloads(lake: Lake, blocks: Iterable[SourceBlock]) -> Iterator[tuple[SourceBlock, bytes | None]]:
    """Payloads in block order, read concurrently on the lake's I/O pool (a few local ones on this
    thread); a missing payload is logged and yields None."""
    parent = tracing.current_span_context()  # the readers run on the pool's threads

    def read(block: SourceBlock) -> bytes | None:
        try:
            with tracing.async_span("object_store.get_block", parent):
                return lake.store.get(blob_key(block.meta.process_id, block.meta.stream_id, block.meta.block_id))
        except FileNotFoundError:
            log.warning("payload of block %s is missing from the object store; skipped", block.meta.block_id)
            return None

    blocks = list(blocks)
    if lake.store.scheme == "file" and len(blocks) <= INLINE_LOCAL_READS:
        return zip(blocks, map(read, blocks), strict=True)
    return zip(blocks, lake.io_pool.map(read, blocks), strict=True)


def _readable(
    lake: Lake, blocks: Sequence[SourceBlock], timings: Timings
) -> Iterator[tuple[SourceBlock, bytes, ProcessTiming]]:
    for block, payload in fetch_payloads(lake, blocks):
        timing = timings.get(block.meta.process_id)
        if payload is not None and timing is not None:
            yield block, payload, timing


def _row_problem(block: SourceBlock) -> str | None:
    """Why the block's row cannot feed a view, or None."""
    meta = block.meta
    times = (meta.begin_time_ns, meta.end_time_ns, block.process.meta.start_time_ns)
    if not all(_I64[0] <= ns <= _I64[1] for ns in times):
        return "a time (or its process's start) is outside the int64 nanosecond range"
    if meta.begin_time_ns > meta.end_time_ns or meta.begin_ticks > meta.end_ticks:
        return "it ends before it begins"
    if block.stream.meta.process_id != meta.process_id:
        return f"its stream belongs to process {block.stream.meta.process_id}, not to {meta.process_id}"
    return None


def clock_problem(process: ProcessMeta, block: BlockMeta) -> str | None:
    """Why the block's times contradict its ticks on its process's clock (the process's TSC frequency,
    else the frequency estimated from this block, as log and metric views convert), or None."""
    frequency = process.tsc_frequency
    if frequency <= 0:
        frequency = estimate_frequency(process.start_time_ns, block.end_ticks, block.end_time_ns)
        if frequency <= 0:
            return "its process has no TSC frequency and none can be estimated from this block"
    convert = TickConverter(process.start_ticks, process.start_time_ns, frequency)
    said = convert.delta_ticks_to_ns(np.array([block.begin_ticks, block.end_ticks]))
    slack = _CLOCK_SLACK_NS + abs(block.end_time_ns - process.start_time_ns) // _CLOCK_SLACK_FRACTION
    drift = max(abs(int(said[0]) - block.begin_time_ns), abs(int(said[1]) - block.end_time_ns))
    if drift > slack:
        return f"its times are {drift / 1e9:.6g} s away from what its ticks say"
    return None


def clock_problems(process: ProcessMeta, blocks: Sequence[BlockMeta]) -> list[str | None]:
    """`clock_problem` of many blocks of one process, in one numpy pass when the process has a TSC
    frequency (block by block otherwise, or when times are so far out that int64 differences overflow)."""
    times = np.array([[b.begin_ticks, b.end_ticks, b.begin_time_ns, b.end_time_ns] for b in blocks], np.int64)
    times = times.reshape(-1, 4)
    if process.tsc_frequency <= 0 or abs(process.start_time_ns) > _SAFE_NS or np.any(np.abs(times[:, 2:]) > _SAFE_NS):
        return [clock_problem(process, block) for block in blocks]
    convert = TickConverter(process.start_ticks, process.start_time_ns, process.tsc_frequency)
    said = convert.delta_ticks_to_ns(times[:, :2])
    if np.any(np.abs(said) > _SAFE_NS):
        return [clock_problem(process, block) for block in blocks]
    slack = _CLOCK_SLACK_NS + np.abs(times[:, 3] - process.start_time_ns) // _CLOCK_SLACK_FRACTION
    drift = np.abs(said - times[:, 2:]).max(axis=1)
    return [
        f"its times are {block_drift / 1e9:.6g} s away from what its ticks say" if bad else None
        for bad, block_drift in zip((drift > slack).tolist(), drift.tolist(), strict=True)
    ]


# Nanosecond times within ±2^61 subtract without overflowing int64.
_SAFE_NS = 2**61


def _latest_clock(block: SourceBlock, timing: ProcessTiming) -> TickConverter:
    """The converter async events and thread spans use (from the process's latest block; this block's
    own clock when the latest gives no frequency)."""
    process = timing.process
    if process.tsc_frequency <= 0:
        latest = estimate_frequency(process.start_time_ns, timing.last_block_end_ticks, timing.last_block_end_time_ns)
        if latest <= 0:
            return converter_for_block(process, block.meta)
    return converter_from_latest_timing(process, timing.last_block_end_ticks, timing.last_block_end_time_ns)


def _decoded(lake: Lake, blocks: Sequence[SourceBlock], timings: Timings) -> Iterator[TransitBlock]:
    """Blocks decoded many at a time: consecutive blocks of one stream layout, up to RUN_OBJECTS objects."""
    settings = lake.settings
    inflation = transit.InflationLimit(settings.max_inflated_block_bytes, settings.max_inflation_ratio)
    for run in _decode_runs(_clocked(lake, blocks, timings)):
        layout = transit.stream_layout(run[0][0].stream.dependencies_metadata, run[0][0].stream.objects_metadata)
        with tracing.async_span("transit.decode_block"):  # the span's name from when blocks decoded one by one
            decoded = transit.decode_blocks([payload for _, payload, _, _ in run], layout, inflation)
        for (block, _, process, latest), result in zip(run, decoded, strict=True):
            if isinstance(result, BadBlockError):
                _skip(block, result)
            else:
                yield TransitBlock(result, block.meta, block.stream.meta, process, latest)


_Clocked = tuple[SourceBlock, bytes, ProcessMeta, TickConverter]


def _clocked(lake: Lake, blocks: Sequence[SourceBlock], timings: Timings) -> Iterator[_Clocked]:
    """Readable blocks with their payload, process and latest clock; a block whose times contradict its
    ticks (`clock_problem`) is skipped."""
    problems = _clock_problems(blocks, timings)
    for block, payload, timing in _readable(lake, blocks, timings):
        problem = problems.get(block.meta.block_id)
        if problem is None:
            yield block, payload, timing.process, _latest_clock(block, timing)
        else:
            _skip(block, problem)


def _clock_problems(blocks: Sequence[SourceBlock], timings: Timings) -> dict[str, str]:
    """The clock problem of each block that has one, by block id (`clock_problems` by process)."""
    by_process: dict[str, list[BlockMeta]] = {}
    for block in blocks:
        by_process.setdefault(block.meta.process_id, []).append(block.meta)
    problems: dict[str, str] = {}
    for process_id, metas in by_process.items():
        timing = timings.get(process_id)
        if timing is not None:
            found = clock_problems(timing.process, metas)
            problems.update((meta.block_id, problem) for meta, problem in zip(metas, found, strict=True) if problem)
    return problems


def _decode_runs(blocks: Iterable[_Clocked]) -> Iterator[list[_Clocked]]:
    run: list[_Clocked] = []
    objects = 0
    for clocked in blocks:
        stream = clocked[0].stream
        same_layout = run and (stream.dependencies_metadata, stream.objects_metadata) == (
            run[0][0].stream.dependencies_metadata,
            run[0][0].stream.objects_metadata,
        )
        if run and (not same_layout or objects + clocked[0].meta.nb_objects > RUN_OBJECTS):
            yield run
            run, objects = [], 0
        run.append(clocked)
        objects += clocked[0].meta.nb_objects
    if run:
        yield run


def _parsed(lake: Lake, view: View, blocks: Sequence[SourceBlock], timings: Timings) -> Iterator[OtlpBlock]:
    for block, payload, timing in _readable(lake, blocks, timings):
        try:
            yield otlp_block(view, block.stream.format, payload, timing.process, block.meta)
        except BadBlockError as err:
            _skip(block, err)


def _kept(block: SourceBlock, problem: str | None) -> bool:
    if problem is not None:
        _skip(block, problem)
    return problem is None


def _skip(block: SourceBlock, reason: object) -> None:
    log.warning(
        "block %s of stream %s cannot be decoded, skipped: %s", block.meta.block_id, block.meta.stream_id, reason
    )
