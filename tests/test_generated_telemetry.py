"""`spanlake generate` → `spanlake serve` → the micromegas client, ADBC and pyarrow.flight.

One server and one generated process for the module; every test reads it back through a real client.
"""

from __future__ import annotations

import collections
import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import micromegas
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, running_server, wait_until
from perfetto_check import decode_and_check

from spanlake.server.flightsql import protocol


@pytest.fixture(scope="module")
def generated(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SpanlakeServer, str]]:
    with running_server(postgres, tmp_path_factory.mktemp("serve")) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "spanlake.server.cli",
                "generate",
                "--url",
                server.http_url,
                "--tasks",
                "300",
                "--threads",
                "3",
                "--async-tasks",
                "6",
                "--flush-period",
                "0.5",
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        process_id = result.stdout.splitlines()[0].strip()
        client = micromegas.connect(server.flightsql_url)
        wait_until(
            lambda: len(client.query(f"SELECT 1 FROM processes WHERE process_id = '{process_id}'")) == 1,
            30,
            "the generated process in the processes view",
        )
        # The tests read the global streams view too: wait for every stream the generator created
        # (all stored once `generate` has exited) to be materialized there.
        stored_streams = len(server.stream_rows(process_id))
        wait_until(
            lambda: len(client.query(f"SELECT 1 FROM streams WHERE process_id = '{process_id}'")) == stored_streams,
            30,
            f"the generated process's {stored_streams} streams in the streams view",
        )
        yield server, process_id


@pytest.fixture(scope="module")
def client(generated: tuple[SpanlakeServer, str]) -> micromegas.flightsql.client.FlightSQLClient:
    return micromegas.connect(generated[0].flightsql_url)


def test_processes_and_streams(client, generated) -> None:
    _, pid = generated
    process = client.query(
        f"SELECT exe, property_get(properties, 'generator.seed') AS seed FROM processes WHERE process_id = '{pid}'"
    )
    assert process.exe.tolist() == ["spanlake-telemetry-generator"] and process.seed.tolist() == ["0"]
    streams = client.query(
        f"SELECT tags, property_get(properties, 'thread-name') AS thread FROM streams WHERE process_id = '{pid}'"
    )
    tags = collections.Counter(tag for row in streams.tags for tag in row)
    assert tags["log"] == 1 and tags["metrics"] == 1 and tags["cpu"] >= 4


def test_async_events_pair_with_depth_and_parents(client, generated) -> None:
    _, pid = generated
    events = client.query(
        f"SELECT event_type, span_id, parent_span_id, depth, name FROM view_instance('async_events', '{pid}')"
    )
    begins = events[events.event_type == "begin"].set_index("span_id")
    ends = events[events.event_type == "end"].set_index("span_id")
    assert len(begins) > 200 and set(begins.index) == set(ends.index)
    names = set(begins.name)
    assert {"user_workflow", "user_validation", "user_processing", "database_migration"} <= names
    assert any(name.startswith("process_user_") for name in names)
    for span_id, row in begins.iterrows():
        if row.parent_span_id in begins.index:
            assert row.depth == begins.loc[row.parent_span_id].depth + 1, span_id
        else:
            assert row.depth == 0
    validation = begins[begins.name == "user_validation"].iloc[0]
    assert begins.loc[validation.parent_span_id]["name"] == "user_workflow"


def test_thread_spans_of_the_busiest_thread(client, generated) -> None:
    _, pid = generated
    stream = client.query(
        f"SELECT stream_id, sum(nb_objects) AS n FROM blocks WHERE process_id = '{pid}'"
        " AND array_has(\"streams.tags\", 'cpu') GROUP BY stream_id ORDER BY n DESC LIMIT 1"
    )
    spans = client.query(
        f'SELECT id, parent, depth, begin, "end", name FROM'
        f" view_instance('thread_spans', '{stream.stream_id[0]}') ORDER BY begin"
    )
    assert len(spans) > 10 and spans.depth[0] == 0 and spans.id[0] == -1
    by_id = spans.set_index("id")
    for _, row in spans.iloc[1:].iterrows():
        parent = by_id.loc[row.parent]
        assert row.depth == parent.depth + 1 and parent.begin <= row.begin and row.end <= parent.end


def test_logs_and_metrics(client, generated) -> None:
    _, pid = generated
    logs = client.query(f"SELECT msg, level FROM view_instance('log_entries', '{pid}')")
    assert "generator completed successfully" in set(logs.msg)
    assert set(logs.level) <= {1, 2, 3, 4, 5, 6}
    measures = client.query(f"SELECT DISTINCT name FROM view_instance('measures', '{pid}')")
    assert len(measures) >= 3


def test_time_range_limits_rows(client, generated) -> None:
    _, pid = generated
    times = client.query(f"SELECT time FROM view_instance('log_entries', '{pid}') ORDER BY time").time
    begin, end = times.iloc[len(times) // 4].to_pydatetime(), times.iloc[len(times) // 2].to_pydatetime()
    in_range = client.query(f"SELECT count(*) AS n FROM view_instance('log_entries', '{pid}')", begin, end)
    assert in_range.n[0] == ((times >= begin) & (times <= end)).sum()


def test_perfetto_trace_with_the_micromegas_client(client, generated, tmp_path: Path) -> None:
    _, pid = generated
    now = dt.datetime.now(dt.UTC)
    path = tmp_path / "trace.pftrace"
    micromegas.perfetto.write_process_trace(client, pid, now - dt.timedelta(hours=1), now, str(path))
    trace = decode_and_check(path.read_bytes())
    names = {name for name, _, _ in trace.all_slices()}
    assert "user_workflow" in names and any(n.startswith("process_user_") for n in names)


def test_spanlake_perfetto_and_query_commands(generated, tmp_path: Path) -> None:
    server, pid = generated
    output = tmp_path / "cli.pftrace"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanlake.server.cli",
            "perfetto",
            "--process-id",
            pid,
            "--spans",
            "async",
            "-o",
            str(output),
            "--uri",
            server.flightsql_url,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ui.perfetto.dev" in result.stdout
    names = {name for name, _, _ in decode_and_check(output.read_bytes()).all_slices()}
    assert "user_workflow" in names and not any(n.startswith("generator-worker") for n in names)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanlake.server.cli",
            "perfetto",
            "--process-id",
            "6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f",
            "-o",
            str(tmp_path / "x.pftrace"),
            "--uri",
            server.flightsql_url,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "Process 6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f not found" in bad.stderr
    assert not (tmp_path / "x.pftrace").exists()
    query = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanlake.server.cli",
            "query",
            "--uri",
            server.flightsql_url,
            "--format",
            "csv",
            f"SELECT exe FROM processes WHERE process_id = '{pid}'",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert query.returncode == 0 and query.stdout.split() == ['"exe"', '"spanlake-telemetry-generator"']


def test_adbc(generated) -> None:
    server, pid = generated
    with flightsql.connect(server.flightsql_url) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM view_instance('async_events', '{pid}') WHERE event_type = 'begin'")
        assert cursor.fetchall()[0][0] > 200
        cursor.execute(
            f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{pid}', 'both', now() - INTERVAL '1 hour', now())"
        )
        rows = cursor.fetchall()
        assert [r[0] for r in rows] == list(range(len(rows)))
        decode_and_check(b"".join(r[1] for r in rows))


def test_plain_pyarrow_flight(generated) -> None:
    server, pid = generated
    ticket = flight.Ticket(
        protocol.pack(
            protocol.TicketStatementQuery(
                statement_handle=f"SELECT count(*) AS n FROM blocks WHERE process_id = '{pid}'".encode()
            )
        )
    )
    with flight.connect(server.flightsql_url) as conn:
        table = conn.do_get(ticket).read_all()
    assert table.column("n")[0].as_py() > 5


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM view_instance('nope', 'x')", "unknown view set 'nope'"),
        ("SELECT * FROM view_instance('async_events', '6a1a6cf5-8a3f-4bb8-9e8f-0c6f8f7f8f8f')", "unknown process"),
        ("SELECT * FROM perfetto_trace_chunks('x', 'both', now(), now())", "must be a valid UUID"),
        ("SELECT nope FROM processes", "No field named nope"),
    ],
)
def test_lakehouse_errors_reach_clients_as_invalid_argument(client, sql: str, message: str) -> None:
    with pytest.raises(pa.ArrowInvalid) as raised:
        client.query(sql)
    text = str(raised.value)
    assert message in text and "query_id=" in text
    assert "Traceback" not in text and "/work/" not in text and "lakehouse/" not in text
    assert len(client.query("SELECT 1 AS one")) == 1


def test_spanlake_perfetto_without_output_names_the_file_and_never_overwrites(generated, tmp_path: Path) -> None:
    server, pid = generated

    def perfetto() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--uri", server.flightsql_url]
        return subprocess.run(
            [*command, "--process-id", pid], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )

    first = perfetto()
    assert first.returncode == 0, first.stderr
    written = tmp_path / f"{pid}.pftrace"
    trace = written.read_bytes()
    decode_and_check(trace)
    again = perfetto()
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {pid}.pftrace already exists: remove it, or name the file with -o"
    assert written.read_bytes() == trace and sorted(p.name for p in tmp_path.iterdir()) == [written.name]
