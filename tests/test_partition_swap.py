"""The one partition swap (`Catalog.swap_partitions`) and the one write-commit-cleanup (`write_and_commit`),
on a real catalog and object store: what a refused, redundant, overlapping or failed commit leaves."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from harness import PostgresServer
from lakehouse_support import LocalLake, local_lake

from spanlake.lakehouse.catalog.partitions import (
    Partition,
    PartitionOverlapError,
    RetireMatch,
    none_identical,
    replacing_exactly,
)
from spanlake.lakehouse.partitions import delete_partition_file, partition_key, write_and_commit, write_parquet
from spanlake.lakehouse.view_sets import VIEW_SETS

VIEW = VIEW_SETS["log_entries"]
HOUR_NS = 3600 * 1_000_000_000
BEGIN_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
TINY = pa.schema([pa.field("t", pa.int64(), nullable=False)])


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    with local_lake(postgres, tmp_path) as local:
        yield local


def writer(local: LocalLake, hours: tuple[int, int], source_count: int) -> Callable[[], Partition]:
    """Writes a one-row file for the global instance over those hours after BEGIN_NS."""
    begin, end = BEGIN_NS + hours[0] * HOUR_NS, BEGIN_NS + hours[1] * HOUR_NS

    def write() -> Partition:
        key = partition_key(VIEW.name, "global", begin)
        batch = pa.RecordBatch.from_pylist([{"t": begin}], schema=TINY)
        size, rows, low, high = write_parquet(local.lake.store, key, TINY, [batch], ("t", "t"))
        return Partition(VIEW.name, "global", begin, end, low, high, key, size, VIEW.schema_hash, source_count, rows)

    return write


def stored(local: LocalLake) -> set[str]:
    return set(local.lake.store.list(f"views/{VIEW.name}/"))


def live(local: LocalLake) -> list[tuple[str, int]]:
    rows = local.catalog(
        "SELECT file_path, num_rows FROM lakehouse_partitions WHERE view_set_name = $1 ORDER BY begin_insert_time",
        VIEW.name,
    )
    return [(row["file_path"], row["num_rows"]) for row in rows]


def queued(local: LocalLake) -> set[str]:
    return {row["file_path"] for row in local.catalog("SELECT file_path FROM temporary_files")}


def test_an_identical_partition_is_redundant_and_a_new_count_replaces_it(lake: LocalLake) -> None:
    [first] = write_and_commit(lake.lake, [writer(lake, (0, 1), 5)], RetireMatch.CONTAINED, none_identical)
    assert live(lake) == [(first.file_path, 1)]

    again = write_and_commit(lake.lake, [writer(lake, (0, 1), 5)], RetireMatch.CONTAINED, none_identical)
    assert again is None
    assert stored(lake) == {first.file_path}  # the redundant file is gone

    [second] = write_and_commit(lake.lake, [writer(lake, (0, 1), 6)], RetireMatch.CONTAINED, none_identical)
    assert live(lake) == [(second.file_path, 1)]
    assert queued(lake) == {first.file_path}  # retired: kept for its grace, for queries reading it


def test_a_refused_swap_changes_nothing_and_removes_its_files(lake: LocalLake) -> None:
    [kept] = write_and_commit(lake.lake, [writer(lake, (0, 1), 1)], RetireMatch.OVERLAPPING, replacing_exactly([]))
    # A writer that saw no partition there: a concurrent one got there first.
    writes = [writer(lake, (0, 1), 1), writer(lake, (1, 2), 1)]
    assert write_and_commit(lake.lake, writes, RetireMatch.OVERLAPPING, replacing_exactly([])) is None
    assert live(lake) == [(kept.file_path, 1)]
    assert stored(lake) == {kept.file_path}

    # A writer that saw it replaces it, and both new partitions go in at once.
    new = write_and_commit(lake.lake, writes, RetireMatch.OVERLAPPING, replacing_exactly([kept]))
    assert new is not None and live(lake) == [(p.file_path, 1) for p in new]
    assert queued(lake) == {kept.file_path}


def test_an_overlap_it_does_not_replace_is_refused_and_its_file_removed(lake: LocalLake) -> None:
    [wide] = write_and_commit(lake.lake, [writer(lake, (0, 2), 1)], RetireMatch.CONTAINED, none_identical)
    with pytest.raises(PartitionOverlapError, match="overlaps a live partition it does not replace"):
        write_and_commit(lake.lake, [writer(lake, (1, 3), 1)], RetireMatch.CONTAINED, none_identical)
    assert live(lake) == [(wide.file_path, 1)]
    assert stored(lake) == {wide.file_path}


def test_a_failed_write_removes_the_files_written_before_it(lake: LocalLake) -> None:
    def failing() -> Partition:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_and_commit(lake.lake, [writer(lake, (0, 1), 1), failing], RetireMatch.CONTAINED, none_identical)
    assert stored(lake) == set()
    assert live(lake) == []


def test_a_removed_file_takes_its_own_directory_along(lake: LocalLake) -> None:
    def failing() -> Partition:
        raise OSError("disk full")

    [kept] = write_and_commit(lake.lake, [writer(lake, (0, 1), 1)], RetireMatch.CONTAINED, none_identical)
    with pytest.raises(OSError, match="disk full"):
        write_and_commit(lake.lake, [writer(lake, (1, 2), 1), failing], RetireMatch.CONTAINED, none_identical)
    day = Path(lake.lake.store.path(kept.file_path)).parents[1]
    assert [p.name for p in day.iterdir()] == [Path(kept.file_path).parent.name]
    delete_partition_file(lake.lake.store, kept.file_path)  # as retention deletes a retired file
    assert list(day.iterdir()) == []


def test_swap_of_no_file_records_the_range(lake: LocalLake) -> None:
    empty = functools.partial(
        Partition, VIEW.name, "global", BEGIN_NS, BEGIN_NS + HOUR_NS, None, None, None, 0, VIEW.schema_hash, 0, 0
    )
    assert write_and_commit(lake.lake, [empty], RetireMatch.CONTAINED, none_identical) == [empty()]
    # Its zero source count reads back as zero: the same empty partition is redundant.
    assert write_and_commit(lake.lake, [empty], RetireMatch.CONTAINED, none_identical) is None
    assert live(lake) == [(None, 0)]
