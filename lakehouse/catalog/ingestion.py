"""Ingestion's rows: processes, streams and blocks as clients send them, one by one or in bulk."""

from __future__ import annotations

import uuid

import asyncpg

from spanlake.lakehouse.catalog_changes import ANNOUNCE
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.timestamps import ns_to_datetime

# Rows replicated by bulk ingestion, values in the tables' column order; rows already present are kept.
BULK_INSERTS = {
    "processes": "INSERT INTO processes VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
    " ON CONFLICT (process_id) DO NOTHING",
    "streams": "INSERT INTO streams (stream_id, process_id, dependencies_metadata, objects_metadata, tags,"
    " properties, insert_time, format) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (stream_id) DO NOTHING",
    "blocks": "INSERT INTO blocks VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) ON CONFLICT (block_id) DO NOTHING",
}
# The column of a block row holding its process id.
_BLOCK_PROCESS_ID = 2

# Many blocks' rows in one statement: one array per column (in the table's order), one commit for all,
# each changed process announced once (warm queries see the new blocks).
_INSERT_BLOCKS = (
    "WITH inserted AS (INSERT INTO blocks SELECT b.*, now() FROM unnest($1::uuid[], $2::uuid[], $3::uuid[],"
    " $4::timestamptz[], $5::bigint[], $6::timestamptz[], $7::bigint[], $8::int[], $9::bigint[], $10::bigint[]) AS b"
    " ON CONFLICT (block_id) DO NOTHING RETURNING process_id),"
    " changed AS (SELECT DISTINCT process_id FROM inserted)"
    f" SELECT count(*) FROM changed, {ANNOUNCE.format(key='changed.process_id::text')}"
)


def _block_values(rec: BlockRecord) -> tuple:
    """A block's row values in the table's column order, insert_time left out (the database's clock sets it)."""
    return (
        rec.block_id,
        rec.stream_id,
        rec.process_id,
        ns_to_datetime(rec.begin_time_ns),
        rec.begin_ticks,
        ns_to_datetime(rec.end_time_ns),
        rec.end_ticks,
        rec.nb_objects,
        rec.object_offset,
        rec.payload_size,
    )


class IngestionRows:
    """Inserts of ingested rows, each idempotent on the client's ids."""

    pool: asyncpg.Pool

    async def ping(self) -> None:
        """Raises if the database does not answer."""
        await self.pool.fetchval("SELECT 1")

    async def insert_process(self, rec: ProcessRecord) -> bool:
        """True if the row is new; a process already known is left as it is (idempotent)."""
        status = await self.pool.execute(
            "INSERT INTO processes VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,now(),$11,$12)"
            " ON CONFLICT (process_id) DO NOTHING",
            rec.process_id,
            rec.exe,
            rec.username,
            rec.realname,
            rec.computer,
            rec.distro,
            rec.cpu_brand,
            rec.tsc_frequency,
            ns_to_datetime(rec.start_time_ns),
            rec.start_ticks,
            rec.parent_process_id,
            list(rec.properties.items()),
        )
        return status.endswith(" 1")

    async def insert_stream(self, rec: StreamRecord) -> bool:
        """True if the row is new; a stream already known is left as it is."""
        status = await self.pool.execute(
            "INSERT INTO streams (stream_id, process_id, dependencies_metadata, objects_metadata, tags,"
            " properties, insert_time, format) VALUES ($1,$2,$3,$4,$5,$6,now(),$7)"
            " ON CONFLICT (stream_id) DO NOTHING",
            rec.stream_id,
            rec.process_id,
            rec.dependencies_metadata,
            rec.objects_metadata,
            rec.tags,
            list(rec.properties.items()),
            rec.format,
        )
        return status.endswith(" 1")

    async def insert_block(self, rec: BlockRecord) -> bool:
        """True if the row is new (its process's change announced); a block already known is left as it is."""
        inserted = await self.pool.fetchval(
            "WITH inserted AS (INSERT INTO blocks VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,now())"
            " ON CONFLICT (block_id) DO NOTHING RETURNING process_id)"
            f" SELECT count(*) FROM inserted, {ANNOUNCE.format(key='inserted.process_id::text')}",
            *_block_values(rec),
        )
        return inserted == 1

    async def insert_blocks(self, records: list[BlockRecord]) -> None:
        """Inserts the rows of many blocks in one statement (committed together); known blocks are left as they are."""
        columns = zip(*map(_block_values, records), strict=True)
        await self.pool.fetchval(_INSERT_BLOCKS, *map(list, columns))

    async def bulk_insert(self, table_name: str, rows: list[tuple]) -> None:
        """Inserts replicated rows of one of BULK_INSERTS's tables, all or none (asyncpg's errors raised);
        blocks announce their processes' changes."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(BULK_INSERTS[table_name], rows)
            if table_name == "blocks":
                processes = sorted({str(row[_BLOCK_PROCESS_ID]) for row in rows})
                await conn.execute(f"SELECT {ANNOUNCE.format(key='p')} FROM unnest($1::text[]) p", processes)

    async def block_context(self, stream_id: uuid.UUID, process_id: uuid.UUID) -> asyncpg.Record:
        """The owner of a stream (`owner`), the clock of a process (`start_time`, `start_ticks`,
        `tsc_frequency`) and its stamped audience (`audience`), NULL where unknown: one row always."""
        return await self.pool.fetchrow(
            "SELECT (SELECT process_id FROM streams WHERE stream_id = $1) AS owner, p.start_time, p.start_ticks,"
            " p.tsc_frequency, spanlake_audience(p.properties) AS audience"
            " FROM (SELECT 1) one LEFT JOIN processes p ON p.process_id = $2",
            stream_id,
            process_id,
        )
