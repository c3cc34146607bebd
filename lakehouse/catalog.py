"""The PostgreSQL catalog: ingestion rows, API keys. Every value travels as a query parameter."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ns_to_datetime(ns: int) -> dt.datetime:
    """PostgreSQL keeps microseconds; the nanoseconds below are dropped, as micromegas does."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def datetime_to_ns(value: dt.datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _properties(props: dict[str, str]) -> list[tuple[str, str]]:
    return list(props.items())


class Catalog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
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
            _properties(rec.properties),
        )
        return status.endswith(" 1")

    async def insert_stream(self, rec: StreamRecord) -> bool:
        status = await self.pool.execute(
            "INSERT INTO streams (stream_id, process_id, dependencies_metadata, objects_metadata, tags,"
            " properties, insert_time, format) VALUES ($1,$2,$3,$4,$5,$6,now(),$7)"
            " ON CONFLICT (stream_id) DO NOTHING",
            rec.stream_id,
            rec.process_id,
            rec.dependencies_metadata,
            rec.objects_metadata,
            rec.tags,
            _properties(rec.properties),
            rec.format,
        )
        return status.endswith(" 1")

    async def insert_block(self, rec: BlockRecord) -> bool:
        status = await self.pool.execute(
            "INSERT INTO blocks VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,now()) ON CONFLICT (block_id) DO NOTHING",
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
        return status.endswith(" 1")

    async def find_api_key(self, key_hash: bytes) -> tuple[str, bool] | None:
        """(name, is_admin) of the live key with this SHA-256, or None."""
        row = await self.pool.fetchrow(
            "SELECT name, is_admin FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
        )
        return (row["name"], row["is_admin"]) if row else None

    async def add_api_key(self, name: str, key_hash: bytes, is_admin: bool = False) -> uuid.UUID:
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
        return await self.pool.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
