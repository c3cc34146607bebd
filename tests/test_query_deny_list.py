"""The query deny list on a running `spanlake serve`: rules written by an admin with
deny_queries(...), listed, matched on the query's attribution and fingerprint, lifted with
remove_query_denial(...); a denied query answers micromegas's message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow
import pytest
from harness import PostgresServer, SpanlakeServer
from lakehouse_support import local_lake
from served_support import READER_KEY, adbc_connect, micromegas_client, served_lakehouse
from test_flightsql_support import grpc_status

from spanlake.lakehouse import query_denials
from spanlake.lakehouse.query.audit import sql_hash

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("deny")) as server:
        yield server


def _failure(run: object) -> tuple[str | None, str]:
    with pytest.raises(Exception) as caught:
        run()  # type: ignore[operator]
    return grpc_status(caught.value)


def _deny(served: SpanlakeServer, match_expr: str, reason: str) -> str:
    quoted = match_expr.replace("'", "''")
    rows = micromegas_client(served).query(f"SELECT msg AS rule_id FROM deny_queries('{quoted}', '{reason}')")
    [rule_id] = rows["rule_id"].tolist()
    return rule_id


def _remove(served: SpanlakeServer, rule_id: str) -> str:
    return micromegas_client(served).query(f"SELECT remove_query_denial('{rule_id}') AS m")["m"][0]


def test_a_denied_query_answers_micromegas_message(served: SpanlakeServer) -> None:
    rule_id = _deny(served, "client = 'python' AND sql LIKE '%FROM streams%'", "too heavy")
    reader = micromegas_client(served, READER_KEY)
    code, message = _failure(lambda: reader.query("SELECT count(*) FROM streams"))
    assert code == "INVALID_ARGUMENT"
    assert re.fullmatch(
        rf"query denied by rule {rule_id} \(reason: too heavy\); ask an admin to lift it with"
        rf" remove_query_denial\('{rule_id}'\); query_id=[0-9a-f-]{{36}}",
        message,
    ), message
    assert reader.query("SELECT count(*) AS n FROM processes")["n"][0] == 1  # other statements pass
    with adbc_connect(served, key=READER_KEY) as conn, conn.cursor() as cur:  # ADBC is not 'python'
        cur.execute("SELECT count(*) FROM streams")
        assert cur.fetchone()[0] > 0
    [listed] = micromegas_client(served).query("SELECT * FROM list_query_denials()").to_dict("records")
    assert listed["rule_id"] == rule_id and listed["created_by"] == "admin" and listed["reason"] == "too heavy"
    assert listed["match_expr"] == "client = 'python' AND sql LIKE '%FROM streams%'"
    assert listed["last_hit_at"] is not None and listed["created_at"] <= listed["last_hit_at"]
    assert '"error_class":"denied"' in served.log_text()
    assert _remove(served, rule_id) == f"SUCCESS: removed rule {rule_id}"
    assert reader.query("SELECT count(*) AS n FROM streams")["n"][0] > 0
    assert _remove(served, rule_id) == f"ERROR: no such rule: {rule_id}"


def test_a_rule_on_the_fingerprint_denies_every_literal(served: SpanlakeServer) -> None:
    fingerprint = sql_hash("SELECT stream_id FROM streams WHERE insert_time > '2020-01-01' LIMIT 3")
    rule_id = _deny(served, f"sql_hash = '{fingerprint}'", "dashboard storm")
    reader = micromegas_client(served, READER_KEY)
    code, _ = _failure(lambda: reader.query("select stream_id from streams where insert_time > '2025-06-01' limit 9"))
    assert code == "INVALID_ARGUMENT"
    with pytest.raises(pyarrow.lib.ArrowInvalid):  # what micromegas's own test expects
        reader.query("SELECT stream_id FROM streams WHERE insert_time > '2024-01-01' LIMIT 1")
    assert len(reader.query("SELECT stream_id FROM streams LIMIT 3")) == 3
    assert _remove(served, rule_id).startswith("SUCCESS")


def test_admins_can_always_manage_the_deny_list(served: SpanlakeServer) -> None:
    rule_id = _deny(served, "user_id = 'admin'", "locked out")
    admin = micromegas_client(served)
    assert _failure(lambda: admin.query("SELECT 1"))[0] == "INVALID_ARGUMENT"
    assert admin.query("SELECT rule_id FROM list_query_denials()")["rule_id"].tolist() == [rule_id]
    assert _remove(served, rule_id) == f"SUCCESS: removed rule {rule_id}"
    assert admin.query("SELECT 1 AS one")["one"][0] == 1


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM deny_queries('1 = 1', 'all')", "query deny rule must reference at least one match-context"),
        ("SELECT * FROM deny_queries('client', 'x')", "query deny rule must be a boolean expression, got string"),
        ("SELECT * FROM deny_queries('no_such = 1', 'x')", "No field named no_such"),
        ("SELECT * FROM deny_queries('client = ''a''', '  ')", "deny_queries: reason must not be empty"),
        ("SELECT * FROM deny_queries('client = ''a''')", "Missing 2nd argument, expected reason: String"),
        ("SELECT * FROM deny_queries('(SELECT 1) = 1', 'x')", "cannot hold a subquery"),
    ],
)
def test_bad_rules_are_invalid_arguments(served: SpanlakeServer, sql: str, message: str) -> None:
    code, text = _failure(lambda: micromegas_client(served).query(sql))
    assert code == "INVALID_ARGUMENT" and message in text, text
    assert micromegas_client(served).query("SELECT count(*) AS n FROM list_query_denials()")["n"][0] == 0


def test_remove_query_denial_names_bad_ids_and_readers_cannot_manage(served: SpanlakeServer) -> None:
    assert _remove(served, "not-a-uuid") == "ERROR: 'not-a-uuid' is not a valid rule id"
    reader = micromegas_client(served, READER_KEY)
    for sql in ("SELECT * FROM list_query_denials()", "SELECT * FROM deny_queries('client = ''a''', 'x')"):
        code, text = _failure(lambda s=sql: reader.query(s))
        assert code == "INVALID_ARGUMENT" and "not found" in text, text


def test_a_rule_written_elsewhere_applies_after_the_refresh(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server process's snapshot: stale until REFRESH_SECONDS, then the rule applies."""
    with local_lake(postgres, tmp_path) as local:
        here = local.lake.deny_list  # one list per lake, shared by its sessions
        elsewhere = query_denials.QueryDenyList(local.lake.loop, local.lake.pool)  # another process's snapshot
        attribution = {"client": "python", "sql": "SELECT 1", "sql_hash": sql_hash("SELECT 1")}
        assert elsewhere.check(attribution) is None
        rule_id = here.insert("client = 'python'", "maintenance", "admin")
        assert here.check(attribution).rule_id == rule_id
        assert elsewhere.check(attribution) is None  # its snapshot is not yet REFRESH_SECONDS old
        monkeypatch.setattr(query_denials, "REFRESH_SECONDS", 0.0)
        assert elsewhere.check(attribution).rule_id == rule_id
        assert elsewhere.check({**attribution, "client": None}) is None  # NULL never matches
        assert here.remove(str(rule_id)) == f"SUCCESS: removed rule {rule_id}"
        assert elsewhere.check(attribution) is None


def test_closing_the_lake_writes_the_hits_since_the_last_reload(postgres: PostgresServer, tmp_path: Path) -> None:
    database_url = postgres.new_database()
    attribution = {"client": "python", "sql": "SELECT 1", "sql_hash": sql_hash("SELECT 1")}
    with local_lake(postgres, tmp_path, database_url) as local:
        rule_id = local.lake.deny_list.insert("client = 'python'", "maintenance", "admin")
        assert local.lake.deny_list.check(attribution).rule_id == rule_id  # a hit, not yet written
        [rule] = local.lake.deny_list.rules()
        assert rule.last_hit_at is None
    with local_lake(postgres, tmp_path, database_url) as local:
        [rule] = local.lake.deny_list.rules()
        assert rule.rule_id == rule_id and rule.last_hit_at is not None
