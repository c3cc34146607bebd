"""Every door of the query runner answers the same hostile SQL the same way: Flight SQL, the web UI's
`/api/sql`, `/api/query-stream`, the `/sql` page in Chromium, the Perfetto download, on a running
`spanlake serve` and on a `spanlake web` alone (a non-admin key). Too big or too deep → 400 /
INVALID_ARGUMENT naming the setting; a denied query → the denial (403 on the web); past the time limit
→ 504 / DEADLINE_EXCEEDED; a client that leaves → the query stops (CPU idle, audit "cancelled") while
ingestion keeps answering; a stalled request body → 408 and the connection closed."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import datafusion
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, http, post, running_server, wait_idle, wait_until
from plan_shape_support import set_operations
from test_flightsql_support import grpc_status, statement_ticket
from web_support import RUST_PROCESS_ID, Browser, upload_rust_fixture, watched_page

from spanlake.lakehouse.errors import is_storage_failure
from spanlake.lakehouse.query.failures import Code, Failure, classify
from spanlake.lakehouse.query.runner import QueryRequest, QueryRunner
from spanlake.lakehouse.query.session import session_config

ADMIN_KEY = "admin-key-for-the-door-tests"
VIEWER_KEY = "viewer-key-for-the-door-tests"
KEYS = json.dumps([{"name": "admin", "key": ADMIN_KEY}, {"name": "viewer", "key": VIEWER_KEY}])
TIMEOUT_SECONDS = 6
BODY_TIMEOUT_SECONDS = 2
STOP_SECONDS = 10
ENDLESS = "SELECT sum(a.value * b.value) AS s FROM range(10) a CROSS JOIN range(1000000000000000) b"
TEN_THOUSAND_TERMS = "SELECT " + "+".join(["1"] * 10_000)
TWO_MEGABYTES = "SELECT 1 AS x -- " + "x" * 2_000_000
TEN_THOUSAND_UNIONS = set_operations(10_000)
WEB_DOORS = ("api_sql", "query_stream")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _env(**extra: str) -> dict[str, str]:
    return {
        "SPANLAKE_API_KEYS": KEYS,
        "SPANLAKE_ADMINS": "admin",
        "SPANLAKE_LOG_LEVEL": "DEBUG",  # the audit lines reach the log at DEBUG only
        "SPANLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "SPANLAKE_REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_SECONDS),
        **extra,
    }


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("doors"), extra_env=_env()) as running:
        upload_rust_fixture(running.http_url, bearer(ADMIN_KEY))
        sql = f"SELECT process_id FROM processes WHERE process_id = '{RUST_PROCESS_ID}'"
        wait_until(lambda: len(_flight(running, sql, ADMIN_KEY)) == 1, 30, "the fixture in the processes view")
        yield running


@pytest.fixture(scope="module")
def web_alone(server: SpanlakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    """`spanlake web` on the same database and object store: the web role alone."""
    web = SpanlakeServer(
        database_url=server.database_url,
        data_dir=tmp_path_factory.mktemp("doors-web"),
        object_store_uri=server.object_store_uri,
        command="web",
        extra_env=_env(),
    )
    web.start()
    try:
        yield web
    finally:
        web.stop()


# ------------------------------------------------------------------------------------------------
# the doors


def _flight(server: SpanlakeServer, sql: str, key: str, timeout: float | None = None) -> list[dict]:
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {key}".encode())], timeout=timeout)
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket(sql), options).read_all().to_pylist()


def _flight_refusal(server: SpanlakeServer, sql: str, key: str) -> tuple[str | None, str]:
    with pytest.raises(pa.ArrowException) as caught:
        _flight(server, sql, key)
    return grpc_status(caught.value)


def _api_sql(server: SpanlakeServer, sql: str, key: str, timeout: float = 30) -> tuple[int, dict]:
    body = json.dumps({"sql": sql}).encode()
    status, answer = post(server.http_url + "/api/sql", body, {"Content-Type": "application/json", **bearer(key)})
    return status, json.loads(answer)


def _query_stream(server: SpanlakeServer, sql: str, key: str) -> tuple[int, list[dict]]:
    """The status and the JSON header lines (the Arrow bytes between them skipped)."""
    status, body = post(server.http_url + "/api/query-stream", json.dumps({"sql": sql}).encode(), bearer(key))
    frames, at = [], 0
    while at < len(body):
        newline = body.find(b"\n", at)
        newline = len(body) if newline < 0 else newline
        frames.append(json.loads(body[at:newline]))
        at = newline + 1 + frames[-1].get("size", 0)
    return status, frames


def _web_refusal(server: SpanlakeServer, door: str, sql: str, key: str) -> tuple[int, str, str | None]:
    """(HTTP status, message, query-stream error code) of a refused query."""
    if door == "api_sql":
        status, answer = _api_sql(server, sql, key)
        return status, answer["error"], None
    status, frames = _query_stream(server, sql, key)
    [error] = [frame for frame in frames if frame["type"] == "error"]
    return status, error["message"], error["code"]


def _audit(server: SpanlakeServer, rpc: str) -> list[dict]:
    lines = server.log_text().splitlines()
    records = [json.loads(line[line.index("{") :]) for line in lines if "flightsql_query_audit" in line]
    return [record for record in records if record["rpc"] == rpc]


def _serves(server: SpanlakeServer) -> bool:
    status, answer = _api_sql(server, "SELECT 41 + 1 AS answer", VIEWER_KEY)
    return status == 200 and answer["rows"] == [[42]]


# ------------------------------------------------------------------------------------------------
# SQL too deep or too big: refused before any planner, by every door


@pytest.mark.parametrize(
    ("sql", "setting"),
    [
        (TEN_THOUSAND_TERMS, "SPANLAKE_MAX_SQL_DEPTH"),
        (TWO_MEGABYTES, "SPANLAKE_MAX_SQL_BYTES"),
        (TEN_THOUSAND_UNIONS, "SPANLAKE_MAX_SQL_JOINS"),
    ],
)
def test_sql_over_the_limits_is_refused_by_every_door(
    server: SpanlakeServer, web_alone: SpanlakeServer, sql: str, setting: str
) -> None:
    code, message = _flight_refusal(server, sql, VIEWER_KEY)
    assert code == "INVALID_ARGUMENT" and setting in message, message
    for running in (server, web_alone):
        for door in WEB_DOORS:
            status, message, frame_code = _web_refusal(running, door, sql, VIEWER_KEY)
            assert (status, setting in message, frame_code) == (400, True, "INVALID_SQL" if frame_code else None)
            assert len(message) < 2000, message  # the SQL is not echoed
        assert _serves(running)
    records = _audit(web_alone, "web.sql")
    assert records[-2]["status"] == "error" and records[-2]["error_class"] == "user"
    assert (records[-2]["user"], records[-2]["client"]) == ("viewer", "web")


# ------------------------------------------------------------------------------------------------
# the deny list


def _deny(server: SpanlakeServer, match_expr: str) -> str:
    quoted = match_expr.replace("'", "''")
    [row] = _flight(server, f"SELECT msg FROM deny_queries('{quoted}', 'door tests')", ADMIN_KEY)
    return row["msg"]


def _lift(server: SpanlakeServer, rule_id: str) -> None:
    [row] = _flight(server, f"SELECT remove_query_denial('{rule_id}') AS m", ADMIN_KEY)
    assert row["m"].startswith("SUCCESS"), row


def test_a_denied_query_is_refused_by_every_door(server: SpanlakeServer, web_alone: SpanlakeServer) -> None:
    rule_id = _deny(server, "user_id = 'viewer' AND sql LIKE '%denied_by_the_doors_test%'")
    sql = "SELECT 1 AS denied_by_the_doors_test"
    denial = re.compile(rf"query denied by rule {rule_id} \(reason: door tests\).*query_id=[0-9a-f-]{{36}}")
    try:
        code, message = _flight_refusal(server, sql, VIEWER_KEY)
        assert code == "INVALID_ARGUMENT" and denial.search(message), message
        for door in WEB_DOORS:
            status, message, frame_code = _web_refusal(server, door, sql, VIEWER_KEY)
            assert status == 403 and frame_code in (None, "FORBIDDEN") and denial.search(message), message
        # Another process of the lake applies the rule within the deny list's refresh (10 s).
        wait_until(lambda: _api_sql(web_alone, sql, VIEWER_KEY)[0] == 403, 20, "the rule on `spanlake web`")
        status, message, frame_code = _web_refusal(web_alone, "query_stream", sql, VIEWER_KEY)
        assert (status, frame_code) == (403, "FORBIDDEN") and denial.search(message), message
        assert _api_sql(server, sql, ADMIN_KEY)[0] == 200  # the rule names the viewer only
        [record] = [r for r in _audit(server, "web.query_stream") if "denied_by_the_doors_test" in r["sql"]]
        assert (record["status"], record["error_class"], record["client"]) == ("error", "denied", "web")
        assert record["peer"].startswith("ipv4:127.0.0.1:")
    finally:
        _lift(server, rule_id)


def test_a_rule_on_the_web_client_leaves_flight_sql_alone(server: SpanlakeServer) -> None:
    rule_id = _deny(server, "client = 'web' AND client_ip = '127.0.0.1' AND sql LIKE '%web_only_marker%'")
    sql = "SELECT 2 AS web_only_marker"
    try:
        assert _api_sql(server, sql, VIEWER_KEY)[0] == 403
        assert _flight(server, sql, VIEWER_KEY) == [{"web_only_marker": 2}]
    finally:
        _lift(server, rule_id)


def test_a_denied_perfetto_download_answers_the_denial(server: SpanlakeServer) -> None:
    rule_id = _deny(server, "user_id = 'viewer' AND sql LIKE '%perfetto_trace_chunks%'")
    url = server.http_url + f"/api/perfetto/{RUST_PROCESS_ID}"
    try:
        status, text = http("GET", url, headers=bearer(VIEWER_KEY))
        assert status == 403 and f"query denied by rule {rule_id}" in text.decode(), text[:300]
        status, trace = http("GET", url, headers=bearer(ADMIN_KEY))
        assert status == 200 and len(trace) > 10_000
        [denied] = [r for r in _audit(server, "web.perfetto") if r["status"] == "error"]
        assert (denied["error_class"], denied["user"]) == ("denied", "viewer")
    finally:
        _lift(server, rule_id)


# ------------------------------------------------------------------------------------------------
# time limit, clients that leave


def test_a_query_past_its_time_limit_stops_at_every_door(server: SpanlakeServer) -> None:
    limit_text = f"the query ran past its time limit of {TIMEOUT_SECONDS} s (SPANLAKE_QUERY_TIMEOUT_SECONDS)"
    started = time.monotonic()
    code, message = _flight_refusal(server, ENDLESS, VIEWER_KEY)
    assert code == "DEADLINE_EXCEEDED" and limit_text in message
    status, answer = _api_sql(server, ENDLESS, VIEWER_KEY)
    assert status == 504 and limit_text in answer["error"]
    status, frames = _query_stream(server, ENDLESS, VIEWER_KEY)
    assert status == 200 and frames[-1]["code"] == "TIMEOUT" and limit_text in frames[-1]["message"]
    assert time.monotonic() - started < 3 * (TIMEOUT_SECONDS + 3)
    wait_idle(server, within=STOP_SECONDS)


def _leave_after(seconds: float, server: SpanlakeServer, path: str) -> Callable[[], None]:
    """A client posting ENDLESS to `path` that closes its connection after `seconds`."""

    def run() -> None:
        request = urllib.request.Request(
            server.http_url + path, data=json.dumps({"sql": ENDLESS}).encode(), headers=bearer(VIEWER_KEY)
        )
        with pytest.raises(OSError), urllib.request.urlopen(request, timeout=seconds) as response:
            response.read()  # the socket's timeout: the client gives up and closes

    return run


@pytest.mark.parametrize(("path", "rpc"), [("/api/sql", "web.sql"), ("/api/query-stream", "web.query_stream")])
def test_a_query_whose_http_client_left_stops(server: SpanlakeServer, path: str, rpc: str) -> None:
    before = len(_audit(server, rpc))
    left_at = time.monotonic()
    _leave_after(1.5, server, path)()
    idle_after = wait_idle(server, within=STOP_SECONDS)
    assert idle_after < TIMEOUT_SECONDS - 1.5, "stopped by the time limit, not by the client leaving"
    wait_until(lambda: len(_audit(server, rpc)) > before, 5, "the audit record")
    [record] = _audit(server, rpc)[before:]
    assert record["status"] == "error" and record["error"].startswith("the client"), record
    assert record["total_ms"] < (time.monotonic() - left_at) * 1000
    assert _serves(server)


def test_six_abandoned_web_queries_leave_ingestion_answering(server: SpanlakeServer) -> None:
    clients = [threading.Thread(target=_leave_after(3, server, "/api/sql")) for _ in range(6)]
    for client in clients:
        client.start()
    time.sleep(1)
    started = time.monotonic()
    assert http("GET", server.http_url + "/ready") == (200, b"ready")  # the loop's default pool is free
    assert time.monotonic() - started < 2
    for client in clients:
        client.join(10)
    wait_idle(server, within=STOP_SECONDS)
    assert _serves(server)


# ------------------------------------------------------------------------------------------------
# request bodies that stop arriving


@pytest.mark.parametrize("path", ["/api/sql", "/api/query-stream"])
def test_a_stalled_body_is_answered_408_and_closed(
    server: SpanlakeServer, web_alone: SpanlakeServer, path: str
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {VIEWER_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    for running in (server, web_alone):
        with socket.create_connection(("127.0.0.1", running.http_port), timeout=BODY_TIMEOUT_SECONDS + 10) as sock:
            started = time.monotonic()
            sock.sendall(head.encode() + b'{"sql": "SELE')
            answer = b""
            while chunk := sock.recv(65536):  # ends when the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request body not received within 2 s" in answer
        assert BODY_TIMEOUT_SECONDS - 0.5 < time.monotonic() - started < BODY_TIMEOUT_SECONDS + 5


# ------------------------------------------------------------------------------------------------
# SIGTERM while web queries run


def test_sigterm_stops_the_server_during_endless_web_queries(postgres: PostgresServer, tmp_path: Path) -> None:
    with running_server(postgres, tmp_path, extra_env=_env(SPANLAKE_QUERY_TIMEOUT_SECONDS="0")) as busy:
        answers: list[int] = []
        clients = [threading.Thread(target=lambda: answers.append(http_status(busy, ENDLESS))) for _ in range(3)]
        for client in clients:
            client.start()
        time.sleep(1.5)
        assert busy.process is not None
        started = time.monotonic()
        busy.process.terminate()
        busy.process.wait(timeout=30)
        assert time.monotonic() - started < 15
        for client in clients:
            client.join(10)
        assert answers == [503, 503, 503]  # "the server is shutting down"


def http_status(server: SpanlakeServer, sql: str) -> int:
    """The status `/api/sql` answers for `sql` (0 when the connection broke)."""
    try:
        return _api_sql(server, sql, VIEWER_KEY)[0]
    except OSError:
        return 0


# ------------------------------------------------------------------------------------------------
# the runner itself, without a door


def test_the_runner_stops_its_queries_at_shutdown_and_refuses_new_ones() -> None:
    runner = QueryRunner(lambda _context: datafusion.SessionContext(session_config(split_inputs=True)))
    query = runner.open(QueryRequest("test", "test.query", ENDLESS, None), lambda: False)
    outcome: list[Failure] = []

    def run() -> None:
        try:
            query.run(lambda: query.collect(query.plan()))
        except Failure as failure:
            outcome.append(failure)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1)
    started = time.monotonic()
    runner.shutdown()
    worker.join(5)
    assert time.monotonic() - started < 2
    [stopped] = outcome
    assert stopped.code is Code.UNAVAILABLE and stopped.message.startswith("the server is shutting down")
    query.close()
    with pytest.raises(Failure) as refused:
        runner.open(QueryRequest("test", "test.query", "SELECT 1", None), lambda: False)
    assert refused.value.code is Code.UNAVAILABLE


# ------------------------------------------------------------------------------------------------
# one classification of storage failures


def test_storage_failures_are_one_classification() -> None:
    import asyncpg

    wrapped = Exception(
        "DataFusion error: External error: Execution error: PyErr { type: <class"
        " 'asyncpg.exceptions._base.InternalClientError'>, value: InternalClientError('terminated'), traceback: None }"
    )
    assert is_storage_failure(asyncpg.exceptions._base.InternalClientError("terminated"))
    assert is_storage_failure(wrapped) and is_storage_failure(ConnectionRefusedError())
    assert not is_storage_failure(ValueError("bad id")) and not is_storage_failure(KeyError("process"))
    failure = classify("error building dataframe", wrapped, "q1")
    assert (failure.code, failure.storage, failure.error_class) == (Code.UNAVAILABLE, True, "resource")


# ------------------------------------------------------------------------------------------------
# the SQL page in a browser (last: the harness cannot start PostgreSQL databases while it runs)


def _run_on_sql_page(page: object, server: SpanlakeServer, sql: str) -> str:
    page.goto(server.http_url + "/sql?" + urllib.parse.urlencode({"q": "SELECT 1"}))
    page.fill("#sql-text", sql)
    page.click("#run")
    page.locator("#sql-error").wait_for()
    return page.inner_text("#sql-error")


def test_the_sql_page_shows_the_refusals(server: SpanlakeServer, web_alone: SpanlakeServer, chrome: Browser) -> None:
    rule_id = _deny(server, "user_id = 'viewer' AND sql LIKE '%denied_on_the_sql_page%'")
    try:
        with watched_page(chrome) as watched:
            page = watched.page
            watched.expect_error("status of 400")
            watched.expect_error("status of 403")
            page.goto(web_alone.http_url + "/login")
            page.fill("input[name=key]", VIEWER_KEY)
            page.click("form.login button")
            page.wait_for_url(web_alone.http_url + "/")
            assert "SPANLAKE_MAX_SQL_DEPTH" in _run_on_sql_page(page, web_alone, TEN_THOUSAND_TERMS)
            sql = "SELECT 3 AS denied_on_the_sql_page"
            wait_until(lambda: _api_sql(web_alone, sql, VIEWER_KEY)[0] == 403, 20, "the rule on `spanlake web`")
            assert f"query denied by rule {rule_id}" in _run_on_sql_page(page, web_alone, sql)
        assert _serves(web_alone)
    finally:
        _lift(server, rule_id)
