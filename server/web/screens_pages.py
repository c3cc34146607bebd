"""`/screens` (the screens by folder), `/screen/<name>` (a notebook, drawn by `static/screens.js`) and
`POST /api/screen-cell`, which runs one cell of a saved screen.

A cell runs the SQL stored in the screen, never SQL the page sends: its macros expanded with the
page's variable values and time range (`screens_macros`), through the governed query path
(`queries.WebQueries`: the viewer's audiences, limits, deny list, audit), at most `MAX_CELL_ROWS` rows.
A failure is the cell's alone: the answer carries the expanded SQL and the error, and the page goes on.
Screens of the single-query types (table, log, metrics, process list) are shown as a notebook of one cell.
`POST /screens/starters` adds the starter screens (`screens_starters`) to the folder `starters`.
A caller with write access (`screens_api.may_write_screens`) gets the edit controls: the page edits the
notebook's cells and saves the whole config through `PUT /api/screens/{name}`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from spanlake.lakehouse.errors import STORAGE_FAILURES, STORAGE_UNAVAILABLE
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.server.site_guard import csrf_token
from spanlake.server.web import html
from spanlake.server.web.access_api import caller_name
from spanlake.server.web.api import json_response, request_range
from spanlake.server.web.auth_cookie import principal_of
from spanlake.server.web.queries import WebQueries, WebQueryError
from spanlake.server.web.screens_api import may_write_screens
from spanlake.server.web.screens_macros import expand_macros
from spanlake.server.web.screens_starters import STARTER_SCREENS
from spanlake.server.web.time_range import parse_range

MAX_CELL_ROWS = 10_000
STARTER_FOLDER = "starters"
JS_SAFE_INTEGER = 2**53 - 1
# Cell types whose `sql` runs on the server; the others (markdown, hg, perfettoexport) are drawn by the page.
QUERY_CELL_TYPES = frozenset(
    {"table", "transposed", "chart", "log", "variable", "flamegraph", "swimlane", "propertytimeline"}
)
PAGE_CELL_TYPES = frozenset({"markdown", "hg", "perfettoexport"})
# The one cell a single-query screen type is shown as.
_SINGLE_QUERY_CELL = {"process_list": "table", "table": "table", "log": "log", "metrics": "chart"}


class CellError(Exception):
    """A cell that cannot run: the message its box shows, and the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        """`message` for the cell's box."""
        super().__init__(message)
        self.message, self.status = message, status


def notebook_of(screen: dict[str, Any]) -> dict[str, Any]:
    """The screen's config as a notebook (a single-query type as one cell named after the screen type)."""
    config = screen["config"]
    cell_type = _SINGLE_QUERY_CELL.get(screen["screen_type"])
    if cell_type is None:
        return config
    return {**config, "cells": [{"name": screen["screen_type"], "type": cell_type, "sql": config.get("sql", "")}]}


def find_cell(cells: Any, name: str) -> dict[str, Any]:
    """The cell called `name`, looked for in horizontal groups too (CellError when there is none)."""
    if not isinstance(cells, list):
        raise CellError("the screen's config has no list of cells")
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        if cell.get("name") == name:
            return cell
        if cell.get("type") == "hg" and isinstance(cell.get("children"), list):
            try:
                return find_cell(cell["children"], name)
            except CellError:
                continue
    raise CellError(f"the screen has no cell named '{name}'", 404)


def cell_sql(cell: dict[str, Any]) -> str:
    """The SQL a cell runs (CellError for a cell type that runs none, an unknown one, or a missing `sql`)."""
    cell_type = cell.get("type")
    if cell_type not in QUERY_CELL_TYPES:
        known = ", ".join(sorted(QUERY_CELL_TYPES | PAGE_CELL_TYPES))
        raise CellError(f"unknown cell type '{cell_type}' (spanlake draws: {known})")
    if cell.get("dataSource") == "notebook":
        raise CellError(
            "this cell queries other cells' results (dataSource 'notebook'), which micromegas runs in the"
            " browser's own engine: spanlake runs every cell on the server"
        )
    sql = cell.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise CellError(f"the {cell_type} cell '{cell.get('name')}' has no SQL")
    return sql


def _variables(value: Any) -> dict[str, Any]:
    """The page's variable values: name -> text, or name -> {column: text} (CellError otherwise)."""
    if not isinstance(value, dict):
        raise CellError("'variables' must be an object")
    for name, item in value.items():
        simple = isinstance(item, str)
        columns = isinstance(item, dict) and all(isinstance(v, str) for v in item.values())
        if not (simple or columns):
            raise CellError(f"the value of variable '{name}' must be a string or an object of strings")
    return value


def cell_rows(table: pa.Table) -> list[list]:
    """Rows JSON carries: timestamps as ms since the epoch (fractional), binaries as their size, NaN and
    integers past a JS number's exact range as text."""
    columns = []
    for column, field in zip(table.columns, table.schema, strict=True):
        if pa.types.is_timestamp(field.type):
            ns = column.cast(pa.timestamp("ns")).cast(pa.int64())
            column = pc.divide(ns.cast(pa.float64(), safe=False), 1e6)  # ms: exact to the µs
        elif pa.types.is_date(field.type) or pa.types.is_time(field.type) or pa.types.is_duration(field.type):
            column = column.cast(pa.string())
        elif pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            column = pc.binary_length(column)
        elif pa.types.is_floating(field.type) and pc.any(pc.invert(pc.is_finite(column))).as_py():
            column = column.cast(pa.string())
        elif pa.types.is_integer(field.type) and not _exact_in_js(column):
            column = column.cast(pa.string())  # span ids: a JS number would round them
        columns.append(column.to_pylist())
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def _exact_in_js(column: pa.ChunkedArray) -> bool:
    """Whether every integer of the column is exact as a JS number (within ±2^53)."""
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return low is None or (low >= -JS_SAFE_INTEGER and high <= JS_SAFE_INTEGER)


class ScreenPages:
    """The screens' pages and their cells' runs."""

    def __init__(self, lake: Lake, queries: WebQueries) -> None:
        """Screens read from `lake`'s catalog; cells run with `queries`."""
        self.catalog = lake.catalog
        self.queries = queries

    def _page(self, request: web.Request, template: str, **context: object) -> web.Response:
        signed_in = principal_of(request) is not None
        editable = may_write_screens(request)
        return html.page(template, csrf_token=csrf_token(request), signed_in=signed_in, editable=editable, **context)

    async def folders(self, request: web.Request) -> web.Response:
        """Every screen, by folder."""
        by_folder: dict[str, list[dict[str, Any]]] = {}
        for screen in await self.catalog.list_screens():
            by_folder.setdefault(screen["folder_path"], []).append(screen)
        folders = sorted(by_folder.items())
        return self._page(request, "screens.html", title="Screens", scripts=("screens.js",), folders=folders)

    async def add_starters(self, request: web.Request) -> web.Response:
        """Adds the starter screens not there yet (a screen by that name is left as it is); back to `/screens`.
        403 without write access."""
        if not may_write_screens(request):
            raise html.PageError(403, "Forbidden", "adding screens takes write access (an admin key)")
        for starter in STARTER_SCREENS:
            await self.catalog.insert_screen(
                **starter, user=caller_name(request), managed_by=None, folder_path=STARTER_FOLDER
            )
        raise web.HTTPSeeOther("/screens")

    async def screen(self, request: web.Request) -> web.Response:
        """A screen as a notebook; its cells run from the page's script."""
        name = request.match_info["name"]
        screen = await self.catalog.get_screen(name)
        if screen is None:
            raise html.PageError(404, "Unknown screen", f"there is no screen named '{name}'")
        notebook = notebook_of(screen)
        time_range = parse_range(
            request.query, str(notebook.get("timeRangeFrom", "now-1h")), str(notebook.get("timeRangeTo", "now"))
        )
        return self._page(
            request,
            "screen.html",
            title=name,
            crumbs=(("/screens", "Screens"),),
            scripts=("vendor/uplot/uPlot.iife.min.js", "screens.js"),
            styles=("vendor/uplot/uPlot.min.css", "screens.css"),
            screen=screen,
            time_range=time_range,
            notebook_json=json.dumps(notebook),
        )

    async def run_cell(self, request: web.Request) -> web.Response:
        """`{screen, cell, variables, begin, end}` → `{sql, columns, rows, row_count, truncated, elapsed_ms}`;
        a failure → `{error, sql}` with its status."""
        sql = None
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise CellError("the body must be a JSON object")
            screen = await self.catalog.get_screen(str(body.get("screen")))
            if screen is None:
                raise CellError(f"there is no screen named '{body.get('screen')}'", 404)
            cell = find_cell(notebook_of(screen).get("cells"), str(body.get("cell")))
            query_range = request_range(body)
            if query_range is None:
                raise CellError("the request needs the time range: 'begin' and 'end'")
            begin, end = (format_rfc3339_ns(ns) for ns in query_range)
            sql = expand_macros(cell_sql(cell), _variables(body.get("variables", {})), begin, end)
            return json_response(await self._collect(request, sql, query_range))
        except ValueError as err:  # the body is not JSON (json.JSONDecodeError), or a bad time range
            status, message = 400, str(err)
        except (CellError, WebQueryError) as err:
            status, message = err.status, err.message
        except STORAGE_FAILURES:
            status, message = 503, STORAGE_UNAVAILABLE
        return json_response({"error": message, "sql": sql}, status)

    async def _collect(self, request: web.Request, sql: str, query_range: tuple[int, int]) -> dict[str, Any]:
        started = time.perf_counter()
        table = await self.queries.collect(request, "screen_cell", sql, query_range, MAX_CELL_ROWS + 1)
        truncated = table.num_rows > MAX_CELL_ROWS
        table = table.slice(0, MAX_CELL_ROWS)
        return {
            "sql": sql,
            "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
            "rows": cell_rows(table),
            "row_count": table.num_rows,
            "truncated": truncated,
            "elapsed_ms": round((time.perf_counter() - started) * 1000.0, 1),
        }
