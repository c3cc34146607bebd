"""The query runner every door uses: Flight SQL, the web UI's SQL page and APIs, the Perfetto download.

A door describes its query (`QueryRequest`: SQL, who asks, from where, the query range) and says how
to tell that its client went away; `QueryRunner.open` answers a `Query` that owns the rest, the same
for every door:

* admission: SQL over the size or depth limits never reaches the planner (`limits.QueryLimits`), the
  deny list is checked as the session is built (`admission`);
* the session: one per query from the runner's `SessionFactory` (the lakehouse's has a memory pool),
  SQL planned read-only with its bound parameter values; given back to a factory that takes sessions
  back (`give_back`) once the query's stream ended in it, so that a later query reuses it;
* results computed but not yet sent bounded per stream and in total (`result_buffer`): past the
  bounds the query waits for its client, then its time limit stops it;
* a thread of its own with a large stack (`query_thread.QueryThread`), stopped when the client goes
  away, at the time limit, or when the server shuts down (`QueryRunner.shutdown`);
* the audit record (`audit.QueryAudit`, rpc = the door) and error classification (`failures`);
* self-tracing: the query's root span (`slow_queries.begin_query_span`, under the slow-query rule: a
  slow query keeps its long spans, DataFusion's operators included, a fast one its root only) and its
  plan and execute children; every door's root spans are begun in `Query`, nowhere else.

Every step that can fail raises a `failures.Failure`, already audited and logged; the door only turns
it into its own status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import datafusion
import pyarrow as pa

from spanlake import tracing
from spanlake.lakehouse.query import failures, functions, plan_spans, slow_queries
from spanlake.lakehouse.query.audit import QueryAudit
from spanlake.lakehouse.query.context import Principal, QueryContext, QueryDenied, SessionFactory
from spanlake.lakehouse.query.failures import Failure
from spanlake.lakehouse.query.kept_plans import KeptPlans
from spanlake.lakehouse.query.limits import QueryLimits
from spanlake.lakehouse.query.query_thread import QueryThread, QueryThreads
from spanlake.lakehouse.query.result_buffer import ByteBudget, ResultBufferFull

T = TypeVar("T")
WATCH_SECONDS = 1.0
# `ResultBatches.next_batches` reads on while the batches it holds stay under this: a small result then
# comes with its end in one step (a step is a hand-off between threads, costly on a loaded machine).
# The result buffer counts only the last batch taken: a run holds at most this much more per stream.
READ_AHEAD_BYTES = 64 * 1024
# A hook running the statements DataFusion does not know (`view_ddl.ViewStatements`): their result, or
# None for any other statement.
StatementHook = Callable[[datafusion.SessionContext, str, Principal | None], datafusion.DataFrame | None]

# The server is read-only: DDL, DML and SET statements are refused at planning.
_FULL = "the result buffer of all queries (SPANLAKE_RESULT_BUFFER_MB), filled by clients not reading their results,"
READ_ONLY = datafusion.SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


@dataclasses.dataclass(frozen=True)
class QueryRequest:
    """What a door knows of a query: `door` names it in the audit (Flight SQL's RPC, `web.sql`, ...),
    `span` is its root span's name (its first dotted part prefixes the plan and execute spans)."""

    door: str
    span: str
    sql: str
    principal: Principal | None  # None when auth is off
    client: dict[str, str] = dataclasses.field(default_factory=dict)  # type, agent, ..., peer (as gRPC writes it)
    query_range: tuple[int, int] | None = None
    limit: int | None = None
    audited: bool = True  # False for Flight SQL's metadata requests, which have no statement


def arrow_bytes(data: pa.RecordBatch | pa.Table) -> int:
    """The bytes of a result's buffers. Not `nbytes`: pyarrow cannot measure string_view columns that
    way (DataFusion 55 casts to VARCHAR as string_view), and raised on every such result."""
    return data.get_total_buffer_size()


class QueryRunner:
    """Runs every door's queries with one set of limits and one session factory, and stops those under
    way at shutdown. Thread-safe."""

    def __init__(
        self,
        session_factory: SessionFactory,
        limits: QueryLimits | None = None,
        statements: StatementHook | None = None,
    ) -> None:
        """A runner building each query's session with `session_factory`, within `limits`; `statements`
        runs the statements DataFusion's parser does not know, before it plans."""
        self.session_factory = session_factory
        # A factory that reuses sessions takes back those whose query's stream ended (`session_pool.py`).
        self.give_back: Callable[[datafusion.SessionContext], None] | None = getattr(session_factory, "give_back", None)
        self.statements = statements
        self.limits = limits if limits is not None else QueryLimits()
        self.threads = QueryThreads()
        # Results computed, not yet sent, of all queries.
        self.result_budget = ByteBudget(self.limits.result_buffer_bytes, self.limits.result_buffer_wait_seconds, _FULL)
        self._queries: set[Query] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._watch: threading.Thread | None = None

    def open(self, request: QueryRequest, client_gone: Callable[[], bool]) -> Query:
        """A query on a thread of its own, stopped once `client_gone()` or at its time limit; raises
        (audited) UNAVAILABLE once the runner is shutting down. Close it with `Query.close`.
        `client_gone` is only called on the door's thread, while it waits for a step (see `Query`)."""
        query = Query(self, request, client_gone)
        with self._lock:
            if not self._stopping:
                self._queries.add(query)
                if self._watch is None:
                    self._watch = threading.Thread(target=self._watch_queries, name="spanlake-query-watch", daemon=True)
                    self._watch.start()
                return query
        failure = failures.unavailable("the server is shutting down", query.query_id)
        query.close()
        raise query.fail(failure)

    def shutdown(self) -> None:
        """Stops the queries under way, refuses new ones and ends the idle query threads."""
        with self._lock:
            self._stopping = True
            running = list(self._queries)
        for query in running:
            query.stop(failures.unavailable("the server is shutting down", query.query_id))
        self.threads.close()

    def _watch_queries(self) -> None:
        """Stops, every WATCH_SECONDS, the queries past their time limit: also those no step is running
        for (a Flight stream blocked in gRPC's write by a client that does not read), whose thread and
        result buffer then go back at once. Their clients are not asked (see `Query`)."""
        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                if self._stopping:
                    return
                queries = list(self._queries)
            for query in queries:
                query.stop_if_past_deadline()

    def release(self, query: Query) -> None:
        """Forgets a closed query (`Query.close` calls it)."""
        with self._lock:
            self._queries.discard(query)


class Query:
    """One query under way: its thread, session, audit record and root span.

    Its door's `client_gone` is asked only by the thread waiting for a step, which is the door's own
    (a gRPC handler, the event loop): Flight's `ServerCallContext.is_cancelled` reads the call's C++
    context, freed once the call ends, which can be before the query is closed (a cancelled stream's
    generator is closed later). The runner's watcher asked it from its own thread and killed the
    server with SIGSEGV after unread streams were cancelled (issue 28): it now checks the time limit only.
    """

    def __init__(self, runner: QueryRunner, request: QueryRequest, client_gone: Callable[[], bool]) -> None:
        """Opens the query's root span and thread (use `QueryRunner.open`)."""
        self.request = request
        self.query_id = str(uuid.uuid4())
        self.audit = QueryAudit(
            self.query_id, request.door, request.sql, request.client, request.principal, recorded=request.audited
        )
        self.audit.query_range, self.audit.limit = request.query_range, request.limit
        self.span = slow_queries.begin_query_span(request.span, dynamic=True)
        self.span.set_figures(query_id=self.query_id)
        self._span_prefix = request.span.partition(".")[0]
        self._runner = runner
        self._limits = runner.limits
        self._client_gone = client_gone
        timeout = self._limits.timeout_seconds
        self._deadline = time.monotonic() + timeout if timeout > 0 else None
        self._thread = QueryThread(runner.threads, self._should_stop)
        self._session: datafusion.SessionContext | None = None
        self._stream_ended_in_session = False  # its own session's stream ended: the session may serve again
        self._executing_since: float | None = None
        self._results: ResultBatches | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def _should_stop(self) -> Failure | None:
        """Why the query must stop, if it must (the door's thread only: it asks the client)."""
        if self._client_gone():
            return failures.cancelled("the client cancelled the query or went away", self.query_id)
        return self._past_deadline()

    def _past_deadline(self) -> Failure | None:
        """DEADLINE_EXCEEDED once the time limit has passed (any thread)."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            timeout = self._limits.timeout_seconds
            return failures.deadline_exceeded(
                f"the query ran past its time limit of {timeout:g} s (SPANLAKE_QUERY_TIMEOUT_SECONDS)", self.query_id
            )
        return None

    def seconds_left(self) -> float | None:
        """Seconds until the query's time limit (never below 0), or None without one."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def stop(self, reason: Failure) -> None:
        """Stops the query from any thread, interrupting the step under way; its result buffer is given back."""
        self._thread.stop(reason)
        if self._results is not None:
            self._results.release()

    def stop_if_past_deadline(self) -> None:
        """Stops the query if its time limit passed (any thread: the client is not asked)."""
        reason = self._past_deadline()
        if reason is not None:
            self.stop(reason)

    def close(self) -> None:
        """Gives the thread back and ends the root span (the door writes the record: ok, incomplete); gives
        the session back to its factory if the query's stream ended in it."""
        session, self._session = self._session, None
        self._results = None
        if self._executing_since is not None:
            self.audit.execution_ms = (time.perf_counter() - self._executing_since) * 1000.0
        self._thread.close()
        self._runner.release(self)
        audit = self.audit
        self.span.set_figures(
            planning_ms=round(audit.planning_ms, 3),
            execution_ms=round(audit.execution_ms, 3),
            rows=audit.rows,
            bytes=audit.bytes,
        )
        self.span.end()
        if session is not None and self._stream_ended_in_session and self._runner.give_back is not None:
            self._runner.give_back(session)

    def set_range(self, query_range: tuple[int, int] | None, limit: int | None) -> None:
        """The query's range and row limit, once the door has read them (before its session)."""
        if (query_range, limit) != (self.request.query_range, self.request.limit):
            self.request = dataclasses.replace(self.request, query_range=query_range, limit=limit)
        self.audit.query_range, self.audit.limit = query_range, limit

    def executing(self) -> None:
        """The results begin to stream: the audit's execution time runs from here to `close`."""
        self._executing_since = time.perf_counter()

    def count(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Counts a result batch in the audit; returns it."""
        self.audit.rows += batch.num_rows
        self.audit.bytes += arrow_bytes(batch)
        return batch

    def fail(self, failure: Failure) -> Failure:
        """Audits and logs the failure; returns it, to be raised."""
        return failures.log_failure(self.audit.fail(failure))

    # -- steps: on the query's thread ---------------------------------------------------------------

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on the query's thread, the caller's thread waiting; a Failure it raises,
        or the one that stopped the query, is audited and raised."""
        try:
            with tracing.attach(self.span.context):
                return self._thread.run(function, *args)
        except Failure as failure:
            raise self.fail(failure) from None

    async def run_async(self, function: Callable[..., T], *args: Any) -> T:
        """`run` for a task on an event loop. A cancelled task (its HTTP client went away) stops the
        query at once."""
        try:
            with tracing.attach(self.span.context):
                return await self._thread.run_async(function, *args)
        except Failure as failure:
            raise self.fail(failure) from None
        except asyncio.CancelledError:
            cancelled = failures.cancelled("the client went away", self.query_id)
            self.stop(cancelled)
            self.fail(cancelled)
            raise

    def check_limits(self, sql: str | None = None) -> None:
        """INVALID_ARGUMENT (audited) for SQL past the size or depth limits, before any planner sees it."""
        problem = self._limits.sql_problem(self.request.sql if sql is None else sql)
        if problem is not None:
            raise self.fail(failures.invalid_argument(problem, self.query_id))

    def session(self) -> datafusion.SessionContext:
        """The query's session, built on first use (the deny list is checked then); a step."""
        if self._session is None:
            request = self.request
            context = QueryContext(
                self.query_id,
                request.query_range,
                request.limit,
                request.principal,
                request.client,
                request.sql,
                self.audit.sql_hash,
            )
            try:
                self._session = self._runner.session_factory(context)
            except QueryDenied as denied:
                raise failures.denied(str(denied)) from None
            except Exception as exc:
                raise failures.classify("error building session context", exc, self.query_id) from None
        return self._session

    def plan(
        self, sql: str | None = None, param_values: dict[str, Any] | None = None, limit: int | None = None
    ) -> datafusion.DataFrame:
        """`sql` (the request's by default) planned read-only in the query's session, with its bound
        values and row limit (table functions run here); a step."""
        with tracing.async_span(f"{self._span_prefix}.plan", dynamic=True):
            started = time.perf_counter()
            try:
                return self._plan(self.session(), self.request.sql if sql is None else sql, param_values, limit)
            finally:
                self.audit.planning_ms += (time.perf_counter() - started) * 1000.0

    def _plan(
        self,
        ctx: datafusion.SessionContext,
        sql: str,
        param_values: dict[str, Any] | None,
        limit: int | None,
    ) -> datafusion.DataFrame:
        statement = self._runner.statements(ctx, sql, self.request.principal) if self._runner.statements else None
        if statement is not None:
            return statement
        # A lakehouse session keeps the plans of the statements it planned (kept_plans.py); not with values.
        kept_plans: KeptPlans | None = None if param_values else getattr(ctx, "kept_plans", None)
        if kept_plans is not None:
            df = kept_plans.find(ctx, (sql, limit))
            if df is not None:
                self.audit.plan_kept = True
                return df
        df = self._planned(ctx, sql, param_values, limit)
        if kept_plans is not None:
            kept_plans.keep((sql, limit), df)
        return df

    def _planned(
        self, ctx: datafusion.SessionContext, sql: str, param_values: dict[str, Any] | None, limit: int | None
    ) -> datafusion.DataFrame:
        """`sql` planned now, within the plan limits."""
        try:
            df = functions.planned(ctx, sql, READ_ONLY, param_values=param_values)
        except Exception as exc:
            raise failures.classify("error building dataframe", exc, self.query_id) from None
        problem = self._limits.plan_problem(df.logical_plan())  # before the optimizer walks it
        if problem is not None:
            raise failures.invalid_argument(problem, self.query_id)
        if limit is None:
            return df
        try:
            return df.limit(limit)
        except Exception as exc:
            raise failures.classify("error building dataframe with limit", exc, self.query_id) from None

    def collect(self, df: datafusion.DataFrame) -> pa.Table:
        """A planned query's whole result; a step."""
        with tracing.async_span(f"{self._span_prefix}.execute", dynamic=True):
            started = time.perf_counter()
            try:
                table = df.to_arrow_table()
            except Exception as exc:
                raise failures.classify("error executing query", exc, self.query_id) from None
            finally:
                self.audit.execution_ms += (time.perf_counter() - started) * 1000.0
        self.count(table)
        return table

    @property
    def session_context(self) -> datafusion.SessionContext | None:
        """The query's session, once built (a plan executes in the session that planned it)."""
        return self._session

    def execute(self, df: datafusion.DataFrame, ctx: datafusion.SessionContext | None = None) -> ResultBatches:
        """A planned query's result as a stream of batches, executed in `ctx` (the query's session by
        default) as `plan_spans.PlanStream`, whose operators become spans if the query is slow; pull the
        batches with `ResultBatches.next_batch` as steps. Its execute span lasts until the stream closes."""
        self.executing()
        span = tracing.begin_async_span(f"{self._span_prefix}.execute", dynamic=True)
        try:
            with tracing.attach(span.context):
                stream = plan_spans.PlanStream.start(
                    ctx if ctx is not None else self.session(),
                    df,
                    self._limits.stream_buffer_bytes,
                    self._runner.result_budget,
                )
        except Exception as exc:
            span.end()
            raise failures.classify("error executing plan", exc, self.query_id) from None
        self.span.when_slow(functools.partial(plan_spans.record_operator_spans, stream.executed, span.context))
        self._results = ResultBatches(self, stream, span, in_own_session=ctx is None or ctx is self._session)
        return self._results

    def start(
        self,
        sql: str | None = None,
        param_values: dict[str, Any] | None = None,
        limit: int | None = None,
        planned: tuple[datafusion.DataFrame, datafusion.SessionContext | None] | None = None,
    ) -> StartedQuery:
        """`plan` (unless given a plan and the session it executes in) and `execute`, as one step: a step
        is a hand-off between threads (tens of µs, more on a loaded machine), as much as a small query's
        planning. (The first batch is not taken here: it may wait for room in the result buffer, and a
        door answers its client before that, as Flight's DoGet sends the schema.)

        A plan's session becomes the query's own when the query has none yet: the session then goes back
        to its factory once the stream ended, as a session this query built would (a plan from Flight's
        plan cache left the query that planned it, which no longer holds the session)."""
        if planned is None:
            df, ctx = self.plan(sql, param_values, limit), None
        else:
            df, ctx = planned
            if self._session is None:
                self._session = ctx
        return StartedQuery(df.schema(), self.execute(df, ctx))

    def stream_ended(self, in_own_session: bool) -> None:
        """The result stream ended (every batch taken): in the query's own session, it may serve again."""
        self._stream_ended_in_session = in_own_session


@dataclasses.dataclass
class StartedQuery:
    """A query planned and executing: its result schema (before dictionary hydration) and its batches."""

    schema: pa.Schema
    results: ResultBatches


@dataclasses.dataclass
class BatchRun:
    """Batches taken from a query's stream in one step, and whether the stream ended after them."""

    batches: list[pa.RecordBatch]
    ended: bool


class ResultBatches:
    """Pyarrow batches pulled from a query's DataFusion stream, counted in its audit. `close` drops
    the stream, and with it DataFusion's tasks for the query, even while a stopped step or an
    exception's traceback still holds this object."""

    def __init__(
        self, query: Query, stream: plan_spans.PlanStream, span: tracing.OpenAsyncSpan, in_own_session: bool
    ) -> None:
        """Takes the only reference to `stream`; `span` is its execute span; `in_own_session`: executed
        in the query's own session (not a cached plan's)."""
        self._query = query
        self._in_own_session = in_own_session
        self._stream = stream
        self._span: tracing.OpenAsyncSpan | None = span
        self._context = span.context

    def next_batch(self) -> pa.RecordBatch | None:
        """The next batch, or None at the end (or once closed); a step."""
        if self._stream is None:
            return None
        # DataFusion's work for the batch runs as a child of the execution span. No local variable
        # holds the stream: a traceback through this frame would keep it (and its tasks) alive.
        try:
            with tracing.attach(self._context):
                batch = next(self._stream, None)
        except ResultBufferFull as full:
            raise failures.unavailable(str(full), self._query.query_id) from None
        except Exception as exc:
            raise failures.classify("error building data stream", exc, self._query.query_id) from None
        if batch is None:
            self._query.stream_ended(self._in_own_session)
            return None
        return self._query.count(batch)

    def next_batches(self) -> BatchRun:
        """The next batch and those after it while they stay under READ_AHEAD_BYTES in all, and whether
        the stream ended with them (no batch: it ended); a step."""
        run = BatchRun([], ended=False)
        held = 0
        while held < READ_AHEAD_BYTES:
            batch = self.next_batch()
            if batch is None:
                run.ended = True
                break
            run.batches.append(batch)
            held += arrow_bytes(batch)
        return run

    def release(self) -> None:
        """Gives back the batches the stream holds and stops its producers (from any thread)."""
        stream = self._stream
        if stream is not None:
            stream.close()

    def close(self) -> None:
        """Stops and drops the stream and ends the execute span (once)."""
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        span, self._span = self._span, None
        if span is not None:
            span.end()
