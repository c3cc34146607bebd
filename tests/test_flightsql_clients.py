"""Real clients against a real spanlake Flight SQL server on a loopback port: the micromegas client,
the ADBC Flight SQL driver and plain pyarrow.flight, reading values out of a 1M-row in-memory table:
the server's transport (headers, streaming, dictionaries, plan cache). Every RPC against the real
lakehouse session of `spanlake serve` is tested in test_flightsql_served.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as adbc
import datafusion
import micromegas
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from micromegas.flightsql import FlightSql_pb2 as mm
from test_flightsql_support import (
    BASE_NS,
    EVENT_ROWS,
    RecordingFactory,
    audit_records,
    call_options,
    capture_audit,
    command_descriptor,
    events_table,
    running_server,
    statement_ticket,
)

from spanlake.server.flightsql import protocol

N = EVENT_ROWS
pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
HYDRATED_EVENTS = pa.schema(
    [("id", pa.int64()), ("value", pa.float64()), ("ts", pa.timestamp("ns", tz="UTC")), ("name", pa.string())]
)


def _add_view(ctx: datafusion.SessionContext) -> None:
    ctx.register_view("recent", ctx.sql("SELECT id, name FROM events WHERE id >= 999990"))


@pytest.fixture(scope="module")
def factory() -> RecordingFactory:
    return RecordingFactory({"events": events_table()}, configure=_add_view)


@pytest.fixture(scope="module")
def uri(factory: RecordingFactory) -> Iterator[str]:
    with running_server(factory) as server_uri:
        yield server_uri


@pytest.fixture
def client(uri: str) -> flight.FlightClient:
    with flight.connect(uri) as flight_client:
        yield flight_client


# ------------------------------------------------------------------------------------------------
# micromegas client: DoGet with the SQL in the ticket


def test_micromegas_query_returns_values(uri: str, factory: RecordingFactory) -> None:
    frame = micromegas.connect(uri).query("SELECT count(*) AS n, sum(id) AS total, max(value) AS top FROM events")
    assert frame.to_dict("records") == [{"n": N, "total": N * (N - 1) // 2, "top": (N - 1) * 0.5}]
    query = factory.contexts[-1]
    assert query.query_range is None and query.limit is None and query.principal is None
    assert query.client["type"] == "python" and query.client["peer"].startswith("ipv4:127.0.0.1:")


def test_micromegas_time_range_reaches_the_session_factory(uri: str, factory: RecordingFactory) -> None:
    begin = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    end = begin + dt.timedelta(hours=1, microseconds=250)
    frame = micromegas.connect(uri).query("SELECT min(ts) AS first FROM events", begin, end)
    assert frame["first"][0].value == BASE_NS
    assert factory.contexts[-1].query_range == (BASE_NS, BASE_NS + 3_600_000_250_000)


def test_micromegas_query_stream_streams_large_batches(uri: str) -> None:
    batches = list(micromegas.connect(uri).query_stream("SELECT id FROM events ORDER BY id"))
    assert max(b.num_rows for b in batches) == 65536
    ids = pa.concat_arrays([b.column(0) for b in batches]).to_numpy()
    np.testing.assert_array_equal(ids, np.arange(N))


def test_micromegas_query_arrow_hydrates_dictionaries_unless_asked(uri: str) -> None:
    sql = "SELECT id, name FROM events ORDER BY id LIMIT 8"
    plain = micromegas.connect(uri).query_arrow(sql)
    assert plain.schema.field("name").type == pa.string()
    assert plain.column("name").to_pylist() == ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n0"]
    kept = micromegas.connect(uri, preserve_dictionary=True).query_arrow(sql)
    assert pa.types.is_dictionary(kept.schema.field("name").type)
    assert kept.column("name").to_pylist() == plain.column("name").to_pylist()


def test_micromegas_prepare_statement_reports_the_result_schema(uri: str) -> None:
    stmt = micromegas.connect(uri).prepare_statement("SELECT id, name, ts FROM events")
    assert stmt.query == "SELECT id, name, ts FROM events"
    assert stmt.dataset_schema == pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("ts", pa.timestamp("ns", tz="UTC"))]
    )


def test_information_schema_and_show_tables(uri: str) -> None:
    client = micromegas.connect(uri)
    tables = client.query("SHOW TABLES")
    assert {("public", "events", "BASE TABLE"), ("public", "recent", "VIEW")} <= set(
        zip(tables["table_schema"], tables["table_name"], tables["table_type"], strict=True)
    )
    columns = client.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position"
    )
    assert list(columns["column_name"]) == ["id", "value", "ts", "name"]


# ------------------------------------------------------------------------------------------------
# ADBC: GetSqlInfo, CreatePreparedStatement, GetFlightInfo, DoGet, metadata


def test_adbc_cursor_fetches_values_and_plans_once(
    uri: str, factory: RecordingFactory, caplog: pytest.LogCaptureFixture
) -> None:
    capture_audit(caplog)
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        before = len(factory.contexts)
        cur.execute("SELECT id, name, value FROM events WHERE id < 3 ORDER BY id")
        assert cur.fetchall() == [(0, "n0", 0.0), (1, "n1", 0.5), (2, "n2", 1.0)]
        # prepare + GetFlightInfo + DoGet share one planned DataFrame: one session was built.
        assert len(factory.contexts) == before + 1
        cur.execute("SELECT sum(id) AS total FROM events")
        assert cur.fetch_arrow_table().to_pylist() == [{"total": N * (N - 1) // 2}]
    doget = [r for r in audit_records(caplog) if r["rpc"] == "DoGet"]
    assert [(r["status"], r["plan_cached"], r["rows"]) for r in doget] == [("ok", True, 3), ("ok", True, 1)]


def test_adbc_headers_carry_the_time_range(uri: str, factory: RecordingFactory) -> None:
    prefix = adbc_driver_flightsql.DatabaseOptions.RPC_CALL_HEADER_PREFIX.value
    db_kwargs = {
        prefix + "query_range_begin": "2024-01-01T00:00:00Z",
        prefix + "query_range_end": "2024-01-01T00:00:01Z",
        prefix + "limit": "4",
    }
    with adbc.connect(uri, db_kwargs=db_kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM events ORDER BY id")
        assert cur.fetchall() == [(0,), (1,), (2,), (3,)]
    assert factory.contexts[-1].query_range == (BASE_NS, BASE_NS + 1_000_000_000)
    assert factory.contexts[-1].limit == 4


# ------------------------------------------------------------------------------------------------
# plain pyarrow.flight


def test_flight_info_schema_matches_the_stream(client: flight.FlightClient, factory: RecordingFactory) -> None:
    before = len(factory.contexts)
    info = client.get_flight_info(
        command_descriptor(
            protocol.CommandStatementQuery(query="SELECT * FROM events WHERE id % 100000 = 0 ORDER BY id")
        )
    )
    assert info.schema == HYDRATED_EVENTS
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.schema == info.schema
    assert table.column("id").to_pylist() == list(range(0, N, 100_000))
    assert len(factory.contexts) == before + 1


def test_get_schema_and_prepared_statement_commands(client: flight.FlightClient) -> None:
    descriptor = command_descriptor(
        protocol.CommandPreparedStatementQuery(prepared_statement_handle=b"SELECT name FROM events")
    )
    assert client.get_schema(descriptor).schema == pa.schema([("name", pa.string())])
    info = client.get_flight_info(descriptor)
    assert client.do_get(info.endpoints[0].ticket).read_all().num_rows == N


def test_raw_ticket_statement_query_is_accepted(client: flight.FlightClient) -> None:
    raw = mm.TicketStatementQuery(statement_handle=b"SELECT 40 + 2 AS answer").SerializeToString()
    assert client.do_get(flight.Ticket(raw)).read_all().to_pylist() == [{"answer": 42}]


def test_limit_header_limits_rows(client: flight.FlightClient, factory: RecordingFactory) -> None:
    reader = client.do_get(statement_ticket("SELECT id FROM events ORDER BY id DESC"), call_options(limit="5"))
    assert reader.read_all().column("id").to_pylist() == [N - 1, N - 2, N - 3, N - 4, N - 5]
    assert factory.contexts[-1].limit == 5
