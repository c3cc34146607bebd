"""The blocks views are built from: rows of blocks ⋈ streams ⋈ processes in PostgreSQL.

As in micromegas, a block is visible to the views once its stream and process rows exist; a block
that arrived first joins the views when they do (its partition's source count then changes).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from spanlake.lakehouse.catalog import datetime_to_ns, ns_to_datetime
from spanlake.views.meta import BlockMeta, ProcessMeta, SourceBlock, SourceProcess, SourceStream, StreamMeta

HOUR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True)
class ProcessTiming:
    """The process and its latest block's end, which async events and thread spans convert ticks with."""

    process: ProcessMeta
    last_block_end_ticks: int
    last_block_end_time_ns: int


@dataclass
class _Interned:
    streams: dict[uuid.UUID, SourceStream] = field(default_factory=dict)
    processes: dict[uuid.UUID, SourceProcess] = field(default_factory=dict)


def _properties(value: list[asyncpg.Record] | None) -> dict[str, str]:
    return {p["key"]: p["value"] for p in value or []}


def _process_meta(row: asyncpg.Record, prefix: str = "") -> ProcessMeta:
    return ProcessMeta(
        process_id=str(row[prefix + "process_id"]),
        exe=row[prefix + "exe"] or "",
        username=row[prefix + "username"] or "",
        computer=row[prefix + "computer"] or "",
        start_time_ns=datetime_to_ns(row[prefix + "start_time"]),
        start_ticks=row[prefix + "start_ticks"],
        tsc_frequency=row[prefix + "tsc_frequency"],
        properties=_properties(row[prefix + "properties"]),
    )


_TIMING_SQL = (
    "SELECT p.*, last.end_ticks AS last_end_ticks, last.end_time AS last_end_time FROM processes p"
    " LEFT JOIN LATERAL (SELECT end_ticks, end_time FROM blocks b WHERE b.process_id = p.process_id"
    # A block whose row views skip (beyond int64 nanoseconds, ending before it begins) sets no clock.
    "  AND end_time <= '2262-04-11T23:47:16Z' AND begin_time <= end_time AND begin_ticks <= end_ticks"
    "  ORDER BY end_time DESC LIMIT 1) last ON true WHERE p.process_id = ANY($1::uuid[])"
)


async def find_timings(pool: asyncpg.Pool, process_ids: list[uuid.UUID]) -> dict[str, ProcessTiming]:
    """Each known process with its latest block's end (the process start when it has no block)."""
    timings = {}
    for row in await pool.fetch(_TIMING_SQL, process_ids):
        process = _process_meta(row)
        if row["last_end_time"] is None:
            timings[process.process_id] = ProcessTiming(process, row["start_ticks"], process.start_time_ns)
        else:
            timings[process.process_id] = ProcessTiming(
                process, row["last_end_ticks"], datetime_to_ns(row["last_end_time"])
            )
    return timings


async def find_stream_process(pool: asyncpg.Pool, stream_id: uuid.UUID) -> uuid.UUID | None:
    return await pool.fetchval("SELECT process_id FROM streams WHERE stream_id = $1", stream_id)


_BLOCKS_SQL = (
    "SELECT b.*, s.process_id AS stream_process_id, s.tags, s.properties AS stream_properties, s.format,"
    " s.dependencies_metadata, s.objects_metadata,"
    " s.insert_time AS stream_insert_time, p.exe, p.username, p.realname, p.computer, p.distro, p.cpu_brand,"
    " p.tsc_frequency, p.start_time, p.start_ticks, p.insert_time AS process_insert_time, p.parent_process_id,"
    " p.properties FROM blocks b JOIN streams s ON s.stream_id = b.stream_id"
    " JOIN processes p ON p.process_id = b.process_id"
)


def _instance_filter(
    process_id: uuid.UUID | None,
    stream_id: uuid.UUID | None,
    tags: tuple[str, ...],
    event_range: tuple[int, int] | None,
    insert_range: tuple[int, int] | None = None,
) -> tuple[str, list[object]]:
    """The WHERE clause (over blocks b ⋈ streams s) selecting an instance's source blocks, and its args.

    With an event range, the blocks overlapping it decide which insert hours are concerned, and every
    block of those hours is selected: partitions never cross an insert hour, so they stay reusable by
    queries with other ranges (as micromegas does).
    """
    conditions, args = [], []
    for sql, value in (
        ("b.stream_id = ${}", stream_id),
        ("b.process_id = ${}", process_id),
        ("s.tags && ${}::text[]", list(tags) if tags else None),
    ):
        if value is not None:
            args.append(value)
            conditions.append(sql.format(len(args)))
    if insert_range is not None:
        args += [ns_to_datetime(insert_range[0]), ns_to_datetime(insert_range[1])]
        conditions.append(f"b.insert_time >= ${len(args) - 1} AND b.insert_time < ${len(args)}")
    where = " AND ".join(conditions) or "true"
    if event_range is not None:
        args += [ns_to_datetime(event_range[0]), ns_to_datetime(event_range[1])]
        overlapping = (
            f"FROM blocks b JOIN streams s ON s.stream_id = b.stream_id WHERE {where}"
            f" AND b.begin_time <= ${len(args)} AND b.end_time >= ${len(args) - 1}"
        )
        where += (
            f" AND b.insert_time >= (SELECT date_trunc('hour', min(b.insert_time)) {overlapping})"
            f" AND b.insert_time < (SELECT date_trunc('hour', max(b.insert_time)) + interval '1 hour'"
            f" {overlapping})"
        )
    return where, args


async def source_blocks(
    pool: asyncpg.Pool,
    *,
    process_id: uuid.UUID | None = None,
    stream_id: uuid.UUID | None = None,
    tags: tuple[str, ...] = (),
    event_range: tuple[int, int] | None = None,
    insert_range: tuple[int, int] | None = None,
) -> list[SourceBlock]:
    """Blocks of one stream, or of one process's (or every process's) streams with one of `tags`, in
    insert-time order, optionally inserted in [begin, end) (see _instance_filter for the event range)."""
    where, args = _instance_filter(process_id, stream_id, tags, event_range, insert_range)
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"{_BLOCKS_SQL} WHERE {where} ORDER BY b.insert_time, b.block_id", *args)
    interned = _Interned()
    return [_source_block(row, interned) for row in rows]


async def source_count(
    pool: asyncpg.Pool, tags: tuple[str, ...], insert_range: tuple[int, int], count_blocks: bool
) -> int:
    """Source blocks (or their objects) of every process's streams with one of `tags`, inserted in the range."""
    where, args = _instance_filter(None, None, tags, None, insert_range)
    measure = "count(*)" if count_blocks else "coalesce(sum(b.nb_objects), 0)"
    return await pool.fetchval(
        f"SELECT {measure} FROM blocks b JOIN streams s ON s.stream_id = b.stream_id"
        f" JOIN processes p ON p.process_id = b.process_id WHERE {where}",
        *args,
    )


@dataclass(frozen=True)
class CoverageGroup:
    """The instance's source blocks that one live partition's insert range holds (or that none holds)."""

    partition_begin_ns: int | None  # the holding partition's begin; None: blocks no partition holds
    blocks: int
    objects: int
    first_insert_ns: int
    last_insert_ns: int


async def instance_coverage(
    pool: asyncpg.Pool,
    *,
    process_id: uuid.UUID | None = None,
    stream_id: uuid.UUID | None = None,
    tags: tuple[str, ...] = (),
    event_range: tuple[int, int] | None = None,
    partitions_of: tuple[str, str, bytes],
) -> tuple[list[CoverageGroup], list[asyncpg.Record]]:
    """The instance's source blocks grouped by the live partition (of `partitions_of` = (view set,
    instance id, schema hash)) whose insert range holds each, and every live partition of the instance:
    one statement, so both come from one snapshot and a fresh instance costs one round trip."""
    where, args = _instance_filter(process_id, stream_id, tags, event_range)
    n = len(args)
    instance = f"lp.view_set_name = ${n + 1} AND lp.view_instance_id = ${n + 2}"
    row = await pool.fetchrow(
        # The latest partition beginning at or before each block (an index scan of one row); it holds
        # the block if it ends after it: live partitions of one schema never overlap.
        "WITH placed AS (SELECT b.insert_time AS t, b.nb_objects AS n,"
        "  CASE WHEN cover.end_insert_time > b.insert_time THEN cover.begin_insert_time END AS part"
        "  FROM blocks b JOIN streams s ON s.stream_id = b.stream_id JOIN processes p ON p.process_id = b.process_id"
        f"  LEFT JOIN LATERAL (SELECT lp.begin_insert_time, lp.end_insert_time FROM lakehouse_partitions lp"
        f"   WHERE {instance} AND lp.file_schema_hash = ${n + 3} AND lp.begin_insert_time <= b.insert_time"
        f"   ORDER BY lp.begin_insert_time DESC LIMIT 1) cover ON true WHERE {where}),"
        " groups AS (SELECT part, count(*) AS blocks, coalesce(sum(n), 0) AS objects, min(t) AS lo, max(t) AS hi"
        "  FROM placed GROUP BY part)"
        " SELECT (SELECT array_agg(ROW(part, blocks, objects, lo, hi)) FROM groups) AS groups,"
        f" (SELECT array_agg(lp ORDER BY lp.begin_insert_time) FROM lakehouse_partitions lp WHERE {instance})"
        " AS partitions",
        *args,
        *partitions_of,
    )
    groups = [
        CoverageGroup(
            None if g[0] is None else datetime_to_ns(g[0]), g[1], g[2], datetime_to_ns(g[3]), datetime_to_ns(g[4])
        )
        for g in row["groups"] or []
    ]
    return groups, list(row["partitions"] or [])


def _source_block(row: asyncpg.Record, interned: _Interned) -> SourceBlock:
    stream = interned.streams.get(row["stream_id"])
    if stream is None:
        stream = interned.streams[row["stream_id"]] = SourceStream(
            StreamMeta(
                str(row["stream_id"]),
                str(row["stream_process_id"]),
                tuple(row["tags"] or ()),
                _properties(row["stream_properties"]),
            ),
            row["format"],
            bytes(row["dependencies_metadata"] or b""),
            bytes(row["objects_metadata"] or b""),
            datetime_to_ns(row["stream_insert_time"]),
        )
    process = interned.processes.get(row["process_id"])
    if process is None:
        parent = row["parent_process_id"]
        process = interned.processes[row["process_id"]] = SourceProcess(
            _process_meta(row),
            row["realname"] or "",
            row["distro"] or "",
            row["cpu_brand"] or "",
            datetime_to_ns(row["process_insert_time"]),
            "" if parent is None else str(parent),
        )
    meta = BlockMeta(
        block_id=str(row["block_id"]),
        stream_id=str(row["stream_id"]),
        process_id=str(row["process_id"]),
        begin_time_ns=datetime_to_ns(row["begin_time"]),
        begin_ticks=row["begin_ticks"],
        end_time_ns=datetime_to_ns(row["end_time"]),
        end_ticks=row["end_ticks"],
        nb_objects=row["nb_objects"],
        object_offset=row["object_offset"],
        insert_time_ns=datetime_to_ns(row["insert_time"]),
    )
    return SourceBlock(meta, stream, process, row["payload_size"])
