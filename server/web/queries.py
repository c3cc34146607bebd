"""The web UI's door to the query runner (`lakehouse.query.runner`): every query of a page, of the SQL
page's `/api/sql`, of `/api/query-stream`, of the Perfetto download and of the span trees runs as a
Flight SQL query does: behind the size and depth limits and the deny list (attributed to the signed-in
key, client type "web", the peer's address), in a session with the memory pool, on a query thread
(never the event loop's default pool, which ingestion needs), within the time limit, stopped within
about a second when the HTTP client goes away, audited with rpc `web.<door>`.

A failure is classified as Flight SQL classifies it and answered with the HTTP status that fits
(`WebQueryError`): 400 for the caller's SQL (limits included), 403 for a denied query or an admin
function, 503 when the catalog database or the object store does not answer, 504 past the time limit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.errors import STORAGE_UNAVAILABLE
from spanlake.lakehouse.query.failures import Code, Failure
from spanlake.lakehouse.query.runner import Query, QueryRequest, QueryRunner
from spanlake.server.flightsql.streaming import output_schema
from spanlake.server.web.auth_cookie import principal_of

T = TypeVar("T")

ADMIN_FUNCTIONS = ("retire_partitions", "materialize_partitions")
_ADMIN_CALL = re.compile(r"\b(" + "|".join(ADMIN_FUNCTIONS) + r")\s*\(", re.IGNORECASE)
# The HTTP status of each failure code (a denied query is 403, whatever its code).
_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNIMPLEMENTED: 400,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.CANCELLED: 499,  # nginx's "client closed request": nobody is left to read it
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}
DENIED_STATUS = 403


class WebQueryError(Exception):
    """A query that failed, with the message to show and the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        """The message shown to the user and the response's status."""
        super().__init__(message)
        self.message = message
        self.status = status


class StorageUnavailable(WebQueryError):
    """A query failed because the catalog database or the object store did not answer: a 503."""

    def __init__(self) -> None:
        """Always the same message: what failed inside stays in the server's log."""
        super().__init__(STORAGE_UNAVAILABLE, 503)


def web_error(failure: Failure) -> WebQueryError:
    """The web's answer to a classified failure."""
    if failure.storage:
        return StorageUnavailable()
    status = DENIED_STATUS if failure.error_class == "denied" else _STATUS[failure.code]
    return WebQueryError(failure.message, status)


def refuse_admin_functions(sql: str, is_admin: bool) -> None:
    """Non-admins get a clear 403 for an admin function (their session does not even have it)."""
    called = _ADMIN_CALL.search(sql)
    if called is not None and not is_admin:
        raise WebQueryError(f"the function '{called.group(1).lower()}' is reserved to admin API keys", 403)


def records(table: pa.Table) -> list[dict]:
    """The rows as dicts, timestamps as ns since the epoch (Python's datetime stops at µs)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(index, field.name, table.column(index).cast(pa.int64()))
    return table.to_pylist()


def decoded(table: pa.Table) -> pa.Table:
    """The table with its dictionaries decoded."""
    schema = output_schema(table.schema, preserve_dictionary=False)
    return table.cast(schema) if schema != table.schema else table


def web_client(request: web.Request) -> dict[str, str]:
    """The request's attribution, as Flight SQL's `x-client-*` headers give it: the peer written as
    gRPC writes it, so a deny rule on `client_ip` matches either door."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    host, port = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
    address = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return {
        "type": "web",
        "agent": request.headers.get("User-Agent", "")[:200],
        "entrypoint": request.path,
        "peer": address,
    }


def client_gone(request: web.Request) -> Callable[[], bool]:
    """Whether the request's client went away (its connection closed)."""
    return lambda: request.transport is None or request.transport.is_closing()


class WebQuery:
    """A query of the web UI: its steps awaited on the loop, failures as `WebQueryError`s."""

    def __init__(self, query: Query) -> None:
        """Wraps the runner's query."""
        self.query = query

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on the query's thread (`Query.run_async`)."""
        try:
            return await self.query.run_async(function, *args)
        except Failure as failure:
            raise web_error(failure) from None


class WebQueries:
    """The web UI's queries, through the process's query runner."""

    def __init__(self, runner: QueryRunner) -> None:
        """Runs with `runner` (the one Flight SQL uses in the same process)."""
        self.runner = runner

    @contextlib.asynccontextmanager
    async def open(
        self, request: web.Request, door: str, sql: str, query_range: tuple[int, int] | None
    ) -> AsyncIterator[WebQuery]:
        """A query of `door` (its audit's rpc and root span, `web.<door>`) for the request's principal,
        its SQL within the limits; audited ok when the block ends without an exception."""
        principal = principal_of(request)
        refuse_admin_functions(sql, principal is None or principal.is_admin)
        name = f"web.{door}"
        query_request = QueryRequest(name, name, sql, principal, web_client(request), query_range)
        try:
            query = self.runner.open(query_request, client_gone(request))
        except Failure as failure:
            raise web_error(failure) from None
        try:
            try:
                query.check_limits()
            except Failure as failure:
                raise web_error(failure) from None
            yield WebQuery(query)
        except BaseException:
            query.close()
            query.audit.incomplete()  # no-op after a failure: that one is recorded
            raise
        query.close()
        query.audit.ok()

    async def collect(
        self,
        request: web.Request,
        door: str,
        sql: str,
        query_range: tuple[int, int] | None,
        limit: int | None = None,
        params: Mapping[str, object] | None = None,
    ) -> pa.Table:
        """The whole result (dictionaries decoded), at most `limit` rows; `params` are the values of
        the SQL's `$name` placeholders."""
        async with self.open(request, door, sql, query_range) as query:
            return decoded(await query.run(_collected, query.query, params, limit))

    async def in_session(
        self, request: web.Request, door: str, sql: str, query_range: tuple[int, int] | None, work: Callable[[Query], T]
    ) -> T:
        """`work(query)` on the query's thread: several statements in the query's one session
        (`Query.plan`, `Query.collect`), `sql` the one admitted and audited."""
        async with self.open(request, door, sql, query_range) as query:
            return await query.run(work, query.query)


def _collected(query: Query, params: Mapping[str, object] | None, limit: int | None) -> pa.Table:
    """Plans and collects the query's SQL; a step."""
    return query.collect(query.plan(None, dict(params) if params else None, limit))
