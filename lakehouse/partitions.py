"""Partitions: parquet files of one view instance, each with one row in `lakehouse_partitions`.

A partition covers a half-open range of block insert times. Writing one stores the file first, then,
in one transaction under an advisory lock per view instance, retires the partitions it replaces and
inserts its row. The same transaction refuses to let two live partitions of one instance and schema
overlap: stock PostgreSQL has no btree_gist for an exclusion constraint, so the lock makes the check
race-free.

`retire` is the one way a partition leaves the catalog (replaced, `retire_partitions()`, retention):
under the same lock, its row is deleted and its file goes to `temporary_files` for an hour, so queries
already reading it finish; retention deletes the file once that grace is over.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import logging
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spanlake import tracing
from spanlake.lakehouse.catalog import datetime_to_ns, ns_to_datetime
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import ObjectStore

log = logging.getLogger(__name__)

MAX_ROW_GROUP_ROWS = 128 * 1024
RETIRED_FILE_GRACE = dt.timedelta(hours=1)
PARTITION_FORMAT_VERSION = 2


class PartitionOverlapError(Exception):
    """A new partition would overlap a live one that it does not replace."""


class RetireMatch(enum.Enum):
    """Which partitions of an instance `retire` removes for a range [begin, end]."""

    CONTAINED = "contained"  # partitions inside the range (merges of global views, retire_partitions, retention)
    OVERLAPPING = "overlapping"  # every partition touching the range (JIT rewrites)


@dataclass(frozen=True)
class Partition:
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
        return count_to_hash(self.source_count)


def count_to_hash(count: int) -> bytes:
    """micromegas stores the source object count as an i64 little-endian 'hash'."""
    return struct.pack("<q", count)


def hash_to_count(data: bytes) -> int | None:
    return struct.unpack("<q", data)[0] if len(data) == 8 else None


def partition_key(view_set_name: str, instance_id: str, begin_insert_ns: int) -> str:
    begin = ns_to_datetime(begin_insert_ns)
    return f"views/{view_set_name}/{instance_id}/{begin:%Y-%m-%d}/{begin:%H-%M-%S}_{uuid.uuid4()}.parquet"


def row_to_partition(row: asyncpg.Record) -> Partition:
    def ns(value: dt.datetime | None) -> int | None:
        return None if value is None else datetime_to_ns(value)

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
        source_count=hash_to_count(bytes(row["source_data_hash"])) or -1,
        num_rows=row["num_rows"],
    )


async def fetch_overlapping(
    pool: asyncpg.Pool, view_set_name: str, instance_id: str, begin_insert_ns: int, end_insert_ns: int
) -> list[Partition]:
    """Live partitions of an instance (any schema) whose insert range meets [begin, end)."""
    rows = await pool.fetch(
        "SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
        " AND begin_insert_time < $4 AND end_insert_time > $3 ORDER BY begin_insert_time",
        view_set_name,
        instance_id,
        ns_to_datetime(begin_insert_ns),
        ns_to_datetime(end_insert_ns),
    )
    return [row_to_partition(r) for r in rows]


def for_query(partitions: list[Partition], schema_hash: bytes, event_range: tuple[int, int] | None) -> list[Partition]:
    """The filter of `fetch_for_query`, on partitions already fetched."""
    return [
        p
        for p in partitions
        if p.file_path is not None
        and p.file_schema_hash == schema_hash
        and (
            event_range is None
            or (p.min_event_ns is not None and p.min_event_ns <= event_range[1] and p.max_event_ns >= event_range[0])
        )
    ]


async def fetch_for_query(
    pool: asyncpg.Pool, view_set_name: str, instance_id: str, schema_hash: bytes, event_range: tuple[int, int] | None
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
    rows = await pool.fetch(sql + " ORDER BY begin_insert_time, file_path", *args)
    return [row_to_partition(r) for r in rows]


def write_parquet(
    store: ObjectStore, key: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], time_columns: tuple[str, str]
) -> tuple[int, int, int | None, int | None]:
    """Streams batches into a parquet file (LZ4_RAW, row groups ≤ 128Ki rows). Returns the file size, the
    rows, and the smallest `time_columns[0]` / largest `time_columns[1]` (ns) seen on the way.

    pyarrow names the LZ4_RAW codec "lz4" (it never writes the deprecated Hadoop LZ4 framing)."""
    filesystem, root = store.arrow_filesystem()
    path = f"{root}/{key}"
    if store.scheme == "file":
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    rows, low, high = 0, None, None
    with pq.ParquetWriter(
        path, schema, filesystem=filesystem, compression="lz4", write_statistics=True, version="2.6"
    ) as writer:
        for batch in batches:
            if not batch.num_rows:
                continue
            writer.write_batch(batch, row_group_size=MAX_ROW_GROUP_ROWS)
            rows += batch.num_rows
            batch_low = pc.min(batch.column(time_columns[0])).cast(pa.int64()).as_py()
            batch_high = pc.max(batch.column(time_columns[1])).cast(pa.int64()).as_py()
            low = batch_low if low is None else min(low, batch_low)
            high = batch_high if high is None else max(high, batch_high)
    return filesystem.get_file_info(path).size, rows, low, high


@dataclass(frozen=True)
class PartitionTarget:
    """Where a new partition goes: a view instance, its insert range, and what it replaces."""

    view_set_name: str
    instance_id: str
    begin_insert_ns: int
    end_insert_ns: int
    schema: pa.Schema
    file_schema_hash: bytes
    time_columns: tuple[str, str]
    retire: RetireMatch


def write_partition_file(
    lake: Lake, target: PartitionTarget, source_count: int, batches: Iterable[pa.RecordBatch]
) -> Partition:
    """Writes the rows (if any) to a new file: the partition, not yet committed (no file when empty)."""
    rows_iter = (b for b in batches if b.num_rows)
    first = next(rows_iter, None)
    key, size, rows, low, high = None, 0, 0, None, None
    if first is not None:
        key = partition_key(target.view_set_name, target.instance_id, target.begin_insert_ns)
        # The rows are built as the writer pulls them: their decoding nests in this span.
        with tracing.async_span("parquet.write"):
            size, rows, low, high = write_parquet(
                lake.store, key, target.schema, itertools.chain([first], rows_iter), target.time_columns
            )
    return Partition(
        target.view_set_name,
        target.instance_id,
        target.begin_insert_ns,
        target.end_insert_ns,
        low,
        high,
        key,
        size,
        target.file_schema_hash,
        source_count,
        rows,
    )


def write_partition(
    lake: Lake, target: PartitionTarget, source_count: int, batches: Iterable[pa.RecordBatch]
) -> Partition | None:
    """Writes the rows (if any) to a new file and commits the partition, an empty one when there are no
    rows (it records that the range was processed). None if an identical partition was committed by a
    concurrent writer; the file written here is then removed, as on any failure."""
    partition = write_partition_file(lake, target, source_count, batches)
    committed = False
    try:
        with tracing.async_span("catalog.commit_partition"):
            lake.loop.run(commit_partition(lake.pool, partition, target.retire))
        committed = True
        return partition
    except DuplicatePartition:
        return None
    finally:
        if partition.file_path and not committed:
            lake.store.delete(partition.file_path)


async def commit_partition(pool: asyncpg.Pool, partition: Partition, replaces: RetireMatch) -> list[str]:
    """Retires what the partition replaces and inserts it, atomically. Returns the retired files.

    Raises DuplicatePartition, changing nothing, if another writer committed an identical partition
    (same range, schema and source count) meanwhile: the caller then drops its own file.
    """
    async with pool.acquire() as conn, conn.transaction():
        await lock_instance(conn, partition.view_set_name, partition.view_instance_id)
        if await _same_partition_exists(conn, partition):
            raise DuplicatePartition()
        retired = await retire(
            conn,
            partition.view_set_name,
            partition.view_instance_id,
            replaces,
            partition.begin_insert_ns,
            partition.end_insert_ns,
        )
        await _insert_partition(conn, partition)
    return [r["file_path"] for r in retired if r["file_path"]]


def partition_identity(partition: Partition) -> tuple[int, int, str | None]:
    """What tells two live partitions of one instance and schema apart."""
    return partition.begin_insert_ns, partition.end_insert_ns, partition.file_path


async def commit_replacing(pool: asyncpg.Pool, new: list[Partition], replaces: list[Partition]) -> bool:
    """Swaps `replaces` for `new` (partitions of one instance and schema) in one transaction, so a query
    sees either all of the old ones or all of the new ones. Optimistic: under the instance's lock, the
    live partitions of that schema overlapping the new ranges must be exactly `replaces`; otherwise a
    concurrent writer got there first, nothing changes and this returns False. Overlapping partitions
    of other schemas (stale by definition) are retired too."""
    first = new[0]
    async with pool.acquire() as conn, conn.transaction():
        await lock_instance(conn, first.view_set_name, first.view_instance_id)
        overlapping = set()
        for partition in new:
            rows = await conn.fetch(
                "SELECT begin_insert_time, end_insert_time, file_path FROM lakehouse_partitions"
                " WHERE view_set_name = $1 AND view_instance_id = $2 AND file_schema_hash = $3"
                " AND begin_insert_time < $5 AND end_insert_time > $4",
                partition.view_set_name,
                partition.view_instance_id,
                partition.file_schema_hash,
                ns_to_datetime(partition.begin_insert_ns),
                ns_to_datetime(partition.end_insert_ns),
            )
            overlapping |= {
                (datetime_to_ns(r["begin_insert_time"]), datetime_to_ns(r["end_insert_time"]), r["file_path"])
                for r in rows
            }
        if overlapping != {partition_identity(p) for p in replaces}:
            return False
        for partition in new:
            await retire(
                conn,
                partition.view_set_name,
                partition.view_instance_id,
                RetireMatch.OVERLAPPING,
                partition.begin_insert_ns,
                partition.end_insert_ns,
            )
        for partition in new:
            await _insert_partition(conn, partition)
    return True


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


async def lock_instance(conn: asyncpg.Connection, view_set_name: str, instance_id: str) -> None:
    """Takes the view instance's advisory lock until the end of the transaction open on `conn`."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{view_set_name}/{instance_id}")


async def retire(
    conn: asyncpg.Connection,
    view_set_name: str,
    instance_id: str,
    match: RetireMatch,
    begin_ns: int | None,
    end_ns: int,
) -> list[asyncpg.Record]:
    """Retires the partitions of an instance that `match` [begin, end] (no lower bound when begin is None).

    The one way a partition leaves the catalog (replaced by JIT or a merge, `retire_partitions()`,
    retention): in the caller's transaction on `conn`, under the instance's advisory lock (taken here; it
    is re-entrant), deletes the rows and lists their files in `temporary_files` for RETIRED_FILE_GRACE,
    so queries already reading them finish. Returns the deleted rows (`begin_insert_time`,
    `end_insert_time`, `file_path`, `file_size`), by begin time.
    """
    await lock_instance(conn, view_set_name, instance_id)
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


async def retire_contained(
    pool: asyncpg.Pool, view_set_name: str, instance_id: str, begin_ns: int | None, end_ns: int
) -> list[asyncpg.Record]:
    """`retire` of the partitions inside [begin, end], in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction():
        return await retire(conn, view_set_name, instance_id, RetireMatch.CONTAINED, begin_ns, end_ns)


class DuplicatePartition(Exception):
    """An identical partition was committed by a concurrent writer; this one is redundant."""


async def _same_partition_exists(conn: asyncpg.Connection, partition: Partition) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
            " AND begin_insert_time = $3 AND end_insert_time = $4 AND file_schema_hash = $5"
            " AND source_data_hash = $6",
            partition.view_set_name,
            partition.view_instance_id,
            ns_to_datetime(partition.begin_insert_ns),
            ns_to_datetime(partition.end_insert_ns),
            partition.file_schema_hash,
            partition.source_data_hash,
        )
    )
