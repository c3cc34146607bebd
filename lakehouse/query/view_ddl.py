"""`CREATE [OR REPLACE] MATERIALIZED VIEW` and `DROP MATERIALIZED VIEW` over any door (the runner's
DDL hook, `ViewStatements`), and `list_view_set_definitions()`: micromegas 0.32's views as code
(see `lakehouse/sql_views.py` for the statement).

Admins only. A definition is checked before anything is stored: its name shadows no built-in view,
its queries are SELECTs that do not read the view itself and plan (read-only) against the lake's
global views, its time columns are in the extract's schema, its count query gives a `count` column
and its merge query gives the extract's columns. `DROP` deletes the definition and retires the
view's partitions.
"""

from __future__ import annotations

import datetime as dt
import re
import time

import pyarrow as pa
from datafusion import DataFrame, SessionContext, Table

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import failures, functions
from spanlake.lakehouse.query.context import Principal
from spanlake.lakehouse.query.instances import GLOBAL
from spanlake.lakehouse.query.runner import READ_ONLY
from spanlake.lakehouse.sql_view_rows import bucket_session, with_range
from spanlake.lakehouse.sql_views import CreateView, DropView, is_view_ddl, parse_ddl, schema_hash, view_of
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.merge_query import SOURCE_TABLE
from spanlake.views.schema_types import TIMESTAMP

DEFINITIONS_SCHEMA = pa.schema(
    [
        pa.field("view_set_name", pa.utf8(), nullable=False),
        pa.field("definition_sql", pa.utf8(), nullable=False),
        pa.field("update_group", pa.int32(), nullable=False),
        pa.field("updated_at", TIMESTAMP, nullable=False),
        pa.field("updated_by", pa.utf8(), nullable=False),
    ]
)
_SELECT = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*(?:SELECT|WITH)\b", re.IGNORECASE | re.DOTALL)
BUILT_IN_BY = "spanlake"  # the author of the built-in definitions
BUILT_IN_AT = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)  # the release that made log_stats a SQL definition
# A global view appears in a plan as the alias of its scan (its frame is inlined).
_TABLE_READ = re.compile(r"(?:TableScan|SubqueryAlias): (\w+)")
_FOREVER_NS = 7_258_118_400 * 1_000_000_000  # 2200-01-01: past any partition's insert range


class ViewStatements:
    """The runner's DDL hook: runs the statement if it is one of ours, else answers None."""

    def __init__(self, lake: Lake) -> None:
        """Statements stored in, and views materialized by, `lake`."""
        self.lake = lake

    def __call__(self, ctx: SessionContext, sql: str, principal: Principal | None) -> DataFrame | None:
        """A one-row `status` result for a view statement (run now); None for any other statement."""
        if not is_view_ddl(sql):
            return None
        if principal is not None and not principal.is_admin:
            raise failures.permission_denied(
                f"CREATE and DROP MATERIALIZED VIEW are for admins only ('{principal.name}' is not an admin)"
            )
        who = principal.name if principal is not None else "anonymous"
        try:
            statement = parse_ddl(sql)
            status = self._create(statement, who) if isinstance(statement, CreateView) else self._drop(statement)
        except QueryError as err:
            raise failures.invalid_argument(str(err)) from None
        return ctx.from_arrow(pa.table({"status": pa.array([status], pa.utf8())}))

    def _create(self, create: CreateView, who: str) -> str:
        schema = checked_schema(self.lake, create)
        previous = self.lake.sql_views.views(self.lake).get(create.name)
        stored = self.lake.loop.run(
            self.lake.catalog.store_view_definition(
                create.name,
                create.definition_sql,
                create.source.update_group,
                schema.serialize().to_pybytes(),
                who,
                create.replace,
            )
        )
        if not stored:
            raise QueryError(f"materialized view {create.name} already exists (CREATE OR REPLACE replaces it)")
        self.lake.sql_views.invalidate()
        if previous is None:
            return "created"
        if previous.view.schema_hash == schema_hash(create, schema):
            return "replaced"  # the same queries and schema: the partitions stay valid
        retired = self.lake.loop.run(self.lake.catalog.retire_contained(create.name, GLOBAL, None, _FOREVER_NS))
        return f"replaced ({len(retired)} stale partitions retired)"

    def _drop(self, drop: DropView) -> str:
        if drop.name in VIEW_SETS:
            raise QueryError(f"{drop.name} is a built-in view: it cannot be dropped")
        deleted = self.lake.loop.run(self.lake.catalog.delete_view_definition(drop.name))
        if not deleted:
            if drop.if_exists:
                return "not found"
            raise QueryError(f"materialized view {drop.name} does not exist")
        self.lake.sql_views.invalidate()
        retired = self.lake.loop.run(self.lake.catalog.retire_contained(drop.name, GLOBAL, None, _FOREVER_NS))
        return f"dropped ({len(retired)} partitions retired)"


def checked_schema(lake: Lake, create: CreateView) -> pa.Schema:
    """The extract query's schema, once every check of the definition passed; QueryError otherwise."""
    name = create.name
    if name in VIEW_SETS:
        raise QueryError(f"{name} is a built-in view: a materialized view cannot shadow it")
    source = create.source
    queries = {"extract_query": source.extract_query, "count_src_query": source.count_src_query}
    if source.merge_partitions_query is not None:
        queries["merge_partitions_query"] = source.merge_partitions_query
    itself = re.compile(rf"\b(?:FROM|JOIN)\s+\"?{name}\"?(?![\w\"])", re.IGNORECASE)
    for option, query in queries.items():
        if not _SELECT.match(query):
            raise QueryError(f"materialized view {name}: {option} must be a SELECT query")
        if itself.search(query):
            raise QueryError(f"materialized view {name}: {option} reads {name} itself (a view over itself)")
    now = time.time_ns()
    ctx = bucket_session(lake, now, now)  # empty buckets: planning reads no partition
    extract = _planned(ctx, name, "extract_query", with_range(source.extract_query, now, now))
    _check_update_group(lake, create, extract)
    schema = extract.schema()
    missing = sorted(set(create.time_columns) - set(schema.names))
    if missing:
        raise QueryError(f"materialized view {name}: time column {missing[0]!r} is not in the extract's columns")
    count = _planned(ctx, name, "count_src_query", with_range(source.count_src_query, now, now)).schema()
    if "count" not in count.names:
        raise QueryError(f"materialized view {name}: count_src_query must give a column named count")
    if source.merge_partitions_query is not None:
        _check_merge(name, source.merge_partitions_query, schema)
    view_of(create, schema)  # the view builds from what is stored
    return schema


def _check_update_group(lake: Lake, create: CreateView, extract: DataFrame) -> None:
    """A view over SQL views is materialized after them: its update group must be greater."""
    scanned = set(_TABLE_READ.findall(extract.logical_plan().display_indent()))
    for read in sorted(scanned):
        stored = lake.sql_views.views(lake).get(read)
        if stored is not None and stored.row["update_group"] >= create.source.update_group:
            raise QueryError(
                f"materialized view {create.name}: it reads {read} (update_group {stored.row['update_group']}),"
                f" so its update_group must be greater, given {create.source.update_group}"
            )


def _check_merge(name: str, merge_query: str, schema: pa.Schema) -> None:
    ctx = SessionContext()
    ctx.register_record_batches(SOURCE_TABLE, [[pa.RecordBatch.from_pylist([], schema)]])
    merged = _planned(ctx, name, "merge_partitions_query", merge_query.replace("{source}", SOURCE_TABLE)).schema()
    if merged.names != schema.names:
        raise QueryError(
            f"materialized view {name}: merge_partitions_query gives columns {merged.names},"
            f" the extract gives {schema.names}"
        )


def _planned(ctx: SessionContext, name: str, option: str, query: str) -> DataFrame:
    try:  # planned as the runner plans queries (`functions.planned`: signatures of the function calls)
        return functions.planned(ctx, query, READ_ONLY)
    except Exception as exc:  # DataFusion raises bare Exceptions for planning errors
        _, message = failures.root_error(exc)
        raise QueryError(f"materialized view {name}: {option} does not plan: {message}") from None


def view_set_definitions(lake: Lake) -> Table:
    """`list_view_set_definitions()`: the built-in definitions (log_stats), then every stored one,
    with who stored it and when."""
    built_in = [
        {
            "view_set_name": view.name,
            "definition_sql": view.sql.definition_sql,
            "update_group": view.sql.update_group,
            "updated_at": BUILT_IN_AT,
            "updated_by": BUILT_IN_BY,
        }
        for view in VIEW_SETS.values()
        if view.sql is not None
    ]
    stored = [
        {field: row[field] for field in DEFINITIONS_SCHEMA.names}
        for row in lake.loop.run(lake.catalog.view_definitions())
    ]
    return lake.off_runtime.memory_table(pa.Table.from_pylist(built_in + stored, schema=DEFINITIONS_SCHEMA))
