"""Statements' plans kept in their session (`lakehouse/query/kept_plans.py`) on a running `spanlake serve`:
the same statement asked again runs its kept plan, and answers what a new planning would; a new
partition, other range headers, a table function, a reader limited to audiences plan again; a refused
key or a denied statement is refused all the same. And why the physical plan is not kept: DataFusion
executes a plan's scans once."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext
from harness import PostgresServer, SpanlakeServer, running_server
from served_support import ADMIN_KEY, READER_KEY, micromegas_client
from test_access_control import api
from test_flightsql_support import grpc_status
from test_session_reuse import HOUR_NS, LEVELS, LOG_HOURS_NS, add_partition, commit_log_hours

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.audit import AUDIT_LOGGER
from spanlake.lakehouse.query.session import session_config
from spanlake.lakehouse.settings import Settings


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SpanlakeServer, Lake]]:
    """A server with an admin and a reader key (audit lines logged), and a lake of this process on its
    catalog and object store, which writes global partitions the server then reads."""
    tmp_path = tmp_path_factory.mktemp("kept-plans")
    keys = json.dumps([{"name": "admin", "key": ADMIN_KEY}, {"name": "reader", "key": READER_KEY}])
    extra_env = {"SPANLAKE_API_KEYS": keys, "SPANLAKE_ADMINS": "admin", "SPANLAKE_LOG_LEVEL": "DEBUG"}
    with running_server(postgres, tmp_path, extra_env=extra_env) as server:
        settings = Settings(database_url=server.database_url, object_store_uri=server.object_store_uri)
        with Lake.open(settings) as lake:
            commit_log_hours(lake, (0, 1), level=1, count=3)
            yield server, lake


def asked(server: SpanlakeServer, sql: str, key: str = ADMIN_KEY, **range_args: str) -> tuple[list[dict], bool]:
    """The rows of `sql` through the micromegas client, and whether its query ran a kept plan (its audit)."""
    rows = micromegas_client(server, key).query(sql, **range_args).to_dict("records")
    return rows, audits(server, sql)[-1]["plan_kept"]


def audits(server: SpanlakeServer, sql: str) -> list[dict]:
    """The DoGet audit records of `sql`, oldest first."""
    lines = [line for line in server.log_text().splitlines() if AUDIT_LOGGER in line]
    records = [json.loads(line[line.index("{") :]) for line in lines]
    return [record for record in records if record["rpc"] == "DoGet" and record["sql"] == sql]


def hour(number: int) -> str:
    """RFC 3339 time of the hour `number` after LOG_HOURS_NS."""
    return dt.datetime.fromtimestamp((LOG_HOURS_NS + number * HOUR_NS) / 1e9, dt.UTC).isoformat()


def test_a_statement_asked_again_runs_its_kept_plan(served: tuple[SpanlakeServer, Lake]) -> None:
    server, _ = served
    sql = f"{LEVELS} -- asked again"
    first, first_kept = asked(server, sql)
    again, again_kept = asked(server, sql)
    assert (first_kept, again_kept) == (False, True)
    assert first == again == [{"level": 1, "n": 3}]


def test_a_new_partition_plans_the_statement_again(served: tuple[SpanlakeServer, Lake]) -> None:
    server, lake = served
    sql = f"{LEVELS} -- a new partition"
    asked(server, sql)
    before, before_kept = asked(server, sql)
    commit_log_hours(lake, (5, 6), level=5, count=2)
    after, after_kept = asked(server, sql)
    again, again_kept = asked(server, sql)
    assert (before_kept, after_kept, again_kept) == (True, False, True)
    assert after == again == [*before, {"level": 5, "n": 2}]


def test_other_range_headers_plan_the_statement_again(served: tuple[SpanlakeServer, Lake]) -> None:
    server, lake = served
    commit_log_hours(lake, (8, 9), level=8, count=4)
    sql = f"{LEVELS} -- ranges"
    first_range = {"begin": hour(0), "end": hour(2)}
    asked(server, sql, **first_range)
    first, first_kept = asked(server, sql, **first_range)
    other, other_kept = asked(server, sql, begin=hour(8), end=hour(9))
    assert (first_kept, other_kept) == (True, False)
    assert (first, other) == ([{"level": 1, "n": 3}], [{"level": 8, "n": 4}])


def test_now_is_the_new_query_s_time(served: tuple[SpanlakeServer, Lake]) -> None:
    server, _ = served
    sql = "SELECT now() AS t"
    first, _ = asked(server, sql)
    time.sleep(0.05)
    again, again_kept = asked(server, sql)
    assert again_kept
    assert again[0]["t"] - first[0]["t"] >= dt.timedelta(seconds=0.05)


def test_a_statement_calling_a_table_function_is_never_kept(served: tuple[SpanlakeServer, Lake]) -> None:
    # With a global view beside it, under an unchanged generation: the partition row is written straight
    # into the catalog, announced to nobody.
    server, lake = served
    sql = "SELECT (SELECT count(*) FROM list_partitions()) AS n, (SELECT count(*) FROM log_entries) AS rows"
    first, first_kept = asked(server, sql)
    add_partition(lake, str(uuid.uuid4()))
    again, again_kept = asked(server, sql)
    assert (first_kept, again_kept) == (False, False)
    assert again[0]["n"] == first[0]["n"] + 1


def test_a_statement_reading_a_merged_view_is_never_kept(served: tuple[SpanlakeServer, Lake]) -> None:
    # `processes` is merged in memory at planning: a kept plan would hold its rows.
    server, _ = served
    sql = "SELECT count(*) AS n FROM processes"
    kept = [asked(server, sql)[1] for _ in range(2)]
    assert kept == [False, False]


def test_a_refused_key_is_refused_a_kept_statement(served: tuple[SpanlakeServer, Lake]) -> None:
    server, _ = served
    sql = f"{LEVELS} -- refused key"
    asked(server, sql)
    assert asked(server, sql)[1]
    with pytest.raises(Exception) as caught:
        micromegas_client(server, "not-a-key-0123456789").query(sql)
    assert grpc_status(caught.value)[0] == "UNAUTHENTICATED"


def test_a_denied_statement_is_denied_though_its_plan_is_kept(served: tuple[SpanlakeServer, Lake]) -> None:
    server, _ = served
    sql = f"{LEVELS} -- denied for the reader"
    asked(server, sql, READER_KEY)
    before_rule, kept = asked(server, sql, READER_KEY)
    assert kept and before_rule
    admin = micromegas_client(server)
    [rule_id] = admin.query(
        "SELECT msg AS rule_id FROM deny_queries('user_id = ''reader'' AND sql LIKE ''%denied for the reader%''', 'x')"
    )["rule_id"].tolist()
    try:
        with pytest.raises(Exception) as caught:
            micromegas_client(server, READER_KEY).query(sql)
        code, message = grpc_status(caught.value)
        assert code == "INVALID_ARGUMENT" and f"query denied by rule {rule_id}" in message
        assert asked(server, sql)[0] == before_rule  # the admin is not denied
    finally:
        admin.query(f"SELECT remove_query_denial('{rule_id}') AS m")


def test_a_reader_of_some_audiences_never_runs_a_kept_plan(served: tuple[SpanlakeServer, Lake]) -> None:
    server, _ = served
    status, minted = api(
        server, "POST", "/api/analytics-api-keys", ADMIN_KEY, {"name": "team-x", "read_audiences": ["team-x"]}
    )
    assert status == 201, minted
    sql = f"{LEVELS} -- audiences"
    first, _ = asked(server, sql)
    everything, admin_kept = asked(server, sql)
    team_x = [asked(server, sql, minted["key"]) for _ in range(2)]
    assert admin_kept and everything == first and everything
    assert team_x == [([], False), ([], False)]  # the global rows of no process of team-x


def test_datafusion_executes_a_physical_plan_s_scans_once(tmp_path: Path) -> None:
    # Why a kept plan is the logical one: executing the same ExecutionPlan again answers no rows.
    for index in range(4):
        pq.write_table(pa.table({"level": [index % 2] * 10}), tmp_path / f"{index}.parquet")
    ctx = SessionContext(session_config(split_inputs=True))
    ctx.register_parquet("t", str(tmp_path))
    plan = ctx.sql("SELECT level, count(*) AS n FROM t GROUP BY level ORDER BY level").execution_plan()

    def rows() -> int:
        return sum(
            batch.to_pyarrow().num_rows
            for partition in range(plan.partition_count)
            for batch in ctx.execute(plan, partition)
        )

    assert (rows(), rows()) == (2, 0)
