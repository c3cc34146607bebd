"""The commands start at once: `spanlake --help`, `spanlake query` and `spanlake perfetto`, run against a
real `spanlake serve`, import neither DataFusion nor pandas, aiohttp or the lakehouse; `spanlake api-key`
imports the catalog alone (asyncpg), and still finds, adopts or starts the embedded PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, SpanlakeServer, query
from served_support import ADMIN_KEY, PROCESS_ID, served_lakehouse

from spanlake.lakehouse.catalog.api_keys import hash_key
from spanlake.lakehouse.embedded_postgres import open_embedded_postgres, postmaster_pid
from spanlake.server.flightsql import protocol
from spanlake.server.flightsql.statement_ticket import statement_ticket

# Runs the command line as `spanlake` does; at exit (`--help` exits in argparse) writes the names of
# the modules it imported.
_REPORTING_MAIN = """
import atexit, json, sys
atexit.register(lambda: json.dump(sorted(sys.modules), open(sys.argv[1], "w")))
from spanlake.server.cli import main
sys.exit(main(sys.argv[2:]))
"""
# What the client commands must not import: the query engine, and what only the servers need.
SERVER_ONLY = ("datafusion", "pandas", "aiohttp", "asyncpg", "spanlake.lakehouse.lake")
# What `spanlake api-key` must not import: it needs the catalog database, not the lake nor Arrow.
LAKE_ONLY = ("datafusion", "pandas", "aiohttp", "pyarrow", "spanlake.lakehouse.lake", "spanlake.lakehouse.query")


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("cli-imports")) as server:
        yield server


def imported_by(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The finished `spanlake *argv` and the modules it imported."""
    report = tmp_path / "modules.json"
    command = [sys.executable, "-c", _REPORTING_MAIN, str(report), *argv]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result, set(json.loads(report.read_text()))


def server_modules(modules: set[str], tops: tuple[str, ...] = SERVER_ONLY) -> list[str]:
    """The server-only modules (`tops` and their submodules) among `modules`."""
    return sorted(m for m in modules if any(m == top or m.startswith(top + ".") for top in tops))


def test_help_imports_no_pyarrow(tmp_path: Path) -> None:
    result, modules = imported_by(tmp_path, "--help")
    assert "perfetto" in result.stdout and "query" in result.stdout
    assert server_modules(modules) == []
    assert not {"pyarrow", "spanlake.tracing", "google.protobuf"} & modules


def test_query_imports_no_datafusion(served: SpanlakeServer, tmp_path: Path) -> None:
    sql = f"SELECT exe FROM processes WHERE process_id = '{PROCESS_ID}'"
    argv = ["query", sql, "--format", "csv", "--uri", served.flightsql_url, "--api-key", ADMIN_KEY]
    result, modules = imported_by(tmp_path, *argv)
    [exe] = [row for row in result.stdout.splitlines()[1:]]
    assert exe.strip('"') == served.sql("SELECT exe FROM processes WHERE process_id = $1::uuid", PROCESS_ID)[0]["exe"]
    assert "pyarrow.flight" in modules
    assert server_modules(modules) == []
    assert not {"spanlake.tracing", "google.protobuf"} & modules


def test_perfetto_imports_no_datafusion(served: SpanlakeServer, tmp_path: Path) -> None:
    output = tmp_path / "trace.pftrace"
    argv = ["perfetto", "--process-id", PROCESS_ID, "--begin", "2020-01-01T00:00:00Z", "--end", "2030-01-01T00:00:00Z"]
    result, modules = imported_by(
        tmp_path, *argv, "-o", str(output), "--uri", served.flightsql_url, "--api-key", ADMIN_KEY
    )
    assert f"wrote {output}" in result.stdout
    assert output.stat().st_size > 0
    assert server_modules(modules) == []
    assert "pyarrow.compute" not in modules  # chunks read from their buffers, never cast


def test_api_key_imports_the_catalog_alone(served: SpanlakeServer, tmp_path: Path) -> None:
    argv = ["api-key", "cli-imports-robot", "--database-url", served.database_url]
    result, modules = imported_by(tmp_path, *argv)
    key = result.stdout.strip()
    assert result.stderr.startswith("# API key 'cli-imports-robot' created")
    assert "asyncpg" in modules
    assert server_modules(modules, LAKE_ONLY) == []
    stored = served.sql("SELECT name, is_admin FROM api_keys WHERE key_hash = $1", hash_key(key))
    assert [(row["name"], row["is_admin"]) for row in stored] == [("cli-imports-robot", False)]
    # The server takes the new key (within its key cache's seconds): a query with it answers.
    sql = f"SELECT exe FROM processes WHERE process_id = '{PROCESS_ID}'"
    argv = ["query", sql, "--format", "csv", "--uri", served.flightsql_url, "--api-key", key]
    answered, _ = imported_by(tmp_path, *argv)
    assert (
        answered.stdout.splitlines()[1].strip('"')
        == served.sql("SELECT exe FROM processes WHERE process_id = $1::uuid", PROCESS_ID)[0]["exe"]
    )


def test_api_key_starts_or_adopts_the_embedded_postgres(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    pg_dir = data_dir / "postgres"
    cold, modules = imported_by(tmp_path, "api-key", "first", "--audience", "team-a", "--data-dir", str(data_dir))
    assert "ingestion key writing into audience 'team-a'" in cold.stderr
    assert server_modules(modules, LAKE_ONLY) == []
    assert (pg_dir / "PG_VERSION").exists()
    assert postmaster_pid(pg_dir) is None  # started for the command alone, stopped at its exit
    embedded = open_embedded_postgres(data_dir)  # as a running server holds it
    try:
        running = postmaster_pid(pg_dir)
        assert running is not None
        adopted, _ = imported_by(tmp_path, "api-key", "second", "--read-audiences", "a,b", "--data-dir", str(data_dir))
        assert "analytics key reading a, b" in adopted.stderr
        assert postmaster_pid(pg_dir) == running  # the same server, still running for its other user
        names = query(embedded.url, "SELECT name, audience FROM ingestion_api_keys")
        assert [(r["name"], r["audience"]) for r in names] == [("first", "team-a")]
        readers = query(embedded.url, "SELECT name, read_audiences FROM analytics_api_keys")
        assert [(r["name"], r["read_audiences"]) for r in readers] == [("second", ["a", "b"])]
    finally:
        embedded.server.cleanup()


@pytest.mark.parametrize("sql", ["SELECT 1", "", "x" * 300, "SELECT 'é' " * 5000])
def test_the_clients_ticket_is_flight_sqls(sql: str) -> None:
    expected = protocol.pack(protocol.TicketStatementQuery(statement_handle=sql.encode()))
    assert statement_ticket(sql) == expected
