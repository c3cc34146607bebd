"""The traces screens: `/traces` (the `traces` global view, searched) and `/trace/{trace_id}` (a waterfall
across processes drawn by trace.js), with the JSON route the waterfall pages through.

A trace is read with `trace_spans('<trace id>')` through the governed runner; its waterfall
(`trace_layout`) is computed once per request and answered a page of rows at a time, so the browser
renders only the visible window of a 100,000-span trace and asks for more rows as it scrolls.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query import trace_spans
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.server.web import html
from spanlake.server.web.api import json_response
from spanlake.server.web.pages import MAX_LIMIT, BoundSql, Screens, int_param
from spanlake.server.web.queries import records
from spanlake.server.web.time_range import parse_range
from spanlake.server.web.trace_layout import LINK_KINDS, Waterfall, lay_out

_SPAN_ID = re.compile(r"[0-9a-f]{16}")
PAGE_ROWS = 500
TRACES_LIMIT = 100
# What the waterfall's rows carry besides their layout and times; the other columns of `trace_sql`
# (status, attributes, events, links) go to the span's details as they are.
_SPAN_FIELDS = ["span_id", "parent_span_id", "name", "target", "kind", "process_id", "exe", "stream_id", "depth"]
_DETAILS = ["status", "attributes", "events", "links"]


def parse_trace_id(text: str) -> str:
    """A URL's trace id as W3C writes it (32 lowercase hex digits, not all zero); a 400 otherwise."""
    try:
        return trace_spans.parse_trace_id(text).hex()
    except QueryError:
        raise html.PageError(400, "Bad trace id", f"'{text}' is not a trace id (32 hex digits, not all zero)") from None


def trace_sql(trace_id: str) -> str:
    """Every span of the trace, its attributes and events as JSON text (events cast to the attributes'
    jsonb type: one query takes one); the id stands in the text (no table function argument is bound)
    and was checked by `parse_trace_id`."""
    return (
        'SELECT trace_id, process_id, exe, stream_id, span_id, parent_span_id, name, target, begin, "end",'
        " duration, depth, kind, status, jsonb_format_json(attributes) AS attributes,"
        " jsonb_format_json(arrow_cast(events, 'Dictionary(Int32, Binary)')) AS events,"
        f" links FROM trace_spans('{trace_id}')"
    )


def traces_sql(search: dict[str, str], min_duration_ms: int, limit: int) -> BoundSql:
    """The traces of the time range matching the search (trace id, root name, root process), newest
    first; `limit` and `min_duration_ms` are ints, so they may stand in the text."""
    where, params = [], {}
    if search["trace"]:
        where.append("trace_id = $trace")
        params["trace"] = search["trace"]
    if search["name"]:
        where.append("strpos(lower(root_name), $name) > 0")
        params["name"] = search["name"].lower()
    if search["process"]:
        where.append("(strpos(lower(root_exe), $process) > 0 OR root_process_id = $process)")
        params["process"] = search["process"].lower()
    if min_duration_ms:
        where.append(f"duration >= {min_duration_ms * 1_000_000}")
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    return BoundSql(
        'SELECT trace_id, root_name, root_process_id, root_exe, begin, "end", duration, span_count,'
        f" process_count, has_error FROM traces{condition} ORDER BY begin DESC LIMIT {limit}",
        params,
    )


def _page_of(waterfall: Waterfall, offset: int, limit: int) -> list[dict]:
    """The spans `offset`..`offset + limit` (in row order) as the waterfall's JSON rows."""
    stop = max(min(offset + limit, len(waterfall.order)), offset)
    spans = waterfall.page(offset, stop)
    begin = pc.subtract(spans.column("begin").cast(pa.int64()), waterfall.begin_ns).to_pylist()
    end = pc.subtract(spans.column("end").cast(pa.int64()), waterfall.begin_ns).to_pylist()
    layout = {
        "row": waterfall.rows[offset:stop].tolist(),
        "band_depth": waterfall.band_depth[offset:stop].tolist(),
        "parent_index": waterfall.parent[offset:stop].tolist(),
        "link": np.asarray(LINK_KINDS)[waterfall.link[offset:stop]].tolist(),
        "critical": waterfall.critical[offset:stop].tolist(),
    }
    fields = spans.select(_SPAN_FIELDS).to_pylist()
    details = records(spans.select(_DETAILS))
    parent_rows = waterfall.rows[np.maximum(waterfall.parent[offset:stop], 0)].tolist()
    return [
        {
            **fields[i],
            "index": offset + i,
            "begin": begin[i],
            "end": end[i],
            **{name: values[i] for name, values in layout.items()},
            "parent_row": parent_rows[i] if layout["parent_index"][i] >= 0 else None,
            "details": details[i],
        }
        for i in range(len(fields))
    ]


def waterfall_json(waterfall: Waterfall, trace_id: str, offset: int, limit: int, selected: int | None) -> dict:
    """The waterfall's frame (bands, time bounds, row count) with one page of its spans."""
    return {
        "trace_id": trace_id,
        "spans_total": len(waterfall.order),
        "row_count": waterfall.row_count,
        "duration_ns": waterfall.end_ns - waterfall.begin_ns,
        "begin": format_rfc3339_ns(waterfall.begin_ns),
        "bands": [dataclasses.asdict(band) for band in waterfall.bands],
        "critical_spans": int(waterfall.critical.sum()),
        "offset": offset,
        "limit": limit,
        "selected": selected,
        "spans": _page_of(waterfall, offset, limit),
    }


def _selected_index(waterfall: Waterfall, span: str | None) -> int | None:
    """The index (in row order) of the span the URL names (16 hex digits); a 400 for a bad id, a 404
    for a span not in the trace."""
    if span is None:
        return None
    span_hex = span.strip().lower()
    if not _SPAN_ID.fullmatch(span_hex):
        raise html.PageError(400, "Bad span id", f"'{span}' is not a span id (16 hexadecimal digits)")
    found = waterfall.index_of(span_hex)
    if found < 0:
        raise html.PageError(404, "Span not found", f"the trace has no span {span_hex}")
    return found


class TraceScreens(Screens):
    """`/traces`, `/trace/{trace_id}` and `/api/trace/{trace_id}`."""

    async def traces(self, request: web.Request) -> web.Response:
        """The traces of the time range, searched by trace id, root name, root process, duration."""
        time_range = parse_range(request.query, "now-1h")
        search = {key: request.query.get(key, "").strip() for key in ("trace", "name", "process")}
        if search["trace"]:
            search["trace"] = parse_trace_id(search["trace"])
        min_duration_ms = int_param(request, "min_ms", 0, 0, 10**9)
        limit = int_param(request, "limit", TRACES_LIMIT, 1, MAX_LIMIT)
        query = traces_sql(search, min_duration_ms, limit)
        rows = await self.rows(request, query, time_range)
        return self.page(
            request,
            "traces.html",
            title="Traces",
            time_range=time_range,
            search=search,
            min_ms=min_duration_ms,
            limit=limit,
            hidden={**search, "min_ms": min_duration_ms or "", "limit": limit},
            rows=rows,
            query=query,
        )

    async def trace(self, request: web.Request) -> web.Response:
        """The waterfall's frame; trace.js fills it from `/api/trace/{trace_id}`."""
        trace_id = parse_trace_id(request.match_info["trace_id"])
        return self.page(
            request,
            "trace.html",
            title=f"Trace {trace_id}",
            scripts=("trace.js",),
            crumbs=[("/traces", "traces")],
            trace_id=trace_id,
            span=request.query.get("span", ""),
            query=BoundSql(trace_sql(trace_id)),
        )

    async def waterfall(self, request: web.Request) -> web.Response:
        """`{bands, row_count, spans, ...}`: a page of the trace's waterfall rows (`offset`, `limit`), or
        the page holding the span `span` (16 hex digits)."""
        trace_id = parse_trace_id(request.match_info["trace_id"])
        limit = int_param(request, "limit", PAGE_ROWS, 1, MAX_LIMIT)
        offset = int_param(request, "offset", 0, 0, 2**62)
        table = await self.queries.collect(request, "trace", trace_sql(trace_id), None)
        if not table.num_rows:
            raise html.PageError(404, "Trace not found", f"there is no trace {trace_id} in this lake")
        waterfall = lay_out(table)
        selected = _selected_index(waterfall, request.query.get("span"))
        if selected is not None:
            offset = selected - selected % limit
        return json_response(waterfall_json(waterfall, trace_id, offset, limit, selected))
