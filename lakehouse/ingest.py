"""Storing an ingested block: the payload first, then the row.

Both writes are idempotent on the client's ids (the payload is created only if absent, the row
inserted only if new), so a retried write stores things once, and no row ever points at a missing
payload. Used by the ingestion API (native and OTLP) and by self-tracing's sink; `check_block_context`
refuses a native block naming another process's stream or contradicting its process's clock.
"""

from __future__ import annotations

import asyncio

from spanlake.lakehouse.catalog import datetime_to_ns
from spanlake.lakehouse.errors import IngestRejected
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import BlockRecord, blob_key
from spanlake.lakehouse.view_rows import clock_problem
from spanlake.views.meta import BlockMeta, ProcessMeta

INLINE_WRITE_LIMIT = 64 * 1024


async def store_block(lake: Lake, record: BlockRecord, payload: bytes) -> None:
    """Stores `payload` at the block's blob key (create-only), then inserts the block's row."""
    key = blob_key(record.process_id, record.stream_id, record.block_id)
    if lake.store.scheme == "file" and len(payload) <= INLINE_WRITE_LIMIT:
        # A small local write costs less than the hop to a worker thread (benchmarks/ingest.py).
        lake.store.put_if_absent(key, payload)
    else:
        await asyncio.to_thread(lake.store.put_if_absent, key, payload)
    await lake.catalog.insert_block(record)


_CONTEXT_SQL = (
    "SELECT (SELECT process_id FROM streams WHERE stream_id = $1) AS owner, p.start_time, p.start_ticks,"
    " p.tsc_frequency FROM (SELECT 1) one LEFT JOIN processes p ON p.process_id = $2"
)


async def check_block_context(lake: Lake, record: BlockRecord) -> None:
    """`IngestRejected` when the block names a known stream of another process (it would mix two
    processes' clocks in that stream's views) or, its process known, when its times contradict its
    ticks. (A block may arrive before its stream or process: then decoding checks it.)"""
    row = await lake.pool.fetchrow(_CONTEXT_SQL, record.stream_id, record.process_id)
    if row["owner"] is not None and row["owner"] != record.process_id:
        raise IngestRejected(
            f"Block: stream {record.stream_id} belongs to process {row['owner']}, not to {record.process_id}"
        )
    if row["start_time"] is not None:
        process = ProcessMeta(
            str(record.process_id),
            "",
            "",
            "",
            datetime_to_ns(row["start_time"]),
            row["start_ticks"],
            row["tsc_frequency"],
        )
        block = BlockMeta(
            str(record.block_id),
            str(record.stream_id),
            str(record.process_id),
            record.begin_time_ns,
            record.begin_ticks,
            record.end_time_ns,
            record.end_ticks,
            record.nb_objects,
            record.object_offset,
            0,
        )
        problem = clock_problem(process, block)
        if problem is not None:
            raise IngestRejected(f"Block: {problem} (on the clock of process {record.process_id})")
