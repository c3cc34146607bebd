"""SQL through the lakehouse's own query path, in process: the session Flight SQL uses.

Each query gets a fresh `make_session_context` with the page's time range as its query range, and
admin functions only for admins, exactly as a Flight SQL query of the same principal. Failures are
worded as Flight SQL words them (server.flightsql.errors: root cause, no traceback, no paths).
Everything here blocks: callers on the event loop run it with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping

import asyncpg
import datafusion
import pyarrow as pa

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import ObjectStoreError
from spanlake.lakehouse.query.session import make_session_context
from spanlake.server.flightsql import errors
from spanlake.server.flightsql.streaming import conform, output_schema

log = logging.getLogger(__name__)
READ_ONLY = datafusion.SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
ADMIN_FUNCTIONS = ("retire_partitions", "materialize_partitions")
_ADMIN_CALL = re.compile(r"\b(" + "|".join(ADMIN_FUNCTIONS) + r")\s*\(", re.IGNORECASE)
UNAVAILABLE = "the catalog database or the object store is not answering; retry shortly"
# What the catalog database or the object store raise when they do not answer (as ingestion's 503s);
# asyncpg's InternalClientError comes from a connection whose backend was terminated mid-operation.
STORAGE_FAILURES = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ObjectStoreError,
    OSError,
    TimeoutError,
)
# How DataFusion names a Python exception raised in a table function it called (`PyErr { type: <class …>`).
_PY_ERR_TYPE = re.compile(r"<class '(?P<module>[\w.]+)\.(?P<name>\w+)'>")


class WebQueryError(Exception):
    """A query that failed, with the message to show and the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class StorageUnavailable(WebQueryError):
    """A query failed because the catalog database or the object store did not answer: a 503."""

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE, 503)


def refuse_admin_functions(sql: str, is_admin: bool) -> None:
    """Non-admins get a clear 403 for an admin function (their session does not even have it)."""
    called = _ADMIN_CALL.search(sql)
    if called is not None and not is_admin:
        raise WebQueryError(f"the function '{called.group(1).lower()}' is reserved to admin API keys", 403)


def session(lake: Lake, query_range: tuple[int, int] | None, is_admin: bool) -> datafusion.SessionContext:
    """A fresh lakehouse session with the query range, admin functions only for admins."""
    return make_session_context(lake, query_range, is_admin=is_admin)


def plan(ctx: datafusion.SessionContext, sql: str, params: Mapping[str, object] | None = None) -> datafusion.DataFrame:
    """The planned query, its `$name` placeholders bound to `params` (table functions run here,
    materializing what the range needs)."""
    try:
        return ctx.sql_with_options(sql, READ_ONLY, param_values=dict(params) if params else None)
    except Exception as exc:  # DataFusion raises plain Exception; classify words it
        raise _failed("error building dataframe", exc) from None


def dataframe(
    lake: Lake,
    sql: str,
    query_range: tuple[int, int] | None,
    is_admin: bool,
    params: Mapping[str, object] | None = None,
) -> datafusion.DataFrame:
    """`sql` (its placeholders bound to `params`) planned in a fresh session of its own."""
    refuse_admin_functions(sql, is_admin)
    return plan(session(lake, query_range, is_admin), sql, params)


def collect(
    lake: Lake,
    sql: str,
    query_range: tuple[int, int] | None,
    is_admin: bool = True,
    limit: int | None = None,
    params: Mapping[str, object] | None = None,
) -> pa.Table:
    """The whole result (dictionaries decoded), at most `limit` rows; `$name` placeholders bound to `params`."""
    return collect_frame(dataframe(lake, sql, query_range, is_admin, params), limit)


def collect_frame(df: datafusion.DataFrame, limit: int | None = None) -> pa.Table:
    """A planned query's result (dictionaries decoded), at most `limit` rows."""
    try:
        if limit is not None:
            df = df.limit(limit)
        table = df.to_arrow_table()
    except Exception as exc:
        raise _failed("error executing query", exc) from None
    schema = output_schema(table.schema, preserve_dictionary=False)
    return table.cast(schema) if schema != table.schema else table


def records(table: pa.Table) -> list[dict]:
    """The rows as dicts, timestamps as ns since the epoch (Python's datetime stops at µs)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(index, field.name, table.column(index).cast(pa.int64()))
    return table.to_pylist()


def stream(
    lake: Lake, sql: str, query_range: tuple[int, int] | None, is_admin: bool
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The result's schema and its batches as DataFusion makes them, dictionaries decoded; planning
    errors raise here, before any batch."""
    df = dataframe(lake, sql, query_range, is_admin)
    schema = output_schema(df.schema(), preserve_dictionary=False)
    try:
        batches = df.execute_stream()
    except Exception as exc:
        raise _failed("error executing plan", exc) from None
    return schema, _batches(batches, schema)


def _batches(batches: Iterator[datafusion.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    try:
        for batch in batches:
            yield conform(batch.to_pyarrow(), schema)
    except Exception as exc:
        raise _failed("error building data stream", exc) from None


def _failed(what: str, exc: Exception) -> WebQueryError:
    if _raised_by_storage(exc):
        log.warning("%s: storage unavailable: %s", what, str(exc).splitlines()[0])
        return StorageUnavailable()
    failure = errors.classify(what, exc, None)
    return WebQueryError(failure.message, 400 if failure.error_class == "user" else 500)


def _raised_by_storage(exc: Exception) -> bool:
    """`exc` is a storage failure, itself or wrapped by DataFusion around a table function's."""
    if isinstance(exc, STORAGE_FAILURES):
        return True
    for raised in _PY_ERR_TYPE.finditer(str(exc)):  # nested when a table function wraps another's
        cls = getattr(sys.modules.get(raised["module"]), raised["name"], None)
        if isinstance(cls, type) and issubclass(cls, STORAGE_FAILURES):
            return True
    return False
