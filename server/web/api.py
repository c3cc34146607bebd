"""The JSON routes the pages' scripts call: span trees loaded level by level, the SQL page, health.

Span trees never load a whole process: a request returns one level (the top-level spans, or the
children of one span) in begin order, up to a limit, each with its number of children, so a process
with a million spans opens as fast as one with a hundred. Times are ns offsets from the range's
begin (exact in a JS number), ids are strings (64-bit ids do not fit in one).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from spanlake.lakehouse.errors import STORAGE_FAILURES
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.read_scope import can_read
from spanlake.lakehouse.query.runner import arrow_bytes
from spanlake.lakehouse.timestamps import parse_rfc3339_ns
from spanlake.server.http_body import read_body
from spanlake.server.web import html
from spanlake.server.web.auth_cookie import principal_of
from spanlake.server.web.pages import MAX_LIMIT, int_param
from spanlake.server.web.process_pages import lifetime_range, load_process
from spanlake.server.web.queries import WebQueries
from spanlake.server.web.span_find import SpanTable, find_path, match_sql
from spanlake.server.web.span_levels import load_level, source_sql
from spanlake.server.web.time_range import TimeRange, TimeRangeError, parse_range

TREE_LIMIT = 500


def json_response(body: object, status: int = 200) -> web.Response:
    """A JSON response of `body`."""
    return web.Response(text=json.dumps(body, default=str), status=status, content_type="application/json")


def _parent(request: web.Request, name: str = "parent") -> int | None:
    """The span id of the URL's parameter `name` (an integer), None when absent; a 400 otherwise."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise html.PageError(400, "Bad request", f"'{name}' must be a span id (an integer), given '{text}'") from None


def _tree_json(table: pa.Table, time_range: TimeRange, limit: int) -> dict:
    """Spans as JSON rows; begin/end as ns after the range's begin (end null when not in the range)."""
    offsets = {
        name: pc.subtract(table.column(name).cast(pa.int64()), time_range.begin_ns).to_pylist()
        for name in ("begin", "end")
    }
    spans = []
    for i, row in enumerate(table.drop_columns(["begin", "end", "total"]).to_pylist()):
        spans.append(
            {
                **row,
                "id": str(row["id"]),
                "parent": str(row["parent"]),
                "begin": offsets["begin"][i],
                "end": offsets["end"][i],
            }
        )
    total = table.column("total")[0].as_py() if table.num_rows else 0
    return {
        "spans": spans,
        "total": total,
        "limit": limit,
        "range_ns": time_range.end_ns - time_range.begin_ns,
        "base": time_range.begin_rfc3339,
    }


class Api:
    """The JSON routes: span tree levels, span search, `/api/sql`, health."""

    def __init__(self, lake: Lake, queries: WebQueries) -> None:
        """Reads processes from the lake's catalog; runs queries with `queries`."""
        self.lake = lake
        self.queries = queries

    async def _level(self, request: web.Request, table: SpanTable, time_range: TimeRange) -> web.Response:
        limit = int_param(request, "limit", TREE_LIMIT, 1, MAX_LIMIT)
        offset = int_param(request, "offset", 0, 0, 2**62)
        level = await self.queries.in_session(
            request,
            "span_tree",
            source_sql(table),
            time_range.ns,
            functools.partial(load_level, table=table, parent=_parent(request), limit=limit, offset=offset),
        )
        return json_response(_tree_json(level, time_range, limit))

    async def _process_tree(self, request: web.Request) -> tuple[SpanTable, TimeRange]:
        process = await load_process(self.lake.catalog, request.match_info["process_id"], principal_of(request))
        return SpanTable.async_events(process.process_id), lifetime_range(process, request.query)

    async def _thread_tree(self, request: web.Request) -> tuple[SpanTable, TimeRange]:
        text = request.match_info["stream_id"]
        try:
            stream_id = uuid.UUID(text)
        except ValueError:
            raise html.PageError(400, "Bad stream id", f"'{text}' is not a stream id (a UUID)") from None
        found = await self.lake.catalog.stream_audience(stream_id)
        if found is None or not can_read(principal_of(request), found[0]):
            raise html.PageError(404, "Stream not found", f"there is no stream {stream_id} in this lake")
        return SpanTable.thread_spans(str(stream_id)), parse_range(request.query, "now-1h")

    async def async_spans(self, request: web.Request) -> web.Response:
        """One level of a process's async span tree."""
        return await self._level(request, *await self._process_tree(request))

    async def thread_spans(self, request: web.Request) -> web.Response:
        """One level of a thread's span tree."""
        return await self._level(request, *await self._thread_tree(request))

    async def async_span_trace(self, request: web.Request) -> web.Response:
        """`{trace_id, span_hex, kind, attributes, processes}` of an async span (`span`, its id as the
        tree gives it): its trace facts (span_traces) and the processes holding the trace's spans (the
        trace index), or `trace_id` null for a span without trace facts."""
        process = await load_process(self.lake.catalog, request.match_info["process_id"], principal_of(request))
        span = _parent(request, "span")
        if span is None:
            raise html.PageError(400, "Bad request", "'span' must be a span id (an integer)")
        sql = (
            "SELECT trace_id, span_hex, kind, attributes"
            f" FROM view_instance('span_traces', '{process.process_id}') WHERE span_id = $span"
        )
        time_range = lifetime_range(process, request.query)
        found = await self.queries.collect(request, "span_trace", sql, time_range.ns, 1, {"span": span})
        if not found.num_rows:
            return json_response(
                {"trace_id": None, "span_hex": None, "kind": None, "attributes": None, "processes": []}
            )
        facts = found.slice(0, 1).to_pylist()[0]
        rows = await self.lake.catalog.trace_processes(bytes.fromhex(facts["trace_id"]))
        processes = [{"process_id": str(row["process_id"]), "exe": row["exe"]} for row in rows]
        return json_response({**facts, "processes": processes})

    async def find_async_span(self, request: web.Request) -> web.Response:
        """The path to a named span of a process's async span tree."""
        return await self._find(request, *await self._process_tree(request))

    async def find_thread_span(self, request: web.Request) -> web.Response:
        """The path to a named span of a thread's span tree."""
        return await self._find(request, *await self._thread_tree(request))

    async def _find(self, request: web.Request, table: SpanTable, time_range: TimeRange) -> web.Response:
        text = request.query.get("name", "").strip()
        if not text:
            raise html.PageError(400, "Bad request", "'name' must be the text to find in span names")
        index = int_param(request, "n", 0, 0, 2**62)
        sql = match_sql(table, index)
        found = await self.queries.in_session(
            request, "span_find", sql, time_range.ns, functools.partial(find_path, table=table, text=text, index=index)
        )
        return json_response(found)

    async def sql(self, request: web.Request) -> web.Response:
        """`{sql, begin, end, limit}` → `{columns, rows, row_count, bytes, elapsed_ms, truncated}`."""
        body = await self._json_body(request)
        sql, limit = body.get("sql"), body.get("limit", 1000)
        if not isinstance(sql, str) or not sql.strip():
            raise html.PageError(400, "Bad request", "the request needs a non-empty 'sql' string")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise html.PageError(400, "Bad request", f"'limit' must be an integer from 1 to {MAX_LIMIT}")
        query_range = request_range(body)
        started = time.perf_counter()
        table = await self.queries.collect(request, "sql", sql, query_range, limit + 1)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        truncated = table.num_rows > limit
        table = table.slice(0, limit)
        return json_response(
            {
                "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
                "rows": _json_rows(table),
                "row_count": table.num_rows,
                "bytes": arrow_bytes(table),
                "elapsed_ms": round(elapsed_ms, 1),
                "truncated": truncated,
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        """micromegas analytics-web-srv's health answer; `flightsql_connected`: the lakehouse answers."""
        try:
            await asyncio.wait_for(self.lake.catalog.ping(), 2.0)
            connected = True
        except STORAGE_FAILURES:
            connected = False
        return json_response(
            {"status": "healthy", "timestamp": dt.datetime.now(dt.UTC).isoformat(), "flightsql_connected": connected}
        )

    async def _json_body(self, request: web.Request) -> dict:
        """The request's JSON object, read within SPANLAKE_REQUEST_BODY_TIMEOUT_S."""
        data = await read_body(request, self.lake.settings.request_body_timeout_s)
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise html.PageError(400, "Bad request", f"the body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise html.PageError(400, "Bad request", "the body must be a JSON object")
        return body


def request_range(body: dict) -> tuple[int, int] | None:
    """`begin` / `end` (RFC3339) of a JSON request as a query range; both or neither."""
    begin, end = body.get("begin"), body.get("end")
    if begin is None and end is None:
        return None
    try:
        if not isinstance(begin, str) or not isinstance(end, str):
            raise ValueError("'begin' and 'end' must both be RFC3339 strings")
        query_range = parse_rfc3339_ns(begin), parse_rfc3339_ns(end)
    except ValueError as err:
        raise TimeRangeError(str(err)) from None
    if query_range[0] >= query_range[1]:
        raise TimeRangeError("the time range is empty: 'begin' must be before 'end'")
    return query_range


def _json_rows(table: pa.Table) -> list[list]:
    """Row lists that JSON can carry: timestamps as text, binaries as their size, NaN/inf as text."""
    columns = []
    for column, field in zip(table.columns, table.schema, strict=True):
        if pa.types.is_timestamp(field.type) or pa.types.is_date(field.type) or pa.types.is_time(field.type):
            column = column.cast(pa.string())
        elif pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            column = pc.binary_join_element_wise(pc.cast(pc.binary_length(column), pa.string()), " bytes", "")
        elif pa.types.is_floating(field.type) and not _all_finite(column):
            column = column.cast(pa.string())
        columns.append(column.to_pylist())
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def _all_finite(column: pa.ChunkedArray) -> bool:
    return pc.all(pc.is_finite(column)).as_py() is not False
