"""Admin functions that retire or rebuild single partitions, as micromegas names them:
`retire_partition_by_file(file_path)`, `retire_partition_by_metadata(view_set_name,
view_instance_id, begin_insert_time, end_insert_time, file_schema_hash)` (scalar, one message per
row: "SUCCESS: …" or "ERROR: …"; a batch is one transaction, rolled back when any row fails) and
`regenerate_partitions(view_set_name, begin, end, partition_delta_seconds)` (a table of
`(time, msg)`: rebuilds the global partitions tiling [begin, end) from source blocks)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import ScalarUDF, udf

from spanlake.lakehouse.batch_update import SECOND_NS, regenerate_bucket
from spanlake.lakehouse.catalog.partitions import PartitionLookup, PartitionSlot
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.catalog_functions import ProgressLog
from spanlake.lakehouse.query.instances import GLOBAL, view_set
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.views.schema_types import TIMESTAMP


def chrono_utc(ns: int) -> str:
    """A time as Rust's chrono displays a `DateTime<Utc>` ('2024-01-01 00:00:00.250 UTC'), the form
    micromegas's retirement messages carry."""
    seconds, nanos = divmod(ns, SECOND_NS)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos == 0:
        return f"{base} UTC"
    digits = 3 if nanos % 1_000_000 == 0 else 6 if nanos % 1_000 == 0 else 9
    return f"{base}.{nanos // 10 ** (9 - digits):0{digits}d} UTC"


def _retire_rows(lake: Lake, lookups: list[PartitionLookup | None], null_error: str) -> pa.Array:
    """Retires a batch all or nothing (`Catalog.retire_each_or_none`); one message per row (a None
    lookup: a row with a NULL argument), ROLLED_BACK on the rows found when another row failed."""
    found = lake.loop.run(lake.catalog.retire_each_or_none(lookups))
    done = "SUCCESS" if all(found) else "ROLLED_BACK"
    return pa.array(
        [_message(lookup, ok, done, null_error) for lookup, ok in zip(lookups, found, strict=True)], pa.utf8()
    )


def _message(lookup: PartitionLookup | None, found: bool, done: str, null_error: str) -> str:
    if lookup is None:
        return f"ERROR: {null_error}"
    if isinstance(lookup, str):
        what = lookup
    else:
        begin, end = chrono_utc(lookup.begin_insert_ns), chrono_utc(lookup.end_insert_ns)
        what = f"{lookup.view_set_name}/{lookup.view_instance_id} [{begin}, {end})"
    return f"{done}: Retired partition {what}" if found else f"ERROR: Partition not found: {what}"


def retire_partition_by_file_udf(lake: Lake) -> ScalarUDF:
    """`retire_partition_by_file(file_path)`."""

    def retire_partition_by_file(file_paths: pa.Array) -> pa.Array:
        return _retire_rows(lake, file_paths.to_pylist(), "file_path cannot be null")

    return udf(retire_partition_by_file, [pa.utf8()], pa.utf8(), "volatile", "retire_partition_by_file")


def retire_partition_by_metadata_udf(lake: Lake) -> ScalarUDF:
    """`retire_partition_by_metadata(view_set_name, view_instance_id, begin_insert_time, end_insert_time,
    file_schema_hash)`."""

    def retire_partition_by_metadata(
        names: pa.Array, instances: pa.Array, begins: pa.Array, ends: pa.Array, hashes: pa.Array
    ) -> pa.Array:
        begin_ns = begins.cast(pa.int64()).to_pylist()
        end_ns = ends.cast(pa.int64()).to_pylist()
        rows = zip(names.to_pylist(), instances.to_pylist(), begin_ns, end_ns, hashes.to_pylist(), strict=True)
        lookups = [None if None in row else PartitionSlot(*row) for row in rows]
        return _retire_rows(lake, lookups, "all arguments must be non-null")

    arguments = [pa.utf8(), pa.utf8(), TIMESTAMP, TIMESTAMP, pa.binary()]
    return udf(retire_partition_by_metadata, arguments, pa.utf8(), "volatile", "retire_partition_by_metadata")


def regenerate_partitions(lake: Lake, view_set_name: str, begin_ns: int, end_ns: int, delta_seconds: int) -> ds.Dataset:
    """Rebuilds from source every global partition of the view tiling [begin, end) in buckets of
    `delta_seconds`, even those up to date (micromegas's force-regeneration). The range and delta must
    exactly cover the partitions they replace."""
    view = view_set(lake, view_set_name)
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
    for partition in lake.loop.run(lake.catalog.overlapping_partitions(view_set_name, GLOBAL, begin_ns, end_ns)):
        if partition.begin_insert_ns < begin_ns or partition.end_insert_ns > end_ns:
            raise QueryError(
                f"regenerate_partitions: regeneration bucket [{format_rfc3339_ns(begin_ns)},"
                f" {format_rfc3339_ns(end_ns)}] does not fully contain existing partition"
                f" [{format_rfc3339_ns(partition.begin_insert_ns)}, {format_rfc3339_ns(partition.end_insert_ns)}]"
                f" for {view_set_name}/{GLOBAL} -- the requested range/delta must exactly cover the partition(s)"
                " being regenerated"
            )
