"""The screens that are not about one process: the processes list and the SQL page; and what every
screen shares (running a query for the signed-in principal, the process tabs)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.server.web import html, queries
from spanlake.server.web.auth_cookie import principal_of
from spanlake.server.web.html import esc, link, url
from spanlake.server.web.time_range import TimeRange, parse_range

SORTABLE = ("exe", "computer", "username", "start_time", "last_activity")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


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
        params: dict[str, Any] | None = None,
    ) -> pa.Table:
        """The result of a screen's query for the request's principal (`params`: the values of the
        SQL's `$name` placeholders)."""
        query_range = time_range.ns if time_range is not None else None
        return await self.queries.collect(request, "page", sql, query_range, limit, params)

    def page(self, request: web.Request, title: str, body: str, **kwargs: object) -> web.Response:
        return html.page(title, body, signed_in=principal_of(request) is not None, **kwargs)

    # -- / ----------------------------------------------------------------------------------------

    async def processes(self, request: web.Request) -> web.Response:
        time_range = parse_range(request.query, "now-24h")
        search = request.query.get("q", "").strip()
        sort = request.query.get("sort", "last_activity")
        if sort not in SORTABLE:
            raise html.PageError(400, "Bad request", f"cannot sort by '{sort}': choose one of {', '.join(SORTABLE)}")
        descending = request.query.get("dir", "desc") != "asc"
        limit = int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        sql = processes_sql(search, sort, descending, limit)
        rows = queries.records(await self.table(request, sql, time_range))
        params = {"q": search, "sort": sort, "dir": "desc" if descending else "asc", "limit": limit, **time_range.query}

        def header(column: str, label: str) -> str:
            if column not in SORTABLE:
                return esc(label)
            flip = "asc" if column == sort and descending else "desc"
            arrow = (" ▼" if descending else " ▲") if column == sort else ""
            return link(url("/", {**params, "sort": column, "dir": flip}), label + arrow, "sort")

        body = [
            f"""<form class=search method=get action="/">
<input type=search name=q value="{esc(search)}" placeholder="search exe, computer, user" size=40 autofocus>
<label>rows <input name=limit type=number min=1 max={MAX_LIMIT} value={limit}></label>
<input type=hidden name=sort value="{esc(sort)}"><input type=hidden name=dir value="{params["dir"]}">
<input type=hidden name=from value="{esc(time_range.from_text)}"><input type=hidden name=to
 value="{esc(time_range.to_text)}"><button>Search</button></form>""",
            html.time_form("/", time_range, {k: v for k, v in params.items() if k not in ("from", "to")}),
            f"<p class=summary id=summary>{len(rows)} process{'es' if len(rows) != 1 else ''}"
            f"{' (row limit reached)' if len(rows) == limit else ''}</p>",
            html.table(
                [header(c, label) for c, label in _PROCESS_COLUMNS],
                [_process_cells(row) for row in rows],
                table_id="processes",
            ),
            sql_details(sql, time_range),
        ]
        return self.page(request, "Processes", "".join(body))

    # -- /sql -------------------------------------------------------------------------------------

    async def sql(self, request: web.Request) -> web.Response:
        time_range = parse_range(request.query, "now-1h")
        text = request.query.get("q", "SELECT process_id, exe, start_time FROM processes ORDER BY start_time DESC")
        body = f"""{html.time_form("/sql", time_range, {"q": text})}
<form id=sql-form class=sql data-from="{esc(time_range.begin_rfc3339)}" data-to="{esc(time_range.end_rfc3339)}">
<textarea id=sql-text name=q rows=8 spellcheck=false>{esc(text)}</textarea>
<div class=toolbar><button id=run type=submit>Run <kbd>Ctrl+Enter</kbd></button>
<label>row limit <input id=sql-limit type=number min=1 max={MAX_LIMIT} value=1000></label>
<button id=csv type=button disabled>Export CSV</button><span id=sql-status class=status></span></div></form>
<div id=sql-error class=error role=alert hidden></div><div id=sql-result></div>"""
        return self.page(request, "SQL", body, scripts=("sql.js",))


_PROCESS_COLUMNS = (
    ("process_id", "process id"),
    ("exe", "exe"),
    ("computer", "computer"),
    ("username", "user"),
    ("start_time", "start"),
    ("last_activity", "last activity"),
)


def processes_sql(search: str, sort: str, descending: bool, limit: int) -> str:
    where = ""
    if search:
        needle = queries.sql_literal(search.lower())
        where = " WHERE " + " OR ".join(
            f"strpos(lower(coalesce({column}, '')), {needle}) > 0" for column in ("exe", "computer", "username")
        )
    return (
        "SELECT process_id, exe, computer, username, start_time, last_update_time AS last_activity"
        f" FROM processes{where} ORDER BY {sort} {'DESC' if descending else 'ASC'} NULLS LAST LIMIT {limit}"
    )


def _process_cells(row: dict) -> list[str]:
    pid = row["process_id"]
    return [
        f'{link(f"/process/{pid}", pid, "pid")} <button type=button class=copy data-copy="{esc(pid)}"'
        ' title="copy the id">⧉</button>',
        esc(row["exe"]),
        esc(row["computer"]),
        esc(row["username"]),
        esc(html.format_time(row["start_time"])),
        esc(html.format_time(row["last_activity"])),
    ]


def sql_details(sql: str, time_range: TimeRange, label: str = "SQL") -> str:
    """The SQL behind a screen, one click away, and a link that opens it on the SQL page."""
    return (
        f"<details class=sql-behind><summary>{esc(label)}</summary><pre>{esc(sql)}</pre>"
        f"{link(url('/sql', {'q': sql, **time_range.query}), 'open in the SQL page')}</details>"
    )
