"""Data isolation by audience through a running `spanlake serve`: two teams' telemetry, and what each
kind of key sees at every door (micromegas client, ADBC, web API, ingestion), with micromegas 0.32's
`WebClient` managing keys, grants and groups over HTTP. One server for the module."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import (
    PROJECT_ROOT,
    RUST_FIXTURES,
    PostgresServer,
    SpanlakeServer,
    http,
    post,
    query,
    running_server,
    wait_until,
)
from live_process import LiveProcess
from micromegas.cli import grants as grants_cli
from micromegas.cli import groups as groups_cli
from micromegas.web_client import WebClient
from served_support import ADMIN_KEY, EXPECTED, adbc_connect, micromegas_client
from test_ingestion_firehose import cloudwatch_logs, firehose
from web_support import WatchedPage, off_loop

from spanlake.lakehouse.migrate import available_migrations
from spanlake.server import firehose as firehose_routes
from spanlake.server import otlp
from spanlake.server.auth import hash_key
from spanlake.server.write_audience import scoped_otlp_block

TEAM_A_PROCESS = EXPECTED["process"]["process_info"]["process_id"]
UNKNOWN_ID = "0b9f6a52-1d3e-4c55-9a7e-3f0c2b6d8e41"
REVOCATION_SECONDS = 5
ACCESS_CONTROL_MIGRATION = 7


class StaticToken:
    """The auth provider `WebClient` asks for a bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self) -> str:
        return self.token


@dataclass
class TeamProcess(LiveProcess):
    """A live process posting with an ingestion key and the properties its client claims."""

    key: str = ""
    claimed: dict[str, str] = field(default_factory=dict)

    def _post(self, path: str, message: dict) -> None:
        if path == "/ingestion/insert_process":
            message = {**message, "properties": self.claimed}
        status, text = post(self.http_url + path, cbor2.dumps(message), {"Authorization": f"Bearer {self.key}"})
        if status != 200:
            raise RuntimeError(f"{path}: {status} {text!r}")


def otlp_logs(service: str, message: str) -> bytes:
    now = time.time_ns()
    return json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                    "scopeLogs": [{"logRecords": [{"timeUnixNano": str(now), "body": {"stringValue": message}}]}],
                }
            ]
        }
    ).encode()


def api(server: SpanlakeServer, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    status, text = http(method, server.http_url + path, data, headers)
    return status, json.loads(text) if text else None


class Lab:
    """The module's server, its teams' processes and keys."""

    def __init__(self, server: SpanlakeServer) -> None:
        self.server = server
        self.admin = WebClient(server.http_url, auth_provider=StaticToken(ADMIN_KEY))
        self.keys: dict[str, dict[str, Any]] = {}

    def mint_ingestion(self, name: str, audience: str, **extra: Any) -> str:
        minted = self.admin.mint_ingestion_api_key(name, audience=audience, **extra)
        self.keys[name] = minted
        return minted["key"]

    def mint_analytics(self, name: str, read_audiences: list[str], **extra: Any) -> str:
        status, minted = api(
            self.server,
            "POST",
            "/api/analytics-api-keys",
            ADMIN_KEY,
            {"name": name, "read_audiences": read_audiences, **extra},
        )
        assert status == 201, minted
        self.keys[name] = minted
        return minted["key"]


@pytest.fixture(scope="module")
def lab(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp_path = tmp_path_factory.mktemp("access")
    keys = json.dumps([{"name": "admin", "key": ADMIN_KEY}])
    extra_env = {"SPANLAKE_API_KEYS": keys, "SPANLAKE_ADMINS": "admin"}
    with running_server(postgres, tmp_path, extra_env=extra_env) as server:
        lab = Lab(server)
        key_a, key_b = lab.mint_ingestion("team-a-ingest", "team-a"), lab.mint_ingestion("team-b-ingest", "team-b")
        for step in EXPECTED["upload_sequence"]:
            body = (RUST_FIXTURES / step["file"]).read_bytes()
            status, text = post(server.http_url + step["endpoint"], body, {"Authorization": f"Bearer {key_a}"})
            assert status == 200, (step, text)
        claimed = {"micromegas.audience": "team-a", "Micromegas.Owner": "x", "team": "b"}
        team_b = TeamProcess(server.http_url, key=key_b, claimed=claimed)
        team_b.announce()
        for number in range(2):
            team_b.post_block(number)
        headers = {"Authorization": f"Bearer {key_b}", "Content-Type": "application/json"}
        assert (
            post(server.http_url + "/ingestion/otlp/v1/logs", otlp_logs("team-b-svc", "b says hi"), headers)[0] == 200
        )
        lab.team_b = team_b.process_id
        lab.key_a, lab.key_b = key_a, key_b
        lab.reader_a = lab.mint_analytics("reader-a", ["team-a"])
        lab.reader_b = lab.mint_analytics("reader-b", ["team-b"])
        client = micromegas_client(server)
        wait_until(
            lambda: (
                client.query("SELECT count(DISTINCT process_id) AS n FROM log_entries")["n"][0] == 2
                and client.query("SELECT count(*) AS n FROM processes")["n"][0] == 3
            ),
            60,
            "the daemon to materialize both teams' processes and logs",
        )
        yield lab


def processes_seen(server: SpanlakeServer, key: str) -> set[str]:
    return set(micromegas_client(server, key).query("SELECT process_id FROM processes")["process_id"])


def test_ingestion_stamps_the_key_audience_and_strips_claimed_ones(lab: Lab) -> None:
    rows = micromegas_client(lab.server).query(
        "SELECT process_id, exe, property_get(properties, 'micromegas.audience') AS audience,"
        " properties_length(properties) AS n FROM processes ORDER BY exe"
    )
    audiences = dict(zip(rows["process_id"], rows["audience"], strict=True))
    assert audiences[TEAM_A_PROCESS] == "team-a"
    assert audiences[lab.team_b] == "team-b"  # it claimed team-a: stripped, stamped by its key
    team_b_row = rows[rows["process_id"] == lab.team_b]
    assert int(team_b_row["n"].iloc[0]) == 2  # `team` kept, `Micromegas.Owner` stripped, the stamp added
    otlp = [pid for pid in audiences if pid not in (TEAM_A_PROCESS, lab.team_b)]
    assert [audiences[pid] for pid in otlp] == ["team-b"]


def test_each_reader_sees_its_team_only_at_every_query_door(lab: Lab) -> None:
    all_three = processes_seen(lab.server, ADMIN_KEY)
    team_b = all_three - {TEAM_A_PROCESS}
    assert len(all_three) == 3
    assert processes_seen(lab.server, lab.reader_a) == {TEAM_A_PROCESS}
    assert processes_seen(lab.server, lab.reader_b) == team_b
    count_logs = "SELECT count(*) AS n, count(DISTINCT process_id) AS p FROM log_entries"
    admin_logs = micromegas_client(lab.server).query(count_logs)
    a_logs = micromegas_client(lab.server, lab.reader_a).query(count_logs)
    b_logs = micromegas_client(lab.server, lab.reader_b).query(count_logs)
    assert a_logs["n"][0] > 0 and a_logs["p"][0] == 1
    assert b_logs["n"][0] == 1 and b_logs["p"][0] == 1  # the OTLP log line
    assert admin_logs["n"][0] == a_logs["n"][0] + b_logs["n"][0]
    with adbc_connect(lab.server, lab.reader_b) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT DISTINCT process_id FROM blocks")
        assert {row[0] for row in cursor.fetchall()} == team_b
        cursor.execute(f"SELECT count(*) FROM streams WHERE process_id = '{TEAM_A_PROCESS}'")
        assert cursor.fetchall() == [(0,)]


def flight_error(server: SpanlakeServer, key: str, sql: str) -> str:
    """The error's message, without its query id."""
    with pytest.raises(pa.ArrowException) as raised:
        micromegas_client(server, key).query(sql)
    return str(raised.value).split(" (query_id=")[0]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM view_instance('log_entries', '{id}')",
        "SELECT * FROM view_instance('async_events', '{id}')",
        "SELECT * FROM perfetto_trace_chunks('{id}', 'both', now() - interval '30 days', now())",
    ],
)
def test_another_audience_id_answers_as_an_unknown_id(lab: Lab, sql: str) -> None:
    denied = flight_error(lab.server, lab.reader_b, sql.format(id=TEAM_A_PROCESS))
    unknown = flight_error(lab.server, lab.reader_b, sql.format(id=UNKNOWN_ID))
    assert TEAM_A_PROCESS in denied
    assert denied == unknown.replace(UNKNOWN_ID, TEAM_A_PROCESS)
    micromegas_client(lab.server, lab.reader_a).query(sql.format(id=TEAM_A_PROCESS))  # its own team: fine


def test_list_partitions_names_no_other_audience_process(lab: Lab) -> None:
    listed = "SELECT DISTINCT view_instance_id FROM list_partitions()"
    micromegas_client(lab.server, lab.reader_a).query(
        f"SELECT count(*) FROM view_instance('log_entries', '{TEAM_A_PROCESS}')"
    )
    by_admin = set(micromegas_client(lab.server).query(listed)["view_instance_id"])
    by_b = set(micromegas_client(lab.server, lab.reader_b).query(listed)["view_instance_id"])
    assert TEAM_A_PROCESS in by_admin and "global" in by_b
    assert TEAM_A_PROCESS not in by_b


def test_block_functions_refuse_another_audience_as_unknown(lab: Lab) -> None:
    admin = micromegas_client(lab.server)
    block = admin.query(f"SELECT block_id, stream_id FROM blocks WHERE process_id = '{TEAM_A_PROCESS}' LIMIT 1")
    block_id, stream_id = block["block_id"][0], block["stream_id"][0]
    parse = "SELECT count(*) AS n FROM parse_block('{id}')"
    assert micromegas_client(lab.server, lab.reader_a).query(parse.format(id=block_id))["n"][0] > 0
    denied = flight_error(lab.server, lab.reader_b, parse.format(id=block_id))
    assert denied == flight_error(lab.server, lab.reader_b, parse.format(id=UNKNOWN_ID)).replace(UNKNOWN_ID, block_id)
    payload = f"SELECT get_payload('{TEAM_A_PROCESS}', '{stream_id}', '{{id}}') AS p"
    assert len(micromegas_client(lab.server, lab.reader_a).query(payload.format(id=block_id))["p"][0]) > 0
    denied = flight_error(lab.server, lab.reader_b, payload.format(id=block_id))
    unknown = flight_error(lab.server, lab.reader_b, payload.format(id=UNKNOWN_ID))
    assert "no payload stored for block" in denied and denied == unknown.replace(UNKNOWN_ID, block_id)
    spans = "SELECT count(*) AS n FROM process_spans('{id}', 'both')"
    assert micromegas_client(lab.server, lab.reader_a).query(spans.format(id=TEAM_A_PROCESS))["n"][0] > 0
    assert micromegas_client(lab.server, lab.reader_b).query(spans.format(id=TEAM_A_PROCESS))["n"][0] == 0


def test_web_api_refuses_another_audience_as_unknown(lab: Lab) -> None:
    def get(path: str, key: str) -> tuple[int, bytes]:
        return http("GET", lab.server.http_url + path, None, {"Authorization": f"Bearer {key}"})

    status, answer = api(lab.server, "POST", "/api/sql", lab.reader_a, {"sql": "SELECT process_id FROM processes"})
    assert status == 200 and answer["row_count"] == 1 and TEAM_A_PROCESS in json.dumps(answer["rows"])
    mine = get(f"/api/process/{TEAM_A_PROCESS}/async-spans", lab.reader_a)
    assert mine[0] == 200
    denied = get(f"/api/process/{TEAM_A_PROCESS}/async-spans", lab.reader_b)
    unknown = get(f"/api/process/{UNKNOWN_ID}/async-spans", lab.reader_b)
    assert denied[0] == unknown[0] != 200
    assert denied[1] == unknown[1].replace(UNKNOWN_ID.encode(), TEAM_A_PROCESS.encode())
    denied = get(f"/api/perfetto/{TEAM_A_PROCESS}", lab.reader_b)
    unknown = get(f"/api/perfetto/{UNKNOWN_ID}", lab.reader_b)
    assert denied[0] == unknown[0] != 200
    assert denied[1] == unknown[1].replace(UNKNOWN_ID.encode(), TEAM_A_PROCESS.encode())


def test_keys_work_on_their_own_surface_only(lab: Lab) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        micromegas_client(lab.server, lab.key_a).query("SELECT 1")
    body = (RUST_FIXTURES / "process.cbor").read_bytes()
    status, _ = post(
        lab.server.http_url + "/ingestion/insert_process", body, {"Authorization": f"Bearer {lab.reader_a}"}
    )
    assert status == 401
    assert http("GET", lab.server.http_url + "/api/groups", None, {"Authorization": f"Bearer {lab.key_a}"})[0] == 401


def test_streams_and_blocks_cannot_enter_another_audience_process(lab: Lab) -> None:
    intruder = TeamProcess(lab.server.http_url, process_id=TEAM_A_PROCESS, key=lab.key_b)
    with pytest.raises(RuntimeError, match=r"400.*belongs to another audience"):
        intruder.announce()  # the process row exists (team A's): its stream is refused
    with pytest.raises(RuntimeError, match=r"400.*belongs to another audience"):
        intruder.post_block(0)


def test_a_block_on_a_known_stream_of_another_audience_is_refused(lab: Lab) -> None:
    """Team A's stream and process are known (cached by ingestion): team B's key still cannot add a block."""
    step = next(s for s in EXPECTED["upload_sequence"] if s["endpoint"] == "/ingestion/insert_block")
    block_id = uuid.uuid4()
    body = cbor2.dumps(cbor2.loads((RUST_FIXTURES / step["file"]).read_bytes()) | {"block_id": str(block_id)})
    headers = {"Authorization": f"Bearer {lab.key_b}"}
    for _ in range(2):
        status, text = post(lab.server.http_url + "/ingestion/insert_block", body, headers)
        assert (status, b"belongs to another audience" in text) == (400, True), text
    assert lab.server.sql("SELECT count(*) AS n FROM blocks WHERE block_id = $1", block_id) == [{"n": 0}]


def test_non_admins_cannot_manage_access(lab: Lab) -> None:
    reader = WebClient(lab.server.http_url, auth_provider=StaticToken(lab.reader_a))
    with pytest.raises(RuntimeError, match="HTTP 403"):
        reader.list_groups()
    with pytest.raises(RuntimeError, match="HTTP 403"):
        reader.mint_ingestion_api_key("sneaky", audience="team-b")
    mine = reader.my_audiences()
    assert mine["is_admin"] is False and mine["audiences"] == []


def test_revoked_keys_stop_within_five_seconds(lab: Lab) -> None:
    reader = lab.mint_analytics("short-lived-reader", ["team-a"])
    writer = lab.mint_ingestion("short-lived-writer", "team-a")
    assert processes_seen(lab.server, reader) == {TEAM_A_PROCESS}
    body = (RUST_FIXTURES / "process.cbor").read_bytes()
    insert = lab.server.http_url + "/ingestion/insert_process"
    assert post(insert, body, {"Authorization": f"Bearer {writer}"})[0] == 200
    for name, kind in (("short-lived-reader", "analytics-api-keys"), ("short-lived-writer", "ingestion-api-keys")):
        status, answer = api(lab.server, "DELETE", f"/api/{kind}/{lab.keys[name]['key_id']}", ADMIN_KEY)
        assert status == 200 and answer["revoked_at"]
    revoked_at = time.monotonic()

    def refused_everywhere() -> bool:
        try:
            micromegas_client(lab.server, reader).query("SELECT 1")
            return False
        except flight.FlightUnauthenticatedError:
            pass
        web = http("GET", lab.server.http_url + "/api/health", None, {"Authorization": f"Bearer {reader}"})[0]
        groups = http(
            "GET",
            lab.server.http_url + "/api/audience-grants/my-audiences",
            None,
            {"Authorization": f"Bearer {reader}"},
        )[0]
        return (
            groups == 401 and post(insert, body, {"Authorization": f"Bearer {writer}"})[0] == 401 and web in (200, 401)
        )

    wait_until(refused_everywhere, REVOCATION_SECONDS + 1, "revoked keys to be refused on every door")
    assert time.monotonic() - revoked_at <= REVOCATION_SECONDS + 1
    listed = {k["name"]: k for k in lab.admin.list_ingestion_api_keys()}
    assert listed["short-lived-writer"]["revoked_at"] is not None and "key_hash" not in listed["short-lived-writer"]
    assert listed["team-a-ingest"]["revoked_at"] is None and listed["team-a-ingest"]["audience"] == "team-a"


def test_a_key_from_a_refused_network_is_invalid(lab: Lab) -> None:
    reader = lab.mint_analytics("fenced-reader", ["team-a"], allowed_cidrs=["10.0.0.0/8"])
    writer = lab.mint_ingestion("fenced-writer", "team-a", allowed_cidrs=["192.168.7.7"])
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid API key"):
        micromegas_client(lab.server, reader).query("SELECT 1")
    with (
        adbc_connect(lab.server, reader) as conn,
        conn.cursor() as cursor,
        pytest.raises(Exception, match="invalid API key"),
    ):
        cursor.execute("SELECT 1")
    web = http(
        "GET", lab.server.http_url + "/api/audience-grants/my-audiences", None, {"Authorization": f"Bearer {reader}"}
    )
    assert web[0] == 401
    body = (RUST_FIXTURES / "process.cbor").read_bytes()
    insert = lab.server.http_url + "/ingestion/insert_process"
    assert post(insert, body, {"Authorization": f"Bearer {writer}"})[0] == 401
    answer = lab.admin.set_analytics_api_key_allowlist(lab.keys["fenced-reader"]["key_id"], ["127.0.0.0/8"])
    assert answer == {"allowed_cidrs": ["127.0.0.0/8"]}
    lab.admin.set_ingestion_api_key_allowlist(lab.keys["fenced-writer"]["key_id"], [])
    wait_until(
        lambda: post(insert, body, {"Authorization": f"Bearer {writer}"})[0] == 200,
        REVOCATION_SECONDS + 1,
        "the cleared allowlist",
    )
    wait_until(lambda: _queries(lab.server, reader), REVOCATION_SECONDS + 1, "the widened allowlist")
    with pytest.raises(RuntimeError, match="HTTP 400"):
        lab.admin.set_ingestion_api_key_allowlist(lab.keys["fenced-writer"]["key_id"], ["not-a-network"])
    with pytest.raises(RuntimeError, match="HTTP 404"):
        lab.admin.set_ingestion_api_key_allowlist(str(uuid.uuid4()), [])


def _queries(server: SpanlakeServer, key: str) -> bool:
    try:
        micromegas_client(server, key).query("SELECT 1")
    except flight.FlightUnauthenticatedError:
        return False
    return True


def test_grants_and_groups_widen_and_narrow_reads_within_five_seconds(lab: Lab) -> None:
    reader = lab.mint_analytics("grantee", [])
    assert processes_seen(lab.server, reader) == set()
    grant = lab.admin.create_audience_grant("team-a", "read", "group:auditors")
    assert (grant["audience"], grant["axis"], grant["selector"]) == ("team-a", "read", "group:auditors")
    assert lab.admin.create_group("auditors", description="read team A")["member_count"] == 0
    with pytest.raises(RuntimeError, match="HTTP 409"):
        lab.admin.create_group("auditors")
    assert lab.admin.add_group_member("auditors", "user:grantee")["member"] == "user:grantee"
    wait_until(lambda: processes_seen(lab.server, reader) == {TEAM_A_PROCESS}, REVOCATION_SECONDS + 1, "the grant")
    assert [m["member"] for m in lab.admin.list_group_members("auditors")] == ["user:grantee"]
    assert {g["name"]: g["member_count"] for g in lab.admin.list_groups()}["auditors"] == 1
    with pytest.raises(RuntimeError, match="HTTP 409"):
        lab.admin.delete_group("auditors")  # the grant still names it
    with pytest.raises(RuntimeError, match="HTTP 409"):
        lab.admin.delete_group("admins")
    lab.admin.delete_audience_grant("team-a", "read", "group:auditors")
    with pytest.raises(RuntimeError, match="HTTP 404"):
        lab.admin.delete_audience_grant("team-a", "read", "group:auditors")
    wait_until(lambda: processes_seen(lab.server, reader) == set(), REVOCATION_SECONDS + 1, "the grant's removal")
    lab.admin.remove_group_member("auditors", "user:grantee")
    lab.admin.delete_group("auditors")
    assert "auditors" not in {g["name"] for g in lab.admin.list_groups()}


def test_admins_group_members_read_everything_and_mint_grants_show(lab: Lab) -> None:
    reader = lab.mint_analytics("promoted", ["team-b"])
    lab.admin.add_group_member("admins", "user:promoted")
    lab.admin.create_audience_grant("team-b", "mint", "user:promoted")
    wait_until(lambda: len(processes_seen(lab.server, reader)) == 3, REVOCATION_SECONDS + 1, "the admin membership")
    mine = WebClient(lab.server.http_url, auth_provider=StaticToken(reader)).my_audiences()
    assert mine["is_admin"] is True and mine["audiences"] == ["team-b"] and mine["groups"] == ["admins"]
    assert mine["held_pairs"] == ["team-b:mint"]
    lab.admin.remove_group_member("admins", "user:promoted")


def spanlake_cli(*args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")} | {
        "SPANLAKE_DATABASE_URL": database_url
    }
    command = [sys.executable, "-m", "spanlake.server.cli", *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_api_key_command_mints_scoped_keys(lab: Lab) -> None:
    made = spanlake_cli(
        "api-key", "cli-reader", "--read-audiences", "team-b,other", database_url=lab.server.database_url
    )
    assert made.returncode == 0, made.stderr
    assert "analytics key reading team-b, other" in made.stderr
    assert processes_seen(lab.server, made.stdout.strip()) == processes_seen(lab.server, lab.reader_b)
    made = spanlake_cli("api-key", "cli-writer", "--audience", "team-c", database_url=lab.server.database_url)
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.strip()}", "Content-Type": "application/json"}
    assert post(lab.server.http_url + "/ingestion/otlp/v1/logs", otlp_logs("team-c-svc", "c"), headers)[0] == 200
    assert "team-c" in {k["audience"] for k in lab.admin.list_ingestion_api_keys(include_revoked=False)}
    bad = spanlake_cli("api-key", "x", "--audience", "no spaces", database_url=lab.server.database_url)
    assert bad.returncode == 2 and "invalid audience" in bad.stderr


def test_a_database_from_before_access_control_upgrades_with_its_keys(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.new_database()
    legacy_key = "legacy-key-0123456789"

    async def schema_before_access_control() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE spanlake_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            for migration in [m for m in available_migrations() if m.version < ACCESS_CONTROL_MIGRATION]:
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO spanlake_migrations VALUES ($1, $2)", migration.version, migration.name)
            await conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, name) VALUES ($1, $2, 'old-reader')",
                uuid.uuid4(),
                hash_key(legacy_key),
            )
        finally:
            await conn.close()

    asyncio.run(schema_before_access_control())
    server = SpanlakeServer(database_url=url, data_dir=tmp_path / "data", object_store_uri=(tmp_path / "lake").as_uri())
    server.start()
    try:
        for step in EXPECTED["upload_sequence"]:  # the old key still writes (unstamped) ...
            body = (RUST_FIXTURES / step["file"]).read_bytes()
            assert post(server.http_url + step["endpoint"], body, {"Authorization": f"Bearer {legacy_key}"})[0] == 200
        client = micromegas_client(server, legacy_key)  # ... and still reads everything
        wait_until(
            lambda: len(client.query("SELECT process_id FROM processes")) == 1, 60, "the upgraded lake's process"
        )
        rows = client.query(f"SELECT count(*) AS n FROM view_instance('log_entries', '{TEAM_A_PROCESS}')")
        assert rows["n"][0] > 0
        versions = [r["version"] for r in query(url, "SELECT version FROM spanlake_migrations ORDER BY version")]
        assert ACCESS_CONTROL_MIGRATION in versions
    finally:
        server.stop()


CLI_MAINS = {"micromegas-grants": grants_cli.main, "micromegas-groups": groups_cli.main}


def test_micromegas_grants_and_groups_clis_manage_a_spanlake(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # micromegas 0.32's CLIs, unchanged, run in-process (their entry points; a process each costs seconds).
    # No profile and no OIDC variables: no auth, so the server is a loopback one without keys.
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MICROMEGAS_OIDC_ISSUER", "MICROMEGAS_OIDC_CLIENT_ID", "MICROMEGAS_OIDC_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with running_server(postgres, tmp_path) as server:

        def cli(tool: str, *args: str) -> tuple[int, str, str]:
            monkeypatch.setattr(sys, "argv", [tool, "--url", server.http_url, *args])
            try:
                CLI_MAINS[tool]()
                code = 0
            except SystemExit as exit_:
                code = exit_.code
            out = capsys.readouterr()
            return code, out.out.strip(), out.err

        def run(tool: str, *args: str) -> str:
            code, out, err = cli(tool, *args)
            assert code == 0, err
            return out

        assert run("micromegas-groups", "create", "sre", "--description", "on call").startswith("sre (created_by=")
        assert run("micromegas-groups", "add", "sre", "user:alice") == "sre += user:alice"
        assert run("micromegas-groups", "members", "sre").startswith("user:alice (created_by=")
        assert "sre (1 members) -- on call" in run("micromegas-groups", "list")
        assert run("micromegas-grants", "create", "team-a", "read", "group:sre").startswith("team-a read group:sre")
        code, _, err = cli("micromegas-groups", "delete", "sre")
        assert code == 1 and "HTTP 409" in err and "grant team-a:read" in err
        assert run("micromegas-grants", "delete", "team-a", "read", "group:sre") == "Deleted: team-a read group:sre"
        code, _, err = cli("micromegas-grants", "delete", "team-a", "read", "group:sre")
        assert code == 1 and "HTTP 404" in err
        assert run("micromegas-groups", "remove", "sre", "user:alice") == "sre -= user:alice"
        assert run("micromegas-groups", "delete", "sre") == "Deleted: sre"
        assert "sre" not in run("micromegas-groups", "list")


def test_a_reader_signed_in_with_chromium_sees_its_team_only(lab: Lab, watched: WatchedPage) -> None:
    page, url = watched.page, lab.server.http_url
    watched.expect_error("404")  # the process pages refused below
    page.goto(url + "/")
    page.fill("input[name=key]", lab.reader_b)
    page.click("form.login button")
    page.wait_for_url(url + "/")
    listed = set(page.locator("a.pid").all_inner_texts())
    assert lab.team_b in listed and TEAM_A_PROCESS not in listed and len(listed) == 2
    denied = page.goto(f"{url}/process/{TEAM_A_PROCESS}")
    denied_text = page.inner_text("main")
    unknown = page.goto(f"{url}/process/{UNKNOWN_ID}")
    assert denied.status == unknown.status == 404
    assert denied_text == page.inner_text("main").replace(UNKNOWN_ID, TEAM_A_PROCESS)
    assert page.goto(f"{url}/process/{lab.team_b}").status == 200


def test_the_access_page_mints_revokes_and_grants(lab: Lab, watched: WatchedPage) -> None:
    page, url = watched.page, lab.server.http_url
    watched.expect_error("403")  # a reader's visit
    watched.expect_error("400")  # the refused audience
    page.goto(url + "/login")
    page.fill("input[name=key]", lab.reader_a)
    page.click("form.login button")
    assert page.goto(url + "/access").status == 403  # readers: no
    page.goto(url + "/login")
    page.fill("input[name=key]", ADMIN_KEY)
    page.click("form.login button")
    page.goto(url + "/access")
    assert "team-a-ingest" in page.inner_text("#ingestion-keys")
    page.fill("#mint-analytics input[name=name]", "page-reader")
    page.fill("#mint-analytics input[name=scope]", "team-b")
    page.click("#mint-analytics button")
    minted = page.inner_text("#minted-key")
    assert processes_seen(lab.server, minted) == processes_seen(lab.server, lab.reader_b)
    assert "page-reader" in page.inner_text("#analytics-keys")
    page.fill("#grant input[name=audience]", "team-a")
    page.fill("#grant input[name=selector]", "user:page-reader")
    page.click("#grant button")
    assert "user:page-reader" in page.inner_text("#grants")
    wait_until(lambda: len(processes_seen(lab.server, minted)) == 3, REVOCATION_SECONDS + 1, "the page's grant")
    page.click("#analytics-keys tr:has-text('page-reader') button")
    assert "page-reader" in page.inner_text("#analytics-keys") and page.locator("#minted").count() == 0
    wait_until(lambda: not _queries(lab.server, minted), REVOCATION_SECONDS + 1, "the page's revocation")
    page.fill("#grant input[name=audience]", "not an audience")
    page.fill("#grant input[name=selector]", "*")
    page.click("#grant button")
    assert "invalid audience" in page.inner_text("#error")


def test_otlp_ids_are_folded_with_the_audience() -> None:
    (block,) = otlp.blocks_from_request("logs", otlp_logs("same-svc", "hi"), "application/json", None, 100)
    for_a, again_a, for_b = (scoped_otlp_block(block, audience) for audience in ("team-a", "team-a", "team-b"))
    assert for_a == again_a  # deterministic: a retried export stores nothing new
    ids = [(b.process.process_id, b.stream.stream_id, b.block.block_id) for b in (block, for_a, for_b)]
    assert len({i for triple in ids for i in triple}) == 9
    assert (for_a.stream.process_id, for_a.block.process_id, for_a.block.stream_id) == ids[1][:1] * 2 + ids[1][1:2]
    assert for_a.process.properties["micromegas.audience"] == "team-a"
    assert scoped_otlp_block(block, None).block == block.block  # unstamped: micromegas's own ids


def test_the_webhook_route_stamps_its_key_audience(lab: Lab) -> None:
    hook_key = lab.mint_ingestion("hook-writer", "team-d")
    headers = {"Authorization": f"Bearer {hook_key}", "X-Micromegas-Service-Name": "hook-svc"}
    assert post(lab.server.http_url + "/ingestion/webhook", b"deployed", headers)[0] == 200
    sql = "SELECT spanlake_audience(properties) AS audience FROM processes WHERE exe = 'hook-svc'"
    rows = off_loop(query, lab.server.database_url, sql)  # off playwright's loop (the Chromium tests)
    assert [r["audience"] for r in rows] == ["team-d"]


def test_the_firehose_routes_stamp_their_key_audience(lab: Lab) -> None:
    firehose_key = lab.mint_ingestion("firehose-writer", "team-e")
    events = [(str(uuid.uuid4()), int(time.time() * 1000), "from cloudwatch")]
    status, _ = firehose(lab.server, firehose_routes.LOGS_PATH, [cloudwatch_logs("/team-e", events)], key=firehose_key)
    assert status == 200
    sql = "SELECT count(*) AS n FROM processes WHERE spanlake_audience(properties) = 'team-e'"
    assert off_loop(query, lab.server.database_url, sql) == [{"n": 1}]
    status, _ = firehose(lab.server, firehose_routes.LOGS_PATH, [cloudwatch_logs("/x", events)], key=lab.reader_a)
    assert status == 401  # an analytics key does not write
