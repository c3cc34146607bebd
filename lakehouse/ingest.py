"""Storing an ingested block: the payload first, then the row.

Both writes are idempotent on the client's ids (the payload is created only if absent, the row
inserted only if new), so a retried write stores things once, and no row ever points at a missing
payload. Used by the ingestion API (native and OTLP) and by self-tracing's sink; `BlockContexts`
refuses a native block naming another process's stream or contradicting its process's clock.
"""

from __future__ import annotations

import asyncio
import uuid

from spanlake.lakehouse.block_traces import NO_TRACES, BlockTraces
from spanlake.lakehouse.errors import IngestRejected
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import BlockRecord, blob_key, block_meta
from spanlake.lakehouse.timestamps import datetime_to_ns
from spanlake.lakehouse.view_rows import clock_problem
from spanlake.views.meta import ProcessMeta

INLINE_WRITE_LIMIT = 64 * 1024


async def store_block(lake: Lake, record: BlockRecord, payload: bytes, traces: BlockTraces = NO_TRACES) -> None:
    """Stores `payload` at the block's blob key (create-only), indexes the block's `traces`, then
    inserts the block's row (so a stored block's traces are always in the index)."""
    key = blob_key(record.process_id, record.stream_id, record.block_id)
    if lake.store.scheme == "file" and len(payload) <= INLINE_WRITE_LIMIT:
        # A small local write costs less than the hop to a worker thread (benchmarks/ingest.py).
        lake.store.put_if_absent(key, payload)
    else:
        await asyncio.to_thread(lake.store.put_if_absent, key, payload)
    if traces.trace_ids:
        await lake.catalog.index_traces(record.process_id, traces)
    await lake.catalog.insert_block(record)


class BlockContexts:
    """What ingestion checks a block against: the owner of its stream and its process's clock.

    Both never change once in the catalog (the first insert wins), so known ones are cached (up to
    `capacity` pairs, then forgotten at once): a client's steady stream of blocks costs no query.
    Unknown ones are asked again with each block until they arrive."""

    def __init__(self, lake: Lake, capacity: int = 10_000) -> None:
        self.lake = lake
        self.capacity = capacity
        self._known: dict[tuple[uuid.UUID, uuid.UUID], tuple[uuid.UUID, ProcessMeta]] = {}

    async def check(self, record: BlockRecord) -> ProcessMeta | None:
        """The block's process (its clock; None while unknown). `IngestRejected` when the block names a
        known stream of another process (it would mix two processes' clocks in that stream's views) or,
        its process known, when its times contradict its ticks. (A block may arrive before its stream or
        process: then decoding checks it.)"""
        owner, process = await self._context(record.stream_id, record.process_id)
        if owner is not None and owner != record.process_id:
            raise IngestRejected(
                f"Block: stream {record.stream_id} belongs to process {owner}, not to {record.process_id}"
            )
        if process is not None:
            problem = clock_problem(process, block_meta(record))
            if problem is not None:
                raise IngestRejected(f"Block: {problem} (on the clock of process {record.process_id})")
        return process

    async def _context(
        self, stream_id: uuid.UUID, process_id: uuid.UUID
    ) -> tuple[uuid.UUID | None, ProcessMeta | None]:
        known = self._known.get((stream_id, process_id))
        if known is not None:
            return known
        row = await self.lake.catalog.block_context(stream_id, process_id)
        process = None
        if row["start_time"] is not None:
            start_ns = datetime_to_ns(row["start_time"])
            process = ProcessMeta(str(process_id), "", "", "", start_ns, row["start_ticks"], row["tsc_frequency"])
        if row["owner"] is not None and process is not None:
            if len(self._known) >= self.capacity:
                self._known.clear()
            self._known[(stream_id, process_id)] = (row["owner"], process)
        return row["owner"], process
