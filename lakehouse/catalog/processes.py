"""Reads of single processes, streams and blocks: what the web pages and the query functions look up."""

from __future__ import annotations

import uuid

import asyncpg

from spanlake.lakehouse.timestamps import ns_to_datetime

_CPU_STREAMS_OF_PROCESS = (
    "SELECT s.stream_id, s.properties FROM streams s WHERE s.process_id = $1 AND 'cpu' = ANY(s.tags)"
)


class ProcessReads:
    """Lookups by process, stream or block id."""

    pool: asyncpg.Pool

    async def process_row(self, process_id: uuid.UUID) -> asyncpg.Record | None:
        """Every column of the process, or None if unknown."""
        return await self.pool.fetchrow("SELECT * FROM processes WHERE process_id = $1", process_id)

    async def process_exe(self, process_id: uuid.UUID) -> str | None:
        """The process's executable, or None if the process is unknown."""
        return await self.pool.fetchval("SELECT exe FROM processes WHERE process_id = $1", process_id)

    async def process_block_bounds(self, process_id: uuid.UUID) -> asyncpg.Record:
        """`first` (earliest block begin) and `last` (latest block end) of the process, NULL without blocks."""
        return await self.pool.fetchrow(
            "SELECT min(begin_time) AS first, max(end_time) AS last FROM blocks WHERE process_id = $1", process_id
        )

    async def cpu_streams(self, process_id: uuid.UUID) -> list[asyncpg.Record]:
        """(stream_id, properties) of the process's cpu streams, in insert order."""
        return await self.pool.fetch(f"{_CPU_STREAMS_OF_PROCESS} ORDER BY s.insert_time, s.stream_id", process_id)

    async def cpu_streams_with_events(
        self, process_id: uuid.UUID, event_range: tuple[int, int] | None
    ) -> list[asyncpg.Record]:
        """(stream_id, properties) of the process's cpu streams with blocks (meeting the event range, if
        any), by stream id."""
        in_range = ""
        args: list[object] = [process_id]
        if event_range is not None:
            in_range = " AND b.begin_time <= $3 AND b.end_time >= $2"
            args += [ns_to_datetime(event_range[0]), ns_to_datetime(event_range[1])]
        return await self.pool.fetch(
            f"{_CPU_STREAMS_OF_PROCESS} AND EXISTS (SELECT 1 FROM blocks b WHERE b.stream_id = s.stream_id{in_range})"
            " ORDER BY s.stream_id::text",
            *args,
        )

    async def cpu_streams_inserted_in(self, process_id: uuid.UUID, range_ns: tuple[int, int]) -> list[asyncpg.Record]:
        """(stream_id, properties) of the process's cpu streams with blocks beginning before the range's
        end and inserted since its beginning (micromegas's thread list of a trace), by stream id."""
        return await self.pool.fetch(
            f"{_CPU_STREAMS_OF_PROCESS} AND EXISTS (SELECT 1 FROM blocks b WHERE b.stream_id = s.stream_id"
            " AND b.begin_time <= $3 AND b.insert_time >= $2) ORDER BY s.stream_id::text",
            process_id,
            ns_to_datetime(range_ns[0]),
            ns_to_datetime(range_ns[1]),
        )

    async def stream_process(self, stream_id: uuid.UUID) -> uuid.UUID | None:
        """The process of a stream, or None if the stream is unknown."""
        return await self.pool.fetchval("SELECT process_id FROM streams WHERE stream_id = $1", stream_id)

    async def block_with_stream(self, block_id: uuid.UUID) -> asyncpg.Record | None:
        """What decoding a block needs: its process_id, stream_id, object_offset and its stream's
        dependencies_metadata, objects_metadata and format; None if unknown."""
        return await self.pool.fetchrow(
            "SELECT b.process_id, b.stream_id, b.object_offset, s.dependencies_metadata, s.objects_metadata,"
            " s.format FROM blocks b JOIN streams s ON s.stream_id = b.stream_id WHERE b.block_id = $1",
            block_id,
        )

    async def process_audience(self, process_id: uuid.UUID) -> tuple[str | None] | None:
        """(the process's stamped audience or None,), or None if the process is unknown."""
        row = await self.pool.fetchrow(
            "SELECT spanlake_audience(properties) AS audience FROM processes WHERE process_id = $1", process_id
        )
        return None if row is None else (row["audience"],)

    async def audience_processes(self, audiences: list[str]) -> list[str]:
        """The ids of the processes stamped with one of these audiences."""
        rows = await self.pool.fetch(
            "SELECT process_id::text FROM processes WHERE spanlake_audience(properties) = ANY($1::text[])", audiences
        )
        return [row[0] for row in rows]

    async def stream_audience(self, stream_id: uuid.UUID) -> tuple[str | None] | None:
        """(the audience of the stream's process,), or None if the stream (or its process) is unknown."""
        row = await self.pool.fetchrow(
            "SELECT spanlake_audience(p.properties) AS audience FROM streams s JOIN processes p"
            " ON p.process_id = s.process_id WHERE s.stream_id = $1",
            stream_id,
        )
        return None if row is None else (row["audience"],)
