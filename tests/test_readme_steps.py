"""The README's and docs' steps taken as a newcomer takes them, against a running `spanlake serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest
from harness import SpanlakeServer, free_port, post, wait_until
from plain_install import plain_install_venv
from test_flightsql_support import statement_ticket

from spanlake import tracing
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.server.auth import hash_key
from spanlake.server.cli import build_parser

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
    alice = _api_key(server, "alice", "--admin")  # the README's step
    bob = "slk_bob"  # a second key, added straight to the table as another tool would
    server.sql(
        "INSERT INTO api_keys (key_id, key_hash, name, is_admin) VALUES ($1, $2, 'bob', false)",
        uuid.uuid4(),
        hash_key(bob),
    )
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


class ServeProcess:
    """`spanlake serve` as the README runs it: the embedded default, from a working directory."""

    def __init__(self, cwd: Path, http_port: int, flightsql_port: int) -> None:
        self.cwd, self.http_port, self.flightsql_port = cwd, http_port, flightsql_port
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spanlake.server.cli", "serve", *self.port_flags()],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []

    def port_flags(self) -> list[str]:
        return ["--http-port", str(self.http_port), "--flightsql-port", str(self.flightsql_port)]

    def wait_ready(self, timeout: float = 90) -> list[str]:
        """The stdout lines up to and including the client snippet printed once ready."""
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"serve exited: {self.process.wait()}\n{self.process.stderr.read()}")
            self.stdout.append(line.rstrip("\n"))
            if line.startswith("    print(client.query("):
                return self.stdout
        raise TimeoutError("spanlake serve did not print its ready text")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as Ctrl-C or `docker stop` does; returns the exit code and the whole stderr."""
        self.process.terminate()
        _, stderr = self.process.communicate(timeout=60)
        return self.process.returncode, stderr

    def kill(self) -> str:
        """SIGKILL, a crash: no exit handler runs. Returns the whole stderr."""
        self.process.kill()
        return self.process.communicate(timeout=60)[1]


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _refused(cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", "serve", *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def clone_dir() -> Iterator[Path]:
    """A directory outside pytest's base temp dir: pytest resets that one to mode 0700 whenever a
    session starts, which locks out the system user pgserver runs PostgreSQL as under root."""
    with tempfile.TemporaryDirectory(prefix="spanlake-newcomer-") as path:
        yield Path(path)


def test_serve_starts_quietly_refuses_doubles_and_recovers_from_a_crash(clone_dir: Path) -> None:
    tmp_path = clone_dir
    here, data = tmp_path / "clone", tmp_path / "clone" / "spanlake-data"
    here.mkdir()
    first = ServeProcess(here, free_port(), free_port())
    try:
        lines = first.wait_ready()
        assert lines[0] == (
            f"spanlake data: embedded PostgreSQL in {data / 'postgres'}; objects in {(data / 'lake').as_uri()}"
        )
        assert f"spanlake ready: open the UI at http://127.0.0.1:{first.http_port}/" in lines
        snippet = "\n".join(line.removeprefix("    ") for line in lines[lines.index("    import micromegas") :])
        pasted = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0 and "process_id" in pasted.stdout, pasted.stderr

        again = _refused(here, "--http-port", str(free_port()), "--flightsql-port", str(free_port()))
        assert again.returncode == 2 and again.stderr.splitlines() == [
            f"spanlake: the data directory {data} is in use by spanlake serve (pid {first.process.pid}, "
            f"http port {first.http_port}): stop it, or use another --data-dir"
        ]
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        same_port = _refused(elsewhere, *first.port_flags())
        assert same_port.returncode == 2 and same_port.stderr.splitlines() == [
            f"spanlake: port {first.http_port} on 127.0.0.1 is already in use (another spanlake serve?): stop it,"
            " or choose another port with --http-port"
        ]
        assert list(elsewhere.iterdir()) == []  # refused before anything started
        postgres_pid = _postmaster_pid(data)
    finally:
        first_stderr = first.kill()  # the embedded PostgreSQL stays up
    assert "creating the embedded PostgreSQL database" in first_stderr
    for noise in ("initdb", "pg_ctl", "XDG_RUNTIME_DIR", "execute_query", '"query_id"', "Traceback"):
        assert noise not in first_stderr, first_stderr
    assert _running(postgres_pid)

    second = ServeProcess(here, free_port(), free_port())
    second.wait_ready()
    assert _postmaster_pid(data) == postgres_pid  # adopted
    code, stderr = second.stop()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) <= 4, stderr
    wait_until(lambda: not _running(postgres_pid), 10, "the embedded PostgreSQL to stop with the last server")


def test_spanlake_alone_prints_the_getting_started_text(plain_venv: Path) -> None:
    result = _spanlake(plain_venv)
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    for step in (
        "spanlake serve",
        "spanlake generate --url http://127.0.0.1:9000",
        "spanlake query",
        "http://127.0.0.1:9000/",
    ):
        assert step in text


# The settings of every role that runs queries (through the one query runner).
QUERY_FLAGS = {
    "--max-sql-bytes",
    "--max-sql-depth",
    "--query-timeout-seconds",
    "--query-memory-limit-mb",
    "--slow-query-seconds",
    "--live-refresh-seconds",
    "--memory-tail-objects",
    "--decode-ahead-objects",
    "--slow-span-ms",
    "--max-sql-joins",
    "--max-plan-nodes",
    "--stream-buffer-mb",
    "--result-buffer-mb",
    "--perfetto-chunk-kib",
    "--result-buffer-wait-seconds",
}
PARTITION_FLAGS = {"--row-group-rows"}  # the roles that write partitions
ROLE_FLAGS = {
    "ingest": {
        "--http-port",
        "--api-keys",
        "--disable-auth",
        "--no-disable-auth",
        "--host",
        "--request-body-timeout-s",
        "--ingestion-workers",
    },
    "flightsql": {
        "--flightsql-port",
        "--api-keys",
        "--admins",
        "--disable-auth",
        "--no-disable-auth",
        "--host",
        "--query-cluster",
        "--cluster-min-bytes",
    }
    | QUERY_FLAGS
    | PARTITION_FLAGS,
    "maintain": {"--retention-days"} | PARTITION_FLAGS,
    "web": {
        "--http-port",
        "--api-keys",
        "--admins",
        "--disable-auth",
        "--no-disable-auth",
        "--host",
        "--request-body-timeout-s",
        "--public-url",
        "--allowed-hosts",
        "--login-failures-per-ip",
        "--login-failures",
    }
    | QUERY_FLAGS
    | PARTITION_FLAGS,
}
SHARED_FLAGS = {"--data-dir", "--database-url", "--log-level"}
SERVING_FLAGS = {
    "--object-store-uri",
    "--s3-endpoint",
    "--self-tracing",
    "--no-self-tracing",
    "--max-inflated-block-bytes",
    "--max-inflation-ratio",
}
# The OIDC settings of the roles whose doors take bearer tokens (the web sign-in also presents a secret).
OIDC_FLAGS = {"--oidc-issuer", "--oidc-audience", "--oidc-groups-claim", "--oidc-group-audiences", "--oidc-admin-group"}
ROLE_FLAGS["flightsql"] |= OIDC_FLAGS
ROLE_FLAGS["web"] |= OIDC_FLAGS | {"--oidc-client-secret"}


def _flags(command: str) -> set[str]:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    return {flag for action in commands.choices[command]._actions for flag in action.option_strings} - {"-h", "--help"}


def test_each_command_takes_only_the_flags_it_uses() -> None:
    for role, own in ROLE_FLAGS.items():
        assert _flags(role) == own | SHARED_FLAGS | SERVING_FLAGS, role
    assert _flags("serve") == set().union(*ROLE_FLAGS.values()) | SHARED_FLAGS | SERVING_FLAGS
    assert _flags("migrate") == _flags("api-key") - {"--admin", "--audience", "--read-audiences"} == SHARED_FLAGS
    for command, foreign in (("maintain", "--http-port"), ("ingest", "--retention-days"), ("migrate", "--host")):
        result = subprocess.run(
            [sys.executable, "-m", "spanlake.server.cli", command, foreign, "1"], capture_output=True, text=True
        )
        assert result.returncode == 2 and f"unrecognized arguments: {foreign} 1" in result.stderr
