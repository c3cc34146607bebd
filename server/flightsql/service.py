"""spanlake's Arrow Flight SQL server, on pyarrow.flight.

RPCs (see docs/flightsql.md for the full matrix):
* `DoGet(TicketStatementQuery)` with the SQL as handle: the micromegas client's only call.
* `GetFlightInfo`/`GetSchema` for `CommandStatementQuery` and `CommandPreparedStatementQuery`: plans
  the SQL and announces its real schema (ADBC checks it against the stream); the ticket carries the SQL.
* `DoAction` CreatePreparedStatement (handle = the SQL), ClosePreparedStatement, CloseSession.
* `DoPut` of CommandPreparedStatementQuery (parameter values: a new handle holding SQL and values)
  and of CommandStatementIngest (the micromegas client's bulk_ingest, through the `bulk_ingest` hook).
* GetSqlInfo, GetCatalogs, GetDbSchemas, GetTables (with schemas), GetTableTypes.
* Anything else answers UNIMPLEMENTED.

Handles are stateless, so several server processes can sit behind one (balanced) address; a
short-lived plan cache saves replanning when the calls of one query land on the same process.

Handlers raise `failures.Failure`; `_rpc` turns it into the exception pyarrow needs for the status.

Each statement runs through the query runner every door shares (`lakehouse.query.runner`): on a
thread of its own (a large stack, and stoppable), the handler waiting for each step, stopped when the
client cancels or goes away, when it runs past its time limit, or when the server shuts down; behind
the size and depth limits and the deny list; audited and classified as every door's queries.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from spanlake import tracing
from spanlake.lakehouse.cluster.outcome import Declined
from spanlake.lakehouse.query import failures
from spanlake.lakehouse.query.admission import client_ip
from spanlake.lakehouse.query.context import Principal, SessionFactory
from spanlake.lakehouse.query.failures import Failure, UserError
from spanlake.lakehouse.query.limits import QueryLimits
from spanlake.lakehouse.query.runner import Query, QueryRequest, QueryRunner, ResultBatches
from spanlake.server.auth import Authenticator
from spanlake.server.flightsql import errors, metadata, protocol, sql_info
from spanlake.server.flightsql.headers import (
    MIDDLEWARE_KEY,
    CallState,
    HeaderError,
    QueryHeaders,
    RequestMiddlewareFactory,
    client_attribution,
    parse_query_headers,
)
from spanlake.server.flightsql.plan_cache import PlanCache, PlannedQuery
from spanlake.server.flightsql.statement import Statement, StatementError, read_parameters
from spanlake.server.flightsql.streaming import output_schema, result_batches

if TYPE_CHECKING:  # the engine imports Daft, an optional extra
    from spanlake.lakehouse.cluster.engine import QueryCluster

_log = logging.getLogger("spanlake.flightsql")

# A busy Python thread otherwise delays every stream by one 5 ms switch interval per message
# (python-stack-facts.md §5.3: ×19–×53 slowdowns); 0.1 ms brings that down to about ×2.
SWITCH_INTERVAL_SECONDS = 1e-4

_STATEMENT_COMMANDS = ("CommandStatementQuery", "CommandPreparedStatementQuery")
_METADATA_SCHEMAS: dict[str, Callable[[Any], pa.Schema]] = {
    "CommandGetSqlInfo": lambda _: sql_info.SCHEMA,
    "CommandGetCatalogs": lambda _: metadata.CATALOGS_SCHEMA,
    "CommandGetDbSchemas": lambda _: metadata.DB_SCHEMAS_SCHEMA,
    "CommandGetTables": metadata.tables_schema,
    "CommandGetTableTypes": lambda _: metadata.TABLE_TYPES_SCHEMA,
}
_ACTIONS = (
    ("CreatePreparedStatement", "Plan a query; the handle is the SQL, the schema its result's."),
    ("ClosePreparedStatement", "Release a prepared statement (handles are stateless: a no-op)."),
    ("CloseSession", "End the client's session (sessions are stateless: a no-op)."),
)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])
# Stores the rows a CommandStatementIngest sends into the named table; returns how many. Raises
# UserError for rows or a table it refuses (the client gets INVALID_ARGUMENT with the message).
BulkIngest = Callable[[str, pa.Table], int]


def _rpc(method: _Handler) -> _Handler:
    """Sends a `Failure` with its status, and any unexpected exception as a clean INTERNAL status
    (the traceback stays in the server log)."""

    @functools.wraps(method)
    def handler(self: FlightSqlServer, context: flight.ServerCallContext, *args: Any) -> Any:
        try:
            _refuse_fenced_key(context)
            return method(self, context, *args)
        except Failure as failure:
            raise errors.to_flight_error(failure) from None
        except errors.CLIENT_FACING:
            raise
        except Exception:
            error_id = str(uuid.uuid4())
            _log.exception("%s failed (query_id=%s)", method.__name__, error_id)
            raise errors.to_flight_error(failures.internal(f"internal error in {method.__name__}", error_id)) from None

    return handler  # type: ignore[return-value]


@dataclass(frozen=True)
class _Call:
    """What the middleware learned about the current call."""

    headers: dict[str, list[Any]]
    principal: Principal | None
    client: dict[str, str]


class FlightSqlServer(flight.FlightServerBase):
    """A Flight SQL server running its queries with `runner` (or a runner of its own over a session
    factory, within `limits`).

    It listens as soon as it is constructed (`location` like "grpc://127.0.0.1:0"; `.port` tells
    the bound port). `authenticator=None` disables auth.
    """

    def __init__(
        self,
        location: str,
        runner: QueryRunner | SessionFactory,
        authenticator: Authenticator | None,
        *,
        plan_cache: PlanCache | None = None,
        cluster: QueryCluster | None = None,
        bulk_ingest: BulkIngest | None = None,
        limits: QueryLimits | None = None,
    ) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        try:
            super().__init__(location, middleware={MIDDLEWARE_KEY: RequestMiddlewareFactory(authenticator)})
        except pa.ArrowException as err:
            # pyarrow only says "Server did not start properly"; the usual cause is a taken port
            # (Arrow's gRPC transport disables SO_REUSEPORT, so no two servers share a port).
            raise OSError(f"Flight SQL cannot listen on {location} (address in use?): {err}") from None
        self._runner = runner if isinstance(runner, QueryRunner) else QueryRunner(runner, limits)
        self._plans = plan_cache if plan_cache is not None else PlanCache()
        self._cluster = cluster
        self._bulk_ingest = bulk_ingest
        self._waiter: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def serve_in_thread(self) -> int:
        """Keeps serving from a background thread (no signal handlers); returns the bound port."""
        if self._waiter is None:
            self._waiter = threading.Thread(target=self.wait, name="flightsql-server", daemon=True)
            self._waiter.start()
        return self.port

    def shutdown(self) -> None:
        """Stops the queries under way (every door's: the runner is the process's), stops accepting
        calls and waits for the calls under way (call it from outside a handler)."""
        self._runner.shutdown()
        super().shutdown()
        if self._waiter is not None:
            self._waiter.join()
            self._waiter = None
        self._plans.clear()

    # -- RPCs -----------------------------------------------------------------------------------

    @_rpc
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        """A statement's schema and ticket (planned now), or a metadata command's."""
        kind, command = _descriptor_command(descriptor)
        if kind in _STATEMENT_COMMANDS:
            statement = _statement(kind, command)
            schema = self._prepare(context, statement, rpc="GetFlightInfo")
            ticket = protocol.pack(protocol.TicketStatementQuery(statement_handle=statement.handle))
            return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)
        schema = _metadata_schema(kind, command)
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(descriptor.command, [])], -1, -1)

    @_rpc
    def get_schema(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        """The schema of a statement (planned now) or of a metadata command's result."""
        kind, command = _descriptor_command(descriptor)
        if kind in _STATEMENT_COMMANDS:
            return flight.SchemaResult(self._prepare(context, _statement(kind, command), rpc="GetSchema"))
        return flight.SchemaResult(_metadata_schema(kind, command))

    @_rpc
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        """The rows of a statement ticket (streamed as they are made) or of a metadata command."""
        kind, command = _ticket_command(ticket.ticket)
        if kind == "TicketStatementQuery":
            return self._execute(context, _decode_handle(command.statement_handle))
        if kind in _STATEMENT_COMMANDS:
            return self._execute(context, _statement(kind, command))
        _metadata_schema(kind, command)  # refuses unsupported commands
        return flight.RecordBatchStream(self._metadata_table(context, kind, command))

    @_rpc
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[flight.Result]:
        """CreatePreparedStatement, ClosePreparedStatement, CloseSession."""
        if action.type == "CreatePreparedStatement":
            request = _action_body(action, "ActionCreatePreparedStatementRequest")
            schema = self._prepare(context, Statement.from_sql(request.query), rpc="CreatePreparedStatement")
            result = protocol.ActionCreatePreparedStatementResult(
                prepared_statement_handle=request.query.encode(), dataset_schema=schema.serialize().to_pybytes()
            )
            return [flight.Result(protocol.pack(result))]
        if action.type == "ClosePreparedStatement":
            _action_body(action, "ActionClosePreparedStatementRequest")
            return []
        if action.type == "CloseSession":
            return [flight.Result(protocol.close_session_result())]
        raise failures.unimplemented(f"action {action.type!r} is not supported")

    @_rpc
    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        """The actions `do_action` takes."""
        return list(_ACTIONS)

    @_rpc
    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        """Not supported."""
        raise failures.unimplemented("ListFlights is not supported")

    @_rpc
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        """Parameter values of a prepared statement, or the rows of a bulk ingest."""
        kind, command = _descriptor_command(descriptor)
        if kind == "CommandPreparedStatementQuery":
            self._bind(context, command, reader, writer)
            return
        if kind == "CommandStatementIngest" and self._bulk_ingest is not None:
            self._ingest(self._bulk_ingest, context, command, reader, writer)
            return
        raise failures.unimplemented(f"{kind} is not supported: spanlake is read-only")

    @_rpc
    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        """Not supported."""
        raise failures.unimplemented("DoExchange is not supported")

    # -- statements -------------------------------------------------------------------------------

    def _ingest(
        self,
        ingest: BulkIngest,
        context: flight.ServerCallContext,
        command: Any,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        """CommandStatementIngest (the micromegas client's bulk_ingest): admins only, as micromegas."""
        principal = _call(context).principal
        if principal is not None and not principal.is_admin:
            raise failures.permission_denied("bulk_ingest requires admin privileges")
        _log.info("do_put_statement_ingest table_name=%s", command.table)
        try:
            count = ingest(command.table, reader.read_all())
        except UserError as err:
            raise failures.log_failure(failures.invalid_argument(str(err))) from None
        writer.write(pa.py_buffer(protocol.do_put_update_result(count)))

    def _bind(
        self,
        context: flight.ServerCallContext,
        command: Any,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        """Binds one row of parameter values: answers a new handle holding the SQL and the values,
        planned now so a bad value fails here."""
        statement = _decode_handle(command.prepared_statement_handle)
        try:
            bound = statement.bind(read_parameters([chunk.data for chunk in reader]))
        except StatementError as err:
            raise failures.invalid_argument(str(err)) from None
        self._prepare(context, bound, rpc="DoPut")
        writer.write(pa.py_buffer(protocol.do_put_prepared_statement_result(bound.handle)))

    def _prepare(self, context: flight.ServerCallContext, statement: Statement, rpc: str) -> pa.Schema:
        """Plans (or finds the plan of) the statement and returns the schema the client will receive."""
        call = _call(context)
        query = self._open(context, call, statement.sql, rpc, f"flightsql.{rpc}")
        try:
            headers = _query_headers(query, call)
            planned = self._planned(query, call, statement, headers)
        finally:
            query.close()
        return output_schema(planned.schema, headers.preserve_dictionary)

    def _execute(self, context: flight.ServerCallContext, statement: Statement) -> flight.FlightDataStream:
        # The query (and its root span) lasts until its stream ends, after this handler returns: it is
        # closed by the stream (or here, on a failure before streaming).
        call = _call(context)
        query = self._open(context, call, statement.sql, "DoGet", "flightsql.do_get")
        try:
            headers = _query_headers(query, call)
            if _log.isEnabledFor(logging.DEBUG):  # its arguments are built only when it is written
                _log.debug(
                    "execute_query query_id=%s range=%s limit=%s user=%s client=%s sql=%.2000s",
                    query.query_id,
                    headers.range_text(),
                    headers.limit,
                    call.principal.name if call.principal else "",
                    call.client,
                    statement.sql,
                )
            with tracing.attach(query.span.context):
                on_cluster = self._on_cluster(query, call, statement, headers)
                if on_cluster is not None:
                    return on_cluster
                return self._stream(query, call, statement, headers)
        except BaseException:
            query.close()
            raise

    def _open(self, context: flight.ServerCallContext, call: _Call, sql: str, rpc: str, span: str) -> Query:
        """The statement's query, stopped when the client cancels or goes away."""
        return self._runner.open(QueryRequest(rpc, span, sql, call.principal, call.client), context.is_cancelled)

    def _stream(
        self, query: Query, call: _Call, statement: Statement, headers: QueryHeaders
    ) -> flight.FlightDataStream:
        query.check_limits()
        cached = self._plans.get(self._plan_key(call, statement, headers), take=True)
        query.audit.plan_cached = cached is not None
        planned = None if cached is None else (cached.df, cached.ctx)
        # Planned (the session built inside the planning span: its table functions take it as parent)
        # and executing in one step. The first batch comes in a step of its own, once DoGet has sent the
        # schema: it may wait for room in the result buffer, and the client's DoGet returns on the schema.
        started = query.run(query.start, statement.sql, statement.param_values(), headers.limit, planned)
        schema = output_schema(started.schema, headers.preserve_dictionary)
        reader = started.results

        def end() -> None:
            reader.close()
            query.close()

        fetch = functools.partial(next, _stream_batches(query, reader), None)
        return flight.GeneratorStream(schema, result_batches(fetch, schema, query.audit, end))

    def _on_cluster(
        self, query: Query, call: _Call, statement: Statement, headers: QueryHeaders
    ) -> flight.FlightDataStream | None:
        """The query's stream from the query cluster, or None when DataFusion runs it (the audit says why)."""
        if self._cluster is None or statement.parameters is not None:
            return None
        query.check_limits()
        # The session is built only for what building it checks (the deny list), as for DataFusion.
        query.run(query.session)
        with tracing.async_span("flightsql.cluster"):
            outcome = query.run(self._cluster.try_run, statement.sql, headers.query_range, headers.limit)
        if isinstance(outcome, Declined):
            query.audit.engine_note = outcome.reason
            return None
        query.audit.engine = "cluster"
        query.executing()
        schema = output_schema(outcome.schema, headers.preserve_dictionary)

        def fetch() -> pa.RecordBatch | None:
            batch = query.run(next, outcome.batches, None)
            return None if batch is None else query.count(batch)

        return flight.GeneratorStream(schema, result_batches(fetch, schema, query.audit, query.close))

    def _planned(self, query: Query, call: _Call, statement: Statement, headers: QueryHeaders) -> PlannedQuery:
        """The statement's plan, found in the plan cache or planned now and kept there for its DoGet."""
        query.check_limits()
        key = self._plan_key(call, statement, headers)
        planned = self._plans.get(key, take=False)
        if planned is not None:
            query.audit.plan_cached = True
            return planned
        # The session is built inside the planning span: its table functions take it as parent.
        df = query.run(query.plan, statement.sql, statement.param_values(), headers.limit)
        planned = PlannedQuery(df, df.schema(), query.session_context)
        self._plans.put(key, planned)
        return planned

    @staticmethod
    def _plan_key(call: _Call, statement: Statement, headers: QueryHeaders) -> tuple:
        """What a plan in the cache is for: the statement, its range and row limit, who asks."""
        return (statement.handle, headers.query_range, headers.limit, call.principal)

    # -- metadata -------------------------------------------------------------------------------

    def _metadata_table(self, context: flight.ServerCallContext, kind: str, command: Any) -> pa.Table:
        if kind == "CommandGetSqlInfo":
            return sql_info.sql_info_table(command.info)
        if kind == "CommandGetTableTypes":
            return metadata.table_types()
        call = _call(context)
        # On a query's thread, as statements: its stack, its time limit, stopped at shutdown; no audit.
        request = QueryRequest(kind, "flightsql.metadata", "", call.principal, call.client, audited=False)
        query = self._runner.open(request, context.is_cancelled)
        try:
            headers = _query_headers(query, call)
            return query.run(_metadata_in_session, query, kind, command, headers)
        finally:
            query.close()


def _stream_batches(query: Query, reader: ResultBatches) -> Iterator[pa.RecordBatch]:
    """The stream's batches, taken a run at a time (`ResultBatches.next_batches`): a small result and
    its end come in one step."""
    while True:
        run = query.run(reader.next_batches)
        yield from run.batches
        if run.ended:
            return
        # Sent: dropped before the next run waits for room in the result buffer, which counts them no
        # longer (kept, they would be held uncounted).
        del run


def _metadata_in_session(query: Query, kind: str, command: Any, headers: QueryHeaders) -> pa.Table:
    """GetCatalogs, GetDbSchemas or GetTables answered from a session built for the request."""
    ctx = query.session()
    if kind == "CommandGetCatalogs":
        return metadata.catalogs(ctx)
    if kind == "CommandGetDbSchemas":
        return metadata.db_schemas(ctx, command)
    return metadata.tables(ctx, command, headers.preserve_dictionary)


def _refuse_fenced_key(context: flight.ServerCallContext) -> None:
    """UNAUTHENTICATED when the call's key may not be used from its peer's address (its CIDR allowlist;
    the middleware does not see the peer, so every RPC checks it first)."""
    state: CallState | None = context.get_middleware(MIDDLEWARE_KEY)
    if state is not None and state.principal is not None and not state.principal.allows_peer(client_ip(context.peer())):
        raise flight.FlightUnauthenticatedError("invalid API key")


def _call(context: flight.ServerCallContext) -> _Call:
    state: CallState = context.get_middleware(MIDDLEWARE_KEY)
    return _Call(state.headers, state.principal, client_attribution(state.headers, context.peer()))


def _query_headers(query: Query, call: _Call) -> QueryHeaders:
    """The call's query headers, the query's range and row limit; INVALID_ARGUMENT (audited) if bad."""
    try:
        headers = parse_query_headers(call.headers)
    except HeaderError as err:
        raise query.fail(failures.invalid_argument(str(err), query.query_id)) from None
    query.set_range(headers.query_range, headers.limit)
    return headers


def _statement(kind: str, command: Any) -> Statement:
    if kind == "CommandStatementQuery":
        return Statement.from_sql(command.query)
    return _decode_handle(command.prepared_statement_handle)


def _decode_handle(handle: bytes) -> Statement:
    try:
        return Statement.from_handle(handle)
    except StatementError as err:
        raise failures.invalid_argument(str(err)) from None


def _descriptor_command(descriptor: flight.FlightDescriptor) -> tuple[str, Any]:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise failures.invalid_argument("expected a Flight SQL command descriptor")
    try:
        return protocol.unpack(descriptor.command)
    except protocol.ProtocolError as err:
        raise failures.invalid_argument(f"malformed Flight SQL command: {err}") from None


def _ticket_command(data: bytes) -> tuple[str, Any]:
    try:
        return protocol.unpack(data)
    except protocol.ProtocolError:
        pass
    try:
        return "TicketStatementQuery", protocol.parse_raw_ticket(data)
    except protocol.ProtocolError as err:
        raise failures.invalid_argument(str(err)) from None


def _metadata_schema(kind: str, command: Any) -> pa.Schema:
    schema_of = _METADATA_SCHEMAS.get(kind)
    if schema_of is None or command is None:
        raise failures.unimplemented(f"{kind} is not supported")
    return schema_of(command)


def _action_body(action: flight.Action, expected: str) -> Any:
    try:
        kind, body = protocol.unpack(action.body.to_pybytes())
    except protocol.ProtocolError as err:
        raise failures.invalid_argument(f"malformed {action.type} body: {err}") from None
    if kind != expected or body is None:
        raise failures.invalid_argument(f"{action.type} expects {expected}, got {kind}")
    return body


def run_flightsql(host: str, port: int, session_factory: SessionFactory, authenticator: Authenticator | None) -> None:
    """Serves Flight SQL on host:port until SIGINT/SIGTERM.

    One process per port: Arrow's gRPC transport turns SO_REUSEPORT off. To spread clients over
    several processes, run each on its own port behind a TCP (L4) balancer; handles are stateless,
    so any call may land on any process (docs/flightsql.md)."""
    address = f"[{host}]" if ":" in host else host
    server = FlightSqlServer(f"grpc://{address}:{port}", session_factory, authenticator)
    _log.info(
        "Flight SQL listening on %s:%d (auth %s)",
        host,
        server.port,
        "enabled" if authenticator is not None else "disabled",
    )
    # pyarrow's serve() returns on the signals that have a Python handler: give SIGTERM the same
    # one as SIGINT (KeyboardInterrupt), so both end in a graceful shutdown.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:
        server.serve()
    except KeyboardInterrupt:
        _log.info("Flight SQL stopping")
    finally:
        server.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
