"""Recovery from database outages. The embedded PostgreSQL supervised, through running `spanlake`
processes on their own data dirs: killed under `spanlake serve`, it is restarted and every door
recovers (the global views within seconds); a `spanlake web` that crashed leaves it to the next one,
whose clean exit stops it. The maintenance daemon runs as soon as the database answers again, however
long its backoff had grown."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import micromegas
import psutil
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, http, query, stop_process, wait_until
from lakehouse_support import LocalLake, local_lake
from live_process import THREAD_PER_BLOCK, LiveProcess
from test_flightsql_support import grpc_status

from spanlake.lakehouse.batch_update import SECOND_NS
from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.embedded_postgres import postmaster_pid
from spanlake.server.maintenance import MaintenanceDaemon

SPANS_PER_BLOCK = 5
# A block posted after the restart shows in the global `blocks` view within this many seconds: the
# maintenance daemon's one-second schedule, no backoff left over from the outage.
CATCH_UP_LIMIT_S = 6


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory outside pytest's base temp dir: pytest resets that one to mode 0700 whenever a
    session starts, which locks out the system user pgserver runs PostgreSQL as under root."""
    with tempfile.TemporaryDirectory(prefix="spanlake-pgsuper-") as path:
        yield Path(path)
        pg_dir = Path(path).resolve() / "postgres"
        left_running = postgres_processes(pg_dir)
        if left_running:  # a failed test: stop the server it left, by its pid, before its files go
            os.kill(postmaster_pid(pg_dir), signal.SIGTERM)
            wait_until(lambda: postgres_processes(pg_dir) == [], 30, "the left embedded PostgreSQL to stop")


def embedded_server(data_dir: Path, command: str = "serve") -> SpanlakeServer:
    """A `spanlake <command>` on the embedded default: no database URL, objects in the data dir."""
    return SpanlakeServer(database_url="", data_dir=data_dir, object_store_uri="", command=command)


def postgres_processes(pg_dir: Path) -> list[int]:
    """Pids of the PostgreSQL processes serving `pg_dir`: the postmaster in its `postmaster.pid`, if
    alive, and every process whose working directory is `pg_dir` (the postmaster's children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == pg_dir:
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return sorted(pids)


def pgserver_start_lock() -> AbstractContextManager:
    """The inter-process lock pgserver takes around starts: while the test holds it, no restart."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # as spanlake imports it
        from pgserver.postgres_server import PostgresServer
    return PostgresServer._lock


def insert_block_status(live: LiveProcess, number: int) -> int:
    """Posts block `number` of the live process; the HTTP status."""
    try:
        live.post_block(number)
    except RuntimeError as err:  # LiveProcess names the path and the status of a refused post
        return int(str(err).split(": ")[1].split()[0])
    return 200


def blocks_in_global_view(server: SpanlakeServer, process_id: str) -> int:
    client = micromegas.connect(server.flightsql_url)
    return int(client.query(f"SELECT count(*) AS n FROM blocks WHERE process_id = '{process_id}'").n[0])


def flightsql_code(server: SpanlakeServer, sql: str) -> str | None:
    """The gRPC status name of running `sql` (None: it succeeded)."""
    try:
        micromegas.connect(server.flightsql_url).query(sql)
    except flight.FlightError as err:
        return grpc_status(err)[0]
    return None


def test_killed_embedded_postgres_is_restarted_and_every_door_recovers(data_dir: Path) -> None:
    pg_dir = data_dir.resolve() / "postgres"
    server = embedded_server(data_dir).start()
    try:
        live = LiveProcess(server.http_url, SPANS_PER_BLOCK)
        live.announce()
        live.post_block(0)
        wait_until(lambda: blocks_in_global_view(server, live.process_id) == 1, 20, "block 0 in the global view")
        killed = postmaster_pid(pg_dir)
        assert killed is not None

        numbers = itertools.count(1)  # a new block each try: those answered 200 are stored once

        def next_block_status() -> int:
            return insert_block_status(live, next(numbers))

        # While the test holds pgserver's start lock, the restart waits: the outage lasts for sure.
        with pgserver_start_lock():
            os.kill(killed, signal.SIGKILL)
            wait_until(lambda: next_block_status() == 503, 10, "ingestion to answer 503")
            assert flightsql_code(server, "SELECT count(*) FROM processes") == "UNAVAILABLE"
            assert next_block_status() == 503
        released_at = time.monotonic()
        wait_until(lambda: next_block_status() == 200, 30, "ingestion to answer 200 again")
        recovered_s = time.monotonic() - released_at
        restarted = postmaster_pid(pg_dir)
        assert restarted not in (None, killed)
        assert server.process.poll() is None  # the same spanlake all along

        live.post_block(last := next(numbers))
        posted_at = time.monotonic()
        stored = live.acknowledged_now()
        wait_until(
            lambda: blocks_in_global_view(server, live.process_id) == len(stored),
            CATCH_UP_LIMIT_S,
            "the blocks posted after the restart in the global blocks view",
        )
        catch_up_s = time.monotonic() - posted_at
        print(
            f"ingestion back {recovered_s:.2f} s after the restart could start; block {last} in the global view"
            f" {catch_up_s:.2f} s after its post"
        )
        client = micromegas.connect(server.flightsql_url)
        per_block = client.query(THREAD_PER_BLOCK.format(stream=live.stream_id))
        spans = {name: n for name, n in zip(per_block.name, per_block.n, strict=True) if name.startswith("b")}
        assert spans == {f"b{n}": SPANS_PER_BLOCK for n in stored}  # besides the thread's own span
        refused = set(range(last + 1)) - stored  # answered 503: not stored, as the spans show
        assert {0, last} <= stored and len(refused) >= 2
        assert list(client.query("SELECT process_id FROM processes").process_id) == [live.process_id]
        assert "the embedded PostgreSQL in" in server.log_text() and "is running again" in server.log_text()
    finally:
        server.stop()
    wait_until(lambda: postgres_processes(pg_dir) == [], 10, "the embedded PostgreSQL to stop with spanlake")


def test_a_clean_exit_after_a_crashed_web_stops_the_embedded_postgres(data_dir: Path) -> None:
    pg_dir = data_dir.resolve() / "postgres"
    crashed = embedded_server(data_dir, "web").start()
    try:
        postgres = postmaster_pid(pg_dir)
        assert postgres in postgres_processes(pg_dir)
    finally:
        # A crash: no exit handler runs, and the process stays a zombie until its parent reaps it
        # (after the second web has started and stopped).
        crashed.process.kill()
    wait_until(lambda: psutil.Process(crashed.process.pid).status() == psutil.STATUS_ZOMBIE, 10, "the crash")
    assert postgres in postgres_processes(pg_dir)  # left running

    second = embedded_server(data_dir, "web").start()
    try:
        assert postmaster_pid(pg_dir) == postgres  # adopted
        assert http("GET", f"{second.http_url}/")[0] == 200  # the process list, from the database
    finally:
        stop_process(second.process)
        second._log.close()
    crashed.process.wait()
    crashed._log.close()
    assert second.process.returncode == 0, second.log_text()
    wait_until(lambda: postgres_processes(pg_dir) == [], 10, "the embedded PostgreSQL to stop with the last web")


def test_a_web_crashing_while_another_runs_leaves_the_server_to_the_others_clean_exit(data_dir: Path) -> None:
    pg_dir = data_dir.resolve() / "postgres"
    first = embedded_server(data_dir, "web").start()
    second = embedded_server(data_dir, "web").start()  # joins the first one's server
    try:
        first.process.kill()  # crashes after the second joined, and is reaped at once
        first.process.wait()
        assert http("GET", f"{second.http_url}/")[0] == 200
    finally:
        first._log.close()
        stop_process(second.process)
        second._log.close()
    assert second.process.returncode == 0, second.log_text()
    wait_until(lambda: postgres_processes(pg_dir) == [], 10, "the embedded PostgreSQL to stop with the last web")


def test_schedules_run_as_soon_as_the_database_answers_after_a_long_outage(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spanlake.server.maintenance")
    with local_lake(postgres, tmp_path) as lake:
        lake.upload()
        database = urllib.parse.urlsplit(lake.lake.database_url).path.lstrip("/")
        daemon = MaintenanceDaemon(lake.lake, 90)
        daemon.start()
        try:
            wait_until(lambda: global_blocks_partitions(lake) != [], 15, "a first blocks partition")
            set_connections_allowed(postgres, database, False)
            # Long enough for the one-second schedule's backoff to reach 16 s.
            wait_until(lambda: "second maintenance failed (5 in a row)" in caplog.text, 60, "5 failures in a row")
            set_connections_allowed(postgres, database, True)
            reopened = time.monotonic()
            lake.catalog("UPDATE blocks SET insert_time = now()")  # new arrivals after the outage
            after = ns_to_datetime(time.time_ns() - SECOND_NS)
            wait_until(
                lambda: (
                    [p["num_rows"] for p in global_blocks_partitions(lake) if p["begin_insert_time"] >= after] == [34]
                ),
                CATCH_UP_LIMIT_S,
                "the blocks partition of the second after the outage, well before the backoff's 16 s",
            )
            print(f"blocks partition {time.monotonic() - reopened:.2f} s after the database reopened")
            assert "second maintenance: the database answers again, running now" in caplog.text
        finally:
            daemon.stop()


def global_blocks_partitions(lake: LocalLake) -> list[dict]:
    return lake.catalog(
        "SELECT begin_insert_time, num_rows FROM lakehouse_partitions"
        " WHERE view_set_name = 'blocks' AND view_instance_id = 'global' ORDER BY begin_insert_time"
    )


def set_connections_allowed(postgres: PostgresServer, database: str, allowed: bool) -> None:
    """Opens or closes `database`: closed, it refuses connections and its open ones are terminated."""
    query(postgres.admin_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
    if not allowed:
        query(
            postgres.admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
