"""Orphan files: objects no catalog row names, left by a writer that stopped between its two steps.

Every write puts its object first and its catalog row after (a block's payload, then its row; a
partition's parquet file, then its row in the swap), so a process killed or a database lost between
the two leaves an object nobody will read or delete: the request was never acknowledged, the partition
never visible. A local store can also keep a `*.tmp` file of a write killed before its rename.

The sweep lists the store, keeps what was last modified more than ORPHAN_GRACE ago (a writer is never
that long between its steps, and a client retrying an unacknowledged block does so within minutes,
reusing its stored payload), asks the catalog which of those it names, and deletes the others. A
partition file still waiting in `temporary_files` is named there, so it keeps its grace. Keys that
are not spanlake's own shape (a `blobs/` key that is not three UUIDs) are left alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.partitions import delete_partition_file

log = logging.getLogger(__name__)

ORPHAN_GRACE = dt.timedelta(days=1)
BATCH = 1000
# A local write's temporary name: the key, a dot, 32 hex digits, `.tmp` (ObjectStore._write_temp).
TEMPORARY_NAME = re.compile(r"\.[0-9a-f]{32}\.tmp$")
# The names, among some, that no catalog row has.
Unnamed = Callable[[Lake, list[str]], Awaitable[list[str]]]


@dataclass
class OrphanReport:
    """What one sweep deleted: payloads without a block row, partition files without a partition row,
    and temporary files of interrupted local writes."""

    payloads: int = 0
    partition_files: int = 0
    temporary_files: int = 0


def delete_orphan_files(lake: Lake, now: dt.datetime | None = None) -> OrphanReport:
    """Deletes the store's objects older than ORPHAN_GRACE that no catalog row names."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - ORPHAN_GRACE
    report = OrphanReport()
    blobs = lake.store.list_modified_before("blobs", cutoff)
    report.temporary_files += _delete_temporary(lake, blobs)
    report.payloads = _delete_unnamed(lake, _payloads_by_block(blobs), _unknown_blocks, ObjectStore.delete)
    views = lake.store.list_modified_before("views", cutoff)
    report.temporary_files += _delete_temporary(lake, views)
    files = {key: key for key in views if not TEMPORARY_NAME.search(key)}
    report.partition_files = _delete_unnamed(lake, files, _unnamed_partition_files, delete_partition_file)
    log.info("orphan sweep: %s", report)
    return report


def _delete_temporary(lake: Lake, keys: list[str]) -> int:
    """Deletes the temporary files among `keys`; their count."""
    temporary = [key for key in keys if TEMPORARY_NAME.search(key)]
    for key in temporary:
        lake.store.delete(key)
    return len(temporary)


def _payloads_by_block(keys: list[str]) -> dict[str, str]:
    """The payload keys among `keys` (`blobs/<process>/<stream>/<block>`, UUIDs), by their block id."""
    payloads = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) != 4 or TEMPORARY_NAME.search(key):
            continue
        try:
            block_id = str(uuid.UUID(parts[3]))
            uuid.UUID(parts[1]), uuid.UUID(parts[2])
        except ValueError:
            continue
        payloads[block_id] = key
    return payloads


async def _unknown_blocks(lake: Lake, block_ids: list[str]) -> list[str]:
    """The block ids among these that no block row has."""
    rows = await lake.pool.fetch(
        "SELECT id::text FROM unnest($1::uuid[]) AS id EXCEPT SELECT block_id::text FROM blocks"
        " WHERE block_id = ANY($1::uuid[])",
        block_ids,
    )
    return [row["id"] for row in rows]


async def _unnamed_partition_files(lake: Lake, paths: list[str]) -> list[str]:
    """The paths among these that neither a partition nor a retired file waiting its grace names."""
    rows = await lake.pool.fetch(
        "SELECT path FROM unnest($1::text[]) AS path"
        " EXCEPT SELECT file_path FROM lakehouse_partitions WHERE file_path = ANY($1::text[])"
        " EXCEPT SELECT file_path FROM temporary_files WHERE file_path = ANY($1::text[])",
        paths,
    )
    return [row["path"] for row in rows]


def _delete_unnamed(
    lake: Lake, keys_by_name: dict[str, str], unnamed: Unnamed, delete: Callable[[ObjectStore, str], None]
) -> int:
    """Deletes (with `delete(store, key)`) the objects whose names, batch by batch, `unnamed(lake, names)`
    says no row has."""
    names = list(keys_by_name)
    deleted = 0
    for start in range(0, len(names), BATCH):
        for name in lake.loop.run(unnamed(lake, names[start : start + BATCH])):
            delete(lake.store, keys_by_name[name])
            deleted += 1
    return deleted
