"""Partitions in row groups sized by rows, and merges that read the partitions' parquet: on a real
catalog, object store and ingestion API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import PostgresServer, wait_until
from lakehouse_support import LocalLake, local_lake
from live_process import ASYNC_PER_BLOCK, LiveProcess

from spanlake.lakehouse.partitions import partition_key, write_parquet
from spanlake.lakehouse.records import blob_key

SCHEMA = pa.schema(
    [pa.field("time", pa.timestamp("ns", tz="UTC")), pa.field("name", pa.dictionary(pa.int32(), pa.utf8()))]
)
SPANS_PER_BLOCK = 5


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    # These tests read the partition layout a query leaves: tails written before the query reads them.
    with local_lake(postgres, tmp_path, memory_tail_objects=0) as local:
        yield local


def small_batch(index: int) -> pa.RecordBatch:
    """100 rows at times index*100 .. index*100+99, named by a dictionary of its own."""
    times = pa.array(np.arange(index * 100, index * 100 + 100), pa.int64()).view(pa.timestamp("ns", tz="UTC"))
    names = pa.array([f"n{index % 7}", "shared"] * 50).dictionary_encode()
    return pa.record_batch([times, names], schema=SCHEMA)


def test_small_batches_make_row_groups_of_the_rows_asked_with_statistics_and_page_indexes(lake: LocalLake) -> None:
    key = partition_key("test", "instance", 0)
    batches = [small_batch(index) for index in range(300)]
    size, rows, low, high = write_parquet(lake.lake.store, key, SCHEMA, batches, ("time", "time"), 8192)
    assert (rows, low, high) == (30_000, 0, 29_999)
    path = Path(lake.lake.settings.lake_uri.removeprefix("file://")) / key
    parquet = pq.ParquetFile(path)
    metadata = parquet.metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [8192, 8192, 8192, 5424]
    for group in range(metadata.num_row_groups):
        time_chunk = metadata.row_group(group).column(0)
        assert time_chunk.has_column_index and time_chunk.has_offset_index
        first = group * 8192
        assert (time_chunk.statistics.min.value, time_chunk.statistics.max.value) == (
            first,
            min(first + 8191, 29_999),
        )
    assert parquet.read().to_pylist() == pa.Table.from_batches(batches).to_pylist()
    assert size == path.stat().st_size


def async_counts(lake: LocalLake, process_id: str) -> dict[str, int]:
    rows = lake.sql(ASYNC_PER_BLOCK.format(process=process_id)).to_pylist()
    return {row["name"]: row["n"] for row in rows}


def instance_files(lake: LocalLake, process_id: str) -> list[str]:
    return [
        row["file_path"]
        for row in lake.catalog(
            "SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'async_events'"
            " AND view_instance_id = $1 AND file_path IS NOT NULL",
            process_id,
        )
    ]


def test_a_tail_merge_reads_the_partitions_not_the_blocks(lake: LocalLake) -> None:
    """Seven one-block tail partitions, then their blocks' payloads gone: the merge the eighth block
    brings still holds every block's rows, so it read the partitions' files, not the blocks."""
    live = LiveProcess(lake.http_url, spans_per_block=SPANS_PER_BLOCK)
    live.announce()
    for number in range(7):
        live.post_block(number)
        assert len(async_counts(lake, live.process_id)) == number + 1
    assert len(instance_files(lake, live.process_id)) == 7
    blocks = lake.catalog("SELECT block_id FROM blocks WHERE process_id = $1", live.process_id)
    for row in blocks:
        lake.lake.store.delete(blob_key(live.process_id, live.stream_id, str(row["block_id"])))
    live.post_block(7)
    expected = {f"b{number}": 2 * SPANS_PER_BLOCK for number in range(8)}
    assert async_counts(lake, live.process_id) == expected
    wait_until(lambda: len(instance_files(lake, live.process_id)) == 1, 30, "the eight tail partitions to merge")
    assert async_counts(lake, live.process_id) == expected
    [merged] = instance_files(lake, live.process_id)
    root = Path(lake.lake.settings.lake_uri.removeprefix("file://"))
    assert pq.ParquetFile(root / merged).metadata.num_row_groups == 1
