"""Table functions that show and manage the partition catalog: list_partitions(), list_view_sets(),
retire_partitions(...) and materialize_partitions(...)."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from datafusion import DataFrame, SessionContext, Table, col, udf

from spanlake.lakehouse.batch_update import SECOND_NS, materialize_range
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.instances import GLOBAL, canonical_instance_id, view_set
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.schema_types import TIMESTAMP
from spanlake.views.view import View

PARTITIONS_SCHEMA = pa.schema(
    [
        pa.field("view_set_name", pa.utf8(), nullable=False),
        pa.field("view_instance_id", pa.utf8(), nullable=False),
        pa.field("begin_insert_time", TIMESTAMP, nullable=False),
        pa.field("end_insert_time", TIMESTAMP, nullable=False),
        pa.field("min_event_time", TIMESTAMP),
        pa.field("max_event_time", TIMESTAMP),
        pa.field("updated", TIMESTAMP, nullable=False),
        pa.field("file_path", pa.utf8()),
        pa.field("file_size", pa.int64(), nullable=False),
        pa.field("file_schema_hash", pa.binary(), nullable=False),
        pa.field("source_data_hash", pa.binary(), nullable=False),
        pa.field("num_rows", pa.int64(), nullable=False),
        pa.field("partition_format_version", pa.int32(), nullable=False),
        pa.field("sort_order", pa.list_(pa.field("tag", pa.utf8()))),
        pa.field("max_sort_key_time", TIMESTAMP),
    ]
)

VIEW_SETS_SCHEMA = pa.schema(
    [
        pa.field("view_set_name", pa.utf8(), nullable=False),
        pa.field("current_schema_hash", pa.binary(), nullable=False),
        pa.field("schema", pa.utf8(), nullable=False),
        pa.field("has_view_maker", pa.bool_(), nullable=False),
        pa.field("global_instance_available", pa.bool_(), nullable=False),
    ]
)

LOG_SCHEMA = pa.schema([pa.field("time", TIMESTAMP, nullable=False), pa.field("msg", pa.utf8(), nullable=False)])


def list_partitions(lake: Lake, read_scope: ReadScope | None = None) -> Table:
    """`list_partitions()`: every live partition of the catalog (with a read scope, the global ones and
    its processes' only: another audience's process ids are not listed)."""
    rows = lake.loop.run(lake.catalog.all_partition_rows())
    table = pa.Table.from_pylist(
        [{name: row[name] for name in PARTITIONS_SCHEMA.names} for row in rows], schema=PARTITIONS_SCHEMA
    )
    if read_scope is not None:
        visible = pa.array([GLOBAL, *read_scope.process_ids()], pa.utf8())
        table = table.filter(pc.is_in(table["view_instance_id"], visible))
    return lake.off_runtime.memory_table(table)


def list_view_sets(lake: Lake) -> ds.Dataset:
    """`list_view_sets()`: the view sets (built-in, then SQL-defined), their current schema and which
    instances they have."""
    views = [*VIEW_SETS.values(), *(stored.view for stored in lake.sql_views.views(lake).values())]
    table = pa.table(
        {
            "view_set_name": [v.name for v in views],
            "current_schema_hash": [v.schema_hash for v in views],
            "schema": [str(v.schema) for v in views],
            "has_view_maker": [v.instance_kind is not None for v in views],
            "global_instance_available": [v.has_global_instance for v in views],
        },
        schema=VIEW_SETS_SCHEMA,
    )
    return ds.dataset(table)


class ProgressLog:
    """The `(time, msg)` rows an admin function answers, one per message."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        """Adds a row: the message, timed now."""
        self.times.append(time.time_ns())
        self.messages.append(message)

    def dataset(self) -> ds.Dataset:
        """The rows so far."""
        return ds.dataset(
            pa.table(
                {"time": pa.array(self.times, pa.int64()).cast(TIMESTAMP), "msg": self.messages}, schema=LOG_SCHEMA
            )
        )


def retire_partitions(lake: Lake, view_set_name: str, instance_id: str, begin_ns: int, end_ns: int) -> ds.Dataset:
    """Retires (`Catalog.retire_contained`) the partitions of an instance whose insert range lies inside
    [begin, end]; their files are kept for an hour in temporary_files. Returns a log of what was done."""
    view = view_set(lake, view_set_name)
    instance = canonical_instance_id(view, instance_id)
    if begin_ns > end_ns:
        raise QueryError("retire_partitions: begin must not be after end")
    log = ProgressLog()
    rows = lake.loop.run(lake.catalog.retire_contained(view.name, instance, begin_ns, end_ns))
    for row in rows:
        log(f"retired partition [{row['begin_insert_time']}, {row['end_insert_time']}) {row['file_path'] or '(empty)'}")
    log(f"retired {len(rows)} partitions of {view.name}/{instance}")
    return log.dataset()


def materialize_partitions(
    lake: Lake, ctx: SessionContext, view_set_name: str, begin_ns: int, end_ns: int, delta_seconds: int | None
) -> DataFrame:
    """Materializes the global instance of a view bucket by bucket over [begin, end) (buckets of
    `delta_seconds`, aligned on multiples of it; default: the view's longest partition), as the
    maintenance daemon does. One `(time, msg)` row per bucket, done as the client reads, so progress
    streams to the client and nothing is allocated per bucket ahead of the work: the buckets are
    handed out in at most MAX_PAGES pages (one bucket per page for ranges up to that many)."""
    view = view_set(lake, view_set_name)
    if not view.has_global_instance:
        raise QueryError(f"materialize_partitions: {view.name} has no global instance")
    if begin_ns >= end_ns:
        raise QueryError("materialize_partitions: begin must be before end")
    if delta_seconds is not None and delta_seconds <= 0:
        raise QueryError("materialize_partitions: partition_delta_seconds must be positive")
    delta = (delta_seconds or view.max_partition_seconds) * SECOND_NS
    first = begin_ns // delta * delta
    count = -(-end_ns // delta) - begin_ns // delta
    if first < -MAX_NS or first + count * delta > MAX_NS:
        raise QueryError("materialize_partitions: the buckets must lie within 1677-09-21 and 2262-04-11")
    per_page = -(-count // MAX_PAGES)
    pages = -(-count // per_page)

    def materialize(page_ids: pa.Array) -> pa.ListArray:
        offsets, times, messages = [0], [], []
        for page in page_ids.to_pylist():
            for index in range(page * per_page, min((page + 1) * per_page, count)):
                messages.append(_materialize_bucket(lake, view, first + index * delta, delta))
                times.append(time.time_ns())
            offsets.append(len(messages))
        rows = pa.StructArray.from_arrays(
            [pa.array(times, pa.int64()).cast(TIMESTAMP), pa.array(messages, pa.utf8())], fields=list(LOG_SCHEMA)
        )
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), rows)

    step = udf(materialize, [pa.int32()], _PROGRESS_TYPE, "volatile", "materialize_buckets")
    tasks = [[pa.record_batch({"page": pa.array([i], pa.int32())}) for i in range(pages)]]
    frame = lake.off_runtime.run(ctx.create_dataframe, tasks, None, pa.schema([("page", pa.int32())]))
    progress = frame.select(step(col("page")).alias("progress")).unnest_columns("progress").unnest_columns("progress")
    return progress.select(col('"progress.time"').alias("time"), col('"progress.msg"').alias("msg"))


MAX_PAGES = 1024  # rows of materialize_partitions' task table, whatever the number of buckets
MAX_NS = 2**63 - 1
_PROGRESS_TYPE = pa.list_(pa.field("item", pa.struct(list(LOG_SCHEMA))))


def _materialize_bucket(lake: Lake, view: View, begin: int, delta: int) -> str:
    """Materializes one bucket; its progress line."""
    lines: list[str] = []
    materialize_range(lake, view, begin, begin + delta, delta, lines.append)
    span = f"[{format_rfc3339_ns(begin)}, {format_rfc3339_ns(begin + delta)})"
    return "; ".join(lines) or f"{view.name} {span}: up to date"
