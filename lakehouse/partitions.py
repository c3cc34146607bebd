"""Partitions: parquet files of one view instance, each with one row in `lakehouse_partitions`.

A partition covers a half-open range of block insert times. Writing one stores the file first, then
the catalog (`catalog/partitions.py`), in one transaction under an advisory lock per view instance,
retires the partitions it replaces and inserts its row; the same transaction refuses to let two live
partitions of one instance and schema overlap. Retired files wait an hour in `temporary_files`, so
queries already reading them finish; retention deletes them once that grace is over.

Each file lies alone in a directory of its own (`{time}_{uuid}/part.parquet`, where micromegas writes
`{time}_{uuid}.parquet`): a query's scan names that directory, which DataFusion lists once per session
and keeps in its list-files cache, whereas it asks the store about a named file at every planning (a
HEAD per partition: 50 hourly partitions took 1.0-1.5 ms of planning more than a directory's scan,
benchmarks/row_groups.py). A listing kept stays right: nothing but the one file is ever written in
the directory, and it is listed only once the catalog names the file, written whole by then. (A file
deleted behind the catalog's back reads as no rows in a session that had not listed it yet, where a
named file failed the query.)
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spanlake import tracing
from spanlake.lakehouse.catalog.partitions import LiveCheck, Partition, RetireMatch, none_identical
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.timestamps import ns_to_datetime

log = logging.getLogger(__name__)


PARTITION_FILE = "part.parquet"
# A key `partition_key` makes: the file alone in its directory (older keys name a file of a shared one).
_OWN_DIRECTORY_KEY = re.compile(rf"(views/.+/\d{{2}}-\d{{2}}-\d{{2}}_[0-9a-f-]{{36}})/{re.escape(PARTITION_FILE)}")


def partition_key(view_set_name: str, instance_id: str, begin_insert_ns: int) -> str:
    """A new object-store key for a partition of the instance: a file alone in a directory named by its
    begin's time and a UUID, under a directory of its begin's date."""
    begin = ns_to_datetime(begin_insert_ns)
    directory = f"views/{view_set_name}/{instance_id}/{begin:%Y-%m-%d}/{begin:%H-%M-%S}_{uuid.uuid4()}"
    return f"{directory}/{PARTITION_FILE}"


def own_directory(key: str) -> str | None:
    """The directory that holds this partition file alone, or None for a key older than such directories."""
    found = _OWN_DIRECTORY_KEY.fullmatch(key)
    return None if found is None else found.group(1)


def delete_partition_file(store: ObjectStore, key: str) -> None:
    """Deletes a partition's file, and its own directory from a local store."""
    store.delete(key)
    directory = own_directory(key)
    if directory is not None:
        store.remove_empty_directory(directory)


def for_query(partitions: list[Partition], schema_hash: bytes, event_range: tuple[int, int] | None) -> list[Partition]:
    """The filter of `Catalog.partitions_for_query`, on partitions already fetched."""
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


def write_parquet(
    store: ObjectStore,
    key: str,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    time_columns: tuple[str, str],
    row_group_rows: int = Settings.row_group_rows,
) -> tuple[int, int, int | None, int | None]:
    """Streams batches into a parquet file (LZ4_RAW, row groups of `row_group_rows`, statistics and page
    indexes; the batches' schema metadata, a view's notes for later merges, kept in the footer). Returns
    the file size, the rows, and the smallest `time_columns[0]` / largest `time_columns[1]` (ns) seen on
    the way.

    pyarrow names the LZ4_RAW codec "lz4" (it never writes the deprecated Hadoop LZ4 framing)."""
    filesystem, root = store.arrow_filesystem()
    path = f"{root}/{key}"
    if store.scheme == "file":
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    rows, low, high = 0, None, None
    notes: dict[bytes, bytes] = {}
    with pq.ParquetWriter(
        path,
        schema,
        filesystem=filesystem,
        compression="lz4",
        write_statistics=True,
        write_page_index=True,
        version="2.6",
    ) as writer:
        for group in row_groups(schema, _noting(batches, notes), row_group_rows):
            writer.write_table(group, row_group_size=row_group_rows)
            rows += group.num_rows
            group_low = pc.min(group.column(time_columns[0])).cast(pa.int64()).as_py()
            group_high = pc.max(group.column(time_columns[1])).cast(pa.int64()).as_py()
            low = group_low if low is None else min(low, group_low)
            high = group_high if high is None else max(high, group_high)
        if notes:
            writer.add_key_value_metadata(notes)
    return filesystem.get_file_info(path).size, rows, low, high


def _noting(batches: Iterable[pa.RecordBatch], notes: dict[bytes, bytes]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        notes.update(batch.schema.metadata or {})
        yield batch


def row_groups(schema: pa.Schema, batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """The batches' rows regrouped in tables of `size` rows (the last one shorter), each column's
    dictionaries unified: a row group is written from many small batches at once, not one per batch."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= size:
            table = pa.Table.from_batches(pending, schema)
            yield table.slice(0, size).unify_dictionaries()
            pending = table.slice(size).to_batches()
            pending_rows -= size
    if pending_rows:
        yield pa.Table.from_batches(pending, schema).unify_dictionaries()


def partition_batches(store: ObjectStore, files: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The rows of partition files, file after file in the order given (batches of their row groups)."""
    filesystem, root = store.arrow_filesystem()
    for file in files:
        with filesystem.open_input_file(f"{root}/{file}") as source:
            yield from pq.ParquetFile(source).iter_batches(batch_size=64 * 1024)


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
                lake.store,
                key,
                target.schema,
                itertools.chain([first], rows_iter),
                target.time_columns,
                lake.settings.row_group_rows,
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
    concurrent writer (the file written here is then removed)."""
    write = functools.partial(write_partition_file, lake, target, source_count, batches)
    committed = write_and_commit(lake, [write], target.retire, none_identical)
    return None if committed is None else committed[0]


def write_and_commit(
    lake: Lake, writes: Sequence[Callable[[], Partition]], replaces: RetireMatch, still_valid: LiveCheck
) -> list[Partition] | None:
    """Writes the partitions' files (each `writes` call writes one), then commits them at once
    (`Catalog.swap_partitions`, retiring what `replaces` matches). Returns the partitions, or None if
    `still_valid` refused the live ones. Unless committed — refused, or on any failure — the files
    written here are removed: no file is left that the catalog does not know."""
    written: list[Partition] = []
    committed = False
    try:
        for write in writes:
            written.append(write())
        with tracing.async_span("catalog.commit_partition"):
            committed = lake.loop.run(lake.catalog.swap_partitions(written, replaces, still_valid))
        return written if committed else None
    finally:
        if not committed:
            for partition in written:
                if partition.file_path:
                    delete_partition_file(lake.store, partition.file_path)
