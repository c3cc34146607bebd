"""Admin functions that retire or rebuild single partitions, as micromegas names them:
`retire_partition_by_file(file_path)`, `retire_partition_by_metadata(view_set_name,
view_instance_id, begin_insert_time, end_insert_time, file_schema_hash)` (scalar, one message per
row: "SUCCESS: …" or "ERROR: …"; a batch is one transaction, rolled back when any row fails) and
`regenerate_partitions(view_set_name, begin, end, partition_delta_seconds)` (a table of
`(time, msg)`: rebuilds the global partitions tiling [begin, end) from source blocks)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg
import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import ScalarUDF, udf

from spanlake.lakehouse.batch_update import SECOND_NS, regenerate_bucket
from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import RETIRED_FILE_GRACE, fetch_overlapping, lock_instance
from spanlake.lakehouse.query.catalog_functions import ProgressLog
from spanlake.lakehouse.query.instances import GLOBAL, view_set
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.views.schema_types import TIMESTAMP


class RetireFailed(Exception):
    """One partition could not be retired; the message is what the caller's row reads."""


def chrono_utc(ns: int) -> str:
    """A time as Rust's chrono displays a `DateTime<Utc>` ('2024-01-01 00:00:00.250 UTC'), the form
    micromegas's retirement messages carry."""
    seconds, nanos = divmod(ns, SECOND_NS)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos == 0:
        return f"{base} UTC"
    digits = 3 if nanos % 1_000_000 == 0 else 6 if nanos % 1_000 == 0 else 9
    return f"{base}.{nanos // 10 ** (9 - digits):0{digits}d} UTC"


async def _retire_row(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """Retires one catalog row under its instance's lock: deleted, its file kept for an hour."""
    await lock_instance(conn, row["view_set_name"], row["view_instance_id"])
    await conn.execute(
        "DELETE FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
        " AND begin_insert_time = $3 AND end_insert_time = $4 AND file_schema_hash = $5",
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


_ROW_COLUMNS = (
    "view_set_name, view_instance_id, begin_insert_time, end_insert_time, file_schema_hash, file_path, file_size"
)


async def _retire_by_file(conn: asyncpg.Connection, file_path: str) -> str:
    row = await conn.fetchrow(f"SELECT {_ROW_COLUMNS} FROM lakehouse_partitions WHERE file_path = $1", file_path)
    if row is None:
        raise RetireFailed(f"Partition not found: {file_path}")
    await _retire_row(conn, row)
    return f"Retired partition {file_path}"


async def _retire_by_metadata(
    conn: asyncpg.Connection, view_set_name: str, instance_id: str, begin_ns: int, end_ns: int, schema_hash: bytes
) -> str:
    what = f"{view_set_name}/{instance_id} [{chrono_utc(begin_ns)}, {chrono_utc(end_ns)})"
    row = await conn.fetchrow(
        f"SELECT {_ROW_COLUMNS} FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = $2"
        " AND begin_insert_time = $3 AND end_insert_time = $4 AND file_schema_hash = $5",
        view_set_name,
        instance_id,
        ns_to_datetime(begin_ns),
        ns_to_datetime(end_ns),
        schema_hash,
    )
    if row is None:
        raise RetireFailed(f"Partition not found: {what}")
    await _retire_row(conn, row)
    return f"Retired partition {what}"


Retirement = Callable[[asyncpg.Connection], Awaitable[str]] | str  # a str: the row's argument error


async def _retire_batch(pool: asyncpg.Pool, retirements: list[Retirement]) -> list[str]:
    """One message per row, all in one transaction: committed only if every row succeeded."""
    messages, failed = [], False
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for retirement in retirements:
                if isinstance(retirement, str):
                    messages.append(f"ERROR: {retirement}")
                    failed = True
                    continue
                try:
                    async with conn.transaction():  # a savepoint: a failed row leaves the others intact
                        messages.append(f"SUCCESS: {await retirement(conn)}")
                except RetireFailed as err:
                    messages.append(f"ERROR: {err}")
                    failed = True
        finally:
            await (transaction.rollback() if failed else transaction.commit())
    if failed:  # nothing was retired: say so on the rows that would have succeeded
        messages = [m.replace("SUCCESS: ", "ROLLED_BACK: ", 1) for m in messages]
    return messages


def retire_partition_by_file_udf(lake: Lake) -> ScalarUDF:
    def retire_partition_by_file(file_paths: pa.Array) -> pa.Array:
        retirements: list[Retirement] = [
            "file_path cannot be null" if path is None else (lambda conn, p=path: _retire_by_file(conn, p))
            for path in file_paths.to_pylist()
        ]
        return pa.array(lake.loop.run(_retire_batch(lake.pool, retirements)), pa.utf8())

    return udf(retire_partition_by_file, [pa.utf8()], pa.utf8(), "volatile", "retire_partition_by_file")


def retire_partition_by_metadata_udf(lake: Lake) -> ScalarUDF:
    def retire_partition_by_metadata(
        names: pa.Array, instances: pa.Array, begins: pa.Array, ends: pa.Array, hashes: pa.Array
    ) -> pa.Array:
        begin_ns = begins.cast(pa.int64()).to_pylist()
        end_ns = ends.cast(pa.int64()).to_pylist()
        rows = zip(names.to_pylist(), instances.to_pylist(), begin_ns, end_ns, hashes.to_pylist(), strict=True)
        retirements: list[Retirement] = [
            "all arguments must be non-null" if None in row else (lambda conn, r=row: _retire_by_metadata(conn, *r))
            for row in rows
        ]
        return pa.array(lake.loop.run(_retire_batch(lake.pool, retirements)), pa.utf8())

    arguments = [pa.utf8(), pa.utf8(), TIMESTAMP, TIMESTAMP, pa.binary()]
    return udf(retire_partition_by_metadata, arguments, pa.utf8(), "volatile", "retire_partition_by_metadata")


def regenerate_partitions(lake: Lake, view_set_name: str, begin_ns: int, end_ns: int, delta_seconds: int) -> ds.Dataset:
    """Rebuilds from source every global partition of the view tiling [begin, end) in buckets of
    `delta_seconds`, even those up to date (micromegas's force-regeneration). The range and delta must
    exactly cover the partitions they replace."""
    view = view_set(view_set_name)
    if not view.has_global_instance:
        raise QueryError(f"regenerate_partitions: can't find view {view.name}: it has no global instance")
    step, span = delta_seconds * SECOND_NS, end_ns - begin_ns
    if not (step > 0 and span >= step and span % step == 0):
        raise QueryError(
            f"regenerate_partitions: delta ({delta_seconds}s) does not exactly tile the requested range"
            f" [{format_rfc3339_ns(begin_ns)}, {format_rfc3339_ns(end_ns)}] -- range/delta must exactly cover"
            " the partition(s) being regenerated"
        )
    log = ProgressLog()
    for bucket in range(begin_ns, end_ns, step):
        _check_alignment(lake, view.name, bucket, bucket + step)
        regenerate_bucket(lake, view, bucket, bucket + step, log)
    return log.dataset()


def _check_alignment(lake: Lake, view_set_name: str, begin_ns: int, end_ns: int) -> None:
    for partition in lake.loop.run(fetch_overlapping(lake.pool, view_set_name, GLOBAL, begin_ns, end_ns)):
        if partition.begin_insert_ns < begin_ns or partition.end_insert_ns > end_ns:
            raise QueryError(
                f"regenerate_partitions: regeneration bucket [{format_rfc3339_ns(begin_ns)},"
                f" {format_rfc3339_ns(end_ns)}] does not fully contain existing partition"
                f" [{format_rfc3339_ns(partition.begin_insert_ns)}, {format_rfc3339_ns(partition.end_insert_ns)}]"
                f" for {view_set_name}/{GLOBAL} -- the requested range/delta must exactly cover the partition(s)"
                " being regenerated"
            )
