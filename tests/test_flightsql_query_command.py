"""`spanlake query` against a real Flight SQL server: formats, query range, API key, errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest
from harness import free_port
from test_flightsql_support import BASE_NS, RecordingFactory, events_table, running_server

from spanlake.server import client_flags, query_command
from spanlake.server.auth import Authenticator


@pytest.fixture(scope="module")
def factory() -> RecordingFactory:
    return RecordingFactory({"events": events_table(1000)})


@pytest.fixture(scope="module")
def uri(factory: RecordingFactory) -> Iterator[str]:
    with running_server(factory, Authenticator({"cli-key": "ops"})) as server_uri:
        yield server_uri


def _query(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    client_flags.add_query_arguments(parser)
    code = query_command.run(parser.parse_args(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_format(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    http_uri = uri.replace("grpc://", "http://")  # accepted like the micromegas client does
    code, out, err = _query(
        capsys, "SELECT id, name, value FROM events WHERE id < 3 ORDER BY id", "--uri", http_uri, "--api-key", "cli-key"
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "id | name | value",
        "---+------+------",
        "0  | n0   | 0.0",
        "1  | n1   | 0.5",
        "2  | n2   | 1.0",
        "(3 rows)",
    ]


def test_csv_and_json_formats(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT id, ts, make_array(id, id + 1) AS pair FROM events WHERE id IN (1, 999) ORDER BY id"
    code, out, _ = _query(capsys, sql, "--format", "csv", "--uri", uri, "--api-key", "cli-key")
    assert code == 0
    assert out.splitlines() == [
        '"id","ts","pair"',
        '1,2024-01-01 00:00:00.001000000Z,"[1, 2]"',
        '999,2024-01-01 00:00:00.999000000Z,"[999, 1000]"',
    ]
    code, out, _ = _query(capsys, sql, "--format", "json", "--uri", uri, "--api-key", "cli-key")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"id": 1, "ts": "2024-01-01T00:00:00.001000000Z", "pair": [1, 2]},
        {"id": 999, "ts": "2024-01-01T00:00:00.999000000Z", "pair": [999, 1000]},
    ]
    code, out, _ = _query(
        capsys, "SELECT id FROM events WHERE id < 0", "--format", "csv", "--uri", uri, "--api-key", "cli-key"
    )
    assert (code, out) == (0, '"id"\n')


def test_query_range_reaches_the_server(
    uri: str, factory: RecordingFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _query(
        capsys,
        "SELECT count(*) AS n FROM events",
        "--begin",
        "2024-01-01T00:00:00Z",
        "--end",
        "2024-01-01T00:00:02Z",
        "--uri",
        uri,
        "--api-key",
        "cli-key",
    )
    assert code == 0 and out.splitlines()[2] == "1000"
    assert factory.contexts[-1].query_range == (BASE_NS, BASE_NS + 2_000_000_000)
    assert factory.contexts[-1].client["type"] == "spanlake-cli"
    assert factory.contexts[-1].principal is not None and factory.contexts[-1].principal.name == "ops"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--begin", "2024-01-01T00:00:00Z"], "error: --begin and --end go together\n"),
        (["--begin", "soon", "--end", "2024-01-01T00:00:00Z"], "error: not an RFC3339 timestamp: 'soon'\n"),
    ],
)
def test_bad_ranges_are_refused_before_sending(
    uri: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert _query(capsys, "SELECT 1", "--uri", uri, *argv) == (1, "", message)


def test_server_errors_are_printed_clean(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _query(capsys, "SELECT * FROM nope", "--uri", uri, "--api-key", "cli-key")
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: error building dataframe: Error during planning: table 'datafusion.public.nope' not found (query_id="
    )
    assert err.endswith(")\n") and "Detail" not in err
    code, _, err = _query(capsys, "SELECT 1", "--uri", uri)
    assert (code, err) == (1, "error: missing Authorization header (expected 'Bearer <api key>')\n")


def test_an_unreachable_server_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _query(capsys, "SELECT 1", "--uri", f"grpc://127.0.0.1:{free_port()}")
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and "127.0.0.1" in err
