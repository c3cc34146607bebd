"""The README's and docs' steps taken as a newcomer takes them, against a running `spanlake serve`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest
from harness import SpanlakeServer, post, wait_until
from plain_install import plain_install_venv
from test_flightsql_support import statement_ticket

from spanlake import tracing
from spanlake.lakehouse.timestamps import format_rfc3339_ns

RFC3339_NS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a venv with the README's plain install (`pip install -e .`): no pandas."""
    python = plain_install_venv(tmp_path_factory.mktemp("plain") / "venv")
    check = subprocess.run([str(python), "-c", "import pandas"], capture_output=True, text=True)
    assert "No module named 'pandas'" in check.stderr, "the plain install must not bring pandas"
    return python.parent


@pytest.fixture
def logged_server(spanlake_server: SpanlakeServer) -> Iterator[SpanlakeServer]:
    """The server with a few log entries of this test's process, visible in the global log_entries."""
    tracing.init(url=spanlake_server.http_url, exe="newcomer", flush_period=3600)
    for i in range(3):
        tracing.info(f"newcomer log {i}")
    assert tracing.shutdown(10)
    wait_until(
        lambda: _count(spanlake_server, "SELECT count(*) FROM log_entries WHERE exe = 'newcomer'") == 3,
        30,
        "the logs in the global log_entries view",
    )
    yield spanlake_server


def _count(server: SpanlakeServer, sql: str) -> int:
    return _rows(server, sql)[0][0]


def _rows(server: SpanlakeServer, sql: str) -> list[tuple]:
    with flight.connect(server.flightsql_url) as client:
        table = client.do_get(statement_ticket(sql)).read_all()
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def _rfc3339(ns: int) -> str:
    return format_rfc3339_ns(ns).replace("+00:00", "Z")


def _spanlake(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "spanlake"), *args], capture_output=True, text=True, timeout=60)


def test_query_after_the_plain_install_prints_nanosecond_timestamps(
    plain_venv: Path, logged_server: SpanlakeServer
) -> None:
    uri = ("--uri", logged_server.flightsql_url)
    readme = _spanlake(plain_venv, "query", "SELECT * FROM log_entries LIMIT 5", *uri)
    assert readme.returncode == 0, readme.stderr
    assert readme.stdout.splitlines()[-1] == "(3 rows)" and len(RFC3339_NS.findall(readme.stdout)) >= 3
    for output_format in ("json", "csv"):
        every = _spanlake(plain_venv, "query", "SELECT * FROM log_entries", "--format", output_format, *uri)
        assert every.returncode == 0 and every.stderr == "", every.stderr

    expected = _rows(logged_server, "SELECT CAST(time AS BIGINT) AS ns, msg FROM log_entries ORDER BY time")
    sql = "SELECT time, msg FROM log_entries ORDER BY time"
    table = _spanlake(plain_venv, "query", sql, *uri)
    assert table.stdout.splitlines()[2:] == [*(f"{_rfc3339(ns)} | {msg}" for ns, msg in expected), "(3 rows)"]
    as_json = _spanlake(plain_venv, "query", sql, "--format", "json", *uri)
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"time": _rfc3339(ns), "msg": msg} for ns, msg in expected
    ]
    nested = _spanlake(
        plain_venv,
        "query",
        "SELECT make_array(time, time) AS times, named_struct('at', time) AS s, time - time AS zero"
        " FROM log_entries ORDER BY time LIMIT 1",
        "--format",
        "json",
        *uri,
    )
    first = _rfc3339(expected[0][0])
    assert json.loads(nested.stdout) == {"times": [first, first], "s": {"at": first}, "zero": "0ns"}, nested.stderr


def _http_status(server: SpanlakeServer, key: str | None) -> int:
    """401 without a valid key when auth is on; 400 (an empty body) once past auth."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return post(f"{server.http_url}/ingestion/insert_process", b"", headers)[0]


def _flight_status(server: SpanlakeServer, key: str | None) -> str:
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {key}".encode())] if key else [])
    try:
        with flight.connect(server.flightsql_url) as client:
            client.do_get(statement_ticket("SELECT 1"), options).read_all()
    except flight.FlightUnauthenticatedError:
        return "unauthenticated"
    return "ok"


def _api_key(server: SpanlakeServer, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", "api-key", *args],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_api_keys_created_and_removed_while_running_take_effect_in_seconds(spanlake_server: SpanlakeServer) -> None:
    server = spanlake_server
    assert (_http_status(server, None), _flight_status(server, None)) == (400, "ok")  # no key yet: open
    alice = _api_key(server, "alice", "--admin")
    bob = _api_key(server, "bob")
    wait_until(lambda: _http_status(server, None) == 401, 10, "HTTP ingestion to require a key")
    wait_until(lambda: _flight_status(server, None) == "unauthenticated", 10, "Flight SQL to require a key")
    assert [_http_status(server, k) for k in (alice, bob, "slk_wrong")] == [400, 400, 401]
    assert [_flight_status(server, k) for k in (alice, bob, "slk_wrong")] == ["ok", "ok", "unauthenticated"]

    server.sql("DELETE FROM api_keys WHERE name = 'alice'")
    wait_until(lambda: _http_status(server, alice) == 401, 10, "HTTP ingestion to refuse the removed key")
    wait_until(lambda: _flight_status(server, alice) == "unauthenticated", 10, "Flight SQL to refuse it")
    assert (_http_status(server, bob), _flight_status(server, bob)) == (400, "ok")

    server.sql("DELETE FROM api_keys")  # no key left: back to the keyless loopback default
    wait_until(lambda: _http_status(server, None) == 400, 10, "HTTP ingestion to serve without a key again")
    assert _flight_status(server, None) == "ok"
