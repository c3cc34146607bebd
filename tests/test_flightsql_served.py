"""Every Flight SQL RPC spanlake implements, against the real lakehouse session of a running
`spanlake serve` holding micromegas's Rust fixtures: plain pyarrow.flight, the ADBC driver
(metadata, statements, prepared statements) and the micromegas client."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2
from harness import PostgresServer, SpanlakeServer
from micromegas.flightsql import FlightSql_pb2 as mm
from served_support import (
    EXPECTED,
    PROCESS_ID,
    READER_KEY,
    adbc_connect,
    flight_options,
    micromegas_client,
    served_lakehouse,
)
from test_flightsql_support import grpc_status

from spanlake.lakehouse.view_sets import GLOBAL_TABLES, VIEW_SETS
from spanlake.server.flightsql import protocol
from spanlake.server.flightsql.streaming import output_schema

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
STREAM_COUNT = len(EXPECTED["streams"])


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture
def client(served: SpanlakeServer) -> Iterator[flight.FlightClient]:
    with flight.connect(served.flightsql_url) as flight_client:
        yield flight_client


def _metadata(client: flight.FlightClient, command: object, key: str | None = None) -> pa.Table:
    """GetFlightInfo, then DoGet of its ticket; the stream has the announced schema."""
    options = flight_options() if key is None else flight_options(key)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(protocol.pack(command)), options)
    table = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert table.schema == info.schema
    return table


def _failure(run: object) -> tuple[str | None, str]:
    with pytest.raises(Exception) as caught:
        run()  # type: ignore[operator]
    return grpc_status(caught.value)


def _hydrated(name: str) -> pa.Schema:
    return output_schema(VIEW_SETS[name].schema, preserve_dictionary=False)


# ------------------------------------------------------------------------------------------------
# metadata commands


def test_get_sql_info(client: flight.FlightClient) -> None:
    table = _metadata(client, protocol.CommandGetSqlInfo(info=[0, 4, 504]))
    assert table.to_pylist() == [
        {"info_name": 0, "value": "spanlake"},
        {"info_name": 4, "value": True},
        {"info_name": 504, "value": '"'},
    ]


def test_get_catalogs_schemas_and_table_types(client: flight.FlightClient) -> None:
    assert _metadata(client, protocol.CommandGetCatalogs()).to_pylist() == [{"catalog_name": "datafusion"}]
    schemas = _metadata(client, protocol.CommandGetDbSchemas()).to_pylist()
    assert {"catalog_name": "datafusion", "db_schema_name": "public"} in schemas
    assert _metadata(client, protocol.CommandGetDbSchemas(db_schema_filter_pattern="pub%")).to_pylist() == [
        {"catalog_name": "datafusion", "db_schema_name": "public"}
    ]
    assert _metadata(client, protocol.CommandGetDbSchemas(catalog="other")).num_rows == 0
    types = _metadata(client, protocol.CommandGetTableTypes()).column("table_type").to_pylist()
    assert types == ["LOCAL TEMPORARY", "TABLE", "VIEW"]


def test_get_tables_lists_the_global_views(client: flight.FlightClient) -> None:
    public = _metadata(client, protocol.CommandGetTables(db_schema_filter_pattern="public"))
    assert public.column("table_name").to_pylist() == sorted(GLOBAL_TABLES)
    assert set(public.column("table_type").to_pylist()) == {"TABLE"}
    assert set(public.column("catalog_name").to_pylist()) == {"datafusion"}
    # The reader (no admin) sees the same tables.
    assert _metadata(client, protocol.CommandGetTables(db_schema_filter_pattern="public"), READER_KEY) == public


def test_get_tables_with_schema_announces_what_select_star_streams(
    client: flight.FlightClient, served: SpanlakeServer
) -> None:
    tables = _metadata(client, protocol.CommandGetTables(db_schema_filter_pattern="public", include_schema=True))
    schemas = {row["table_name"]: pa.ipc.read_schema(pa.py_buffer(row["table_schema"])) for row in tables.to_pylist()}
    assert schemas == {name: _hydrated(name) for name in GLOBAL_TABLES}
    streamed = micromegas_client(served).query_arrow("SELECT * FROM processes")
    assert streamed.schema == schemas["processes"] and streamed.num_rows == 1


def test_get_tables_filters(client: flight.FlightClient) -> None:
    named = _metadata(client, protocol.CommandGetTables(table_name_filter_pattern="str_ams"))
    assert named.column("table_name").to_pylist() == ["streams"]
    assert _metadata(client, protocol.CommandGetTables(table_types=["VIEW"])).num_rows == 0
    assert _metadata(client, protocol.CommandGetTables(catalog="")).num_rows == 0


def test_unimplemented_commands_are_named(client: flight.FlightClient) -> None:
    for command in (mm.CommandGetPrimaryKeys(table="processes"), mm.CommandGetXdbcTypeInfo()):
        wrapped = any_pb2.Any()
        wrapped.Pack(command)
        descriptor = flight.FlightDescriptor.for_command(wrapped.SerializeToString())
        name = type(command).__name__
        assert _failure(lambda d=descriptor: client.get_flight_info(d, flight_options())) == (
            "UNIMPLEMENTED",
            f"{name} is not supported",
        )


# ------------------------------------------------------------------------------------------------
# statements and prepared statements


def test_statement_flight_info_then_do_get(client: flight.FlightClient) -> None:
    sql = "SELECT stream_id, process_id FROM streams ORDER BY stream_id"
    descriptor = flight.FlightDescriptor.for_command(protocol.pack(protocol.CommandStatementQuery(query=sql)))
    info = client.get_flight_info(descriptor, flight_options())
    streams = _hydrated("streams")
    assert info.schema == pa.schema([streams.field("stream_id"), streams.field("process_id")])
    assert client.get_schema(descriptor, flight_options()).schema == info.schema
    table = client.do_get(info.endpoints[0].ticket, flight_options()).read_all()
    assert table.column("stream_id").to_pylist() == sorted(s["stream_id"] for s in EXPECTED["streams"])
    assert set(table.column("process_id").to_pylist()) == {PROCESS_ID}


def test_prepared_statement_create_execute_close(client: flight.FlightClient) -> None:
    sql = "SELECT count(*) AS n FROM streams"
    create = protocol.pack(protocol.ActionCreatePreparedStatementRequest(query=sql))
    [result] = client.do_action(flight.Action("CreatePreparedStatement", create), flight_options())
    _, prepared = protocol.unpack(result.body.to_pybytes())
    assert pa.ipc.read_schema(pa.py_buffer(prepared.dataset_schema)) == pa.schema(
        [pa.field("n", pa.int64(), nullable=False)]
    )
    command = protocol.CommandPreparedStatementQuery(prepared_statement_handle=prepared.prepared_statement_handle)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(protocol.pack(command)), flight_options())
    assert client.do_get(info.endpoints[0].ticket, flight_options()).read_all().to_pylist() == [{"n": STREAM_COUNT}]
    close = protocol.pack(
        protocol.ActionClosePreparedStatementRequest(prepared_statement_handle=prepared.prepared_statement_handle)
    )
    assert list(client.do_action(flight.Action("ClosePreparedStatement", close), flight_options())) == []
    [closed] = client.do_action(flight.Action("CloseSession", b""), flight_options())
    assert closed.body.to_pybytes() == protocol.close_session_result()
    actions = sorted(a.type for a in client.list_actions(flight_options()))
    assert {"ClosePreparedStatement", "CloseSession", "CreatePreparedStatement"} <= set(actions)


def test_bad_sql_is_an_invalid_argument(client: flight.FlightClient) -> None:
    code, message = _failure(
        lambda: client.do_get(
            flight.Ticket(protocol.pack(protocol.TicketStatementQuery(statement_handle=b"SELECT * FROM nowhere"))),
            flight_options(),
        ).read_all()
    )
    assert code == "INVALID_ARGUMENT" and "table 'datafusion.public.nowhere' not found" in message


def _bind(client: flight.FlightClient, sql: str, parameters: pa.Table) -> bytes:
    """CreatePreparedStatement, then DoPut of the parameter rows; returns the bound handle."""
    create = protocol.pack(protocol.ActionCreatePreparedStatementRequest(query=sql))
    [result] = client.do_action(flight.Action("CreatePreparedStatement", create), flight_options())
    _, prepared = protocol.unpack(result.body.to_pybytes())
    command = protocol.CommandPreparedStatementQuery(prepared_statement_handle=prepared.prepared_statement_handle)
    descriptor = flight.FlightDescriptor.for_command(protocol.pack(command))
    writer, reader = client.do_put(descriptor, parameters.schema, flight_options())
    with writer:
        writer.write_table(parameters)
        writer.done_writing()
        answer = reader.read()
    bound = protocol.DoPutPreparedStatementResult()
    bound.ParseFromString(answer.to_pybytes())
    return bound.prepared_statement_handle


def test_bound_parameters_through_pyarrow_flight(client: flight.FlightClient) -> None:
    [stream] = [s for s in EXPECTED["streams"] if "log" in s["tags"]]
    sql = "SELECT stream_id FROM streams WHERE process_id = $1 AND array_has(tags, $2)"
    handle = _bind(client, sql, pa.table({"process": [PROCESS_ID], "tag": ["log"]}))
    command = protocol.CommandPreparedStatementQuery(prepared_statement_handle=handle)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(protocol.pack(command)), flight_options())
    rows = client.do_get(info.endpoints[0].ticket, flight_options()).read_all().to_pylist()
    assert rows == [{"stream_id": stream["stream_id"]}]


def test_bad_parameter_bindings_are_invalid_arguments(client: flight.FlightClient) -> None:
    sql = "SELECT count(*) AS n FROM streams WHERE process_id = $1"
    two_rows = pa.table({"p": [PROCESS_ID, PROCESS_ID]})
    assert _failure(lambda: _bind(client, sql, two_rows)) == (
        "INVALID_ARGUMENT",
        "parameter binding takes exactly one row of values per execution, got 2",
    )
    code, message = _failure(lambda: _bind(client, "SELECT $1 + $2 AS x", pa.table({"a": [1]})))
    assert code == "INVALID_ARGUMENT" and "No value found for placeholder with name $2" in message
    garbage = protocol.CommandPreparedStatementQuery(prepared_statement_handle=b"\x00\x01")
    code, message = _failure(
        lambda: client.get_flight_info(flight.FlightDescriptor.for_command(protocol.pack(garbage)), flight_options())
    )
    assert (code, message) == ("INVALID_ARGUMENT", "malformed bound statement handle")


# ------------------------------------------------------------------------------------------------
# ADBC


def test_adbc_get_objects_and_table_schema(served: SpanlakeServer) -> None:
    with adbc_connect(served) as conn:
        assert conn.adbc_get_info()["vendor_name"] == "spanlake"
        assert conn.adbc_get_table_schema("log_entries") == _hydrated("log_entries")
        assert conn.adbc_get_table_schema("processes", db_schema_filter="public") == _hydrated("processes")
        assert sorted(conn.adbc_get_table_types()) == ["LOCAL TEMPORARY", "TABLE", "VIEW"]
        objects = conn.adbc_get_objects(db_schema_filter="public").read_all().to_pylist()
        assert [c["catalog_name"] for c in objects] == ["datafusion"]
        [public] = [s for s in objects[0]["catalog_db_schemas"] if s["db_schema_name"] == "public"]
        tables = {t["table_name"]: t for t in public["db_schema_tables"]}
        assert sorted(tables) == sorted(GLOBAL_TABLES)
        columns = [c["column_name"] for c in tables["streams"]["table_columns"]]
        assert columns == VIEW_SETS["streams"].schema.names
        shallow = conn.adbc_get_objects(depth="tables", table_name_filter="blocks").read_all().to_pylist()
        assert [t["table_name"] for s in shallow[0]["catalog_db_schemas"] for t in s["db_schema_tables"] or []] == [
            "blocks"
        ]


def test_adbc_cursor_executes_on_the_lakehouse(served: SpanlakeServer) -> None:
    with adbc_connect(served, key=READER_KEY) as conn, conn.cursor() as cur:
        cur.execute("SELECT exe FROM processes")
        assert cur.fetchall() == [(EXPECTED["process"]["process_info"]["exe"],)]
        cur.execute(f"SELECT count(*) FROM view_instance('async_events', '{PROCESS_ID}')")
        assert cur.fetchone()[0] > 0


def test_adbc_bound_parameters(served: SpanlakeServer) -> None:
    cpu = sorted(s["stream_id"] for s in EXPECTED["streams"] if "cpu" in s["tags"])
    with adbc_connect(served, key=READER_KEY) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT stream_id FROM streams WHERE process_id = $1 AND array_has(tags, $2) ORDER BY stream_id",
            parameters=(PROCESS_ID, "cpu"),
        )
        assert [row[0] for row in cur.fetchall()] == cpu
        cur.execute("SELECT count(*) FROM streams WHERE array_has(tags, $1)", parameters=("log",))
        assert cur.fetchall() == [(1,)]
        cur.execute("SELECT $1 * 2 AS doubled, $2 AS text", parameters=(21, "été"))
        assert cur.fetchall() == [(42, "été")]


# ------------------------------------------------------------------------------------------------
# the micromegas client


def test_micromegas_client_query_stream_and_prepared_statement(served: SpanlakeServer) -> None:
    client = micromegas_client(served, READER_KEY)
    frame = client.query("SELECT process_id, exe FROM processes")
    assert frame.to_dict("records") == [{"process_id": PROCESS_ID, "exe": EXPECTED["process"]["process_info"]["exe"]}]
    batches = list(client.query_stream("SELECT stream_id FROM streams"))
    assert sum(b.num_rows for b in batches) == STREAM_COUNT
    statement = client.prepare_statement("SELECT stream_id, tags FROM streams")
    streams = _hydrated("streams")
    assert statement.dataset_schema == pa.schema([streams.field("stream_id"), streams.field("tags")])
    assert sum(b.num_rows for b in client.prepared_statement_stream(statement)) == STREAM_COUNT


def test_flight_sql_listens_once_health_answers(spanlake_server: SpanlakeServer) -> None:
    """Clients start on `/health` (the harness, a container's check): Flight SQL then takes connections."""
    socket.create_connection(("127.0.0.1", spanlake_server.flightsql_port), timeout=1).close()
