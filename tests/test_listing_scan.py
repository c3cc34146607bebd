"""A list of partition files read as one parquet scan: every listed file's rows, no other file's, and
one DataFusion scan in the plan (not a union of one per file); a partition file in its own directory
named by that directory, an older one by itself."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from datafusion import SessionContext
from datafusion.catalog import Table

from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.partitions import partition_key, write_parquet
from spanlake.lakehouse.query.listing_scan import listing_scan, scan_url
from spanlake.lakehouse.query.session import session_config

SCHEMA = pa.schema([pa.field("time", pa.timestamp("ns", "UTC")), pa.field("value", pa.int64())])
SECOND_NS = 1_000_000_000


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Four files of ten rows each: file i holds values 10i..10i+9 at seconds 10i..10i+9."""
    root = tmp_path_factory.mktemp("listing")
    store = ObjectStore(root.as_uri())
    paths = []
    for index in range(4):
        write_parquet(store, f"part-{index}.parquet", SCHEMA, [ten_rows(index)], ("time", "time"))
        paths.append(str(Path(root) / f"part-{index}.parquet"))
    return paths


def ten_rows(index: int) -> pa.RecordBatch:
    """Values 10i..10i+9 at seconds 10i..10i+9."""
    values = list(range(10 * index, 10 * index + 10))
    return pa.record_batch(
        [pa.array([v * SECOND_NS for v in values], SCHEMA.field("time").type), pa.array(values)], schema=SCHEMA
    )


def query(urls: list[str], sql: str) -> SessionContext:
    """A session whose table `t` is the scan of these files, built in another context (as the lake does)."""
    frame = listing_scan(SessionContext(session_config()), urls, SCHEMA)
    ctx = SessionContext(session_config())
    ctx.register_table("t", Table(frame))
    return ctx.sql(sql)


def test_the_listed_files_only_are_read(files: list[str]) -> None:
    rows = query([files[0], files[2], files[3]], "SELECT count(*) AS n, sum(value) AS s FROM t").to_pylist()
    assert rows == [{"n": 30, "s": sum(range(0, 10)) + sum(range(20, 40))}]


def test_one_file_reads_as_itself(files: list[str]) -> None:
    rows = query([files[1]], "SELECT min(value) AS low, max(value) AS high FROM t").to_pylist()
    assert rows == [{"low": 10, "high": 19}]


def test_the_files_are_one_scan(files: list[str]) -> None:
    plan = query(files, "SELECT sum(value) AS s FROM t").execution_plan().display_indent()
    assert plan.count("DataSourceExec") == 1, plan
    assert "Union" not in plan, plan
    assert all(Path(file).name in plan for file in files), plan


def test_a_time_filter_reads_the_matching_rows(files: list[str]) -> None:
    sql = (
        "SELECT count(*) AS n, min(value) AS low FROM t"
        f" WHERE time >= to_timestamp_nanos({15 * SECOND_NS}) AND time < to_timestamp_nanos({25 * SECOND_NS})"
    )
    assert query(files, sql).to_pylist() == [{"n": 10, "low": 15}]


def test_partition_files_are_named_by_their_own_directories(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path.as_uri())
    keys = [partition_key("v", "global", hour * 3600 * SECOND_NS) for hour in range(2)]
    keys.append("views/v/global/1970-01-01/written-before-own-directories.parquet")
    for index, key in enumerate(keys):
        write_parquet(store, key, SCHEMA, [ten_rows(index)], ("time", "time"))
    urls = [scan_url(store, key) for key in keys]
    assert urls == [f"{store.url(key.removesuffix('/part.parquet'))}/" for key in keys[:2]] + [store.url(keys[2])]
    rows = query(urls, "SELECT count(*) AS n, sum(value) AS s FROM t").to_pylist()
    assert rows == [{"n": 30, "s": sum(range(30))}]
