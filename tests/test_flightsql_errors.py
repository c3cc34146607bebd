"""Every failure a Flight SQL client can meet: its gRPC code, a micromegas-style message with a
query id, and never a traceback, a plan, an object-store URL or a filesystem path. Plus bad
headers, auth, and the audit record each failed query leaves."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as adbc
import datafusion
import micromegas
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from datafusion import udf, udtf
from google.protobuf import any_pb2
from micromegas.auth import StaticTokenAuthProvider
from micromegas.flightsql import FlightSql_pb2 as mm
from micromegas.flightsql.client import FlightSQLClient
from test_flightsql_support import (
    RecordingFactory,
    audit_records,
    call_options,
    capture_audit,
    command_descriptor,
    events_table,
    grpc_status,
    running_server,
    statement_ticket,
)

from spanlake.server.auth import Authenticator
from spanlake.server.flightsql import QueryContext, UserError, protocol

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
QUERY_ID = re.compile(r" \(query_id=([0-9a-f-]{36})\)$")


def _register_failing_functions(ctx: datafusion.SessionContext) -> None:
    @udtf("missing_partition")
    def missing_partition(*_args: object) -> None:
        raise UserError("no partition at s3://lake/views/log_entries/2024/p.parquet nor in /var/lib/spanlake/lake")

    @udtf("broken_view")
    def broken_view(*_args: object) -> None:
        raise KeyError("process 42")

    def checked(values: pa.Array) -> pa.Array:
        if pa.compute.max(values).as_py() >= 500_000:
            raise UserError("id beyond the retention window")
        return values

    ctx.register_udtf(missing_partition)
    ctx.register_udtf(broken_view)
    ctx.register_udf(udf(checked, [pa.int64()], pa.int64(), "volatile", "checked"))


@pytest.fixture(scope="module")
def uri() -> Iterator[str]:
    factory = RecordingFactory({"events": events_table()}, configure=_register_failing_functions)
    with running_server(factory) as server_uri:
        yield server_uri


def _failure(run: Callable[[], Any]) -> tuple[str | None, str]:
    """Runs a client call that must fail; returns (gRPC code, message) after checking it is clean."""
    try:
        run()
    except Exception as err:
        text = str(err)
        for leak in ("Traceback", 'File "', "PyErr", "s3://", "/var/lib", "physical plan", ".py"):
            assert leak not in text, text
        return grpc_status(err)
    raise AssertionError("the call was expected to fail")


def _query_failure(uri: str, sql: str, **headers: str) -> tuple[str | None, str]:
    with flight.connect(uri) as client:
        return _failure(lambda: client.do_get(statement_ticket(sql), call_options(**headers)).read_all())


@pytest.mark.parametrize(
    ("sql", "code", "message"),
    [
        (
            "SELEC 1",
            "INVALID_ARGUMENT",
            'error building dataframe: SQL error: ParserError("Expected: an SQL statement, found: SELEC',
        ),
        (
            "SELECT * FROM nope",
            "INVALID_ARGUMENT",
            "error building dataframe: Error during planning: table 'datafusion.public.nope' not found",
        ),
        (
            "SELECT * FROM missing_partition()",
            "INVALID_ARGUMENT",
            "error building dataframe: no partition at <url> nor in <path>",
        ),
        ("SELECT * FROM broken_view()", "INTERNAL", "error building dataframe: KeyError: process 42"),
        (
            "SELECT checked(id) FROM events",
            "INVALID_ARGUMENT",
            "error building data stream: id beyond the retention window",
        ),
        (
            "SELECT id::json FROM events",
            "UNIMPLEMENTED",
            "error building dataframe: This feature is not implemented: Unsupported SQL type",
        ),
        ("CREATE TABLE copy AS SELECT 1", "INVALID_ARGUMENT", "error building dataframe: Error during planning: DDL"),
        (
            "SET datafusion.execution.batch_size = 1",
            "INVALID_ARGUMENT",
            "error building dataframe: Error during planning: Statement not supported",
        ),
    ],
)
def test_query_errors_map_to_codes_with_clean_messages(
    uri: str, caplog: pytest.LogCaptureFixture, sql: str, code: str, message: str
) -> None:
    capture_audit(caplog)
    got_code, got_message = _query_failure(uri, sql)
    assert got_code == code
    assert got_message.startswith(message), got_message
    query_id = QUERY_ID.search(got_message)
    assert query_id is not None, got_message
    [record] = [r for r in audit_records(caplog) if r["query_id"] == query_id.group(1)]
    assert record["status"] == "error" and record["error"] == got_message
    assert record["error_class"] == ("internal" if code == "INTERNAL" else "user")


def test_micromegas_and_adbc_clients_see_the_same_error(uri: str) -> None:
    code, message = _failure(lambda: micromegas.connect(uri).query("SELECT * FROM nope"))
    assert code == "INVALID_ARGUMENT" and "table 'datafusion.public.nope' not found" in message
    with adbc.connect(uri) as conn, conn.cursor() as cur, pytest.raises(adbc.ProgrammingError) as caught:
        cur.execute("SELECT * FROM nope")
    text = str(caught.value)
    assert text.startswith("INVALID_ARGUMENT: [FlightSQL] error building dataframe: Error during planning")
    assert "query_id=" in text and "Traceback" not in text


def test_resource_exhaustion_is_reported_as_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    capture_audit(caplog)
    tiny_pool = datafusion.RuntimeEnvBuilder().with_greedy_memory_pool(1024 * 1024)
    with running_server(RecordingFactory({"events": events_table()}, runtime=tiny_pool)) as uri:
        # An ORDER BY: a GROUP BY over two partitions sometimes hangs in DataFusion 55 after the
        # allocation failure (reproduced without Flight; see docs/flightsql.md, known issues).
        code, message = _query_failure(uri, "SELECT * FROM events ORDER BY value DESC")
    assert code == "UNAVAILABLE"
    assert message.startswith("error building data stream: Resources exhausted: "), message
    [record] = [r for r in audit_records(caplog) if r["status"] == "error"]
    assert record["error_class"] == "resource"


def test_session_factory_storage_failure_is_unavailable_and_scrubbed() -> None:
    # A ConnectionError is a storage failure (lakehouse.errors.is_storage_failure): retry later.
    def unreachable(_query: QueryContext) -> datafusion.SessionContext:
        raise ConnectionError("catalog unreachable at postgresql://spanlake:pw@db:5432/lake")

    with running_server(unreachable) as uri:
        code, message = _query_failure(uri, "SELECT 1")
        assert (code, QUERY_ID.sub("", message)) == (
            "UNAVAILABLE",
            "error building session context: ConnectionError: catalog unreachable at <url>",
        )
        with flight.connect(uri) as client:
            tables = client.get_flight_info(command_descriptor(protocol.CommandGetTables()))
            code, message = _failure(lambda: client.do_get(tables.endpoints[0].ticket).read_all())
        assert code == "UNAVAILABLE" and message.startswith("error building session context")


def _any(message: Any) -> bytes:
    wrapper = any_pb2.Any()
    wrapper.Pack(message)
    return wrapper.SerializeToString()


def test_unsupported_commands_are_unimplemented(uri: str) -> None:
    with flight.connect(uri) as client:
        keys = flight.FlightDescriptor.for_command(_any(mm.CommandGetPrimaryKeys(table="events")))
        assert _failure(lambda: client.get_flight_info(keys)) == (
            "UNIMPLEMENTED",
            "CommandGetPrimaryKeys is not supported",
        )
        assert _failure(lambda: client.do_get(flight.Ticket(_any(mm.CommandGetXdbcTypeInfo()))).read_all()) == (
            "UNIMPLEMENTED",
            "CommandGetXdbcTypeInfo is not supported",
        )
        assert _failure(lambda: list(client.do_action(flight.Action("BeginTransaction", b"")))) == (
            "UNIMPLEMENTED",
            "action 'BeginTransaction' is not supported",
        )
        update = flight.FlightDescriptor.for_command(_any(mm.CommandStatementUpdate(query="DELETE FROM events")))

        def put() -> None:
            writer, _ = client.do_put(update, pa.schema([("x", pa.int64())]))
            writer.close()

        assert _failure(put) == ("UNIMPLEMENTED", "CommandStatementUpdate is not supported: spanlake is read-only")
        assert _failure(lambda: list(client.list_flights())) == ("UNIMPLEMENTED", "ListFlights is not supported")


def test_malformed_requests_are_invalid_arguments(uri: str) -> None:
    with flight.connect(uri) as client:
        assert _failure(lambda: client.get_flight_info(flight.FlightDescriptor.for_command(b"\xff\x00"))) == (
            "INVALID_ARGUMENT",
            "malformed Flight SQL command: not a protobuf Any message",
        )
        assert _failure(lambda: client.get_flight_info(flight.FlightDescriptor.for_path("events"))) == (
            "INVALID_ARGUMENT",
            "expected a Flight SQL command descriptor",
        )
        assert _failure(
            lambda: client.do_get(
                flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=b"\xff\xfe")))
            ).read_all()
        ) == ("INVALID_ARGUMENT", "statement handle is not UTF-8 SQL text")
        wrong_body = flight.Action("CreatePreparedStatement", protocol.pack(protocol.CommandGetCatalogs()))
        assert _failure(lambda: list(client.do_action(wrong_body))) == (
            "INVALID_ARGUMENT",
            "CreatePreparedStatement expects ActionCreatePreparedStatementRequest, got CommandGetCatalogs",
        )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"query_range_begin": "last tuesday", "query_range_end": "2024-01-01T00:00:00Z"},
            "Unable to parse query_range_begin as a rfc3339 datetime: 'last tuesday'",
        ),
        (
            {"query_range_begin": "2024-01-01T00:00:00Z"},
            "query_range_end is missing: query_range_begin and query_range_end go together",
        ),
        ({"limit": "many"}, "error parsing limit: 'many' is not a non-negative integer"),
    ],
)
def test_bad_headers_are_invalid_arguments(
    uri: str, caplog: pytest.LogCaptureFixture, headers: dict[str, str], message: str
) -> None:
    capture_audit(caplog)
    code, got = _query_failure(uri, "SELECT 1", **headers)
    assert code == "INVALID_ARGUMENT"
    assert QUERY_ID.sub("", got) == message
    assert [r["error_class"] for r in audit_records(caplog)] == ["user"]
    with flight.connect(uri) as client:
        tables = command_descriptor(protocol.CommandGetTables())
        assert (
            _failure(
                lambda: client.do_get(
                    client.get_flight_info(tables).endpoints[0].ticket, call_options(**headers)
                ).read_all()
            )[0]
            == "INVALID_ARGUMENT"
        )
    prefix = adbc_driver_flightsql.DatabaseOptions.RPC_CALL_HEADER_PREFIX.value
    with (
        adbc.connect(uri, db_kwargs={prefix + k: v for k, v in headers.items()}) as conn,
        conn.cursor() as cur,
        pytest.raises(adbc.Error, match=re.escape(message)),
    ):
        cur.execute("SELECT 1")


# ------------------------------------------------------------------------------------------------
# auth


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[str, RecordingFactory]]:
    factory = RecordingFactory({"events": events_table(1000)})
    with running_server(factory, Authenticator({"s3cret-key": "alice"})) as server_uri:
        yield server_uri, factory


def test_calls_without_a_key_are_unauthenticated(secured: tuple[str, RecordingFactory]) -> None:
    uri, factory = secured
    calls = len(factory.contexts)
    assert _failure(lambda: micromegas.connect(uri).query("SELECT 1")) == (
        "UNAUTHENTICATED",
        "missing Authorization header (expected 'Bearer <api key>')",
    )
    with flight.connect(uri) as client:
        assert (
            _failure(lambda: client.get_flight_info(command_descriptor(protocol.CommandGetSqlInfo())))[0]
            == "UNAUTHENTICATED"
        )
    assert len(factory.contexts) == calls


def test_a_wrong_key_is_unauthenticated(secured: tuple[str, RecordingFactory]) -> None:
    uri, _ = secured
    client = FlightSQLClient(uri, auth_provider=StaticTokenAuthProvider("guess"))
    assert _failure(lambda: client.query("SELECT 1")) == ("UNAUTHENTICATED", "invalid API key")
    with (
        adbc.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer guess"}) as conn,
        conn.cursor() as cur,
        pytest.raises(adbc.Error, match="UNAUTHENTICATED"),
    ):
        cur.execute("SELECT 1")


def test_the_right_key_queries_as_its_principal(
    secured: tuple[str, RecordingFactory], caplog: pytest.LogCaptureFixture
) -> None:
    uri, factory = secured
    capture_audit(caplog)
    client = FlightSQLClient(uri, auth_provider=StaticTokenAuthProvider("s3cret-key"))
    assert client.query("SELECT count(*) AS n FROM events")["n"][0] == 1000
    assert factory.contexts[-1].principal is not None and factory.contexts[-1].principal.name == "alice"
    assert [r["user"] for r in audit_records(caplog)] == ["alice"]
    key = {"adbc.flight.sql.authorization_header": "Bearer s3cret-key"}
    with adbc.connect(uri, db_kwargs=key) as conn, conn.cursor() as cur:
        cur.execute("SELECT max(id) FROM events")
        assert cur.fetchall() == [(999,)]
