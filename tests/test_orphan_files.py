"""The daily orphan sweep: objects no catalog row names, older than its grace, are deleted; everything
a row names (payloads, partitions, retired files in their grace) and everything young or foreign stays."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import PostgresServer, S3Server
from lakehouse_support import PROCESS_ID, LocalLake, local_lake

from spanlake.lakehouse.orphan_files import ORPHAN_GRACE, OrphanReport, delete_orphan_files
from spanlake.lakehouse.partitions import own_directory, partition_key
from spanlake.server.maintenance import SCHEDULES, MaintenanceDaemon

OLD = time.time() - 2 * ORPHAN_GRACE.total_seconds()
EXPECTED_ENTRIES = 148  # the log entries of the Rust fixture process
COUNT_ENTRIES = f"SELECT count(*) AS n FROM view_instance('log_entries', '{PROCESS_ID}')"


def orphan_keys() -> dict[str, str]:
    """Keys an interrupted write leaves, by what left them."""
    ids = [uuid.uuid4() for _ in range(3)]
    return {
        "payload": f"blobs/{ids[0]}/{ids[1]}/{ids[2]}",
        "partition": partition_key("log_entries", "global", time.time_ns()),
        "temporary payload": f"blobs/{ids[0]}/{ids[1]}/{uuid.uuid4()}.{uuid.uuid4().hex}.tmp",
    }


def put_parquet(lake: LocalLake, key: str) -> None:
    """A parquet file under `key`, as a partition writer killed before its commit leaves it."""
    filesystem, root = lake.lake.store.arrow_filesystem()
    if lake.lake.store.scheme == "file":  # on S3 it would add directory markers (objects named `dir/`)
        filesystem.create_dir(f"{root}/{key.rsplit('/', 1)[0]}")
    pq.write_table(pa.table({"x": [1]}), f"{root}/{key}", filesystem=filesystem)


def age_every_file(root: Path) -> None:
    """Every file of a local store last modified two graces ago, so only the catalog decides."""
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (OLD, OLD))


def listed(lake: LocalLake) -> set[str]:
    return set(lake.lake.store.list("blobs")) | set(lake.lake.store.list("views"))


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path):
    with local_lake(postgres, tmp_path) as local:
        local.upload()  # payloads through the ingestion server, then partitions of a queried instance
        local.sql(COUNT_ENTRIES)
        local.sql(f"SELECT count(*) FROM view_instance('measures', '{PROCESS_ID}')")
        local.sql(
            f"SELECT * FROM retire_partitions('measures', '{PROCESS_ID}', TIMESTAMP '2000-01-01T00:00:00Z',"
            " TIMESTAMP '2100-01-01T00:00:00Z')"
        )
        yield local


def test_the_sweep_deletes_old_orphans_and_keeps_what_rows_name(lake: LocalLake, tmp_path: Path) -> None:
    entries = lake.sql(COUNT_ENTRIES).to_pylist()
    retired = {r["file_path"] for r in lake.catalog("SELECT file_path FROM temporary_files")}
    assert retired, "the retired measures partition waits its grace in temporary_files"
    named = listed(lake)
    orphans = orphan_keys()
    lake.lake.store.put(orphans["payload"], b"a payload whose row was never committed")
    put_parquet(lake, orphans["partition"])
    lake.lake.store.put(orphans["temporary payload"], b"half a payload")
    foreign = "blobs/notes.txt"
    lake.lake.store.put(foreign, b"not a spanlake key")
    age_every_file(tmp_path / "lake")
    young = orphan_keys()["payload"]
    lake.lake.store.put(young, b"a payload being retried now")

    report = delete_orphan_files(lake.lake)

    assert report == OrphanReport(payloads=1, partition_files=1, temporary_files=1)
    assert listed(lake) == named | {foreign, young}
    assert not (tmp_path / "lake" / own_directory(orphans["partition"])).exists()
    assert retired <= named
    assert lake.sql(COUNT_ENTRIES).to_pylist() == entries
    assert delete_orphan_files(lake.lake) == OrphanReport()


def test_the_sweep_deletes_an_old_staged_payload_a_kill_left(lake: LocalLake, tmp_path: Path) -> None:
    named = listed(lake)
    staged = lake.lake.store.stage(b"half a payload")  # being received when the server was killed
    assert listed(lake) == named | {os.path.relpath(staged.path, lake.lake.store.root)}
    age_every_file(tmp_path / "lake")

    report = delete_orphan_files(lake.lake)

    assert report == OrphanReport(temporary_files=1)
    assert listed(lake) == named


def test_the_sweep_reads_s3_modification_times(postgres: PostgresServer, s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"s3://{s3_server.bucket}/orphans-{uuid.uuid4().hex[:8]}"
    with local_lake(postgres, tmp_path, object_store_uri=prefix, s3_endpoint=s3_server.endpoint) as lake:
        lake.upload()
        lake.sql(COUNT_ENTRIES)
        named = listed(lake)
        orphans = orphan_keys()
        lake.lake.store.put(orphans["payload"], b"a payload whose row was never committed")
        put_parquet(lake, orphans["partition"])
        now = dt.datetime.now(dt.UTC)
        assert delete_orphan_files(lake.lake, now) == OrphanReport(), "young orphans keep their grace"
        later = now + 2 * ORPHAN_GRACE
        assert delete_orphan_files(lake.lake, later) == OrphanReport(payloads=1, partition_files=1)
        assert listed(lake) == named


def test_the_daily_maintenance_run_sweeps(lake: LocalLake, tmp_path: Path) -> None:
    orphan = orphan_keys()["payload"]
    lake.lake.store.put(orphan, b"a payload whose row was never committed")
    age_every_file(tmp_path / "lake")
    [day] = [schedule for schedule in SCHEDULES if schedule.orphan_sweep]
    MaintenanceDaemon(lake.lake, 90).run(day, int(time.time()) // day.period_s * day.period_s)
    assert not lake.lake.store.exists(orphan)
    assert lake.sql(COUNT_ENTRIES).to_pylist() == [{"n": EXPECTED_ENTRIES}]
