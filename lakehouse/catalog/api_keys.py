"""API keys, stored by SHA-256 and revoked by date: the legacy `api_keys` (both surfaces, reading
everything), ingestion keys (one audience each) and analytics keys (the audiences they read)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# The columns the key-management API lists (never the hash).
_LISTED = "key_id, name, created_at, created_by, last_used_at, revoked_at, revoked_by, allowed_cidrs"
_AUDIENCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


def new_key() -> str:
    """A fresh random API key (shown once: only its hash is stored)."""
    return "slk_" + secrets.token_urlsafe(32)


def check_audience(audience: str) -> str:
    """The audience if it is an audience name (micromegas's `[A-Za-z0-9_-]{1,255}`), else ValueError."""
    if not _AUDIENCE_NAME.fullmatch(audience):
        raise ValueError(f"invalid audience {audience!r}: 1 to 255 of A-Z a-z 0-9 _ -")
    return audience


def hash_key(key: str) -> bytes:
    """SHA-256 digest of an API key, as the database stores it."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class StoredKey:
    """A live database key: who it is, what it may do, where it may come from."""

    key_id: uuid.UUID | None
    name: str
    is_admin: bool
    read_audiences: tuple[str, ...] | None  # None: reads everything
    write_audience: str | None  # None: stamps nothing (legacy keys)
    allowed_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class ApiKeys:
    """Lookups, inserts and revocations of API keys."""

    pool: asyncpg.Pool

    async def find_api_key(self, key_hash: bytes) -> tuple[str, bool] | None:
        """(name, is_admin) of the live legacy key with this SHA-256, or None."""
        row = await self.pool.fetchrow(
            "SELECT name, is_admin FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
        )
        return (row["name"], row["is_admin"]) if row else None

    async def find_ingestion_key(self, key_hash: bytes) -> StoredKey | None:
        """The live ingestion key with this SHA-256, else the legacy key, else None."""
        row = await self.pool.fetchrow(
            "SELECT key_id, name, audience, allowed_cidrs FROM ingestion_api_keys"
            " WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash,
        )
        if row is not None:
            return StoredKey(row["key_id"], row["name"], False, (), row["audience"], tuple(row["allowed_cidrs"]))
        return await self._legacy_key(key_hash)

    async def find_analytics_key(self, key_hash: bytes) -> StoredKey | None:
        """The live analytics key with this SHA-256, else the legacy key, else None."""
        row = await self.pool.fetchrow(
            "SELECT key_id, name, is_admin, read_audiences, allowed_cidrs FROM analytics_api_keys"
            " WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash,
        )
        if row is not None:
            audiences = None if row["read_audiences"] is None else tuple(row["read_audiences"])
            return StoredKey(row["key_id"], row["name"], row["is_admin"], audiences, None, tuple(row["allowed_cidrs"]))
        return await self._legacy_key(key_hash)

    async def _legacy_key(self, key_hash: bytes) -> StoredKey | None:
        found = await self.find_api_key(key_hash)
        return None if found is None else StoredKey(None, found[0], found[1], None, None)

    async def add_api_key(self, name: str, key_hash: bytes, is_admin: bool = False) -> uuid.UUID:
        """Stores a new legacy key (both surfaces, reads everything); returns its id."""
        key_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, is_admin) VALUES ($1, $2, $3, $4)",
            key_id,
            key_hash,
            name,
            is_admin,
        )
        return key_id

    async def add_ingestion_key(
        self, name: str, key_hash: bytes, audience: str, created_by: str, allowed_cidrs: list[str]
    ) -> asyncpg.Record:
        """Stores a new ingestion key writing into `audience`; returns its listed columns."""
        return await self.pool.fetchrow(
            "INSERT INTO ingestion_api_keys (key_id, key_hash, name, audience, created_by, allowed_cidrs)"
            f" VALUES ($1, $2, $3, $4, $5, $6::cidr[]) RETURNING {_LISTED}, audience",
            uuid.uuid4(),
            key_hash,
            name,
            audience,
            created_by,
            allowed_cidrs,
        )

    async def add_analytics_key(
        self,
        name: str,
        key_hash: bytes,
        read_audiences: list[str] | None,
        created_by: str,
        allowed_cidrs: list[str],
        is_admin: bool = False,
    ) -> asyncpg.Record:
        """Stores a new analytics key reading `read_audiences` (None: everything); returns its listed columns."""
        return await self.pool.fetchrow(
            "INSERT INTO analytics_api_keys"
            " (key_id, key_hash, name, read_audiences, created_by, allowed_cidrs, is_admin)"
            f" VALUES ($1, $2, $3, $4, $5, $6::cidr[], $7) RETURNING {_LISTED}, read_audiences, is_admin",
            uuid.uuid4(),
            key_hash,
            name,
            read_audiences,
            created_by,
            allowed_cidrs,
            is_admin,
        )

    async def list_keys(self, table: str, limit: int, offset: int, include_revoked: bool) -> list[asyncpg.Record]:
        """Rows of `ingestion_api_keys` or `analytics_api_keys`, newest first (never the hash)."""
        extra = "audience" if table == "ingestion_api_keys" else "read_audiences, is_admin"
        live = "" if include_revoked else " WHERE revoked_at IS NULL"
        return await self.pool.fetch(
            f"SELECT {_LISTED}, {extra} FROM {_key_table(table)}{live} ORDER BY created_at DESC LIMIT $1 OFFSET $2",
            limit,
            offset,
        )

    async def revoke_key(self, table: str, key_id: uuid.UUID, revoked_by: str) -> datetime | None:
        """Revokes a key (idempotent: the first revocation's time stays); None for an unknown id."""
        return await self.pool.fetchval(
            f"UPDATE {_key_table(table)} SET revoked_at = COALESCE(revoked_at, now()),"
            " revoked_by = COALESCE(revoked_by, $2) WHERE key_id = $1 RETURNING revoked_at",
            key_id,
            revoked_by,
        )

    async def set_key_allowlist(self, table: str, key_id: uuid.UUID, allowed_cidrs: list[str]) -> list | None:
        """Replaces a key's CIDR allowlist ([] = from anywhere); None for an unknown id."""
        return await self.pool.fetchval(
            f"UPDATE {_key_table(table)} SET allowed_cidrs = $2::cidr[] WHERE key_id = $1 RETURNING allowed_cidrs",
            key_id,
            allowed_cidrs,
        )

    async def count_api_keys(self) -> int:
        """How many keys are live, of every kind."""
        return await self.pool.fetchval(
            "SELECT (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL)"
            " + (SELECT count(*) FROM ingestion_api_keys WHERE revoked_at IS NULL)"
            " + (SELECT count(*) FROM analytics_api_keys WHERE revoked_at IS NULL)"
        )


def _key_table(table: str) -> str:
    """The table name, checked: it is written into SQL text."""
    if table not in ("ingestion_api_keys", "analytics_api_keys"):
        raise ValueError(f"not a key table: {table}")
    return table
