"""Partition rows (`lakehouse_partitions`): what is live, and the transactions that change it.

Every change happens under an advisory lock per view instance, in one transaction: stock PostgreSQL
has no btree_gist for an exclusion constraint, so the lock makes the overlap check race-free. A
partition leaves the catalog only by `_retire`: its row is deleted and its file goes to
`temporary_files` for RETIRED_FILE_GRACE, so queries already reading it finish.
"""

from __future__ import annotations

import datetime as dt
import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from spanlake.lakehouse.catalog_changes import ANNOUNCE
from spanlake.lakehouse.timestamps import datetime_to_ns, ns_to_datetime

RETIRED_FILE_GRACE = dt.timedelta(hours=1)
PARTITION_FORMAT_VERSION = 2


class PartitionOverlapError(Exception):
    """A new partition would overlap a live one that it does not replace."""


class RetireMatch(enum.Enum):
    """Which partitions of an instance a retirement removes for a range [begin, end]."""

    CONTAINED = "contained"  # partitions inside the range (merges of global views, retire_partitions, retention)
    OVERLAPPING = "overlapping"  # every partition touching the range (JIT rewrites)


@dataclass(frozen=True)
class Partition:
    """One row of `lakehouse_partitions`: a parquet file (or an empty range) of a view instance."""

    view_set_name: str
    view_instance_id: str
    begin_insert_ns: int
    end_insert_ns: int
    min_event_ns: int | None
    max_event_ns: int | None
    file_path: str | None  # relative to the object store root; None for an empty partition
    file_size: int
    file_schema_hash: bytes
    source_count: int  # source objects (or rows) the partition was built from: the staleness check
    num_rows: int

    @property
    def source_data_hash(self) -> bytes:
        """The source count as the catalog stores it."""
        return count_to_hash(self.source_count)


@dataclass(frozen=True)
class PartitionSlot:
    """What names one live partition besides its file: instance, insert range and schema."""

    view_set_name: str
    view_instance_id: str
    begin_insert_ns: int
    end_insert_ns: int
    file_schema_hash: bytes


PartitionLookup = str | PartitionSlot  # a file path, or a partition's slot


def count_to_hash(count: int) -> bytes:
    """micromegas stores the source object count as an i64 little-endian 'hash'."""
    return struct.pack("<q", count)


def hash_to_count(data: bytes) -> int | None:
    """The source count of a 'hash' (None for one that is not an i64)."""
    return struct.unpack("<q", data)[0] if len(data) == 8 else None


def row_to_partition(row: asyncpg.Record) -> Partition:
    """The partition of a `lakehouse_partitions` row."""

    def ns(value: dt.datetime | None) -> int | None:
        return None if value is None else datetime_to_ns(value)

    count = hash_to_count(bytes(row["source_data_hash"]))

    return Partition(
        view_set_name=row["view_set_name"],
        view_instance_id=row["view_instance_id"],
        begin_insert_ns=datetime_to_ns(row["begin_insert_time"]),
        end_insert_ns=datetime_to_ns(row["end_insert_time"]),
        min_event_ns=ns(row["min_event_time"]),
        max_event_ns=ns(row["max_event_time"]),
        file_path=row["file_path"],
        file_size=row["file_size"],
        file_schema_hash=bytes(row["file_schema_hash"]),
        source_count=-1 if count is None else count,  # -1: a hash that is no count, never up to date
        num_rows=row["num_rows"],
    )


def partition_identity(partition: Partition) -> tuple[int, int, str | None]:
    """What tells two live partitions of one instance and schema apart."""
    return partition.begin_insert_ns, partition.end_insert_ns, partition.file_path


class PartitionRows:
    """Reads of live partitions and the transactions that commit and retire them."""

    pool: asyncpg.Pool

    async def overlapping_partitions(
        self, view_set_name: str, instance_id: str, begin_insert_ns: int, end_insert_ns: int
    ) -> list[Partition]:
        """Live partitions of an instance (any schema) whose insert range meets [begin, end)."""
        rows = await self.pool.fetch(
            "SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
            " AND begin_insert_time < $4 AND end_insert_time > $3 ORDER BY begin_insert_time",
            view_set_name,
            instance_id,
            ns_to_datetime(begin_insert_ns),
            ns_to_datetime(end_insert_ns),
        )
        return [row_to_partition(r) for r in rows]

    async def partitions_for_query(
        self, view_set_name: str, instance_id: str, schema_hash: bytes, event_range: tuple[int, int] | None
    ) -> list[Partition]:
        """Non-empty partitions to scan, pruned by event time when the query has a range."""
        sql = (
            "SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
            " AND file_schema_hash = $3 AND file_path IS NOT NULL"
        )
        args: list[object] = [view_set_name, instance_id, schema_hash]
        if event_range is not None:
            sql += " AND min_event_time <= $5 AND max_event_time >= $4"
            args += [ns_to_datetime(event_range[0]), ns_to_datetime(event_range[1])]
        rows = await self.pool.fetch(sql + " ORDER BY begin_insert_time, file_path", *args)
        return [row_to_partition(r) for r in rows]

    async def all_partition_rows(self) -> list[asyncpg.Record]:
        """Every live partition row, by view set, instance and begin."""
        return await self.pool.fetch(
            "SELECT * FROM lakehouse_partitions ORDER BY view_set_name, view_instance_id, begin_insert_time"
        )

    async def nothing_to_materialize(self, begin_ns: int, end_ns: int) -> bool:
        """No block was inserted in [begin, end) and no global partition covers any of it: every view's
        buckets there are trivially up to date."""
        return not await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM blocks WHERE insert_time >= $1 AND insert_time < $2)"
            " OR EXISTS (SELECT 1 FROM lakehouse_partitions WHERE view_instance_id = 'global'"
            " AND begin_insert_time < $2 AND end_insert_time > $1)",
            ns_to_datetime(begin_ns),
            ns_to_datetime(end_ns),
        )

    async def other_global_crosses(self, view_set_name: str, begin_ns: int, end_ns: int) -> bool:
        """Whether a global partition of another view meets [begin, end) and crosses its edges (what
        a SQL view's bucket, which reads the partitions inside it, cannot be built from yet)."""
        return await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM lakehouse_partitions WHERE view_instance_id = 'global'"
            " AND view_set_name <> $1 AND begin_insert_time < $3 AND end_insert_time > $2"
            " AND (begin_insert_time < $2 OR end_insert_time > $3))",
            view_set_name,
            ns_to_datetime(begin_ns),
            ns_to_datetime(end_ns),
        )

    async def retire_contained(
        self, view_set_name: str, instance_id: str, begin_ns: int | None, end_ns: int
    ) -> list[asyncpg.Record]:
        """Retires the partitions of an instance inside [begin, end] (no lower bound when begin is None),
        in a transaction of its own; the retired rows (see `_retire`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await _retire(conn, view_set_name, instance_id, RetireMatch.CONTAINED, begin_ns, end_ns)

    async def retire_each_or_none(self, lookups: Sequence[PartitionLookup | None]) -> list[bool]:
        """Retires the partition each lookup names, in one transaction committed only if every lookup
        found one (None: a lookup that cannot, such as one with bad arguments). Whether each found one."""
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            found = []
            try:
                for lookup in lookups:
                    row = None if lookup is None else await _find(conn, lookup)
                    if row is not None:
                        await _retire_row(conn, row)
                    found.append(row is not None)
            finally:
                await (transaction.commit() if found and all(found) else transaction.rollback())
        return found

    async def swap_partitions(self, new: Sequence[Partition], replaces: RetireMatch, still_valid: LiveCheck) -> bool:
        """Commits `new` (partitions of one instance) in place of what they replace, in one transaction
        under the instance's advisory lock, so a query sees either all of the old partitions or all of
        the new ones: reads the live partitions (any schema) overlapping the new ranges; unless
        `still_valid(live, new)` refuses them (a concurrent writer got there first: nothing changes,
        False), retires what `replaces` matches in each new range and inserts the new partitions."""
        first = new[0]
        async with self.pool.acquire() as conn, conn.transaction():
            await _lock_instance(conn, first.view_set_name, first.view_instance_id)
            if not still_valid(await _live_overlapping(conn, new), new):
                return False
            for partition in new:
                await _retire(
                    conn,
                    partition.view_set_name,
                    partition.view_instance_id,
                    replaces,
                    partition.begin_insert_ns,
                    partition.end_insert_ns,
                )
            for partition in new:
                await _insert_partition(conn, partition)
        return True


LiveCheck = Callable[[list[Partition], Sequence[Partition]], bool]  # (live, new) → may the new ones go in


def none_identical(live: list[Partition], new: Sequence[Partition]) -> bool:
    """No live partition has a new one's range, schema and source count: a concurrent writer that
    committed the same partition makes this one redundant."""
    slots = {(p.begin_insert_ns, p.end_insert_ns, p.file_schema_hash, p.source_count) for p in new}
    return not any((p.begin_insert_ns, p.end_insert_ns, p.file_schema_hash, p.source_count) in slots for p in live)


def replacing_exactly(replaces: Sequence[Partition]) -> LiveCheck:
    """The live partitions of the new ones' schema overlapping them are exactly `replaces` (optimistic
    rewrites: anything else means a concurrent writer changed them). Other schemas are stale anyway."""
    expected = {partition_identity(p) for p in replaces}

    def still_valid(live: list[Partition], new: Sequence[Partition]) -> bool:
        schema = new[0].file_schema_hash
        return {partition_identity(p) for p in live if p.file_schema_hash == schema} == expected

    return still_valid


async def _live_overlapping(conn: asyncpg.Connection, new: Sequence[Partition]) -> list[Partition]:
    """The live partitions of the new ones' instance (any schema) overlapping one of their ranges."""
    rows = await conn.fetch(
        "SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
        " AND EXISTS (SELECT 1 FROM unnest($3::timestamptz[], $4::timestamptz[]) AS new_range(b, e)"
        "  WHERE begin_insert_time < new_range.e AND end_insert_time > new_range.b)",
        new[0].view_set_name,
        new[0].view_instance_id,
        [ns_to_datetime(p.begin_insert_ns) for p in new],
        [ns_to_datetime(p.end_insert_ns) for p in new],
    )
    return [row_to_partition(r) for r in rows]


async def _lock_instance(conn: asyncpg.Connection, view_set_name: str, instance_id: str) -> None:
    """Takes the view instance's advisory lock until the end of the transaction open on `conn`, and
    announces the instance's change at its commit (every partition write takes this lock)."""
    await conn.execute(
        f"SELECT pg_advisory_xact_lock(hashtextextended($1, 0)), {ANNOUNCE.format(key='$2')}",
        f"{view_set_name}/{instance_id}",
        instance_id,
    )


async def _insert_partition(conn: asyncpg.Connection, partition: Partition) -> None:
    """Inserts the partition's row, refusing one that would overlap a live partition of its schema."""
    begin, end = ns_to_datetime(partition.begin_insert_ns), ns_to_datetime(partition.end_insert_ns)
    clash = await conn.fetchval(
        "SELECT count(*) FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
        " AND file_schema_hash = $3 AND begin_insert_time < $5 AND end_insert_time > $4",
        partition.view_set_name,
        partition.view_instance_id,
        partition.file_schema_hash,
        begin,
        end,
    )
    if clash:
        raise PartitionOverlapError(
            f"partition [{begin}, {end}) of {partition.view_set_name}/{partition.view_instance_id}"
            " overlaps a live partition it does not replace"
        )
    await conn.execute(
        "INSERT INTO lakehouse_partitions (view_set_name, view_instance_id, begin_insert_time,"
        " end_insert_time, min_event_time, max_event_time, updated, file_path, file_size, file_schema_hash,"
        " source_data_hash, num_rows, partition_format_version)"
        " VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8, $9, $10, $11, $12)",
        partition.view_set_name,
        partition.view_instance_id,
        begin,
        end,
        None if partition.min_event_ns is None else ns_to_datetime(partition.min_event_ns),
        # Rounded up: PostgreSQL keeps µs, and a truncated maximum could prune the partition wrongly.
        None if partition.max_event_ns is None else ns_to_datetime(partition.max_event_ns + 999),
        partition.file_path,
        partition.file_size,
        partition.file_schema_hash,
        partition.source_data_hash,
        partition.num_rows,
        PARTITION_FORMAT_VERSION,
    )


async def _retire(
    conn: asyncpg.Connection,
    view_set_name: str,
    instance_id: str,
    match: RetireMatch,
    begin_ns: int | None,
    end_ns: int,
) -> list[asyncpg.Record]:
    """Retires the partitions of an instance that `match` [begin, end] (no lower bound when begin is None).

    In the caller's transaction on `conn`, under the instance's advisory lock (taken here; it is
    re-entrant), deletes the rows and lists their files in `temporary_files` for RETIRED_FILE_GRACE.
    Returns the deleted rows (`begin_insert_time`, `end_insert_time`, `file_path`, `file_size`), by begin.
    """
    await _lock_instance(conn, view_set_name, instance_id)
    args: list[object] = [view_set_name, instance_id, RETIRED_FILE_GRACE]
    conditions = ["view_set_name = $1", "view_instance_id = $2"]

    def bound(column: str, operator: str, ns: int) -> None:
        args.append(ns_to_datetime(ns))
        conditions.append(f"{column} {operator} ${len(args)}")

    if match is RetireMatch.CONTAINED:
        if begin_ns is not None:
            bound("begin_insert_time", ">=", begin_ns)
        bound("end_insert_time", "<=", end_ns)
    else:
        bound("begin_insert_time", "<", end_ns)
        if begin_ns is not None:
            bound("end_insert_time", ">", begin_ns)
    return await conn.fetch(
        "WITH retired AS (DELETE FROM lakehouse_partitions WHERE "
        + " AND ".join(conditions)
        + " RETURNING begin_insert_time, end_insert_time, file_path, file_size),"
        " queued AS (INSERT INTO temporary_files (file_path, file_size, expiration)"
        " SELECT file_path, file_size, now() + $3 FROM retired WHERE file_path IS NOT NULL)"
        " SELECT * FROM retired ORDER BY begin_insert_time",
        *args,
    )


_SLOT_COLUMNS = (
    "view_set_name, view_instance_id, begin_insert_time, end_insert_time, file_schema_hash, file_path, file_size"
)
_BY_SLOT = (
    "view_set_name = $1 AND view_instance_id = $2 AND begin_insert_time = $3 AND end_insert_time = $4"
    " AND file_schema_hash = $5"
)


async def _find(conn: asyncpg.Connection, lookup: PartitionLookup) -> asyncpg.Record | None:
    """The live partition a file path or slot names (its _SLOT_COLUMNS), or None."""
    if isinstance(lookup, str):
        return await conn.fetchrow(f"SELECT {_SLOT_COLUMNS} FROM lakehouse_partitions WHERE file_path = $1", lookup)
    return await conn.fetchrow(
        f"SELECT {_SLOT_COLUMNS} FROM lakehouse_partitions WHERE {_BY_SLOT}",
        lookup.view_set_name,
        lookup.view_instance_id,
        ns_to_datetime(lookup.begin_insert_ns),
        ns_to_datetime(lookup.end_insert_ns),
        lookup.file_schema_hash,
    )


async def _retire_row(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """Retires one partition row found by `_find`, under its instance's lock."""
    await _lock_instance(conn, row["view_set_name"], row["view_instance_id"])
    await conn.execute(
        f"DELETE FROM lakehouse_partitions WHERE {_BY_SLOT}",
        row["view_set_name"],
        row["view_instance_id"],
        row["begin_insert_time"],
        row["end_insert_time"],
        row["file_schema_hash"],
    )
    if row["file_path"] is not None:
        await conn.execute(
            "INSERT INTO temporary_files (file_path, file_size, expiration) VALUES ($1, $2, now() + $3)",
            row["file_path"],
            row["file_size"],
            RETIRED_FILE_GRACE,
        )
