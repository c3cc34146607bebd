"""The maintenance daemon: global views within seconds, merges, late blocks, retention, concurrency."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import micromegas
import pyarrow as pa
import pytest
from harness import PostgresServer, SpanlakeServer, query, running_server, wait_until
from lakehouse_support import EXPECTED, PROCESS_ID, LocalLake, local_lake

from spanlake import tracing
from spanlake.lakehouse.batch_update import SECOND_NS, materialize_range
from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import make_session_context
from spanlake.lakehouse.retention import delete_expired
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.transit import decode as transit
from spanlake.lakehouse.view_sets import MAINTAINED, VIEW_SETS
from spanlake.server.maintenance import SCHEDULES, MaintenanceDaemon

MINUTE_NS = 60 * SECOND_NS


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    with local_lake(postgres, tmp_path) as local:
        yield local


def spread_over_a_minute(lake: LocalLake) -> int:
    """Uploads the fixture, then rewrites its blocks' insert times one second apart inside one minute
    (as if they had arrived over 34 s). Returns the start of that minute (ns)."""
    lake.upload()
    minute = (time.time_ns() // MINUTE_NS - 5) * MINUTE_NS
    lake.catalog(
        "UPDATE blocks SET insert_time = $1::timestamptz + make_interval(secs => n)"
        " FROM (SELECT block_id, row_number() OVER (ORDER BY block_id) AS n FROM blocks) numbered"
        " WHERE blocks.block_id = numbered.block_id",
        ns_to_datetime(minute),
    )
    return minute


def table_rows(lake: LocalLake, view: str) -> list[tuple]:
    return sorted(tuple(r.values()) for r in lake.sql(f"SELECT * FROM {view}").to_pylist())


def partitions(lake: LocalLake, view: str) -> list[dict]:
    return lake.catalog(
        "SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 AND view_instance_id = 'global'"
        " ORDER BY begin_insert_time",
        view,
    )


def test_second_partitions_merge_into_a_minute_with_the_same_rows(lake: LocalLake) -> None:
    minute = spread_over_a_minute(lake)
    for name in MAINTAINED:
        materialize_range(lake.lake, VIEW_SETS[name], minute, minute + MINUTE_NS, SECOND_NS)
    seconds = {name: len(partitions(lake, name)) for name in MAINTAINED}
    assert seconds["blocks"] == 34
    before = {name: table_rows(lake, name) for name in MAINTAINED}
    assert len(before["blocks"]) == 34 and len(before["log_entries"]) == 148 and len(before["measures"]) == 412
    assert [r[0] for r in before["processes"]] == [PROCESS_ID]

    for name in MAINTAINED:
        materialize_range(lake.lake, VIEW_SETS[name], minute, minute + MINUTE_NS, MINUTE_NS)
    for name in MAINTAINED:
        assert len(partitions(lake, name)) == 1, name
        assert table_rows(lake, name) == before[name], name
    [merged] = partitions(lake, "blocks")
    assert merged["num_rows"] == 34 and merged["source_data_hash"] == (34).to_bytes(8, "little")
    retired = lake.catalog("SELECT count(*) AS n FROM temporary_files")[0]["n"]
    assert retired >= sum(seconds.values()) - len(MAINTAINED)


def test_late_block_rebuilds_its_bucket(lake: LocalLake) -> None:
    minute = spread_over_a_minute(lake)
    late = next(b for s in EXPECTED["streams"] if "log" in s["tags"] for b in s["blocks"])
    lake.catalog("DELETE FROM blocks WHERE block_id = $1", uuid.UUID(late["block_id"]))
    for name in MAINTAINED:
        materialize_range(lake.lake, VIEW_SETS[name], minute, minute + MINUTE_NS, MINUTE_NS)
    assert len(table_rows(lake, "log_entries")) == 148 - late["nb_objects"]
    # The late block arrives, stamped inside the minute already materialized.
    lake.upload([s for s in EXPECTED["upload_sequence"] if s.get("block_id") == late["block_id"]])
    lake.catalog(
        "UPDATE blocks SET insert_time = $1 WHERE block_id = $2",
        ns_to_datetime(minute + 59 * SECOND_NS),
        uuid.UUID(late["block_id"]),
    )
    for name in MAINTAINED:
        materialize_range(lake.lake, VIEW_SETS[name], minute, minute + MINUTE_NS, MINUTE_NS)
    assert len(table_rows(lake, "log_entries")) == 148
    assert len(table_rows(lake, "blocks")) == 34
    assert [p["num_rows"] for p in partitions(lake, "log_entries")] == [148]


def test_two_daemons_leave_one_consistent_partition_set(lake: LocalLake) -> None:
    minute = spread_over_a_minute(lake)
    second = next(s for s in SCHEDULES if s.name == "second")
    daemons = [MaintenanceDaemon(lake.lake, 90) for _ in range(2)]
    ticks = [minute // SECOND_NS + 2 + i for i in range(40)]
    threads = [threading.Thread(target=lambda d=d: [d.run(second, t) for t in ticks]) for d in daemons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = lake.catalog(
        "SELECT view_set_name, begin_insert_time, end_insert_time FROM lakehouse_partitions"
        " ORDER BY view_set_name, begin_insert_time"
    )
    for earlier, later in itertools.pairwise(rows):
        if earlier["view_set_name"] == later["view_set_name"]:
            assert earlier["end_insert_time"] <= later["begin_insert_time"]
    assert len(table_rows(lake, "blocks")) == 34
    assert len(table_rows(lake, "log_entries")) == 148
    assert len(table_rows(lake, "measures")) == 412


def test_one_failing_view_does_not_stop_the_others(lake: LocalLake, monkeypatch: pytest.MonkeyPatch) -> None:
    minute = spread_over_a_minute(lake)
    original = VIEW_SETS["blocks"]
    monkeypatch.setitem(VIEW_SETS, "blocks", dataclasses.replace(original, rows_from_blocks=_failing_build))
    minute_schedule = next(s for s in SCHEDULES if s.name == "minute")
    MaintenanceDaemon(lake.lake, 90).run(minute_schedule, (minute + 2 * MINUTE_NS) // SECOND_NS)
    assert partitions(lake, "blocks") == []
    assert len(table_rows(lake, "log_entries")) == 148


def _failing_build(*_: object) -> Iterator:
    raise RuntimeError("injected failure")


def test_retention_removes_exactly_what_expired(lake: LocalLake) -> None:
    lake.upload()
    lake.maintain()
    lake.sql(f"SELECT count(*) FROM view_instance('async_events', '{PROCESS_ID}')")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    log_stream = next(s for s in EXPECTED["streams"] if "log" in s["tags"])
    expired = [uuid.UUID(b["block_id"]) for b in log_stream["blocks"]]
    lake.catalog("UPDATE blocks SET insert_time = $1 WHERE block_id = ANY($2::uuid[])", old, expired)
    lake.catalog("UPDATE streams SET insert_time = $1 WHERE stream_id = $2", old, uuid.UUID(log_stream["stream_id"]))
    lake.catalog(
        "UPDATE lakehouse_partitions SET begin_insert_time = $1, end_insert_time = $2"
        " WHERE view_set_name = 'log_entries'",
        old,
        old + dt.timedelta(seconds=1),
    )
    expired_files = [
        p["file_path"]
        for p in lake.catalog("SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'log_entries'")
    ]
    kept_blocks = lake.catalog("SELECT count(*) AS n FROM blocks")[0]["n"] - len(expired)

    report = delete_expired(lake.lake, retention_days=7)
    assert (report.blocks, report.streams, report.processes) == (len(expired), 1, 0)
    assert report.partitions == len(expired_files)
    assert lake.catalog("SELECT count(*) AS n FROM blocks")[0]["n"] == kept_blocks
    for block in log_stream["blocks"]:
        assert not lake.lake.store.exists(f"blobs/{PROCESS_ID}/{log_stream['stream_id']}/{block['block_id']}")
    other = next(s for s in EXPECTED["streams"] if "metrics" in s["tags"])
    assert lake.lake.store.exists(f"blobs/{PROCESS_ID}/{other['stream_id']}/{other['blocks'][0]['block_id']}")
    # Expired partitions are retired like replaced ones: rows gone, files kept for their grace period.
    assert not lake.catalog("SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'log_entries'")
    queued = {r["file_path"] for r in lake.catalog("SELECT file_path FROM temporary_files")}
    assert {f for f in expired_files if f} <= queued
    assert all(lake.lake.store.exists(f) for f in expired_files if f)
    assert lake.catalog("SELECT count(*) AS n FROM processes")[0]["n"] == 1
    assert len(table_rows(lake, "measures")) == 412
    lake.catalog("UPDATE temporary_files SET expiration = now() - interval '1 second'")
    delete_expired(lake.lake, retention_days=7)
    assert all(not lake.lake.store.exists(f) for f in expired_files if f)


def test_temporary_files_are_deleted_after_their_grace(lake: LocalLake) -> None:
    lake.upload()
    lake.sql(f"SELECT count(*) FROM view_instance('measures', '{PROCESS_ID}')")
    [partition] = lake.catalog("SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'measures'")
    lake.sql(
        f"SELECT * FROM retire_partitions('measures', '{PROCESS_ID}', TIMESTAMP '2000-01-01T00:00:00Z',"
        " TIMESTAMP '2100-01-01T00:00:00Z')"
    )
    assert delete_expired(lake.lake, 7).files == 0  # still within its hour of grace
    assert lake.lake.store.exists(partition["file_path"])
    lake.catalog("UPDATE temporary_files SET expiration = now() - interval '1 second'")
    assert delete_expired(lake.lake, 7).files == 1
    assert not lake.lake.store.exists(partition["file_path"])


def test_serve_shows_new_data_in_global_tables_within_seconds(postgres: PostgresServer, tmp_path: Path) -> None:
    with running_server(postgres, tmp_path) as server:
        lake_view = Lake.open(Settings(database_url=server.database_url, object_store_uri=server.object_store_uri))
        try:
            started = time.monotonic()
            LocalLake(lake_view, server.http_url).upload()

            def visible() -> bool:
                ctx = make_session_context(lake_view)
                return ctx.sql("SELECT count(*) AS n FROM log_entries").to_pylist()[0]["n"] == 148

            wait_until(visible, 20, "log entries in the global view")
            assert time.monotonic() - started < 20
            ctx = make_session_context(lake_view)
            assert ctx.sql("SELECT count(*) AS n FROM blocks").to_pylist()[0]["n"] == 34
            assert ctx.sql("SELECT process_id FROM processes").to_pylist() == [{"process_id": PROCESS_ID}]
        finally:
            lake_view.close()


def test_the_second_schedule_covers_every_second_from_the_daemons_start(lake: LocalLake) -> None:
    lake.upload()
    start_s = time.time_ns() // SECOND_NS - 30
    # Every block arrives 0.2 s after the daemon started.
    lake.catalog("UPDATE blocks SET insert_time = $1", ns_to_datetime(start_s * SECOND_NS + 200_000_000))
    daemon = MaintenanceDaemon(lake.lake, 90)
    daemon.cover_from(start_s + 0.1)
    second = next(s for s in SCHEDULES if s.name == "second")
    # The first run comes late (a slow first start: imports, warm-up): its tick is 6 s after the start.
    assert daemon.insert_range(second, start_s + 6) == ((start_s - 2) * SECOND_NS, (start_s + 5) * SECOND_NS)
    daemon.run(second, start_s + 6)
    assert len(table_rows(lake, "blocks")) == 34 and [r[0] for r in table_rows(lake, "processes")] == [PROCESS_ID]
    assert len(table_rows(lake, "log_entries")) == 148
    # The next run starts where this one stopped, however late it comes.
    assert daemon.insert_range(second, start_s + 9)[0] == (start_s + 5) * SECOND_NS


def _send_logs(server_url: str, exe: str, count: int) -> None:
    tracing.init(url=server_url, exe=exe, flush_period=3600)
    for i in range(count):
        tracing.info(f"{exe} {i}")
    assert tracing.shutdown(10)


def test_logs_right_after_start_and_after_an_admin_materialized_the_open_hour(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    with running_server(postgres, tmp_path) as server:
        _send_logs(server.http_url, "right-after-start", 3)  # within the daemon's first second or so
        client = micromegas.connect(server.flightsql_url)

        def logs(exe: str) -> int:
            return int(client.query(f"SELECT count(*) AS n FROM log_entries WHERE exe = '{exe}'").n[0])

        wait_until(lambda: logs("right-after-start") == 3, 15, "the first logs in the global log_entries")
        assert len(client.query("SELECT 1 FROM processes WHERE exe = 'right-after-start'")) == 1

        _send_logs(server.http_url, "a-second-later", 2)  # in another 1-second partition
        wait_until(lambda: logs("a-second-later") == 2, 15, "the second logs in the global log_entries")
        hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        end = hour + dt.timedelta(hours=1)
        # The admin merges the current, still open hour into one partition.
        client.query(
            f"SELECT * FROM materialize_partitions('log_entries', '{hour.isoformat()}', '{end.isoformat()}', 3600)"
        )
        partitions = _global_partitions(server, "log_entries")
        assert [(p["begin_insert_time"], p["end_insert_time"]) for p in partitions] == [(hour, end)]
        _send_logs(server.http_url, "after-the-admin", 4)
        wait_until(lambda: logs("after-the-admin") == 4, 15, "new logs in an hour an admin materialized")
        assert (logs("right-after-start"), logs("a-second-later")) == (3, 2)


def _global_partitions(server: SpanlakeServer, view: str) -> list[dict]:
    return server.sql(
        "SELECT begin_insert_time, end_insert_time FROM lakehouse_partitions"
        " WHERE view_set_name = $1 AND view_instance_id = 'global' ORDER BY begin_insert_time",
        view,
    )


def test_schedules_survive_a_database_outage_and_run_again(
    lake: LocalLake, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spanlake.server.maintenance")
    lake.upload()
    database = urllib.parse.urlsplit(lake.lake.database_url).path.lstrip("/")
    daemon = MaintenanceDaemon(lake.lake, 90)
    daemon.start()
    try:
        wait_until(lambda: len(partitions(lake, "blocks")) > 0, 15, "a first blocks partition")
        # The outage: the database refuses connections and every open one is killed.
        query(postgres.admin_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        query(
            postgres.admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        wait_until(lambda: "second maintenance failed (2 in a row)" in caplog.text, 20, "failures during the outage")
        query(postgres.admin_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        recovered = time.time_ns()
        # New arrivals after the outage (the same blocks, inserted again now), while the schedule may
        # still be waiting its backoff: its next run catches up.
        lake.catalog("UPDATE blocks SET insert_time = now()")
        after = ns_to_datetime(recovered - SECOND_NS)
        wait_until(
            lambda: [p["num_rows"] for p in partitions(lake, "blocks") if p["begin_insert_time"] >= after] == [34],
            30,
            "the blocks partition of the second after the outage",
        )
        wait_until(lambda: "second maintenance recovered after" in caplog.text, 10, "the recovery logged")
        assert all(thread.is_alive() for thread in daemon._threads)
    finally:
        daemon.stop()


def test_a_bad_block_is_skipped_but_a_decoder_bug_fails_the_partition(
    lake: LocalLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    minute = spread_over_a_minute(lake)
    real_inflate = transit.inflate_block
    log_blocks = {b["block_id"] for s in EXPECTED["streams"] if s["tags"] == ["log"] for b in s["blocks"]}
    first_log_block = min(log_blocks)

    def decode(error: Exception) -> Callable[..., object]:
        def inflate_block(payload: bytes, layout: object, limit: object) -> object:
            # The envelope of the first log block (by id) fails; the others decode.
            if lake.lake.store.get(f"blobs/{PROCESS_ID}/{log_stream}/{first_log_block}") == payload:
                raise error
            return real_inflate(payload, layout, limit)

        return inflate_block

    log_stream = next(s["stream_id"] for s in EXPECTED["streams"] if s["tags"] == ["log"])
    monkeypatch.setattr(transit, "inflate_block", decode(pa.ArrowInvalid("a bug, not bad data")))
    with pytest.raises(pa.ArrowInvalid):
        materialize_range(lake.lake, VIEW_SETS["log_entries"], minute, minute + MINUTE_NS, MINUTE_NS)
    assert partitions(lake, "log_entries") == []

    monkeypatch.setattr(transit, "inflate_block", decode(transit.TransitError("bad data")))
    materialize_range(lake.lake, VIEW_SETS["log_entries"], minute, minute + MINUTE_NS, MINUTE_NS)
    skipped = next(b for s in EXPECTED["streams"] for b in s["blocks"] if b["block_id"] == first_log_block)
    assert len(table_rows(lake, "log_entries")) == 148 - skipped["nb_objects"]
