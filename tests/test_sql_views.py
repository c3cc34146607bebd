"""SQL-defined materialized views on a running `spanlake serve`, as micromegas 0.32 manages them:
`micromegas-views` (run as a subprocess, unchanged) planning, applying, listing, showing and pulling
definitions; the DDL round trip through ADBC; the daemon maintaining a view from new logs; `DROP`
retiring its partitions; bad definitions and non-admins refused with nothing stored."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, SpanlakeServer, wait_until
from served_support import ADMIN_KEY, READER_KEY, adbc_connect, micromegas_client, served_lakehouse
from test_flightsql_support import grpc_status

from spanlake import tracing
from spanlake.lakehouse.sql_views import CreateView, parse_ddl
from spanlake.views import log_stats

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

LOG_COUNTS = """-- log entries per minute, executable and level
CREATE MATERIALIZED VIEW log_counts WITH (
    extract_query = $$
        SELECT date_bin('1 minute', time) AS time_bin, exe, level, count(*) AS count
        FROM log_entries
        GROUP BY exe, level, time_bin
    $$,
    count_src_query = $$
        SELECT sum(nb_objects) AS count FROM blocks
        WHERE array_has("streams.tags", 'log') AND insert_time >= '{begin}' AND insert_time < '{end}'
    $$,
    merge_partitions_query = $$
        SELECT time_bin, exe, level, sum(count) AS count FROM {source} GROUP BY exe, level, time_bin
    $$,
    update_group = 3000,
    time_column = 'time_bin'
)
"""
DEFINITIONS = (
    "SELECT view_set_name, definition_sql, update_group, updated_at, updated_by FROM list_view_set_definitions()"
)


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("sqlviews"), upload=False) as server:
        yield server


def _home(server: SpanlakeServer, tmp_path: Path, key: str = ADMIN_KEY) -> dict[str, str]:
    """An environment whose ~/.micromegas/config.json names the server and an API key file."""
    home = tmp_path / "home"
    (home / ".micromegas").mkdir(parents=True, exist_ok=True)
    key_file = home / ".micromegas" / "spanlake.key"
    key_file.write_text(key)
    profile = {"uri": server.flightsql_url, "api_key_file": str(key_file)}
    (home / ".micromegas" / "config.json").write_text(json.dumps({"profiles": {"spanlake": profile}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROMEGAS_")}
    return {**env, "HOME": str(home)}


def _views_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "micromegas-views"), *args[:1], "--profile", "spanlake", *args[1:]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def _send_logs(server: SpanlakeServer, exe: str, count: int) -> None:
    tracing.init(url=server.http_url, api_key=ADMIN_KEY, exe=exe, flush_period=3600)
    for i in range(count):
        tracing.info(f"{exe} {i}")
    assert tracing.shutdown(10)


def _stored(server: SpanlakeServer) -> list[str]:
    return [r["view_set_name"] for r in server.sql("SELECT view_set_name FROM lakehouse_view_set_definitions")]


def _live_partitions(server: SpanlakeServer, name: str) -> int:
    rows = server.sql("SELECT count(*) AS n FROM lakehouse_partitions WHERE view_set_name = $1", name)
    return rows[0]["n"]


def test_micromegas_views_manages_a_view_the_daemon_maintains(served: SpanlakeServer, tmp_path: Path) -> None:
    env = _home(served, tmp_path)
    local = tmp_path / "views"
    local.mkdir()
    (local / "log_counts.sql").write_text(LOG_COUNTS)

    plan = _views_cli(env, "plan", "--dir", str(local))
    assert plan.returncode == 0, plan.stderr
    assert "+ create: log_counts" in plan.stdout and "Plan: 1 to create, 0 to update, 0 to drop" in plan.stdout
    assert "? log_stats" in plan.stdout  # the built-in definition, server-only here

    applied = _views_cli(env, "apply", "--dir", str(local), "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert "log_counts: created" in applied.stdout
    assert "Apply complete! 1 created, 0 updated, 0 dropped." in applied.stdout

    listed = _views_cli(env, "list", "--dir", str(local), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = [(r["name"], r["status"], r["update_group"], r["updated_by"]) for r in json.loads(listed.stdout)]
    assert rows == [("log_counts", "unchanged", 3000, "admin"), ("log_stats", "server-only", 3000, "spanlake")]
    shown = _views_cli(env, "show", "log_counts")
    assert shown.stdout.rstrip("\n") == LOG_COUNTS.strip()  # apply sent the file's canonical form

    # The daemon maintains it from new logs, and queries read it like any global view.
    _send_logs(served, "sqlviews-daemon", 5)
    client = micromegas_client(served)

    def counted() -> int:
        rows = client.query("SELECT sum(count) AS n FROM log_counts WHERE exe = 'sqlviews-daemon'")
        return 0 if rows["n"].isna()[0] else int(rows["n"][0])

    wait_until(lambda: counted() == 5, 30, "the daemon to materialize log_counts")
    mine = "WHERE exe = 'sqlviews-daemon' GROUP BY level ORDER BY level"
    by_level = client.query(f"SELECT level, sum(count) AS n FROM log_counts {mine}")
    direct = client.query(f"SELECT level, count(*) AS n FROM log_entries {mine}")
    assert by_level.to_dict("records") == direct.to_dict("records")
    assert _live_partitions(served, "log_counts") > 0
    view_sets = client.query("SELECT view_set_name, global_instance_available FROM list_view_sets()")
    assert view_sets.to_dict("records")[-1] == {"view_set_name": "log_counts", "global_instance_available": True}

    # An edited file is an update; pull writes the server's canonical text back.
    (local / "log_counts.sql").write_text(LOG_COUNTS.replace("update_group = 3000", "update_group = 3100"))
    plan = _views_cli(env, "plan", "--dir", str(local))
    assert "~ update: log_counts" in plan.stdout and "+    update_group = 3100," in plan.stdout
    applied = _views_cli(env, "apply", "--dir", str(local), "--auto-approve")
    assert "log_counts: replaced\n" in applied.stdout, applied.stderr  # the same queries: partitions kept
    assert counted() == 5 and _live_partitions(served, "log_counts") > 0
    assert client.query(DEFINITIONS)["update_group"].tolist() == [3000, 3100]  # log_stats, log_counts
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    (pulled / "log_counts.sql").write_text("CREATE MATERIALIZED VIEW log_counts WITH (stale)")
    pull = _views_cli(env, "pull", "--dir", str(pulled))
    assert "Pull complete: 1 updated, 0 unchanged." in pull.stdout, pull.stderr
    assert (pulled / "log_counts.sql").read_text() == (local / "log_counts.sql").read_text().strip() + "\n"

    # Other queries: the old partitions are stale, retired (the daemon may already be writing new ones).
    (local / "log_counts.sql").write_text(LOG_COUNTS.replace("count(*) AS count", "count(msg) AS count"))
    replaced_at = served.sql("SELECT now() AS t")[0]["t"]
    applied = _views_cli(env, "apply", "--dir", str(local), "--auto-approve")
    assert re.search(r"log_counts: replaced \([1-9]\d* stale partitions retired\)", applied.stdout), applied.stderr
    older = "SELECT count(*) AS n FROM lakehouse_partitions WHERE view_set_name = 'log_counts' AND updated < $1"
    assert served.sql(older, replaced_at) == [{"n": 0}]
    # An admin rebuilds the day (materialize_partitions, a table function: the view's queries leave its thread).
    day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    until = day + dt.timedelta(days=1)
    client.query(
        f"SELECT * FROM materialize_partitions('log_counts', '{day.isoformat()}', '{until.isoformat()}', 86400)"
    )
    assert counted() == 5
    spans = "SELECT begin_insert_time AS b, end_insert_time AS e FROM lakehouse_partitions WHERE view_set_name = $1"
    assert served.sql(spans, "log_counts") == [{"b": day, "e": until}]

    # Pruned: the definition is dropped and the view's partitions retired.
    (local / "log_counts.sql").unlink()
    (local / "other.sql").write_text("CREATE MATERIALIZED VIEW other WITH (not applied)")
    applied = _views_cli(env, "apply", "--dir", str(local), "--prune", "--auto-approve", "log_counts")
    assert "- drop: log_counts" in applied.stdout and "log_counts: dropped (" in applied.stdout, applied.stderr
    assert _stored(served) == [] and _live_partitions(served, "log_counts") == 0
    assert client.query(DEFINITIONS)["view_set_name"].tolist() == ["log_stats"]
    with pytest.raises(Exception, match="log_counts"):
        client.query("SELECT * FROM log_counts")


def test_ddl_round_trip_through_adbc(served: SpanlakeServer) -> None:
    ddl = LOG_COUNTS.replace("log_counts", "adbc_counts")
    with adbc_connect(served) as conn, conn.cursor() as cursor:
        cursor.execute(ddl)
        assert cursor.fetch_arrow_table().to_pylist() == [{"status": "created"}]
        cursor.execute(f"{DEFINITIONS} WHERE view_set_name = 'adbc_counts'")
        [row] = cursor.fetch_arrow_table().to_pylist()
        assert (row["view_set_name"], row["definition_sql"], row["update_group"], row["updated_by"]) == (
            "adbc_counts",
            ddl.strip(),
            3000,
            "admin",
        )
        assert row["updated_at"].tzinfo is not None
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT: .* adbc_counts already exists"):
            cursor.execute(ddl)  # CREATE without OR REPLACE over an existing one
    over = (
        "CREATE MATERIALIZED VIEW over_adbc WITH (extract_query = $$ SELECT time_bin, count FROM adbc_counts $$,"
        " count_src_query = $$ SELECT sum(nb_objects) AS count FROM blocks $$,"
        " update_group = {}, time_column = time_bin)"
    )
    with adbc_connect(served) as conn, conn.cursor() as cursor:
        with pytest.raises(Exception, match=r"it reads adbc_counts \(update_group 3000\), so its update_group must be"):
            cursor.execute(over.format(3000))
        cursor.execute(over.format(3001))
        assert cursor.fetch_arrow_table().to_pylist() == [{"status": "created"}]
        cursor.execute("DROP MATERIALIZED VIEW over_adbc")
        assert cursor.fetch_arrow_table().to_pylist() == [{"status": "dropped (0 partitions retired)"}]
    with adbc_connect(served) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) AS n FROM adbc_counts")
        assert cursor.fetch_arrow_table().to_pylist() == [{"n": 0}]
        cursor.execute("DROP MATERIALIZED VIEW adbc_counts")
        assert cursor.fetch_arrow_table().to_pylist() == [{"status": "dropped (0 partitions retired)"}]
        cursor.execute("DROP MATERIALIZED VIEW IF EXISTS adbc_counts")
        assert cursor.fetch_arrow_table().to_pylist() == [{"status": "not found"}]
    assert _stored(served) == []


def test_log_stats_is_a_built_in_definition(served: SpanlakeServer, tmp_path: Path) -> None:
    built_in = parse_ddl(log_stats.DEFINITION_SQL)
    assert isinstance(built_in, CreateView)
    assert (built_in.source, built_in.time_columns) == (log_stats.VIEW.sql, log_stats.VIEW.time_columns)
    [row] = micromegas_client(served).query(f"{DEFINITIONS} WHERE view_set_name = 'log_stats'").to_dict("records")
    assert (row["definition_sql"], row["update_group"], row["updated_by"]) == (
        log_stats.DEFINITION_SQL,
        3000,
        "spanlake",
    )
    local = tmp_path / "views"
    local.mkdir()
    pull = _views_cli(_home(served, tmp_path), "pull", "--dir", str(local), "log_stats")
    assert "Pull complete: 1 updated, 0 unchanged." in pull.stdout, pull.stderr
    assert (local / "log_stats.sql").read_text() == log_stats.DEFINITION_SQL + "\n"
    for statement in (
        f"CREATE OR REPLACE {log_stats.DEFINITION_SQL[len('CREATE ') :]}",
        "DROP MATERIALIZED VIEW log_stats",
    ):
        with pytest.raises(Exception, match="log_stats is a built-in view"):
            micromegas_client(served).query(statement)


def _with(name: str, extract: str) -> str:
    return (
        f"CREATE MATERIALIZED VIEW {name} WITH (extract_query = $$ {extract} $$,"
        " count_src_query = $$ SELECT sum(nb_objects) AS count FROM blocks $$,"
        " update_group = 3000, time_column = 'time')"
    )


BAD_DEFINITIONS = {
    "not a SELECT": (
        _with("deleting", "DELETE FROM log_entries"),
        "materialized view deleting: extract_query must be a SELECT query",
    ),
    "unknown table": (
        _with("unknown", "SELECT time FROM no_such_table"),
        "materialized view unknown: extract_query does not plan: ",
    ),
    "shadows a built-in view": (
        _with("log_entries", "SELECT time FROM log_entries"),
        "log_entries is a built-in view: a materialized view cannot shadow it",
    ),
    "a view over itself": (
        _with("selfish", "SELECT time FROM selfish"),
        "materialized view selfish: extract_query reads selfish itself (a view over itself)",
    ),
    "a missing time column": (
        _with("timeless", "SELECT msg FROM log_entries"),
        "materialized view timeless: time column 'time' is not in the extract's columns",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DEFINITIONS))
def test_bad_definitions_are_refused_and_nothing_stored(served: SpanlakeServer, case: str) -> None:
    statement, message = BAD_DEFINITIONS[case]
    with pytest.raises(Exception) as caught:
        micromegas_client(served).query(statement)
    code, text = grpc_status(caught.value)
    assert (code, message in text) == ("INVALID_ARGUMENT", True), text
    assert "no_such_table" in text if case == "unknown table" else True
    assert _stored(served) == []


def test_non_admins_may_neither_define_nor_list_views(served: SpanlakeServer, tmp_path: Path) -> None:
    reader = micromegas_client(served, READER_KEY)
    with pytest.raises(Exception) as caught:
        reader.query(LOG_COUNTS)
    refusal = ("7", "CREATE and DROP MATERIALIZED VIEW are for admins only ('reader' is not an admin)")
    assert grpc_status(caught.value) == refusal  # 7: PERMISSION_DENIED
    with pytest.raises(Exception) as caught:
        reader.query("DROP MATERIALIZED VIEW log_counts")
    assert grpc_status(caught.value) == refusal
    listed = _views_cli(_home(served, tmp_path, READER_KEY), "list", "--dir", str(tmp_path))
    assert listed.returncode == 1 and "list_view_set_definitions" in listed.stderr
    assert _stored(served) == []


def test_a_stored_definition_that_no_longer_loads_is_left_out(served: SpanlakeServer) -> None:
    served.sql(
        "INSERT INTO lakehouse_view_set_definitions VALUES ('broken', 'CREATE MATERIALIZED VIEW broken WITH (x)',"
        " 3000, '', now(), 'an older spanlake')"
    )
    client = micromegas_client(served)
    try:

        def left_out() -> bool:
            view_sets = client.query("SELECT view_set_name FROM list_view_sets()")["view_set_name"].tolist()
            assert "broken" not in view_sets and "log_stats" in view_sets  # the others still load
            return "the stored definition of broken does not load, left out" in served.log_text()

        wait_until(left_out, 15, "the server to read the broken definition")
        listed = client.query(f"{DEFINITIONS} WHERE view_set_name = 'broken'")
        assert listed["updated_by"].tolist() == ["an older spanlake"]  # listed, to be fixed or dropped
        with pytest.raises(Exception, match="broken"):
            client.query("SELECT * FROM broken")
        assert client.query("DROP MATERIALIZED VIEW broken")["status"][0] == "dropped (0 partitions retired)"
    finally:
        served.sql("DELETE FROM lakehouse_view_set_definitions WHERE view_set_name = 'broken'")


def test_a_bucket_waits_for_source_partitions_crossing_it(served: SpanlakeServer) -> None:
    """An admin's log_entries partition over the open hour crosses the daemon's 1-second buckets: a SQL
    view's buckets there are left for a larger one (else they would pass for up to date, rows missing)."""
    client = micromegas_client(served)
    client.query(LOG_COUNTS.replace("log_counts", "crossing_counts"))

    def counted(exe: str, view: str) -> int:
        rows = client.query(f"SELECT sum(count) AS n FROM {view} WHERE exe = '{exe}'")
        return 0 if rows["n"].isna()[0] else int(rows["n"][0])

    try:
        hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        _send_logs(served, "sqlviews-before", 3)
        wait_until(lambda: counted("sqlviews-before", "crossing_counts") == 3, 30, "the first logs counted")
        span = f"'{hour.isoformat()}', '{(hour + dt.timedelta(hours=1)).isoformat()}'"
        client.query(f"SELECT * FROM materialize_partitions('log_entries', {span}, 3600)")
        sent_at = served.sql("SELECT now() AS t")[0]["t"]
        _send_logs(served, "sqlviews-after", 2)
        if dt.datetime.now(dt.UTC) >= hour + dt.timedelta(hours=1):
            pytest.skip("the hour ended meanwhile: the new blocks are outside the crossing partition")
        logged = "SELECT count(*) AS n FROM log_entries WHERE exe = 'sqlviews-after'"
        wait_until(lambda: client.query(logged)["n"][0] == 2, 30, "the new logs in log_entries")
        left = "a partition of a global view crosses the bucket's edge, left for a larger bucket"
        wait_until(lambda: left in served.log_text(), 15, "the daemon to leave crossing_counts' buckets")
        later = "SELECT count(*) AS n FROM lakehouse_partitions WHERE view_set_name = $1 AND end_insert_time > $2"
        assert served.sql(later, "crossing_counts", sent_at) == [{"n": 0}]
        day = hour.replace(hour=0)
        days = f"'{day.isoformat()}', '{(day + dt.timedelta(days=1)).isoformat()}'"
        client.query(f"SELECT * FROM materialize_partitions('crossing_counts', {days}, 86400)")
        assert (counted("sqlviews-before", "crossing_counts"), counted("sqlviews-after", "crossing_counts")) == (3, 2)
    finally:
        client.query("DROP MATERIALIZED VIEW crossing_counts")
