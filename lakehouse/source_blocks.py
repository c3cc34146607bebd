"""The blocks a view instance is built from, read from the PostgreSQL ingestion tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from lakehouse.catalog import datetime_to_ns, ns_to_datetime
from views.meta import BlockMeta, ProcessMeta, StreamMeta

HOUR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True)
class SourceStream:
    meta: StreamMeta
    format: str
    dependencies_metadata: bytes
    objects_metadata: bytes


@dataclass(frozen=True)
class SourceBlock:
    meta: BlockMeta
    stream: SourceStream
    payload_size: int

    @property
    def blob_key(self) -> str:
        return f"blobs/{self.meta.process_id}/{self.meta.stream_id}/{self.meta.block_id}"


@dataclass(frozen=True)
class ProcessTiming:
    """The process and its latest block's end, which async events and thread spans convert ticks with."""

    process: ProcessMeta
    last_block_end_ticks: int
    last_block_end_time_ns: int


def _properties(value: list[asyncpg.Record] | None) -> dict[str, str]:
    return {p["key"]: p["value"] for p in value or []}


async def find_process(pool: asyncpg.Pool, process_id: uuid.UUID) -> ProcessTiming | None:
    row = await pool.fetchrow(
        "SELECT p.*, last.end_ticks AS last_end_ticks, last.end_time AS last_end_time FROM processes p"
        " LEFT JOIN LATERAL (SELECT end_ticks, end_time FROM blocks b WHERE b.process_id = p.process_id"
        "  ORDER BY end_time DESC LIMIT 1) last ON true WHERE p.process_id = $1", process_id)
    if row is None:
        return None
    process = ProcessMeta(
        process_id=str(row["process_id"]), exe=row["exe"] or "", username=row["username"] or "",
        computer=row["computer"] or "", start_time_ns=datetime_to_ns(row["start_time"]),
        start_ticks=row["start_ticks"], tsc_frequency=row["tsc_frequency"], properties=_properties(row["properties"]))
    if row["last_end_time"] is None:
        return ProcessTiming(process, row["start_ticks"], process.start_time_ns)
    return ProcessTiming(process, row["last_end_ticks"], datetime_to_ns(row["last_end_time"]))


async def find_stream_process(pool: asyncpg.Pool, stream_id: uuid.UUID) -> uuid.UUID | None:
    return await pool.fetchval("SELECT process_id FROM streams WHERE stream_id = $1", stream_id)


async def blocks_of_instance(pool: asyncpg.Pool, *, process_id: uuid.UUID | None = None,
                             stream_id: uuid.UUID | None = None, tags: tuple[str, ...] = (),
                             event_range: tuple[int, int] | None = None) -> list[SourceBlock]:
    """Blocks of a process's streams carrying one of `tags`, or of one stream, in insert-time order.

    With an event range, the blocks overlapping it decide which insert hours are concerned, and every
    block of those hours is returned: partitions cover whole insert hours, so they stay reusable by
    queries with other ranges (as micromegas does).
    """
    if stream_id is not None:
        where, args = "b.stream_id = $1", [stream_id]
    else:
        where, args = "b.process_id = $1 AND s.tags && $2::text[]", [process_id, list(tags)]
    window = ""
    if event_range is not None:
        n = len(args)
        args += [ns_to_datetime(event_range[0]), ns_to_datetime(event_range[1])]
        window = (f" AND b.insert_time >= (SELECT date_trunc('hour', min(b.insert_time)) FROM blocks b"
                  f"  JOIN streams s ON s.stream_id = b.stream_id WHERE {where}"
                  f"  AND b.begin_time <= ${n + 2} AND b.end_time >= ${n + 1})"
                  f" AND b.insert_time < (SELECT date_trunc('hour', max(b.insert_time)) + interval '1 hour'"
                  f"  FROM blocks b JOIN streams s ON s.stream_id = b.stream_id WHERE {where}"
                  f"  AND b.begin_time <= ${n + 2} AND b.end_time >= ${n + 1})")
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT b.*, s.tags, s.properties AS stream_properties, s.format, s.dependencies_metadata,"
            " s.objects_metadata FROM blocks b JOIN streams s ON s.stream_id = b.stream_id"
            f" WHERE {where}{window} ORDER BY b.insert_time, b.block_id", *args)
    streams: dict[uuid.UUID, SourceStream] = {}
    blocks = []
    for row in rows:
        stream = streams.get(row["stream_id"])
        if stream is None:
            stream = streams[row["stream_id"]] = SourceStream(
                StreamMeta(str(row["stream_id"]), str(row["process_id"]), tuple(row["tags"] or ()),
                           _properties(row["stream_properties"])),
                row["format"], bytes(row["dependencies_metadata"] or b""), bytes(row["objects_metadata"] or b""))
        blocks.append(SourceBlock(
            BlockMeta(block_id=str(row["block_id"]), stream_id=str(row["stream_id"]),
                      process_id=str(row["process_id"]), begin_time_ns=datetime_to_ns(row["begin_time"]),
                      begin_ticks=row["begin_ticks"], end_time_ns=datetime_to_ns(row["end_time"]),
                      end_ticks=row["end_ticks"], nb_objects=row["nb_objects"], object_offset=row["object_offset"],
                      insert_time_ns=datetime_to_ns(row["insert_time"])),
            stream, row["payload_size"]))
    return blocks
