"""`spanlake query` against a running `spanlake serve`: JSONB and properties as JSON, binary ids as hex,
durations as durations, in `table`, `csv` and `json` alike."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, post, wait_until
from served_support import ADMIN_KEY, EXPECTED, PROCESS_ID, micromegas_client, served_lakehouse
from test_otlp_ingest import resource_attrs, traces_request

from spanlake.server.query_command import duration_text

PROPERTIES = EXPECTED["process"]["process_info"]["properties"]
TRACE_ID = bytes(range(16)).hex()
OTLP_PROCESS_SQL = (
    "SELECT process_id FROM processes WHERE property_get(properties, 'otel.resource.service.instance.id') = 'query-cli'"
)
SPAN_ROWS = [
    {"name": "root", "trace_id": TRACE_ID, "span_id": "0000000000000001", "parent_span_id": None, "duration": "800ns"},
    {
        "name": "child",
        "trace_id": TRACE_ID,
        "span_id": "0000000000000002",
        "parent_span_id": "0000000000000001",
        "duration": "750ns",
    },
]


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("query-cli")) as server:
        request = traces_request()
        del request.resource_spans[0].resource.attributes[:]
        request.resource_spans[0].resource.attributes.extend(resource_attrs("query-cli"))
        headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {ADMIN_KEY}"}
        status, text = post(f"{server.http_url}/ingestion/otlp/v1/traces", request.SerializeToString(), headers)
        assert status == 200, text
        client = micromegas_client(server)
        wait_until(lambda: len(client.query(OTLP_PROCESS_SQL)) == 1, 30, "the OTLP process")
        yield server


@pytest.fixture(scope="module")
def spans_sql(served: SpanlakeServer) -> str:
    """The SQL of the two OTLP spans, in SPAN_ROWS's order."""
    [process_id] = micromegas_client(served).query(OTLP_PROCESS_SQL)["process_id"]
    return (
        "SELECT name, trace_id, span_id, parent_span_id, duration"
        f" FROM view_instance('otel_spans', '{process_id}') ORDER BY name DESC"
    )


def spanlake_query(served: SpanlakeServer, sql: str, output_format: str) -> str:
    """stdout of `spanlake query` run as a command."""
    argv = ["query", sql, "--format", output_format, "--uri", served.flightsql_url, "--api-key", ADMIN_KEY]
    result = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", *argv],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_properties_print_as_json_objects(served: SpanlakeServer) -> None:
    sql = f"SELECT process_id, properties FROM processes WHERE process_id = '{PROCESS_ID}'"
    [row] = [json.loads(line) for line in spanlake_query(served, sql, "json").splitlines()]
    assert row == {"process_id": PROCESS_ID, "properties": PROPERTIES}
    [record] = csv.DictReader(io.StringIO(spanlake_query(served, sql, "csv")))
    assert json.loads(record["properties"]) == PROPERTIES
    table = spanlake_query(served, sql, "table").splitlines()
    assert table[0].split(" | ")[1].strip() == "properties" and table[-1] == "(1 row)"
    assert json.loads(table[2].split(" | ", 1)[1]) == PROPERTIES


def test_jsonb_values_print_as_json(served: SpanlakeServer) -> None:
    sql = """SELECT jsonb_parse('{"a": [1, "x"], "b": null}') AS doc"""
    assert json.loads(spanlake_query(served, sql, "json")) == {"doc": {"a": [1, "x"], "b": None}}
    [record] = csv.DictReader(io.StringIO(spanlake_query(served, sql, "csv")))
    assert json.loads(record["doc"]) == {"a": [1, "x"], "b": None}


def test_ids_print_as_hex_and_durations_as_durations(served: SpanlakeServer, spans_sql: str) -> None:
    rows = [json.loads(line) for line in spanlake_query(served, spans_sql, "json").splitlines()]
    assert rows == SPAN_ROWS
    records = list(csv.DictReader(io.StringIO(spanlake_query(served, spans_sql, "csv"))))
    assert records == [{k: "" if v is None else v for k, v in row.items()} for row in SPAN_ROWS]
    table = spanlake_query(served, spans_sql, "table").splitlines()
    cells = [[cell.strip() for cell in line.split(" | ")] for line in table[2:4]]
    assert cells == [
        [r[k] or "NULL" for k in ("name", "trace_id", "span_id", "parent_span_id", "duration")] for r in SPAN_ROWS
    ]


def test_arrow_durations_and_other_binaries(served: SpanlakeServer) -> None:
    sql = "SELECT arrow_cast(1500000, 'Duration(Nanosecond)') AS d, arrow_cast('hi', 'Binary') AS raw"
    assert json.loads(spanlake_query(served, sql, "json")) == {"d": "1.5ms", "raw": "6869"}


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [(0, "0ns"), (999, "999ns"), (1_000, "1µs"), (1_500_000, "1.5ms"), (2_000_000_001, "2.000000001s"), (-42, "-42ns")],
)
def test_duration_text(nanoseconds: int, text: str) -> None:
    assert duration_text(nanoseconds) == text
