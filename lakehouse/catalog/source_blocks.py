"""Reads of the blocks views are built from: blocks ⋈ streams ⋈ processes, by instance and insert range."""

from __future__ import annotations

import uuid

import asyncpg

from spanlake.lakehouse.catalog.partitions import Partition, row_to_partition
from spanlake.lakehouse.source_blocks import (
    UNCOVERED_IDS,
    CoverageGroup,
    Interned,
    ProcessTiming,
    process_meta,
    source_block,
)
from spanlake.lakehouse.timestamps import datetime_to_ns, ns_to_datetime
from spanlake.views.meta import SourceBlock

_TIMING_SQL = (
    "SELECT p.*, last.end_ticks AS last_end_ticks, last.end_time AS last_end_time FROM processes p"
    " LEFT JOIN LATERAL (SELECT end_ticks, end_time FROM blocks b WHERE b.process_id = p.process_id"
    # A block whose row views skip (beyond int64 nanoseconds, ending before it begins) sets no clock.
    "  AND end_time <= '2262-04-11T23:47:16Z' AND begin_time <= end_time AND begin_ticks <= end_ticks"
    "  ORDER BY end_time DESC LIMIT 1) last ON true WHERE p.process_id = ANY($1::uuid[])"
)

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


class SourceBlockReads:
    """The source blocks of view instances, and the process clocks their rows are converted with."""

    pool: asyncpg.Pool

    async def find_timings(self, process_ids: list[uuid.UUID]) -> dict[str, ProcessTiming]:
        """Each known process with its latest block's end (the process start when it has no block)."""
        timings = {}
        for row in await self.pool.fetch(_TIMING_SQL, process_ids):
            process = process_meta(row)
            if row["last_end_time"] is None:
                timings[process.process_id] = ProcessTiming(process, row["start_ticks"], process.start_time_ns)
            else:
                timings[process.process_id] = ProcessTiming(
                    process, row["last_end_ticks"], datetime_to_ns(row["last_end_time"])
                )
        return timings

    async def source_blocks(
        self,
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
        rows = await self.pool.fetch(f"{_BLOCKS_SQL} WHERE {where} ORDER BY b.insert_time, b.block_id", *args)
        interned = Interned()
        return [source_block(row, interned) for row in rows]

    async def blocks_by_id(self, block_ids: list[uuid.UUID]) -> list[SourceBlock]:
        """The blocks of these ids whose stream and process are known, in insert-time order."""
        rows = await self.pool.fetch(
            f"{_BLOCKS_SQL} WHERE b.block_id = ANY($1::uuid[]) ORDER BY b.insert_time, b.block_id", block_ids
        )
        interned = Interned()
        return [source_block(row, interned) for row in rows]

    async def source_count(self, tags: tuple[str, ...], insert_range: tuple[int, int], count_blocks: bool) -> int:
        """Source blocks (or their objects) of every process's streams with one of `tags`, inserted in the range."""
        where, args = _instance_filter(None, None, tags, None, insert_range)
        measure = "count(*)" if count_blocks else "coalesce(sum(b.nb_objects), 0)"
        return await self.pool.fetchval(
            f"SELECT {measure} FROM blocks b JOIN streams s ON s.stream_id = b.stream_id"
            f" JOIN processes p ON p.process_id = b.process_id WHERE {where}",
            *args,
        )

    async def instance_coverage(
        self,
        *,
        process_id: uuid.UUID | None = None,
        stream_id: uuid.UUID | None = None,
        tags: tuple[str, ...] = (),
        event_range: tuple[int, int] | None = None,
        partitions_of: tuple[str, str, bytes],
    ) -> tuple[list[CoverageGroup], list[Partition]]:
        """The instance's source blocks grouped by the live partition (of `partitions_of` = (view set,
        instance id, schema hash)) whose insert range holds each (with the ids of those none holds, when
        few), and every live partition of the instance: one statement, so both come from one snapshot and
        a fresh instance costs one round trip."""
        where, args = _instance_filter(process_id, stream_id, tags, event_range)
        n = len(args)
        instance = f"lp.view_set_name = ${n + 1} AND lp.view_instance_id = ${n + 2}"
        row = await self.pool.fetchrow(
            # The latest partition beginning at or before each block holds it if it ends after it: live
            # partitions of one schema never overlap. Found in one sort of the blocks and the partitions'
            # begins (each block carries the latest begin before it), not an index scan per block: a
            # third cheaper at 400 blocks.
            "WITH ranges AS MATERIALIZED (SELECT lp.begin_insert_time AS lo, lp.end_insert_time AS hi"
            f"  FROM lakehouse_partitions lp WHERE {instance} AND lp.file_schema_hash = ${n + 3}),"
            " marks AS (SELECT b.insert_time AS t, b.nb_objects AS n, b.block_id AS id"
            "  FROM blocks b JOIN streams s ON s.stream_id = b.stream_id"
            f"  JOIN processes p ON p.process_id = b.process_id WHERE {where}"
            "  UNION ALL SELECT lo, NULL, NULL FROM ranges),"
            " carried AS (SELECT t, n, id, max(t) FILTER (WHERE id IS NULL)"
            "  OVER (ORDER BY t, id NULLS FIRST ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS lo FROM marks),"
            " placed AS (SELECT c.t, c.n, c.id, CASE WHEN cover.hi > c.t THEN c.lo END AS part"
            "  FROM carried c LEFT JOIN ranges cover ON cover.lo = c.lo WHERE c.id IS NOT NULL),"
            " groups AS (SELECT part, count(*) AS blocks, coalesce(sum(n), 0) AS objects, min(t) AS lo, max(t) AS hi,"
            "  array_agg(id ORDER BY t, id) FILTER (WHERE part IS NULL) AS ids FROM placed GROUP BY part)"
            " SELECT (SELECT array_agg(ROW(part, blocks, objects, lo, hi)) FROM groups) AS groups,"
            f" (SELECT ids FROM groups WHERE part IS NULL AND blocks <= {UNCOVERED_IDS}) AS uncovered,"
            f" (SELECT array_agg(lp ORDER BY lp.begin_insert_time) FROM lakehouse_partitions lp WHERE {instance})"
            " AS partitions",
            *args,
            *partitions_of,
        )
        groups = [
            CoverageGroup(
                None if g[0] is None else datetime_to_ns(g[0]),
                g[1],
                g[2],
                datetime_to_ns(g[3]),
                datetime_to_ns(g[4]),
                () if g[0] is not None else tuple(map(str, row["uncovered"] or ())),
            )
            for g in row["groups"] or []
        ]
        return groups, [row_to_partition(r) for r in row["partitions"] or []]
