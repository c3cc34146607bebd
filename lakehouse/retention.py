"""Retention: telemetry older than the retention period is deleted with its objects, and the files of
retired partitions are deleted once their grace period is over.

Blocks, streams and processes: rows go first, objects after: if deleting an object fails, an
unreferenced object remains (harmless, and deleted by nobody), never a row pointing at a missing
object. Partitions are retired as replaced ones are (`partitions.retire`, per view instance under its
lock): their files wait in `temporary_files` for the grace period, so queries already reading them
finish, and a later run deletes them.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from spanlake.lakehouse.catalog import datetime_to_ns
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import retire_contained
from spanlake.lakehouse.records import blob_key

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass
class RetentionReport:
    blocks: int = 0
    streams: int = 0
    processes: int = 0
    partitions: int = 0
    files: int = 0


def delete_expired(lake: Lake, retention_days: int, now: dt.datetime | None = None) -> RetentionReport:
    """Deletes blocks (and payloads), then streams without blocks and processes without streams, all
    inserted before now - retention_days; retires the partitions that end by then; then deletes the
    temporary files whose grace is over."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    report = RetentionReport()
    while True:
        rows = lake.loop.run(
            lake.pool.fetch(
                "DELETE FROM blocks WHERE block_id IN (SELECT block_id FROM blocks WHERE insert_time < $1 LIMIT $2)"
                " RETURNING process_id, stream_id, block_id",
                cutoff,
                BATCH,
            )
        )
        for row in rows:
            lake.store.delete(blob_key(row["process_id"], row["stream_id"], row["block_id"]))
        report.blocks += len(rows)
        if len(rows) < BATCH:
            break
    report.streams = _count(
        lake.loop.run(
            lake.pool.execute(
                "DELETE FROM streams s WHERE s.insert_time < $1"
                " AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.stream_id = s.stream_id)",
                cutoff,
            )
        )
    )
    report.processes = _count(
        lake.loop.run(
            lake.pool.execute(
                "DELETE FROM processes p WHERE p.insert_time < $1"
                " AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.process_id = p.process_id)",
                cutoff,
            )
        )
    )
    report.partitions = _retire_expired_partitions(lake, cutoff)
    report.files = delete_expired_temporary_files(lake)
    log.info("retention (%d days): %s", retention_days, report)
    return report


def _retire_expired_partitions(lake: Lake, cutoff: dt.datetime) -> int:
    """Retires, instance by instance, the partitions whose insert range ends by the cutoff."""
    cutoff_ns = datetime_to_ns(cutoff)
    retired = 0
    while True:
        instances = lake.loop.run(
            lake.pool.fetch(
                "SELECT DISTINCT view_set_name, view_instance_id FROM lakehouse_partitions"
                " WHERE end_insert_time <= $1 LIMIT $2",
                cutoff,
                BATCH,
            )
        )
        for row in instances:
            retired += len(
                lake.loop.run(
                    retire_contained(lake.pool, row["view_set_name"], row["view_instance_id"], None, cutoff_ns)
                )
            )
        if len(instances) < BATCH:
            return retired


def delete_expired_temporary_files(lake: Lake) -> int:
    """Deletes the files of `temporary_files` whose expiration has passed (rows first); returns their count."""
    deleted = 0
    while True:
        rows = lake.loop.run(
            lake.pool.fetch(
                "DELETE FROM temporary_files WHERE ctid IN (SELECT ctid FROM temporary_files WHERE expiration < now()"
                " LIMIT $1) RETURNING file_path",
                BATCH,
            )
        )
        for row in rows:
            lake.store.delete(row["file_path"])
        deleted += len(rows)
        if len(rows) < BATCH:
            return deleted


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])
