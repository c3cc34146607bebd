"""Retention: telemetry older than the retention period is deleted with its objects, and the files of
replaced partitions are deleted once their grace period is over.

Rows go first, objects after: if deleting an object fails, an unreferenced object remains (harmless,
and deleted by nobody), never a row pointing at a missing object.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from spanlake.lakehouse.lake import Lake

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
    """Deletes blocks (and payloads), then streams without blocks, processes without streams, and
    partitions, all inserted before now - retention_days; then the expired temporary files."""
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
            lake.store.delete(f"blobs/{row['process_id']}/{row['stream_id']}/{row['block_id']}")
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
    while True:
        rows = lake.loop.run(
            lake.pool.fetch(
                "DELETE FROM lakehouse_partitions WHERE ctid IN (SELECT ctid FROM lakehouse_partitions"
                " WHERE end_insert_time <= $1 LIMIT $2) RETURNING file_path",
                cutoff,
                BATCH,
            )
        )
        for row in rows:
            if row["file_path"]:
                lake.store.delete(row["file_path"])
        report.partitions += len(rows)
        if len(rows) < BATCH:
            break
    report.files = delete_expired_temporary_files(lake)
    log.info("retention (%d days): %s", retention_days, report)
    return report


def delete_expired_temporary_files(lake: Lake) -> int:
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
