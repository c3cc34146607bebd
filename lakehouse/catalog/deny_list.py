"""The query deny list's rules and their last hits."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg


class DenyListRows:
    """Reads and writes of `query_deny_list`."""

    pool: asyncpg.Pool

    async def load_denials(self, hits: dict[uuid.UUID, dt.datetime]) -> list[asyncpg.Record]:
        """Records the last hit of each rule in `hits`, then reads every rule (oldest first)."""
        async with self.pool.acquire() as conn:
            await _write_hits(conn, hits)
            return await conn.fetch(
                "SELECT rule_id, created_at, created_by, reason, match_expr, last_hit_at"
                " FROM query_deny_list ORDER BY created_at, rule_id"
            )

    async def write_denial_hits(self, hits: dict[uuid.UUID, dt.datetime]) -> None:
        """Records the last hit of each rule in `hits` (a later one than recorded wins)."""
        await _write_hits(self.pool, hits)

    async def insert_denial(self, rule_id: uuid.UUID, created_by: str, reason: str, match_expr: str) -> None:
        """Stores a rule, created now."""
        await self.pool.execute(
            "INSERT INTO query_deny_list (rule_id, created_at, created_by, reason, match_expr)"
            " VALUES ($1, now(), $2, $3, $4)",
            rule_id,
            created_by,
            reason,
            match_expr,
        )

    async def delete_denial(self, rule_id: uuid.UUID) -> bool:
        """Deletes a rule; False if there was none with this id."""
        return await self.pool.execute("DELETE FROM query_deny_list WHERE rule_id = $1", rule_id) != "DELETE 0"


async def _write_hits(db: asyncpg.Pool | asyncpg.Connection, hits: dict[uuid.UUID, dt.datetime]) -> None:
    if hits:
        await db.executemany(
            "UPDATE query_deny_list SET last_hit_at = greatest(coalesce(last_hit_at, $2), $2) WHERE rule_id = $1",
            list(hits.items()),
        )
