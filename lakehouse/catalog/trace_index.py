"""The trace index (`trace_index`, migration 0008): which processes hold a trace's spans, and when."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:  # only a type here: importing it would import the transit decoder and DataFusion
    from spanlake.lakehouse.block_traces import BlockTraces


class TraceIndexRows:
    """Upserts of a block's traces at ingestion, and the lookup of one trace."""

    pool: asyncpg.Pool

    async def index_traces(self, process_id: uuid.UUID, traces: BlockTraces) -> None:
        """Records that the process holds spans of these traces: a trace's range widens, never shrinks
        (idempotent, so a retried block changes nothing). Rows go in trace id order: two blocks
        indexing the same traces at once cannot deadlock."""
        await self.pool.execute(
            "INSERT INTO trace_index AS t (trace_id, process_id, begin_ns, end_ns)"
            " SELECT u.trace_id, $2, u.begin_ns, u.end_ns"
            " FROM unnest($1::bytea[], $3::int8[], $4::int8[]) AS u(trace_id, begin_ns, end_ns)"
            " ORDER BY u.trace_id"
            " ON CONFLICT (trace_id, process_id) DO UPDATE"
            " SET begin_ns = least(t.begin_ns, excluded.begin_ns), end_ns = greatest(t.end_ns, excluded.end_ns)"
            " WHERE t.begin_ns > excluded.begin_ns OR t.end_ns < excluded.end_ns",
            traces.trace_ids,
            process_id,
            traces.begin_ns,
            traces.end_ns,
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
