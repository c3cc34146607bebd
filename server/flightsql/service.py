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

Handlers raise `errors.Failure`; `_rpc` turns it into the exception pyarrow needs for the status.

Each statement is planned and executed on a thread of its own (`QueryThread`: a large stack, and
stoppable): the handler waits for each step, and stops the query when the client cancels or goes
away, when it runs past its time limit, or when the server shuts down. SQL over the size or depth
limits never reaches the planner (`limits.QueryLimits`).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import datafusion
import pyarrow as pa
import pyarrow.flight as flight

from spanlake import tracing
from spanlake.lakehouse.cluster.outcome import Declined
from spanlake.lakehouse.query import plan_spans, slow_queries
from spanlake.server.auth import Authenticator, Principal
from spanlake.server.flightsql import errors, metadata, protocol, sql_info
from spanlake.server.flightsql.audit import QueryAudit
from spanlake.server.flightsql.errors import Failure, UserError
from spanlake.server.flightsql.headers import (
    MIDDLEWARE_KEY,
    CallState,
    HeaderError,
    QueryHeaders,
    RequestMiddlewareFactory,
    client_attribution,
    parse_query_headers,
)
from spanlake.server.flightsql.limits import QueryLimits
from spanlake.server.flightsql.plan_cache import PlanCache, PlannedQuery
from spanlake.server.flightsql.query_thread import QueryThread
from spanlake.server.flightsql.session import QueryContext, QueryDenied, SessionFactory
from spanlake.server.flightsql.statement import Statement, StatementError, read_parameters
from spanlake.server.flightsql.streaming import DataFusionBatches, output_schema, result_batches

if TYPE_CHECKING:  # the engine imports Daft, an optional extra
    from spanlake.lakehouse.cluster.engine import QueryCluster

_log = logging.getLogger("spanlake.flightsql")

# A busy Python thread otherwise delays every stream by one 5 ms switch interval per message
# (python-stack-facts.md §5.3: ×19–×53 slowdowns); 0.1 ms brings that down to about ×2.
SWITCH_INTERVAL_SECONDS = 1e-4

# The server is read-only: DDL, DML and SET statements are refused at planning.
_READ_ONLY = datafusion.SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)

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
            return method(self, context, *args)
        except Failure as failure:
            raise failure.to_flight_error() from None
        except errors.CLIENT_FACING:
            raise
        except Exception:
            error_id = str(uuid.uuid4())
            _log.exception("%s failed (query_id=%s)", method.__name__, error_id)
            raise errors.internal(f"internal error in {method.__name__}", error_id).to_flight_error() from None

    return handler  # type: ignore[return-value]


@dataclass(frozen=True)
class _Call:
    """What the middleware learned about the current call."""

    headers: dict[str, list[Any]]
    principal: Principal | None
    client: dict[str, str]


class FlightSqlServer(flight.FlightServerBase):
    """A Flight SQL server answering from sessions built per query by `session_factory`.

    It listens as soon as it is constructed (`location` like "grpc://127.0.0.1:0"; `.port` tells
    the bound port). `authenticator=None` disables auth.
    """

    def __init__(
        self,
        location: str,
        session_factory: SessionFactory,
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
        self._session_factory = session_factory
        self._plans = plan_cache if plan_cache is not None else PlanCache()
        self._cluster = cluster
        self._bulk_ingest = bulk_ingest
        self._limits = limits if limits is not None else QueryLimits()
        self._waiter: threading.Thread | None = None
        self._queries: set[QueryThread] = set()
        self._queries_lock = threading.Lock()
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    def serve_in_thread(self) -> int:
        """Keeps serving from a background thread (no signal handlers); returns the bound port."""
        if self._waiter is None:
            self._waiter = threading.Thread(target=self.wait, name="flightsql-server", daemon=True)
            self._waiter.start()
        return self.port

    def shutdown(self) -> None:
        """Stops the queries under way, stops accepting calls and waits for the calls under way
        (call it from outside a handler)."""
        with self._queries_lock:
            self._stopping = True
            running = list(self._queries)
        for query in running:
            query.stop(errors.unavailable("the server is shutting down"))
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
        kind, command = _descriptor_command(descriptor)
        if kind in _STATEMENT_COMMANDS:
            return flight.SchemaResult(self._prepare(context, _statement(kind, command), rpc="GetSchema"))
        return flight.SchemaResult(_metadata_schema(kind, command))

    @_rpc
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        kind, command = _ticket_command(ticket.ticket)
        if kind == "TicketStatementQuery":
            return self._execute(context, _decode_handle(command.statement_handle))
        if kind in _STATEMENT_COMMANDS:
            return self._execute(context, _statement(kind, command))
        _metadata_schema(kind, command)  # refuses unsupported commands
        return flight.RecordBatchStream(self._metadata_table(context, kind, command))

    @_rpc
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[flight.Result]:
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
        raise errors.unimplemented(f"action {action.type!r} is not supported")

    @_rpc
    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(_ACTIONS)

    @_rpc
    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        raise errors.unimplemented("ListFlights is not supported")

    @_rpc
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        kind, command = _descriptor_command(descriptor)
        if kind == "CommandPreparedStatementQuery":
            self._bind(context, command, reader, writer)
            return
        if kind == "CommandStatementIngest" and self._bulk_ingest is not None:
            self._ingest(self._bulk_ingest, context, command, reader, writer)
            return
        raise errors.unimplemented(f"{kind} is not supported: spanlake is read-only")

    @_rpc
    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        raise errors.unimplemented("DoExchange is not supported")

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
            raise errors.permission_denied("bulk_ingest requires admin privileges")
        _log.info("do_put_statement_ingest table_name=%s", command.table)
        try:
            count = ingest(command.table, reader.read_all())
        except UserError as err:
            raise errors.log_failure(errors.invalid_argument(str(err))) from None
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
            raise errors.invalid_argument(str(err)) from None
        self._prepare(context, bound, rpc="DoPut")
        writer.write(pa.py_buffer(protocol.do_put_prepared_statement_result(bound.handle)))

    def _prepare(self, context: flight.ServerCallContext, statement: Statement, rpc: str) -> pa.Schema:
        """Plans (or finds the plan of) the statement and returns the schema the client will receive."""
        with slow_queries.begin_query_span(f"flightsql.{rpc}", dynamic=True) as query_span:
            call = _call(context)
            audit = QueryAudit(str(uuid.uuid4()), rpc, statement.sql, call.client, call.principal)
            query_span.set_figures(query_id=audit.query_id)
            headers = _query_headers(call, audit)
            query = self._open_query(context, audit)
            try:
                planned = self._planned(query, call, statement, headers, audit, take=False)
            finally:
                self._close_query(query)
            return output_schema(planned.schema, headers.preserve_dictionary)

    def _execute(self, context: flight.ServerCallContext, statement: Statement) -> flight.FlightDataStream:
        # The query's span lasts until its stream ends, after this handler returns: it is ended by
        # the stream (or here, on a failure before streaming).
        query_span = slow_queries.begin_query_span("flightsql.do_get")
        try:
            with tracing.attach(query_span.context):
                return self._execute_in_span(context, statement, query_span)
        except BaseException:
            query_span.end()
            raise

    def _execute_in_span(
        self, context: flight.ServerCallContext, statement: Statement, query_span: slow_queries.QuerySpan
    ) -> flight.FlightDataStream:
        call = _call(context)
        sql = statement.sql
        audit = QueryAudit(str(uuid.uuid4()), "DoGet", sql, call.client, call.principal)
        query_span.set_figures(query_id=audit.query_id)
        headers = _query_headers(call, audit)
        _log.debug(
            "execute_query query_id=%s range=%s limit=%s user=%s client=%s sql=%.2000s",
            audit.query_id,
            headers.range_text(),
            headers.limit,
            call.principal.name if call.principal else "",
            call.client,
            sql,
        )
        query = self._open_query(context, audit)
        try:
            on_cluster = self._on_cluster(query, call, statement, headers, audit, query_span)
            if on_cluster is not None:
                return on_cluster
            return self._stream(query, call, statement, headers, audit, query_span)
        except BaseException:
            self._close_query(query)
            raise

    def _stream(
        self,
        query: QueryThread,
        call: _Call,
        statement: Statement,
        headers: QueryHeaders,
        audit: QueryAudit,
        query_span: slow_queries.QuerySpan,
    ) -> flight.FlightDataStream:
        planned = self._planned(query, call, statement, headers, audit, take=True)
        schema = output_schema(planned.schema, headers.preserve_dictionary)
        execute_span = tracing.begin_async_span("flightsql.execute")
        try:
            with tracing.attach(execute_span.context):
                stream = query.run(plan_spans.PlanStream.start, planned.ctx, planned.df)
        except Failure as failure:
            execute_span.end()
            raise _failed(audit, failure) from None
        except Exception as exc:
            execute_span.end()
            raise _failed(audit, errors.classify("error executing plan", exc, audit.query_id)) from None

        reader, executed = DataFusionBatches(stream, execute_span.context), stream.executed
        del stream  # the reader holds the only reference, dropped when the stream ends

        def end() -> None:
            reader.close()
            self._close_query(query)
            query_span.when_slow(functools.partial(plan_spans.record_operator_spans, executed, execute_span.context))
            query_span.set_figures(
                planning_ms=round(audit.planning_ms, 3),
                execution_ms=round(audit.execution_ms, 3),
                rows=audit.rows,
                bytes=audit.bytes,
            )

        batches = result_batches(
            functools.partial(query.run, reader.next_batch), schema, audit, (execute_span, query_span), end
        )
        return flight.GeneratorStream(schema, batches)

    def _on_cluster(
        self,
        query: QueryThread,
        call: _Call,
        statement: Statement,
        headers: QueryHeaders,
        audit: QueryAudit,
        query_span: slow_queries.QuerySpan,
    ) -> flight.FlightDataStream | None:
        """The query's stream from the query cluster, or None when DataFusion runs it (the audit says why)."""
        if self._cluster is None or statement.parameters is not None:
            return None
        self._check_limits(statement.sql, audit)
        try:
            # The session is built only for what building it checks (the deny list), as for DataFusion.
            query.run(self._session, call, statement.sql, headers, audit)
            with tracing.async_span("flightsql.cluster"):
                outcome = query.run(self._cluster.try_run, statement.sql, headers.query_range, headers.limit)
        except Failure as failure:
            raise _failed(audit, failure) from None
        if isinstance(outcome, Declined):
            audit.engine_note = outcome.reason
            return None
        audit.engine = "cluster"
        schema = output_schema(outcome.schema, headers.preserve_dictionary)
        fetch = functools.partial(query.run, next, outcome.batches, None)
        batches = result_batches(fetch, schema, audit, (query_span,), functools.partial(self._close_query, query))
        return flight.GeneratorStream(schema, batches)

    def _check_limits(self, sql: str, audit: QueryAudit) -> None:
        """INVALID_ARGUMENT for SQL past the size or depth limits, before any planner sees it."""
        problem = self._limits.sql_problem(sql)
        if problem is not None:
            raise _failed(audit, errors.invalid_argument(problem, audit.query_id))

    def _planned(
        self,
        query: QueryThread,
        call: _Call,
        statement: Statement,
        headers: QueryHeaders,
        audit: QueryAudit,
        take: bool,
    ) -> PlannedQuery:
        self._check_limits(statement.sql, audit)
        key = (statement.handle, headers.query_range, headers.limit, call.principal.name if call.principal else None)
        planned = self._plans.get(key, take=take)
        if planned is not None:
            audit.plan_cached = True
            return planned
        started = time.perf_counter()
        # The session is built inside the planning span: its table functions take it as parent.
        with tracing.async_span("flightsql.plan"):
            try:
                planned = query.run(self._plan_in_session, call, statement, headers, audit)
            except Failure as failure:
                audit.planning_ms = (time.perf_counter() - started) * 1000.0
                raise _failed(audit, failure) from None
        audit.planning_ms = (time.perf_counter() - started) * 1000.0
        if not take:
            self._plans.put(key, planned)
        return planned

    def _plan_in_session(
        self, call: _Call, statement: Statement, headers: QueryHeaders, audit: QueryAudit
    ) -> PlannedQuery:
        """The query's session, and the statement planned in it (table functions run here); raises Failure."""
        ctx = self._session(call, statement.sql, headers, audit)
        return _plan(ctx, statement, headers.limit, audit.query_id)

    def _session(self, call: _Call, sql: str, headers: QueryHeaders, audit: QueryAudit) -> datafusion.SessionContext:
        """The query's session (the deny list is checked as it is built); raises Failure."""
        query_context = QueryContext(
            audit.query_id, headers.query_range, headers.limit, call.principal, call.client, sql, audit.sql_hash
        )
        try:
            return self._session_factory(query_context)
        except QueryDenied as denied:
            raise errors.denied(str(denied)) from None
        except Exception as exc:
            raise errors.classify("error building session context", exc, audit.query_id) from None

    def _open_query(self, context: flight.ServerCallContext, audit: QueryAudit) -> QueryThread:
        """A thread for the query, stopped when the client cancels or goes away, or at its deadline."""
        try:
            return self._query_thread(context, audit.query_id)
        except Failure as failure:
            raise _failed(audit, failure) from None

    def _query_thread(self, context: flight.ServerCallContext, query_id: str) -> QueryThread:
        """A stoppable thread for a query (or a metadata request); UNAVAILABLE once shutting down."""
        timeout = self._limits.timeout_seconds
        deadline = time.monotonic() + timeout if timeout > 0 else None

        def should_stop() -> Failure | None:
            if context.is_cancelled():
                return errors.cancelled("the client cancelled the query or went away", query_id)
            if deadline is not None and time.monotonic() > deadline:
                return errors.deadline_exceeded(
                    f"the query ran past its time limit of {timeout:g} s (SPANLAKE_QUERY_TIMEOUT_SECONDS)", query_id
                )
            return None

        query = QueryThread(should_stop)
        with self._queries_lock:
            if not self._stopping:
                self._queries.add(query)
                return query
        query.close()
        raise errors.unavailable("the server is shutting down", query_id)

    def _close_query(self, query: QueryThread) -> None:
        query.close()
        with self._queries_lock:
            self._queries.discard(query)

    # -- metadata -------------------------------------------------------------------------------

    def _metadata_table(self, context: flight.ServerCallContext, kind: str, command: Any) -> pa.Table:
        if kind == "CommandGetSqlInfo":
            return sql_info.sql_info_table(command.info)
        if kind == "CommandGetTableTypes":
            return metadata.table_types()
        call = _call(context)
        query_id = str(uuid.uuid4())
        try:
            headers = parse_query_headers(call.headers)
        except HeaderError as err:
            raise errors.log_failure(errors.invalid_argument(str(err), query_id)) from None
        # On a query's thread, as statements: its stack, its time limit, stopped at shutdown.
        try:
            query = self._query_thread(context, query_id)
        except Failure as failure:
            raise errors.log_failure(failure) from None
        try:
            return query.run(self._metadata_in_session, call, kind, command, headers, query_id)
        except Failure as failure:
            raise errors.log_failure(failure) from None
        finally:
            self._close_query(query)

    def _metadata_in_session(
        self, call: _Call, kind: str, command: Any, headers: QueryHeaders, query_id: str
    ) -> pa.Table:
        """GetCatalogs, GetDbSchemas or GetTables answered from a session built for the request."""
        try:
            ctx = self._session_factory(
                QueryContext(query_id, headers.query_range, headers.limit, call.principal, call.client)
            )
        except Exception as exc:
            raise errors.classify("error building session context", exc, query_id) from None
        if kind == "CommandGetCatalogs":
            return metadata.catalogs(ctx)
        if kind == "CommandGetDbSchemas":
            return metadata.db_schemas(ctx, command)
        return metadata.tables(ctx, command, headers.preserve_dictionary)


def _plan(ctx: datafusion.SessionContext, statement: Statement, limit: int | None, query_id: str) -> PlannedQuery:
    """Plans the SQL (table functions run here) with its bound values and the optional row limit;
    raises Failure."""
    try:
        df = ctx.sql(statement.sql, _READ_ONLY, param_values=statement.param_values())
    except Exception as exc:
        raise errors.classify("error building dataframe", exc, query_id) from None
    if limit is not None:
        try:
            df = df.limit(limit)
        except Exception as exc:
            raise errors.classify("error building dataframe with limit", exc, query_id) from None
    return PlannedQuery(df, df.schema(), ctx)


def _call(context: flight.ServerCallContext) -> _Call:
    state: CallState = context.get_middleware(MIDDLEWARE_KEY)
    return _Call(state.headers, state.principal, client_attribution(state.headers, context.peer()))


def _query_headers(call: _Call, audit: QueryAudit) -> QueryHeaders:
    try:
        headers = parse_query_headers(call.headers)
    except HeaderError as err:
        raise _failed(audit, errors.invalid_argument(str(err), audit.query_id)) from None
    audit.headers = headers
    return headers


def _failed(audit: QueryAudit, failure: Failure) -> Failure:
    """Logs the failure and writes the query's audit record; returns the failure, to be raised."""
    audit.fail(failure)
    return errors.log_failure(failure)


def _statement(kind: str, command: Any) -> Statement:
    if kind == "CommandStatementQuery":
        return Statement.from_sql(command.query)
    return _decode_handle(command.prepared_statement_handle)


def _decode_handle(handle: bytes) -> Statement:
    try:
        return Statement.from_handle(handle)
    except StatementError as err:
        raise errors.invalid_argument(str(err)) from None


def _descriptor_command(descriptor: flight.FlightDescriptor) -> tuple[str, Any]:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise errors.invalid_argument("expected a Flight SQL command descriptor")
    try:
        return protocol.unpack(descriptor.command)
    except protocol.ProtocolError as err:
        raise errors.invalid_argument(f"malformed Flight SQL command: {err}") from None


def _ticket_command(data: bytes) -> tuple[str, Any]:
    try:
        return protocol.unpack(data)
    except protocol.ProtocolError:
        pass
    try:
        return "TicketStatementQuery", protocol.parse_raw_ticket(data)
    except protocol.ProtocolError as err:
        raise errors.invalid_argument(str(err)) from None


def _metadata_schema(kind: str, command: Any) -> pa.Schema:
    schema_of = _METADATA_SCHEMAS.get(kind)
    if schema_of is None or command is None:
        raise errors.unimplemented(f"{kind} is not supported")
    return schema_of(command)


def _action_body(action: flight.Action, expected: str) -> Any:
    try:
        kind, body = protocol.unpack(action.body.to_pybytes())
    except protocol.ProtocolError as err:
        raise errors.invalid_argument(f"malformed {action.type} body: {err}") from None
    if kind != expected or body is None:
        raise errors.invalid_argument(f"{action.type} expects {expected}, got {kind}")
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
