"""Retention: telemetry older than the retention period is deleted with its objects, and the files of
retired partitions are deleted once their grace period is over.

Blocks, streams and processes: rows go first, objects after: if deleting an object fails, an
unreferenced object remains (harmless, and deleted by nobody), never a row pointing at a missing
object. Partitions are retired as replaced ones are (`Catalog.retire_contained`, per view instance under its
lock): their files wait in `temporary_files` for the grace period, so queries already reading them
finish, and a later run deletes them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import delete_partition_file
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.timestamps import datetime_to_ns

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass
class RetentionReport:
    """What one retention run deleted (rows) and retired (partitions), and the files it deleted."""

    blocks: int = 0
    streams: int = 0
    processes: int = 0
    trace_index: int = 0
    trace_index_pending: int = 0
    partitions: int = 0
    files: int = 0


def delete_expired(lake: Lake, retention_days: int, now: dt.datetime | None = None) -> RetentionReport:
    """Deletes blocks (and payloads), then streams without blocks and processes without streams, all
    inserted before now - retention_days, the trace index rows of traces ended by then and the blocks
    queued for the index by then; retires the partitions that end by then; then deletes the temporary
    files whose grace is over."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    report = RetentionReport()
    while True:
        rows = lake.loop.run(lake.catalog.delete_blocks_before(cutoff, BATCH))
        for row in rows:
            lake.store.delete(blob_key(row["process_id"], row["stream_id"], row["block_id"]))
        report.blocks += len(rows)
        if len(rows) < BATCH:
            break
    report.streams = lake.loop.run(lake.catalog.delete_streams_without_blocks(cutoff))
    report.processes = lake.loop.run(lake.catalog.delete_processes_without_streams(cutoff))
    report.trace_index = _delete_in_batches(lake, lake.catalog.delete_trace_index_before, cutoff)
    # Blocks queued for the trace index before the cutoff: deleted above, or never stored.
    report.trace_index_pending = _delete_in_batches(lake, lake.catalog.delete_pending_trace_blocks_before, cutoff)
    report.partitions = _retire_expired_partitions(lake, cutoff)
    report.files = delete_expired_temporary_files(lake)
    log.info("retention (%d days): %s", retention_days, report)
    return report


def _delete_in_batches(lake: Lake, delete: Callable[[int, int], Awaitable[int]], cutoff: dt.datetime) -> int:
    """Runs a catalog deletion of rows before the cutoff (`delete(cutoff_ns, limit)`) until none is left."""
    deleted = 0
    while True:
        count = lake.loop.run(delete(datetime_to_ns(cutoff), BATCH))
        deleted += count
        if count < BATCH:
            return deleted


def _retire_expired_partitions(lake: Lake, cutoff: dt.datetime) -> int:
    """Retires, instance by instance, the partitions whose insert range ends by the cutoff."""
    cutoff_ns = datetime_to_ns(cutoff)
    retired = 0
    while True:
        instances = lake.loop.run(lake.catalog.instances_with_partitions_ending_by(cutoff, BATCH))
        for view_set_name, instance_id in instances:
            retired += len(lake.loop.run(lake.catalog.retire_contained(view_set_name, instance_id, None, cutoff_ns)))
        if len(instances) < BATCH:
            return retired


def delete_expired_temporary_files(lake: Lake) -> int:
    """Deletes the files of `temporary_files` whose expiration has passed (rows first); returns their count."""
    deleted = 0
    while True:
        paths = lake.loop.run(lake.catalog.delete_expired_temporary_files(BATCH))
        for path in paths:
            delete_partition_file(lake.store, path)
        deleted += len(paths)
        if len(paths) < BATCH:
            return deleted
