"""API keys: stored by SHA-256, revoked by date."""

from __future__ import annotations

import uuid

import asyncpg


class ApiKeys:
    """Lookups and inserts of API keys."""

    pool: asyncpg.Pool

    async def find_api_key(self, key_hash: bytes) -> tuple[str, bool] | None:
        """(name, is_admin) of the live key with this SHA-256, or None."""
        row = await self.pool.fetchrow(
            "SELECT name, is_admin FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
        )
        return (row["name"], row["is_admin"]) if row else None

    async def add_api_key(self, name: str, key_hash: bytes, is_admin: bool = False) -> uuid.UUID:
        """Stores a new key; returns its id."""
        key_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, is_admin) VALUES ($1, $2, $3, $4)",
            key_id,
            key_hash,
            name,
            is_admin,
        )
        return key_id

    async def count_api_keys(self) -> int:
        """How many keys are live."""
        return await self.pool.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
