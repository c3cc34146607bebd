"""The trace index's catch-up: indexing the blocks stored before their traces could be read.

Such blocks wait in `trace_index_pending` (migration 0011): a native block that arrived before its
stream or process row (its trace facts need the stream's types and the process's clock), every block
of bulk ingestion (replicated tables arrive one by one, payloads apart), and, once, every block a lake
stored before the index could index it (the migration queues them). The maintenance daemon runs
`catch_up` each second: it takes the blocks due, reads the traces of those whose stream, process and
payload are stored (OTLP traces blocks and cpu blocks; other blocks hold none), indexes them (one
upsert for the batch, one entry per trace and process) and forgets them. A block not ready is due
again after a delay doubling per try up to RETRY_MAX_S, so one that never completes costs a row read
every few minutes until retention deletes its row.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import asyncpg
import numpy as np

from spanlake import tracing
from spanlake.lakehouse.block_traces import (
    NO_TRACES,
    BlockTraces,
    cpu_stream_layout,
    grouped_traces,
    otlp_block_traces,
    transit_block_traces,
)
from spanlake.lakehouse.errors import BadBlockError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.timestamps import datetime_to_ns
from spanlake.lakehouse.transit.decode import InflationLimit
from spanlake.views.meta import OTLP_TRACES_FORMAT, BlockMeta, ProcessMeta

log = logging.getLogger(__name__)

BATCH = 500  # blocks per try: one read of their rows, one upsert, one update of the queue
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 600.0


@dataclass
class CatchUpReport:
    """What catching up did: blocks indexed (or found to hold no traces) and blocks postponed."""

    indexed: int = 0
    postponed: int = 0


def catch_up(lake: Lake, budget_s: float) -> CatchUpReport:
    """Indexes the queued blocks due, a batch at a time, until none is left or `budget_s` is spent.
    Nothing due: one query, and no span in spanlake's own telemetry."""
    report = CatchUpReport()
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        due = lake.loop.run(lake.catalog.due_trace_blocks(BATCH))
        if not due:
            break
        with tracing.async_span("maintenance.trace_index_catch_up"):
            indexed, postponed = _index_blocks(lake, due)
        report.indexed += indexed
        report.postponed += postponed
        if len(due) < BATCH:
            break
    if report.indexed or report.postponed:
        log.debug("trace index catch-up: %s", report)
    return report


def _index_blocks(lake: Lake, due: list[uuid.UUID]) -> tuple[int, int]:
    """Indexes the traces of the due blocks that are ready, postpones the others; their counts."""
    settings = lake.settings
    inflation = InflationLimit(settings.max_inflated_block_bytes, settings.max_inflation_ratio)
    traces_by_process: dict[uuid.UUID, list[BlockTraces]] = {}
    indexed: list[uuid.UUID] = []
    for row in lake.loop.run(lake.catalog.trace_block_sources(due)):
        try:
            traces = _stored_block_traces(lake, row, inflation)
        except (BadBlockError, TypeError, ValueError) as err:  # unreadable types, a NULL clock: never indexable
            log.warning("block %s: traces not indexed: %s", row["block_id"], err)
            traces = NO_TRACES
        if traces is None:
            continue
        indexed.append(row["block_id"])
        if traces.trace_ids:
            traces_by_process.setdefault(row["process_id"], []).append(traces)
    merged = {process_id: _merged(block_traces) for process_id, block_traces in traces_by_process.items()}
    if merged:
        lake.loop.run(lake.catalog.index_processes_traces(merged))
    done = set(indexed)
    postponed = [block_id for block_id in due if block_id not in done]
    lake.loop.run(lake.catalog.finish_trace_indexing(indexed, postponed, RETRY_FIRST_S, RETRY_MAX_S))
    return len(indexed), len(postponed)


def _stored_block_traces(lake: Lake, row: asyncpg.Record, inflation: InflationLimit) -> BlockTraces | None:
    """The traces of a stored block (a row of `trace_block_sources`); None while its payload is not stored."""
    layout = cpu_stream_layout(row["tags"], row["dependencies_metadata"], row["objects_metadata"])
    if row["format"] != OTLP_TRACES_FORMAT and layout is None:
        return NO_TRACES  # logs, metrics, a micromegas non-cpu stream: no spans
    try:
        payload = lake.store.get(blob_key(row["process_id"], row["stream_id"], row["block_id"]))
    except FileNotFoundError:
        return None  # bulk ingestion's payloads come in their own call
    if layout is None:
        return otlp_block_traces(payload)
    return transit_block_traces(payload, layout, _process_clock(row), _block_meta(row), inflation)


def _process_clock(row: asyncpg.Record) -> ProcessMeta:
    """The process as its blocks' tick conversion needs it."""
    start_ns = datetime_to_ns(row["start_time"])
    return ProcessMeta(str(row["process_id"]), "", "", "", start_ns, row["start_ticks"], row["tsc_frequency"])


def _block_meta(row: asyncpg.Record) -> BlockMeta:
    return BlockMeta(
        str(row["block_id"]),
        str(row["stream_id"]),
        str(row["process_id"]),
        datetime_to_ns(row["begin_time"]),
        row["begin_ticks"],
        datetime_to_ns(row["end_time"]),
        row["end_ticks"],
        row["nb_objects"],
        row["object_offset"],
        datetime_to_ns(row["insert_time"]),
    )


def _merged(block_traces: list[BlockTraces]) -> BlockTraces:
    """The traces of several blocks of one process as one entry per trace (its widest range)."""
    ids = b"".join(trace_id for traces in block_traces for trace_id in traces.trace_ids)
    begins = np.concatenate([np.asarray(traces.begin_ns, np.int64) for traces in block_traces])
    ends = np.concatenate([np.asarray(traces.end_ns, np.int64) for traces in block_traces])
    return grouped_traces(ids, begins, ends)
