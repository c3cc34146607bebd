"""Sessions kept from one query to the next (`lakehouse/query/session_pool.py`), through the query runner
every door uses, on a real lake (PostgreSQL, local object store): a session whose query's stream ended
serves the next query of its kind (also a Flight SQL query's, planned at GetFlightInfo), and answers it
as a new session would — the table functions run again, the read scope and identity are the new query's —
while a failed or changed session is dropped."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from datafusion import SessionContext
from harness import PostgresServer, query

from spanlake.lakehouse.catalog.partitions import Partition, RetireMatch
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.partitions import PartitionTarget, write_partition
from spanlake.lakehouse.query.admission import lakehouse_runner
from spanlake.lakehouse.query.context import Principal
from spanlake.lakehouse.query.failures import Failure
from spanlake.lakehouse.query.runner import QueryRequest, QueryRunner
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.server.flightsql import protocol
from spanlake.server.flightsql.plan_cache import PlanCache
from spanlake.server.flightsql.service import FlightSqlServer

PARTITION_COUNT = "SELECT count(*) AS n FROM list_partitions()"
LOG_ENTRIES = VIEW_SETS["log_entries"]
HOUR_NS = 3600 * 1_000_000_000
LOG_HOURS_NS = 1_893_456_000 * 1_000_000_000  # 2030-01-01T00:00:00Z: after add_partition's rows
LEVELS = "SELECT level, count(*) AS n FROM log_entries GROUP BY level ORDER BY level"


@pytest.fixture(scope="module")
def lake(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """An empty lake of its own."""
    store = tmp_path_factory.mktemp("session-reuse")
    with Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(store).as_uri())) as opened:
        yield opened


@pytest.fixture
def runner(lake: Lake) -> Iterator[QueryRunner]:
    """The lake's runner, as a served process has (its own pool of sessions)."""
    made = lakehouse_runner(lake)
    yield made
    made.shutdown()


def run(runner: QueryRunner, sql: str, principal: Principal | None = None) -> tuple[list[dict], SessionContext]:
    """The rows of `sql` streamed as a door streams them, and the session that planned it."""
    sessions: list[SessionContext] = []
    rows = run_into(runner, sql, sessions, principal)
    return rows, sessions[0]


def run_into(
    runner: QueryRunner, sql: str, sessions: list[SessionContext], principal: Principal | None = None
) -> list[dict]:
    """`run`, appending the query's session to `sessions` as soon as it is planned (also when it then fails)."""
    query_ = runner.open(QueryRequest("test", "test.query", sql, principal), lambda: False)
    try:
        frame = query_.run(query_.plan)
        sessions.append(query_.session_context)
        results = query_.run(query_.execute, frame)
        batches = []
        while (batch := query_.run(results.next_batch)) is not None:
            batches.append(batch)
        results.close()
        return pa.Table.from_batches(batches).to_pylist() if batches else []
    finally:
        query_.close()


def add_partition(lake: Lake, instance_id: str) -> None:
    """A live partition row of `log_entries` for `instance_id`, written straight into the catalog."""
    begin = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=uuid.uuid4().int % 100_000)
    query(
        lake.settings.database_url,
        "INSERT INTO lakehouse_partitions (view_set_name, view_instance_id, begin_insert_time, end_insert_time,"
        " updated, file_path, file_size, file_schema_hash, source_data_hash, num_rows, partition_format_version)"
        " VALUES ('log_entries', $1, $2, $3, now(), NULL, 0, $4, $5, 0, 2)",
        instance_id,
        begin,
        begin + dt.timedelta(minutes=1),
        b"\x01",
        b"\x00" * 8,
    )


def log_rows(begin_ns: int, level: int, count: int) -> pa.RecordBatch:
    """`count` log_entries rows of one level at `begin_ns`."""

    def column(field: pa.Field) -> pa.Array:
        if pa.types.is_timestamp(field.type):
            return pa.array([begin_ns] * count, field.type)
        if field.name == "level":
            return pa.array([level] * count, field.type)
        value_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        values = pa.array([b"" if pa.types.is_binary(value_type) else "x"] * count, value_type)
        return values.dictionary_encode() if pa.types.is_dictionary(field.type) else values

    return pa.record_batch([column(field) for field in LOG_ENTRIES.schema], schema=LOG_ENTRIES.schema)


def commit_log_hours(lake: Lake, hours: tuple[int, int], level: int, count: int) -> Partition | None:
    """A global log_entries partition of those hours after LOG_HOURS_NS, replacing the ones it contains."""
    begin, end = (LOG_HOURS_NS + hour * HOUR_NS for hour in hours)
    target = PartitionTarget(
        LOG_ENTRIES.name,
        "global",
        begin,
        end,
        LOG_ENTRIES.schema,
        LOG_ENTRIES.schema_hash,
        LOG_ENTRIES.time_columns,
        RetireMatch.CONTAINED,
    )
    return write_partition(lake, target, count, [log_rows(begin, level, count)])


def test_a_reused_session_reads_exactly_the_live_partition_files(lake: Lake, runner: QueryRunner) -> None:
    # Each file's own directory is listed once per session (DataFusion keeps the listing): a kept
    # session must still read a new partition, and no longer read the partitions a merge replaced.
    commit_log_hours(lake, (0, 1), level=1, count=3)
    commit_log_hours(lake, (1, 2), level=2, count=5)
    two, first = run(runner, LEVELS)
    commit_log_hours(lake, (2, 3), level=3, count=7)
    three, second = run(runner, LEVELS)
    merged = commit_log_hours(lake, (0, 2), level=4, count=11)
    after_merge, third = run(runner, LEVELS)
    assert second is first and third is first
    assert merged is not None and merged.file_path is not None and merged.file_path.endswith("/part.parquet")
    assert two == [{"level": 1, "n": 3}, {"level": 2, "n": 5}]
    assert three == [{"level": 1, "n": 3}, {"level": 2, "n": 5}, {"level": 3, "n": 7}]
    assert after_merge == [{"level": 3, "n": 7}, {"level": 4, "n": 11}]


def test_a_session_whose_stream_ended_serves_the_next_query(runner: QueryRunner) -> None:
    first_rows, first = run(runner, "SELECT 1 AS one")
    second_rows, second = run(runner, "SELECT 2 AS two")
    assert (first_rows, second_rows) == ([{"one": 1}], [{"two": 2}])
    assert second is first


def test_a_reused_session_runs_its_table_functions_again(lake: Lake, runner: QueryRunner) -> None:
    before, first = run(runner, PARTITION_COUNT)
    add_partition(lake, "global")
    after, second = run(runner, PARTITION_COUNT)
    assert second is first
    assert after[0]["n"] == before[0]["n"] + 1


def test_a_reused_session_reads_with_the_new_query_s_read_scope(lake: Lake, runner: QueryRunner) -> None:
    process_id = str(uuid.uuid4())
    add_partition(lake, process_id)
    everything = Principal("legacy-reader")  # no audiences: reads every process
    team_a = Principal("team-a-reader", read_audiences=frozenset({"a"}))  # no process of team a exists
    listed = f"SELECT count(*) AS n FROM list_partitions() WHERE view_instance_id = '{process_id}'"
    seen_by_all, first = run(runner, listed, everything)
    seen_by_team_a, second = run(runner, listed, team_a)
    seen_by_all_again, third = run(runner, listed, everything)
    assert second is first and third is first
    assert (seen_by_all, seen_by_team_a, seen_by_all_again) == ([{"n": 1}], [{"n": 0}], [{"n": 1}])


def test_a_reused_session_records_who_asks_now(runner: QueryRunner) -> None:
    sessions: list[SessionContext] = []
    for name in ("alice", "bob"):
        rule = f"user_id = ''{name}-never-{uuid.uuid4().hex}''"
        run_into(runner, f"SELECT * FROM deny_queries('{rule}', 'test')", sessions, Principal(name, is_admin=True))
    rules = run(runner, "SELECT created_by, match_expr FROM list_query_denials() ORDER BY created_at")[0]
    assert sessions[1] is sessions[0]
    assert [(r["created_by"], r["match_expr"].split("-")[0]) for r in rules[-2:]] == [
        ("alice", "user_id = 'alice"),
        ("bob", "user_id = 'bob"),
    ]


def test_admin_functions_never_reach_a_reader_through_a_reused_session(runner: QueryRunner) -> None:
    _, admin_session = run(runner, "SELECT 1 AS one")  # auth off: an admin's session
    reader = Principal("reader", read_audiences=frozenset({"a"}))
    _, reader_session = run(runner, "SELECT 1 AS one", reader)
    assert reader_session is not admin_session
    with pytest.raises(Failure, match="list_query_denials"):
        run(runner, "SELECT * FROM list_query_denials()", reader)


def test_information_schema_lists_the_same_functions_in_a_reused_session(runner: QueryRunner) -> None:
    listing = "SELECT routine_name FROM information_schema.routines ORDER BY routine_name"
    new_rows, first = run(runner, listing)
    reused_rows, second = run(runner, listing)
    assert second is first
    names = {row["routine_name"] for row in new_rows}
    assert {"jsonb_get", "get_payload", "retire_partition_by_file"} <= names
    assert reused_rows == new_rows


def test_a_failed_query_s_session_is_dropped(runner: QueryRunner) -> None:
    sessions: list[SessionContext] = []
    with pytest.raises(Failure):
        run_into(runner, "SELECT CAST(v AS BIGINT) AS n FROM (VALUES ('not a number')) AS t(v)", sessions)
    rows, after = run(runner, "SELECT 1 AS one")
    assert rows == [{"one": 1}]
    assert after is not sessions[0]


def test_a_session_whose_settings_a_loop_join_changed_is_dropped(runner: QueryRunner) -> None:
    cross = "SELECT sum(x * y) AS n FROM (VALUES (1), (2)) AS a(x) CROSS JOIN (VALUES (1), (2), (3)) AS b(y)"
    rows, changed = run(runner, cross)
    batch_size, after = run(runner, "SELECT value FROM information_schema.df_settings WHERE name LIKE '%.batch_size'")
    assert rows == [{"n": 18}]
    assert after is not changed
    assert batch_size == [{"value": "65536"}]


def test_a_flight_query_s_session_planned_at_get_flight_info_serves_the_next_query(runner: QueryRunner) -> None:
    # GetFlightInfo plans in a session of its own and leaves the plan in the plan cache; the DoGet
    # executing that plan gives the session back once its stream ended.
    plans = PlanCache()
    server = FlightSqlServer("grpc://127.0.0.1:0", runner, None, plan_cache=plans)
    try:
        client = flight.FlightClient(f"grpc://127.0.0.1:{server.serve_in_thread()}")
        command = protocol.pack(protocol.CommandStatementQuery(query="SELECT 1 AS one"))
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
        planned = plans.get((b"SELECT 1 AS one", None, None, None), take=False)
        table = client.do_get(info.endpoints[0].ticket).read_all()
        client.close()
        rows, after = run(runner, "SELECT 2 AS two")
    finally:
        server.shutdown()
    assert table.to_pylist() == [{"one": 1}]
    assert rows == [{"two": 2}]
    assert planned is not None
    assert after is planned.ctx
