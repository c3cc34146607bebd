"""Deletes of expired telemetry rows and of the temporary files whose grace is over."""

from __future__ import annotations

import datetime as dt

import asyncpg

from spanlake.lakehouse.catalog_changes import ANNOUNCE


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class RetentionRows:
    """Retention's statements, each bounded so that one run never holds a long transaction."""

    pool: asyncpg.Pool

    async def delete_blocks_before(self, cutoff: dt.datetime, limit: int) -> list[asyncpg.Record]:
        """Deletes up to `limit` blocks inserted before the cutoff, announcing their processes' changes;
        their (process_id, stream_id, block_id)."""
        return await self.pool.fetch(
            "WITH deleted AS (DELETE FROM blocks WHERE block_id IN"
            " (SELECT block_id FROM blocks WHERE insert_time < $1 LIMIT $2) RETURNING process_id, stream_id, block_id),"
            f" announced AS (SELECT {ANNOUNCE.format(key='process_id::text')}"
            "  FROM (SELECT DISTINCT process_id FROM deleted) d)"
            " SELECT deleted.* FROM deleted, (SELECT count(*) FROM announced) n",
            cutoff,
            limit,
        )

    async def delete_streams_without_blocks(self, cutoff: dt.datetime) -> int:
        """Deletes the streams inserted before the cutoff that have no block left; returns their count."""
        return _count(
            await self.pool.execute(
                "DELETE FROM streams s WHERE s.insert_time < $1"
                " AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.stream_id = s.stream_id)",
                cutoff,
            )
        )

    async def delete_processes_without_streams(self, cutoff: dt.datetime) -> int:
        """Deletes the processes inserted before the cutoff that have no stream left; returns their count."""
        return _count(
            await self.pool.execute(
                "DELETE FROM processes p WHERE p.insert_time < $1"
                " AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.process_id = p.process_id)",
                cutoff,
            )
        )

    async def instances_with_partitions_ending_by(self, cutoff: dt.datetime, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` (view_set_name, view_instance_id) having a partition that ends by the cutoff."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT view_set_name, view_instance_id FROM lakehouse_partitions"
            " WHERE end_insert_time <= $1 LIMIT $2",
            cutoff,
            limit,
        )
        return [(row["view_set_name"], row["view_instance_id"]) for row in rows]

    async def delete_expired_temporary_files(self, limit: int) -> list[str]:
        """Deletes up to `limit` rows of `temporary_files` whose expiration has passed; their paths."""
        rows = await self.pool.fetch(
            "DELETE FROM temporary_files WHERE ctid IN (SELECT ctid FROM temporary_files WHERE expiration < now()"
            " LIMIT $1) RETURNING file_path",
            limit,
        )
        return [row["file_path"] for row in rows]
