"""Scheduled materialization of the global views, bucket by bucket of insert time (micromegas's
`batch_update`): what the maintenance daemon and `materialize_partitions(...)` run.

For a bucket [begin, end) of a view's global instance, the source count (blocks, or their objects)
is compared with the live partitions inside the bucket:

* no partition, or counts that differ (late blocks, a failed earlier run) → rebuilt from the source
  blocks, replacing the partitions inside the bucket; a bucket longer than the view allows is rebuilt
  as sub-buckets instead;
* one partition with the right count → up to date;
* several partitions with the right count → merged into one (fewer files for queries), unless the
  bucket is longer than the view's partitions may be;
* a partition crossing the bucket's edge → left alone (logged).

Buckets with no source block get no partition: a late block then makes the next, larger bucket's
counts differ, and that bucket is rebuilt from source.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.dataset as ds

from spanlake import tracing
from spanlake.lakehouse import sql_view_rows
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import Partition, PartitionTarget, RetireMatch, write_partition
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.lakehouse.view_rows import view_rows
from spanlake.views.view import View

GLOBAL = "global"
SECOND_NS = 1_000_000_000

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def materialize_range(
    lake: Lake, view: View, begin_ns: int, end_ns: int, delta_ns: int, progress: Progress = log.debug
) -> int:
    """Materializes every whole bucket of `delta_ns` in [begin, end); returns the partitions written."""
    written = 0
    bucket = begin_ns
    while bucket + delta_ns <= end_ns:
        written += materialize_bucket(lake, view, bucket, bucket + delta_ns, progress)
        bucket += delta_ns
    return written


def materialize_bucket(lake: Lake, view: View, begin_ns: int, end_ns: int, progress: Progress) -> int:
    """Brings a bucket's partitions up to date (rebuilt if incomplete, merged if several); the number written."""
    what = f"{view.name} [{format_rfc3339_ns(begin_ns)}, {format_rfc3339_ns(end_ns)})"
    with tracing.async_span("catalog.source_count"):
        required = _source_count(lake, view, begin_ns, end_ns)
    with tracing.async_span("catalog.fetch_overlapping"):
        overlapping = lake.loop.run(lake.catalog.overlapping_partitions(view.name, GLOBAL, begin_ns, end_ns))
    existing = [p for p in overlapping if p.file_schema_hash == view.schema_hash]
    if any(p.begin_insert_ns < begin_ns or p.end_insert_ns > end_ns for p in existing):
        progress(f"{what}: a partition crosses the bucket's edge, left as is")
        return 0
    too_long = end_ns - begin_ns > view.max_partition_seconds * SECOND_NS
    if sum(p.source_count for p in existing) != required:
        if required == 0 and not existing:
            return 0
        if too_long:
            return materialize_range(lake, view, begin_ns, end_ns, view.max_partition_seconds * SECOND_NS, progress)
        return _from_source(lake, view, begin_ns, end_ns, required, what, progress)
    if len(existing) <= 1:
        return 0
    if too_long:
        progress(f"{what}: up to date in {len(existing)} partitions (the view's longest)")
        return 0
    return _merge(lake, view, begin_ns, end_ns, existing, what, progress)


def regenerate_bucket(lake: Lake, view: View, begin_ns: int, end_ns: int, progress: Progress) -> int:
    """Rebuilds the bucket from its source blocks whatever its partitions hold (regenerate_partitions)."""
    what = f"{view.name} [{format_rfc3339_ns(begin_ns)}, {format_rfc3339_ns(end_ns)})"
    required = _source_count(lake, view, begin_ns, end_ns)
    return _from_source(lake, view, begin_ns, end_ns, required, what, progress)


def _source_count(lake: Lake, view: View, begin_ns: int, end_ns: int) -> int:
    """The bucket's source count: its blocks or their objects, or a SQL view's count query."""
    if view.sql is not None:
        return sql_view_rows.source_count(lake, view.sql, begin_ns, end_ns)
    return lake.loop.run(lake.catalog.source_count(view.stream_tags, (begin_ns, end_ns), view.counts_blocks))


def _target(view: View, begin_ns: int, end_ns: int) -> PartitionTarget:
    return PartitionTarget(
        view.name,
        GLOBAL,
        begin_ns,
        end_ns,
        view.schema,
        view.schema_hash,
        view.time_columns,
        RetireMatch.CONTAINED,
    )


def _from_source(
    lake: Lake, view: View, begin_ns: int, end_ns: int, required: int, what: str, progress: Progress
) -> int:
    if view.sql is not None:
        return _from_query(lake, view, begin_ns, end_ns, required, what, progress)
    blocks = lake.loop.run(lake.catalog.source_blocks(tags=view.stream_tags, insert_range=(begin_ns, end_ns)))
    count = len(blocks) if view.counts_blocks else sum(b.meta.nb_objects for b in blocks)
    if count != required:  # blocks arrived between the two reads: the next run will see them all
        progress(f"{what}: source changed while reading ({required} → {count}), retried later")
        return 0
    timings = {}
    if view.reads_payloads:
        process_ids = sorted({uuid.UUID(b.meta.process_id) for b in blocks})
        timings = lake.loop.run(lake.catalog.find_timings(process_ids))
    rows = view_rows(lake, view, timings, blocks)
    partition = write_partition(lake, _target(view, begin_ns, end_ns), count, rows)
    if partition is None:
        progress(f"{what}: an identical partition (same source blocks and schema) is already present")
    else:
        progress(f"{what}: built from {len(blocks)} blocks, {partition.num_rows} rows")
    return partition is not None


def _from_query(
    lake: Lake, view: View, begin_ns: int, end_ns: int, required: int, what: str, progress: Progress
) -> int:
    """A SQL view's bucket from its extract query (over the global views' partitions of the bucket)."""
    if lake.loop.run(lake.catalog.other_global_crosses(view.name, begin_ns, end_ns)):
        # Its rows would miss those of the crossing partition, and the bucket would pass for up to date.
        progress(f"{what}: a partition of a global view crosses the bucket's edge, left for a larger bucket")
        return 0
    rows = sql_view_rows.extracted(lake, view, begin_ns, end_ns)
    partition = write_partition(lake, _target(view, begin_ns, end_ns), required, iter(rows.to_batches()))
    progress(f"{what}: extracted {rows.num_rows} rows" if partition else f"{what}: an identical partition is present")
    return partition is not None


def _merge(
    lake: Lake, view: View, begin_ns: int, end_ns: int, existing: list[Partition], what: str, progress: Progress
) -> int:
    files = [p.file_path for p in sorted(existing, key=lambda p: p.begin_insert_ns) if p.file_path]
    partition = write_partition(
        lake, _target(view, begin_ns, end_ns), sum(p.source_count for p in existing), _merged_rows(lake, view, files)
    )
    progress(f"{what}: merged {len(existing)} partitions, {partition.num_rows if partition else 0} rows")
    return partition is not None


def _merged_rows(lake: Lake, view: View, files: list[str]) -> Iterator[pa.RecordBatch]:
    if not files:
        return iter(())
    filesystem, root = lake.store.arrow_filesystem()
    dataset = ds.dataset([f"{root}/{f}" for f in files], schema=view.schema, format="parquet", filesystem=filesystem)
    if view.merge is not None:  # off DataFusion's runtime: a SQL view's merge query plans
        return iter(lake.off_runtime.run(view.merge, dataset.to_table()).to_batches())
    return dataset.to_batches(batch_size=64 * 1024)
