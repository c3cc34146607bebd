"""The trace index (`trace_index`, migration 0008): which processes hold a trace's spans, and when; and
the blocks waiting to be indexed (`trace_index_pending`, migration 0011: `lakehouse.trace_catch_up`)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

import asyncpg

from spanlake.lakehouse.timestamps import ns_to_datetime

if TYPE_CHECKING:  # only a type here: importing it would import the transit decoder and DataFusion
    from spanlake.lakehouse.block_traces import BlockTraces

# A waiting block with what its traces are read with: its row, its stream's format and layout, its
# process's clock. Blocks whose stream or process is not stored are left out.
_TRACE_BLOCK_SOURCES = (
    "SELECT b.*, s.format, s.tags, s.dependencies_metadata, s.objects_metadata,"
    " p.start_time, p.start_ticks, p.tsc_frequency"
    " FROM blocks b JOIN streams s ON s.stream_id = b.stream_id JOIN processes p ON p.process_id = b.process_id"
    " WHERE b.block_id = ANY($1::uuid[])"
)


class TraceIndexRows:
    """Upserts of a block's traces, the lookup of one trace, and the queue of blocks waiting to be indexed."""

    pool: asyncpg.Pool

    async def index_traces(self, process_id: uuid.UUID, traces: BlockTraces) -> None:
        """Records that the process holds spans of these traces (`index_processes_traces`)."""
        await self.index_processes_traces({process_id: traces})

    async def index_processes_traces(self, traces_by_process: dict[uuid.UUID, BlockTraces]) -> None:
        """Records that each process holds spans of its traces (one entry per trace and process), in one
        statement: a trace's range widens, never shrinks (idempotent, so a retried block changes nothing).
        Rows go in (trace id, process) order: two blocks indexing the same traces at once cannot deadlock."""
        process_ids = [pid for pid, traces in traces_by_process.items() for _ in traces.trace_ids]
        await self.pool.execute(
            "INSERT INTO trace_index AS t (trace_id, process_id, begin_ns, end_ns)"
            " SELECT u.trace_id, u.process_id, u.begin_ns, u.end_ns"
            " FROM unnest($1::bytea[], $2::uuid[], $3::int8[], $4::int8[]) AS u(trace_id, process_id, begin_ns, end_ns)"
            " ORDER BY u.trace_id, u.process_id"
            " ON CONFLICT (trace_id, process_id) DO UPDATE"
            " SET begin_ns = least(t.begin_ns, excluded.begin_ns), end_ns = greatest(t.end_ns, excluded.end_ns)"
            " WHERE t.begin_ns > excluded.begin_ns OR t.end_ns < excluded.end_ns",
            [trace_id for traces in traces_by_process.values() for trace_id in traces.trace_ids],
            process_ids,
            [ns for traces in traces_by_process.values() for ns in traces.begin_ns],
            [ns for traces in traces_by_process.values() for ns in traces.end_ns],
        )

    async def stream_for_traces(self, stream_id: uuid.UUID) -> asyncpg.Record | None:
        """A stream's `tags` and transit metadata (`dependencies_metadata`, `objects_metadata`), or None."""
        return await self.pool.fetchrow(
            "SELECT tags, dependencies_metadata, objects_metadata FROM streams WHERE stream_id = $1", stream_id
        )

    async def trace_processes(self, trace_id: bytes) -> list[asyncpg.Record]:
        """The processes holding spans of the trace: `process_id`, `exe`, `begin_ns`, `end_ns` (the range of
        the trace's spans in it), by begin. A process whose row retention deleted is left out."""
        return await self.pool.fetch(
            "SELECT t.process_id, p.exe, t.begin_ns, t.end_ns FROM trace_index t"
            " JOIN processes p ON p.process_id = t.process_id"
            " WHERE t.trace_id = $1 ORDER BY t.begin_ns, t.process_id",
            trace_id,
        )

    async def delete_trace_index_before(self, cutoff_ns: int, limit: int) -> int:
        """Deletes up to `limit` index rows whose trace ended in the process before the cutoff; their count."""
        status = await self.pool.execute(
            "DELETE FROM trace_index WHERE ctid IN (SELECT ctid FROM trace_index WHERE end_ns < $1 LIMIT $2)",
            cutoff_ns,
            limit,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def queue_trace_indexing(
        self, block_ids: list[uuid.UUID], insert_times: list[dt.datetime | None] | None = None
    ) -> None:
        """Queues blocks for the trace index's catch-up (a block already queued stays as it is), as of
        their rows' insert times when given (replicated rows: retention trims them with their blocks), else now."""
        await self.pool.execute(
            "INSERT INTO trace_index_pending (block_id, queued_at)"
            " SELECT u.block_id, coalesce(u.insert_time, now())"
            " FROM unnest($1::uuid[], $2::timestamptz[]) AS u(block_id, insert_time)"
            " ORDER BY u.block_id ON CONFLICT DO NOTHING",
            block_ids,
            insert_times or [None] * len(block_ids),
        )

    async def due_trace_blocks(self, limit: int) -> list[uuid.UUID]:
        """Up to `limit` queued blocks due for a try: first tries before retries, the newest first (a
        large backlog, such as the upgrade's, never holds back the blocks being sent now)."""
        rows = await self.pool.fetch(
            "SELECT block_id FROM trace_index_pending WHERE retry_at <= now()"
            " ORDER BY attempts, queued_at DESC LIMIT $1",
            limit,
        )
        return [row["block_id"] for row in rows]

    async def trace_block_sources(self, block_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
        """The rows of those blocks whose stream and process are stored, with their stream's `format`,
        `tags`, `dependencies_metadata`, `objects_metadata` and their process's clock."""
        return await self.pool.fetch(_TRACE_BLOCK_SOURCES, block_ids)

    async def finish_trace_indexing(
        self, indexed: list[uuid.UUID], postponed: list[uuid.UUID], retry_first_s: float, retry_max_s: float
    ) -> None:
        """Forgets the indexed blocks; the postponed ones are due again after a delay doubling per try
        (from `retry_first_s` up to `retry_max_s`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM trace_index_pending WHERE block_id = ANY($1::uuid[])", indexed)
            await conn.execute(
                "UPDATE trace_index_pending SET attempts = attempts + 1,"
                " retry_at = now() + make_interval(secs => least($3, $2 * power(2, least(attempts, 30))))"
                " WHERE block_id = ANY($1::uuid[])",
                postponed,
                retry_first_s,
                retry_max_s,
            )

    async def delete_pending_trace_blocks_before(self, cutoff_ns: int, limit: int) -> int:
        """Deletes up to `limit` queued blocks queued before the cutoff; their count."""
        status = await self.pool.execute(
            "DELETE FROM trace_index_pending WHERE block_id IN"
            " (SELECT block_id FROM trace_index_pending WHERE queued_at < $1 LIMIT $2)",
            ns_to_datetime(cutoff_ns),
            limit,
        )
        return int(status.rsplit(" ", 1)[-1])
