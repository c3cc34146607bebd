"""The DataFusion session of one query: the lakehouse's tables and functions.

Table functions run at planning time on a DataFusion runtime thread: they may block on the
catalog (through the lake's loop) and write partitions, but must never call back into a
SessionContext on that thread (it panics); nothing here does.

Nothing registered in a session holds the session itself: the session holds its functions and
schema provider through Rust, out of the garbage collector's sight, so a function capturing it
would make a cycle that is never freed (every query's session leaked). The DataFrames the
functions return are built in a context of their own (`frames_context`), which holds no Python.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
from datafusion import (
    AggregateUDF,
    DataFrame,
    RuntimeEnvBuilder,
    ScalarUDF,
    SessionConfig,
    SessionContext,
    Table,
    col,
    lit,
    udtf,
)
from datafusion.catalog import SchemaProvider
from datafusion.expr import Expr
from typing_extensions import override

from spanlake import tracing
from spanlake.lakehouse.catalog_changes import Generation, QueryMark
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import (
    block_functions,
    catalog_functions,
    deny_list_functions,
    functions,
    instances,
    partition_admin,
    perfetto_trace,
    trace_perfetto,
    trace_spans,
    view_ddl,
)
from spanlake.lakehouse.query import process_spans as process_spans_function
from spanlake.lakehouse.query.kept_plans import KeptPlans
from spanlake.lakehouse.query.listing_scan import listing_scan, scan_url
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.query.rows_frames import plain_rows, rows_frame
from spanlake.lakehouse.query.table_function import Arg, Kind, TableFunction
from spanlake.lakehouse.view_sets import GLOBAL_TABLES, VIEW_SETS
from spanlake.views.schema_types import TIMESTAMP
from spanlake.views.view import View

BATCH_SIZE = 65536  # large batches: Flight's per-message cost dominates with DataFusion's default 8192


# Table functions whose rows reach the client in the order their generator makes them (the client
# reads them in arrival order, without ORDER BY): a query naming one never has its inputs split.
ORDERED_FUNCTIONS = re.compile(r"perfetto_trace_chunks|perfetto_trace_of|materialize_partitions", re.IGNORECASE)


def session_config(split_inputs: bool = False) -> SessionConfig:
    """The settings of a lakehouse session: big batches, information_schema, the repartitioning rules below."""
    # `split_inputs`: round-robin repartitioning of single-partition inputs (DataFusion's default).
    # A CPU-bound plan over in-memory data then runs in tasks fed through channels, which yield to
    # tokio about every input batch, where a cancelled query's tasks stop; unsplit, the whole plan
    # is one poll on the query's thread, which yields every 128 input batches only (seconds of work).
    # Off for ORDERED_FUNCTIONS: a split puts their output on several partitions, merged out of order.
    # Scans of several partition files run in parallel (one stream per file). No hash repartitioning
    # of aggregations and windows: DataFusion 55 can hang forever after "Resources exhausted" in a
    # hash-repartitioned GROUP BY (1 run in 10 to 60 with a small pool; none in 80 without it, none
    # in 180 with round-robin splits: tests/test_hostile_queries.py).
    return (
        SessionConfig()
        .with_batch_size(BATCH_SIZE)
        .with_information_schema(True)
        .set("datafusion.optimizer.enable_round_robin_repartition", str(split_inputs).lower())
        .set("datafusion.optimizer.repartition_file_scans", "false")
        .set("datafusion.optimizer.repartition_aggregations", "false")
        .set("datafusion.optimizer.repartition_windows", "false")
    )


def frames_context(lake: Lake) -> SessionContext:
    """A fresh context (no functions, no schema provider) for the DataFrames a table function
    returns; the query's session executes them. Cheap (tens of microseconds)."""
    ctx = SessionContext(session_config())
    lake.store.register_with(ctx)
    return ctx


def _scan(lake: Lake, view: View, keys: list[str]) -> DataFrame:
    """The scan of these partition files, reused while they are the same (`scan_frames.py`)."""

    def build() -> DataFrame:
        with tracing.async_span("parquet.open"):
            return lake.off_runtime.run(_new_scan, lake, view, keys)

    return lake.scan_frames.frame((view.name, view.schema_hash, tuple(keys)), build)


def _new_scan(lake: Lake, view: View, keys: list[str]) -> DataFrame:
    """DataFusion's own parquet scan of the partition files (faster than a pyarrow dataset: parallel,
    with row-group pruning), one scan over them all (`listing_scan.py`)."""
    ctx = frames_context(lake)
    if not keys:
        return ctx.create_dataframe([[]], None, view.schema)  # one empty partition: plans need one
    return listing_scan(ctx, [scan_url(lake.store, key) for key in keys], view.schema)


def instance_table(
    lake: Lake,
    view: View,
    instance_id: str,
    query_range: tuple[int, int] | None,
    rows: Expr | None = None,
    query_began: QueryMark | None = None,
) -> Table:
    """A view instance as a table; with a query range, only its rows in the range (every query of the
    session sees the same rows, whatever its own WHERE clause), as micromegas's TableScanRewrite;
    with `rows`, only the rows it keeps (a read scope's); as of the query's beginning (its mark). Rows of
    blocks no partition holds yet may come from memory (`FreshRows.tail`)."""
    fresh = instances.instance_rows(lake, view, instance_id, query_range, query_began, memory_tail=True)
    keys = [p.file_path for p in fresh.partitions if p.file_path]
    return files_table(lake, view, keys, query_range, rows, fresh.tail, fresh.frames)


def files_table(
    lake: Lake,
    view: View,
    keys: list[str],
    query_range: tuple[int, int] | None,
    rows: Expr | None = None,
    tail: list[pa.RecordBatch] | None = None,
    tail_frames: Sequence[DataFrame] = (),
) -> Table:
    """Partition files of a view as a table (collapsed for the views that merge at query time), with the
    `tail` rows and the rows of `tail_frames` (a view that does not merge) after them."""
    table = instances.collapsed(view, lake, keys)
    if table is None:
        frame = _scan(lake, view, keys)
        for tail_frame in tail_frames:
            frame = frame.union(tail_frame)
        if tail:
            frame = frame.union(_memory_frame(lake, view, tail))
    else:  # one in-memory partition, even when empty: plans need one
        frame = lake.off_runtime.run(rows_frame, table.to_batches(), view.schema)
    if query_range is not None:
        frame = frame.filter(_in_range(view, *query_range))
    if rows is not None:
        frame = frame.filter(rows)
    return Table(frame)


def _memory_frame(lake: Lake, view: View, batches: list[pa.RecordBatch]) -> DataFrame:
    """Rows in memory as a frame of the view's schema (the batches' notes for merges dropped)."""
    return lake.off_runtime.run(rows_frame, plain_rows(batches), view.schema)


def inserted_files(lake: Lake, view: View, insert_range: tuple[int, int]) -> list[str]:
    """The global instance's partition files inserted inside [begin, end) (a SQL view's bucket)."""
    begin, end = insert_range
    partitions = lake.loop.run(lake.catalog.overlapping_partitions(view.name, instances.GLOBAL, begin, end))
    return [
        p.file_path
        for p in partitions
        if p.file_path and p.file_schema_hash == view.schema_hash and begin <= p.begin_insert_ns
        if p.end_insert_ns <= end
    ]


def _in_range(view: View, begin_ns: int, end_ns: int) -> Expr:
    """The rows a query time range keeps (micromegas's TableScanRewrite filter): rows whose
    [earliest, latest] event times meet [begin, end]."""
    earliest, latest = view.time_columns
    return (col(earliest) <= _timestamp(end_ns)) & (col(latest) >= _timestamp(begin_ns))


def _timestamp(ns: int) -> Expr:
    return lit(pa.scalar(ns, TIMESTAMP))


@dataclasses.dataclass(frozen=True)
class QueryScope:
    """What a session shows the query it serves: the query range (or a SQL view bucket's insert range),
    the read scope, the query's beginning (its mark), who asks (`deny_queries` records it), and the span
    its table functions trace under (they may run on DataFusion's threads, where it is not current)."""

    trace_parent: tracing.SpanContext
    query_range: tuple[int, int] | None = None
    insert_range: tuple[int, int] | None = None
    read_scope: ReadScope | None = None
    query_began: QueryMark | None = None
    identity: str | None = None


class GlobalTables(SchemaProvider):
    """The global views, built-in and SQL-defined, as the session's default schema. A table is
    materialized only when a query names it: DataFusion asks for tables lazily, at planning time.
    With an `insert_range`, each holds only its partitions inserted in it (a SQL view's bucket).

    Its `scope` is the query's the session serves; the session's functions read it when called, so a
    session can serve another query once given that query's scope (`session_pool.py`)."""

    def __init__(self, lake: Lake, scope: QueryScope) -> None:
        """The lake's global views, seen through the query's scope."""
        self.lake = lake
        self.scope = scope
        self.registered: dict[str, Any] = {}  # tables the session registers itself (create_dataframe...)
        # What the planning under way asked for (tables, and table functions as "name()"), and the global
        # instances' generation read before its first global view: whether its plan may be kept (kept_plans).
        self.asked: set[str] = set()
        self.planned_generation: Generation | None = None

    def begin_planning(self) -> None:
        """A planning begins: what it asks for is noted from now on."""
        self.asked.clear()
        self.planned_generation = None

    def global_generation(self) -> Generation | None:
        """The global instances' catalog generation as of the query's beginning (None: not followed)."""
        return self.lake.catalog_changes.generation(self.lake, instances.GLOBAL, self.scope.query_began)

    def _global_view(self, name: str) -> View | None:
        if name in GLOBAL_TABLES:
            return VIEW_SETS[name]
        stored = self.lake.sql_views.views(self.lake).get(name)
        return None if stored is None else stored.view

    @property
    @override
    def table_names(self) -> list[str]:  # a property: datafusion reads it as an attribute
        """The global views' names, then the session's own tables."""
        return [*GLOBAL_TABLES, *self.lake.sql_views.views(self.lake), *self.registered]

    @override
    def table(self, name: str) -> Any:
        """The table of this name (a global view read now), or None."""
        self.asked.add(name)
        if name in self.registered:
            return self.registered[name]
        view = self._global_view(name)
        if view is None:
            return None
        scope = self.scope
        if self.planned_generation is None and name in GLOBAL_TABLES:
            self.planned_generation = self.global_generation()  # before its partitions are looked up
        with tracing.async_span("lakehouse.global_table", scope.trace_parent):
            if scope.insert_range is not None:
                return files_table(self.lake, view, inserted_files(self.lake, view, scope.insert_range), None)
            rows = None if scope.read_scope is None else scope.read_scope.rows(view)
            return instance_table(self.lake, view, instances.GLOBAL, scope.query_range, rows, scope.query_began)

    def describe_table(self, name: str) -> tuple[str, pa.Schema]:
        """(kind, schema) of a table, without materializing a global view (Flight SQL GetTables)."""
        view = self._global_view(name)
        if view is not None:
            return "physical", view.schema
        table = Table(self.registered[name])
        return table.kind, table.schema

    @override
    def register_table(self, name: str, table: Any) -> None:
        """Registers a session table (refused over a global view's name)."""
        if self._global_view(name) is not None:
            raise QueryError(f"'{name}' is a spanlake view and cannot be replaced")
        self.registered[name] = table

    @override
    def deregister_table(self, name: str, cascade: bool = True) -> None:
        """Forgets a session table."""
        self.registered.pop(name, None)

    @override
    def table_exist(self, name: str) -> bool:
        """Whether a table of this name exists."""
        return name in self.registered or self._global_view(name) is not None


def _table_functions(lake: Lake, tables: GlobalTables) -> list[TableFunction]:
    """Every table function of a session, declared once (see `table_function.py`), each reading the
    scope of the query it is called for (`tables.scope`); the functions taking an id see only the read
    scope's (another audience's id is an unknown id)."""

    def view_instance(view_set_name: str, instance_id: str) -> Table:
        scope = tables.scope
        with tracing.async_span("lakehouse.view_instance", scope.trace_parent):
            view = instances.view_set(lake, view_set_name)
            read_scope, query_range, query_began = scope.read_scope, scope.query_range, scope.query_began
            if read_scope is None:
                return instance_table(lake, view, instance_id, query_range, query_began=query_began)
            instance_id = instances.canonical_instance_id(view, instance_id)
            if instance_id == instances.GLOBAL:
                return instance_table(lake, view, instance_id, query_range, read_scope.rows(view), query_began)
            instances.check_readable(read_scope, view, instance_id)
            return instance_table(lake, view, instance_id, query_range, query_began=query_began)

    def perfetto_trace_chunks(*args: Expr) -> Table:
        process_id, span_types, begin_ns, end_ns = perfetto_trace.trace_arguments(args)
        scope = tables.scope
        with tracing.async_span("perfetto.plan", scope.trace_parent):
            plan = perfetto_trace.plan_trace(lake, process_id, span_types, begin_ns, end_ns, scope.read_scope)
            return Table(perfetto_trace.trace_dataframe(frames_context(lake), plan, lake.off_runtime))

    def materialize_partitions(view_set_name: str, begin: int, end: int, delta: int | None = None) -> Table:
        return Table(
            catalog_functions.materialize_partitions(lake, frames_context(lake), view_set_name, begin, end, delta)
        )

    view_range = (Arg("view_set_name", Kind.STRING), Arg("begin", Kind.TIMESTAMP), Arg("end", Kind.TIMESTAMP))
    return [
        TableFunction(
            "view_instance", view_instance, (Arg("view_set_name", Kind.STRING), Arg("instance_id", Kind.STRING))
        ),
        TableFunction("perfetto_trace_chunks", perfetto_trace_chunks, None),
        TableFunction(
            "list_partitions", lambda: Table(catalog_functions.list_partitions(lake, tables.scope.read_scope))
        ),
        TableFunction("list_view_sets", lambda: Table(catalog_functions.list_view_sets(lake))),
        TableFunction(
            "list_view_set_definitions",
            lambda: view_ddl.view_set_definitions(lake),
            admin=True,
        ),
        TableFunction(
            "process_spans",
            lambda process_id, span_types: process_spans_function.process_spans(
                lake, process_id, span_types, tables.scope.query_range, tables.scope.read_scope
            ),
            (Arg("process_id", Kind.STRING), Arg("span_types", Kind.STRING)),
            capitalized=True,
        ),
        TableFunction(
            "trace_spans",
            lambda trace_id: lake.off_runtime.memory_table(
                trace_spans.trace_spans(lake, trace_id, tables.scope.read_scope)
            ),
            (Arg("trace_id", Kind.STRING),),
        ),
        TableFunction(
            "perfetto_trace_of",
            lambda trace_id: lake.off_runtime.memory_table(
                trace_perfetto.perfetto_trace_of(lake, trace_id, tables.scope.read_scope)
            ),
            (Arg("trace_id", Kind.STRING),),
        ),
        TableFunction(
            "parse_block",
            lambda block_id: block_functions.parse_block(lake, block_id, tables.scope.read_scope),
            (Arg("block_id", Kind.STRING),),
            capitalized=True,
        ),
        TableFunction(
            "retire_partitions",
            lambda *args: Table(catalog_functions.retire_partitions(lake, *args)),
            (
                Arg("view_set_name", Kind.STRING),
                Arg("view_instance_id", Kind.STRING),
                Arg("begin", Kind.TIMESTAMP),
                Arg("end", Kind.TIMESTAMP),
            ),
            admin=True,
        ),
        TableFunction(
            "materialize_partitions",
            materialize_partitions,
            (*view_range, Arg("partition_delta_seconds", Kind.INTEGER)),
            optional=1,
            admin=True,
        ),
        TableFunction(
            "regenerate_partitions",
            lambda *args: Table(partition_admin.regenerate_partitions(lake, *args)),
            (*view_range, Arg("partition_delta_seconds", Kind.INTEGER)),
            admin=True,
        ),
        TableFunction(
            "deny_queries",
            deny_list_functions.deny_queries_function(lake, lambda: tables.scope.identity),
            None,
            admin=True,
        ),
        TableFunction("list_query_denials", deny_list_functions.list_query_denials_function(lake), admin=True),
        *(
            TableFunction(name, function, None)
            for name, function in functions.table_function_list(lambda: frames_context(lake), lake.off_runtime)
        ),
    ]


def make_session_context(
    lake: Lake,
    query_range: tuple[int, int] | None = None,
    is_admin: bool = True,
    identity: str | None = None,
    memory_limit_bytes: int | None = None,
    sql: str | None = None,
    insert_range: tuple[int, int] | None = None,
    read_scope: ReadScope | None = None,
) -> LakeSession:
    """A session for one query (with `insert_range`: for a SQL view's bucket, see GlobalTables).
    Admin functions are registered only for admins (or without auth); `identity` (who asks) is
    what `deny_queries` records as a rule's author. With `memory_limit_bytes`, DataFusion's
    operators share a pool of that size: sorts and aggregations spill past it, and what cannot
    spill fails with "Resources exhausted". With the `sql` it will plan, naming none of
    ORDERED_FUNCTIONS, its inputs are split (session_config). With a `read_scope`, it reads only the
    scope's processes (`read_scope.py`).

    Its table functions trace themselves as children of the async span current here: they may run on
    DataFusion's threads, where this context is not current, so they are given it."""
    trace_parent = tracing.current_span_context()
    with tracing.async_span("lakehouse.make_session_context"):
        scope = query_scope(lake, trace_parent, query_range, identity, read_scope, insert_range)
        return new_session(lake, scope, is_admin, splits_inputs(sql), memory_limit_bytes)


def splits_inputs(sql: str | None) -> bool:
    """Whether a session planning `sql` splits its inputs: unless it names one of ORDERED_FUNCTIONS."""
    return bool(sql) and ORDERED_FUNCTIONS.search(sql) is None


def query_scope(
    lake: Lake,
    trace_parent: tracing.SpanContext,
    query_range: tuple[int, int] | None,
    identity: str | None,
    read_scope: ReadScope | None,
    insert_range: tuple[int, int] | None = None,
) -> QueryScope:
    """The scope of a query beginning now, its table functions tracing under `trace_parent`."""
    # A bucket's files are read by insert time, not through the instances: no changes to follow.
    query_began = None if insert_range is not None else lake.catalog_changes.began_query(lake)
    return QueryScope(trace_parent, query_range, insert_range, read_scope, query_began, identity)


class LakeSession(SessionContext):
    """A lakehouse session: a SessionContext with its global tables, whose scope says which query it
    serves, and its table functions."""

    tables: GlobalTables
    table_functions: list[TableFunction]
    kept_plans: KeptPlans
    is_admin: bool
    split_inputs: bool

    def serve(self, scope: QueryScope) -> None:
        """Serves the query of `scope` from now on: its functions read that scope, and build their tables again."""
        self.tables.scope = scope
        for function in self.table_functions:
            function.built.clear()  # the tables another query's planning built


def new_session(
    lake: Lake, scope: QueryScope, is_admin: bool, split_inputs: bool, memory_limit_bytes: int | None
) -> LakeSession:
    """A new session serving the query of `scope` (see `make_session_context`)."""
    runtime = RuntimeEnvBuilder()
    if memory_limit_bytes:
        runtime = runtime.with_fair_spill_pool(memory_limit_bytes)
    ctx = LakeSession(session_config(split_inputs), runtime)
    tables = GlobalTables(lake, scope)
    ctx.tables, ctx.is_admin, ctx.split_inputs = tables, is_admin, split_inputs
    lake.store.register_with(ctx)
    ctx.catalog().register_schema("public", tables)
    ctx.table_functions = [f for f in _table_functions(lake, tables) if is_admin or not f.admin]
    ctx.kept_plans = KeptPlans(tables)
    for function in ctx.table_functions:
        ctx.register_udtf(udtf(_noted(function, tables), function.name))
    ctx.register_udf(block_functions.get_payload_udf(lake, lambda: tables.scope.read_scope))
    if is_admin:
        ctx.register_udf(partition_admin.retire_partition_by_file_udf(lake))
        ctx.register_udf(partition_admin.retire_partition_by_metadata_udf(lake))
        ctx.register_udf(deny_list_functions.remove_query_denial_udf(lake))
    scalar_udfs, aggregate_udfs = _shared_udfs()
    for function in scalar_udfs:
        ctx.register_udf(function)
    for aggregate in aggregate_udfs:
        ctx.register_udaf(aggregate)
    return ctx


def _noted(function: TableFunction, tables: GlobalTables) -> Callable[..., Any]:
    """The table function, noting its call in `tables.asked` (a plan that calls one is never kept)."""

    def call(*exprs: Expr) -> Any:
        tables.asked.add(f"{function.name}()")
        return function(*exprs)

    return call


@functools.cache
def _shared_udfs() -> tuple[list[ScalarUDF], list[AggregateUDF]]:
    """The SQL functions that depend on nothing of a query or a lake, built once for every session."""
    return functions.scalar_udfs(), functions.aggregate_udfs()
