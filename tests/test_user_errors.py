"""User errors named by the user's input, never INTERNAL or 500, through a running `spanlake serve`:
out-of-range times (table functions, web time ranges), bytes cast to text; and a storage outage
answered as UNAVAILABLE on Flight SQL, as ingestion and the web answer 503."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, S3Server, SpanlakeServer, http, running_server
from test_flightsql_support import grpc_status, statement_ticket
from test_ingestion import PROCESS_ID, upload_fixture


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("user-errors")) as running:
        upload_fixture(running)
        yield running


def _query(server: SpanlakeServer, sql: str) -> list[dict]:
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket(sql)).read_all().to_pylist()


def _failure(server: SpanlakeServer, sql: str) -> tuple[str | None, str]:
    with pytest.raises(pa.ArrowException) as caught:
        _query(server, sql)
    return grpc_status(caught.value)


@pytest.mark.parametrize("end", ["'9999-01-01T00:00:00Z'", "'1000-01-01T00:00:00Z'"])
def test_a_time_past_64_bits_is_an_invalid_argument(server: SpanlakeServer, end: str) -> None:
    begin = "'1000-01-01T00:00:00Z'" if end != "'1000-01-01T00:00:00Z'" else "'2020-01-01T00:00:00Z'"
    for sql in (
        f"SELECT * FROM perfetto_trace_chunks('{PROCESS_ID}', 'both', {begin}, {end})",
        f"SELECT * FROM process_spans('{PROCESS_ID}', 'both') WHERE begin < {end}",
        f"SELECT * FROM list_partitions() WHERE begin_insert_time < {end}",
    ):
        try:
            _query(server, sql)
        except pa.ArrowException as err:
            code, message = grpc_status(err)
            assert code == "INVALID_ARGUMENT", (sql, code, message)
    code, message = _failure(server, f"SELECT * FROM perfetto_trace_chunks('{PROCESS_ID}', 'both', {begin}, {end})")
    assert code == "INVALID_ARGUMENT" and "out of range" in message, message


def test_bytes_that_are_not_utf8_cast_to_text_are_an_invalid_argument(server: SpanlakeServer) -> None:
    code, message = _failure(server, "SELECT CAST(X'FF' AS VARCHAR) AS s")
    assert code == "INVALID_ARGUMENT" and "non UTF-8" in message, message
    assert _query(server, "SELECT CAST(X'41' AS VARCHAR) AS s") == [{"s": "A"}]


@pytest.mark.parametrize(
    ("begin", "end", "named"),
    [
        ("now-1000000w", "now", "now-1000000w"),
        ("now-1h", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ("0001-01-01T00:00:00Z", "now", "0001-01-01T00:00:00Z"),
    ],
)
def test_web_time_ranges_out_of_range_are_400_naming_them(
    server: SpanlakeServer, begin: str, end: str, named: str
) -> None:
    for path in (f"/process/{PROCESS_ID}/logs", f"/process/{PROCESS_ID}", "/"):
        query = urllib.parse.urlencode({"from": begin, "to": end})
        status, body = http("GET", f"{server.http_url}{path}?{query}")
        assert status == 400, (path, status, body[:300])
        assert named.encode() in body and b"out of range" in body and b"Traceback" not in body


def test_web_time_ranges_at_the_ends_of_64_bits_answer(server: SpanlakeServer) -> None:
    query = urllib.parse.urlencode({"from": "1677-09-22T00:00:00Z", "to": "2262-04-10T00:00:00Z"})
    status, body = http("GET", f"{server.http_url}/process/{PROCESS_ID}/logs?{query}")
    assert status == 200, body[:500]


def test_an_object_store_outage_is_unavailable_on_flight_sql(postgres: PostgresServer, tmp_path: Path) -> None:
    s3 = S3Server(bucket="outage")
    try:
        with running_server(
            postgres,
            tmp_path,
            object_store_uri="s3://outage/lake",
            extra_env={"SPANLAKE_S3_ENDPOINT": s3.endpoint, **s3.env},
        ) as server:
            upload_fixture(server)
            # Rows to read (a kept session answers count(*) from the files' statistics, listed before the outage).
            logs = f"SELECT sum(level) AS n FROM view_instance('log_entries', '{PROCESS_ID}')"
            [row] = _query(server, logs)
            assert row["n"] > 0
            s3.stop()
            for sql in (logs, f"SELECT count(*) AS n FROM view_instance('measures', '{PROCESS_ID}')"):
                code, message = _failure(server, sql)
                assert code == "UNAVAILABLE", (sql, code, message)
            assert _query(server, "SELECT 1 AS one") == [{"one": 1}]
    finally:
        s3.stop()
