"""The screens that are not about one process: the processes list and the SQL page; and what every
screen shares (running a query for the signed-in principal, the SQL behind a screen, the process tabs)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.server.site_guard import csrf_token
from spanlake.server.web import html, queries
from spanlake.server.web.auth_cookie import principal_of
from spanlake.server.web.html import url
from spanlake.server.web.time_range import TimeRange, parse_range

SORTABLE = ("exe", "computer", "username", "start_time", "last_activity")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
_PLACEHOLDER = re.compile(r"\$(\w+)")


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer URL parameter in [low, high]; a 400 page otherwise."""
    text = request.query.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise html.PageError(400, "Bad request", f"'{name}' must be an integer, given '{text}'") from None
    if not low <= value <= high:
        raise html.PageError(400, "Bad request", f"'{name}' must be between {low} and {high}, given {value}")
    return value


def sql_value(value: object) -> str:
    """`value` written as SQL: a quoted string, a number, NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


@dataclass(frozen=True)
class BoundSql:
    """SQL text with `$name` placeholders and the values DataFusion binds to them."""

    text: str
    params: Mapping[str, object] = field(default_factory=dict)

    def literals(self) -> dict[str, str]:
        """Each bound value written as SQL, by placeholder name."""
        return {name: sql_value(value) for name, value in self.params.items()}

    @property
    def inlined(self) -> str:
        """The text with the values written in: what the SQL page opens, for its user to edit and run
        (never run by a screen: the screens bind the values)."""
        literals = self.literals()
        return _PLACEHOLDER.sub(lambda found: literals.get(found[1], found[0]), self.text)


class Screens:
    """Shared by the screens: the lake, and rendering for the request's principal."""

    def __init__(self, lake: Lake, web_queries: queries.WebQueries) -> None:
        """Reads processes from the lake's catalog; runs the screens' queries with `web_queries`."""
        self.lake = lake
        self.queries = web_queries

    async def table(
        self,
        request: web.Request,
        sql: str,
        time_range: TimeRange | None,
        limit: int | None = None,
        params: Mapping[str, object] | None = None,
    ) -> pa.Table:
        """The result of `sql` (its `$name` placeholders bound to `params`) over the time range, for the
        request's principal."""
        query_range = time_range.ns if time_range is not None else None
        return await self.queries.collect(request, "page", sql, query_range, limit, params)

    async def rows(self, request: web.Request, query: BoundSql, time_range: TimeRange | None) -> list[dict]:
        """The rows of `query` over the time range, as dicts."""
        return queries.records(await self.table(request, query.text, time_range, params=query.params))

    def page(self, request: web.Request, template: str, **context: object) -> web.Response:
        """`template` rendered for the request's principal."""
        signed_in = principal_of(request) is not None
        return html.page(template, csrf_token=csrf_token(request), signed_in=signed_in, **context)

    # -- / ----------------------------------------------------------------------------------------

    async def processes(self, request: web.Request) -> web.Response:
        """The processes of the time range, searched and sorted."""
        time_range = parse_range(request.query, "now-24h")
        search = request.query.get("q", "").strip()
        sort = request.query.get("sort", "last_activity")
        if sort not in SORTABLE:
            raise html.PageError(400, "Bad request", f"cannot sort by '{sort}': choose one of {', '.join(SORTABLE)}")
        descending = request.query.get("dir", "desc") != "asc"
        limit = int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        query = processes_sql(search, sort, descending, limit)
        rows = await self.rows(request, query, time_range)
        direction = "desc" if descending else "asc"
        kept = {"q": search, "sort": sort, "dir": direction, "limit": limit}
        return self.page(
            request,
            "processes.html",
            title="Processes",
            time_range=time_range,
            search=search,
            sort=sort,
            direction=direction,
            limit=limit,
            max_limit=MAX_LIMIT,
            hidden=kept,
            headers=_process_headers(sort, descending, {**kept, **time_range.query}),
            rows=rows,
            query=query,
        )

    # -- /sql -------------------------------------------------------------------------------------

    async def sql(self, request: web.Request) -> web.Response:
        """The SQL page: an editor whose script runs the query through `/api/sql`."""
        time_range = parse_range(request.query, "now-1h")
        text = request.query.get("q", "SELECT process_id, exe, start_time FROM processes ORDER BY start_time DESC")
        return self.page(
            request, "sql.html", title="SQL", scripts=("sql.js",), time_range=time_range, text=text, max_limit=MAX_LIMIT
        )


_PROCESS_COLUMNS = (
    ("process_id", "process id"),
    ("exe", "exe"),
    ("computer", "computer"),
    ("username", "user"),
    ("start_time", "start"),
    ("last_activity", "last activity"),
)


def processes_sql(search: str, sort: str, descending: bool, limit: int) -> BoundSql:
    """The processes matching `search` (in exe, computer or user); `sort` is one of SORTABLE and
    `limit` an int, so both may stand in the text."""
    where, params = "", {}
    if search:
        params = {"needle": search.lower()}
        where = " WHERE " + " OR ".join(
            f"strpos(lower(coalesce({column}, '')), $needle) > 0" for column in ("exe", "computer", "username")
        )
    return BoundSql(
        "SELECT process_id, exe, computer, username, start_time, last_update_time AS last_activity"
        f" FROM processes{where} ORDER BY {sort} {'DESC' if descending else 'ASC'} NULLS LAST LIMIT {limit}",
        params,
    )


def _process_headers(sort: str, descending: bool, params: dict[str, object]) -> list[tuple[str, str | None]]:
    """Each column's label and, for sortable columns, the link that sorts by it (or flips the order)."""
    headers = []
    for column, label in _PROCESS_COLUMNS:
        if column not in SORTABLE:
            headers.append((label, None))
            continue
        flip = "asc" if column == sort and descending else "desc"
        arrow = (" ▼" if descending else " ▲") if column == sort else ""
        headers.append((label + arrow, url("/", {**params, "sort": column, "dir": flip})))
    return headers
