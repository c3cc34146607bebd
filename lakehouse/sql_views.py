"""SQL-defined global views, as micromegas 0.32 defines them (`SqlBatchView`, managed as code by
`micromegas-views`):

    CREATE [OR REPLACE] MATERIALIZED VIEW <name> WITH (
        extract_query = $$ SELECT ... $$,            -- the rows of a bucket of insert time
        count_src_query = $$ SELECT ... AS count $$,  -- its source count (a changed count: rebuilt)
        merge_partitions_query = $$ ... FROM {source} ... $$,  -- optional: partitions as one
        update_group = 3000,
        time_column = 'time_bin'                      -- or min_time_column and max_time_column
    )
    DROP MATERIALIZED VIEW [IF EXISTS] <name>

`{begin}` and `{end}` in the extract and count queries stand for the bucket's insert range (RFC 3339);
the global views they read hold only the partitions inserted in that range (the queries' own
`insert_time` filters, as micromegas's definitions have them, are then cheap; a bucket that another
view's partition crosses waits for a larger one). This module parses the statements and keeps the stored
definitions (`SqlViews`, read again at most every REFRESH_SECONDS, and at once after this process's
own DDL); `lakehouse/query/view_ddl.py` runs the statements, `lakehouse/sql_view_rows.py` their queries.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import asyncpg
import pyarrow as pa

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query.off_runtime import OffRuntime
from spanlake.views.merge_query import merge_with_query
from spanlake.views.view import DAY_SECONDS, SqlSource, View

if TYPE_CHECKING:
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0  # how stale another process's DDL may look here

_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_CREATE = re.compile(
    r"CREATE\s+(?P<replace>OR\s+REPLACE\s+)?MATERIALIZED\s+VIEW\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*", re.IGNORECASE
)
_DROP = re.compile(
    r"DROP\s+MATERIALIZED\s+VIEW\s+(?P<if_exists>IF\s+EXISTS\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*;?\s*\Z",
    re.IGNORECASE,
)
_DDL_HEAD = re.compile(r"(?:CREATE\s+(?:OR\s+REPLACE\s+)?|DROP\s+)MATERIALIZED\s+VIEW\b", re.IGNORECASE)
_OPTION = re.compile(
    r"\s*(?P<key>[A-Za-z_]+)\s*=\s*(?:\$\$(?P<dollar>.*?)\$\$|'(?P<quoted>(?:[^']|'')*)'|(?P<bare>[-\w.]+))\s*(?P<sep>[,)])",
    re.DOTALL,
)
QUERY_OPTIONS = ("extract_query", "count_src_query", "merge_partitions_query")
OPTIONS = (*QUERY_OPTIONS, "update_group", "time_column", "min_time_column", "max_time_column")


@dataclass(frozen=True)
class CreateView:
    """A parsed `CREATE [OR REPLACE] MATERIALIZED VIEW`: its text, as stored and listed, and its parts."""

    name: str
    replace: bool
    definition_sql: str
    source: SqlSource
    time_columns: tuple[str, str]


@dataclass(frozen=True)
class DropView:
    """A parsed `DROP MATERIALIZED VIEW [IF EXISTS]`."""

    name: str
    if_exists: bool


def is_view_ddl(sql: str) -> bool:
    """Whether the statement is one of ours (DataFusion's parser knows no MATERIALIZED VIEW)."""
    return _DDL_HEAD.match(sql, _LEADING_COMMENTS.match(sql).end()) is not None


def parse_ddl(sql: str) -> CreateView | DropView:
    """The statement parsed; QueryError saying what is wrong with it."""
    start = _LEADING_COMMENTS.match(sql).end()
    drop = _DROP.match(sql, start)
    if drop is not None:
        return DropView(drop["name"], bool(drop["if_exists"]))
    create = _CREATE.match(sql, start)
    if create is None:
        raise QueryError(
            "expected CREATE [OR REPLACE] MATERIALIZED VIEW <name> WITH (...) or DROP MATERIALIZED VIEW <name>"
        )
    options = _options(sql, create.end())
    return _create(create["name"], bool(create["replace"]), sql.strip(), options)


def _options(sql: str, at: int) -> dict[str, str]:
    """The `WITH (key = value, ...)` list: $$...$$, '...' ('' for a quote) or a bare word or number."""
    head = re.compile(r"WITH\s*\(", re.IGNORECASE).match(sql, at)
    if head is None:
        raise QueryError("CREATE MATERIALIZED VIEW: expected WITH (extract_query = $$...$$, ...) after the name")
    options: dict[str, str] = {}
    at = head.end()
    while True:
        option = _OPTION.match(sql, at)
        if option is None:
            raise QueryError(f"CREATE MATERIALIZED VIEW: cannot read the options from: {sql[at : at + 60]!r}")
        key = option["key"].lower()
        if key not in OPTIONS:
            raise QueryError(f"CREATE MATERIALIZED VIEW: unknown option '{key}'; options are {', '.join(OPTIONS)}")
        if key in options:
            raise QueryError(f"CREATE MATERIALIZED VIEW: option '{key}' given twice")
        options[key] = _option_value(option)
        at = option.end()
        if option["sep"] == ")":
            break
    if not re.fullmatch(r"\s*;?\s*", sql[at:]):
        raise QueryError(f"CREATE MATERIALIZED VIEW: unexpected text after the options: {sql[at : at + 60]!r}")
    return options


def _option_value(option: re.Match[str]) -> str:
    if option["dollar"] is not None:
        return option["dollar"]
    if option["bare"] is not None:
        return option["bare"]
    return option["quoted"].replace("''", "'")


def _create(name: str, replace: bool, definition_sql: str, options: dict[str, str]) -> CreateView:
    for required in ("extract_query", "count_src_query", "update_group"):
        if not options.get(required, "").strip():
            raise QueryError(f"CREATE MATERIALIZED VIEW {name}: option '{required}' is required")
    try:
        update_group = int(options["update_group"])
    except ValueError:
        raise QueryError(f"CREATE MATERIALIZED VIEW {name}: update_group must be an integer") from None
    single = options.get("time_column")
    earliest, latest = options.get("min_time_column", single), options.get("max_time_column", single)
    if not earliest or not latest:
        raise QueryError(
            f"CREATE MATERIALIZED VIEW {name}: give time_column (or min_time_column and max_time_column):"
            " the columns bounding each row's event time"
        )
    merge = options.get("merge_partitions_query", "").strip() or None
    extract, count = options["extract_query"].strip(), options["count_src_query"].strip()
    source = SqlSource(extract, count, merge, update_group, definition_sql)
    return CreateView(name, replace, definition_sql, source, (earliest, latest))


def schema_hash(create: CreateView, schema: pa.Schema) -> bytes:
    """The hash a definition's partitions are stored under: its queries, time columns and schema (a
    definition replaced by another leaves stale partitions; replaced by the same, valid ones)."""
    source = create.source
    parts = (source.extract_query, source.count_src_query, source.merge_partitions_query or "", *create.time_columns)
    digest = hashlib.sha256("\x00".join(parts).encode())
    digest.update(schema.serialize().to_pybytes())
    return digest.digest()[:8]


def view_of(create: CreateView, schema: pa.Schema) -> View:
    """The `View` a definition materializes, its schema the one its extract query plans to."""
    merge_query = create.source.merge_partitions_query
    return View(
        name=create.name,
        schema=schema,
        schema_hash=schema_hash(create, schema),
        instance_kind=None,
        has_global_instance=True,
        stream_tags=(),
        time_columns=create.time_columns,
        merge=None if merge_query is None else partial(merge_with_query, merge_query, schema),
        max_partition_seconds=DAY_SECONDS,
        sql=create.source,
    )


@dataclass(frozen=True)
class StoredView:
    """A stored definition: its row (as `list_view_set_definitions()` shows it) and its view."""

    row: asyncpg.Record
    view: View


class SqlViews:
    """The stored SQL views of a lake, read from the catalog at most every REFRESH_SECONDS."""

    def __init__(self) -> None:
        """An empty registry, read on first use."""
        # The views' queries run on threads of their own: from a table function (materialize_partitions)
        # they must leave DataFusion's runtime, and their own table scans use the lake's off_runtime pool.
        self.query_threads = OffRuntime(2)
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._views: dict[str, StoredView] = {}

    def invalidate(self) -> None:
        """The next use reads the catalog again (after this process's DDL)."""
        with self._lock:
            self._read_at = float("-inf")

    def views(self, lake: Lake) -> dict[str, StoredView]:
        """The definitions by name (read from the catalog if the last read is REFRESH_SECONDS old)."""
        with self._lock:
            if time.monotonic() - self._read_at > REFRESH_SECONDS:
                rows = lake.loop.run(lake.catalog.view_definitions())
                self._views = {stored.view.name: stored for stored in map(self._stored, rows) if stored is not None}
                self._read_at = time.monotonic()
            return self._views

    def by_update_group(self, lake: Lake) -> list[View]:
        """The views in the order the daemon materializes them: by update group, then name."""
        stored = sorted(self.views(lake).values(), key=lambda s: (s.row["update_group"], s.row["view_set_name"]))
        return [s.view for s in stored]

    def _stored(self, row: asyncpg.Record) -> StoredView | None:
        """The row's view; None (logged) for a definition that no longer loads: the others still do."""
        known = self._views.get(row["view_set_name"])
        if known is not None and known.row["definition_sql"] == row["definition_sql"]:
            return StoredView(row, known.view)
        try:
            create = parse_ddl(row["definition_sql"])
            if not isinstance(create, CreateView):
                raise QueryError("it is no CREATE statement")
            return StoredView(row, view_of(create, pa.ipc.read_schema(pa.py_buffer(row["arrow_schema"]))))
        except (QueryError, pa.ArrowInvalid) as err:
            log.warning("the stored definition of %s does not load, left out: %s", row["view_set_name"], err)
            return None
