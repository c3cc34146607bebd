"""The screens of one process: overview (info and counts), logs, metrics, async spans, thread call
trees and Perfetto. Without `from` / `to` in the URL, a process's screens cover its whole lifetime."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from spanlake.lakehouse.catalog import Catalog
from spanlake.lakehouse.query.context import Principal
from spanlake.lakehouse.query.read_scope import can_read
from spanlake.server.web import charts, html
from spanlake.server.web.auth_cookie import principal_of
from spanlake.server.web.html import url
from spanlake.server.web.pages import MAX_LIMIT, BoundSql, Screens, int_param
from spanlake.server.web.time_range import TimeRange, absolute, parse_range
from spanlake.server.write_audience import AUDIENCE_PROPERTY

LEVELS = {1: "fatal", 2: "error", 3: "warn", 4: "info", 5: "debug", 6: "trace"}
CHART_BINS = 120
# Each tab by template name: its URL suffix and its label.
TABS = {
    "overview": ("", "Overview"),
    "logs": ("/logs", "Logs"),
    "metrics": ("/metrics", "Metrics"),
    "spans": ("/spans", "Async spans"),
    "threads": ("/threads", "Threads"),
    "perfetto": ("/perfetto", "Perfetto"),
}


@dataclass(frozen=True)
class Thread:
    """A thread of the process: its cpu stream and the name it shows."""

    stream_id: str
    name: str


@dataclass(frozen=True)
class Process:
    """A process of the catalog, with its time span and its threads."""

    process_id: str
    row: asyncpg.Record
    first_ns: int  # earliest block begin (or the start time)
    last_ns: int  # latest block end
    threads: tuple[Thread, ...]

    @property
    def path(self) -> str:
        """The URL of its overview."""
        return f"/process/{self.process_id}"


def datetime_ns(value: dt.datetime) -> int:
    """A datetime as ns since the epoch (to the µs)."""
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def parse_process_id(text: str) -> uuid.UUID:
    """The UUID of a URL's process id; a 400 page otherwise."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise html.PageError(400, "Bad process id", f"'{text}' is not a process id (a UUID)") from None


async def load_process(catalog: Catalog, text: str, principal: Principal | None) -> Process:
    """The process of the URL from the catalog; a 400 or 404 page for a bad or unknown id (a process the
    principal may not read is unknown)."""
    pid = parse_process_id(text)
    row = await catalog.process_row(pid)
    if row is None or not can_read(principal, _audience(row)):
        raise html.PageError(404, "Process not found", f"there is no process {pid} in this lake")
    bounds = await catalog.process_block_bounds(pid)
    first = datetime_ns(bounds["first"]) if bounds["first"] else None
    start = datetime_ns(row["start_time"]) if row["start_time"] else first or time.time_ns()
    first = min(start, first) if first is not None else start
    last = datetime_ns(bounds["last"]) if bounds["last"] else start
    streams = await catalog.cpu_streams(pid)
    return Process(str(pid), row, first, max(last, first + 1_000_000), tuple(_thread(s) for s in streams))


def _audience(process: asyncpg.Record) -> str | None:
    return next((p["value"] for p in process["properties"] or [] if p["key"] == AUDIENCE_PROPERTY), None)


def _thread(stream: asyncpg.Record) -> Thread:
    properties = {p["key"]: p["value"] for p in stream["properties"] or []}
    name, thread_id = properties.get("thread-name", ""), properties.get("thread-id", "")
    label = f"{name} ({thread_id})" if name and thread_id else name or thread_id or str(stream["stream_id"])
    return Thread(str(stream["stream_id"]), label)


def lifetime_range(process: Process, query: Mapping[str, str]) -> TimeRange:
    """The URL's range; the process's lifetime where `from` or `to` is missing."""
    lifetime = absolute(process.first_ns, process.last_ns + 1_000_000)
    if not (query.get("from") or query.get("to")):
        return lifetime
    return parse_range(query, lifetime.from_text, lifetime.to_text)


# A process or stream id stands in the SQL text (a table function's argument is not bound by
# DataFusion 55: `view_instance('log_entries', $pid)` fails to plan); every such id was parsed with
# `uuid.UUID` first (load_process, the API's stream lookup), so it is never text from the request.


def count_sql(process_id: str) -> dict[str, BoundSql]:
    """The SQL behind each count of the overview, by label."""
    return {
        "log entries": BoundSql(f"SELECT count(*) AS n FROM view_instance('log_entries', '{process_id}')"),
        "measures": BoundSql(f"SELECT count(*) AS n FROM view_instance('measures', '{process_id}')"),
        "async spans": BoundSql(
            f"SELECT count(*) AS n FROM view_instance('async_events', '{process_id}') WHERE event_type = 'begin'"
        ),
    }


def thread_spans_count_sql(threads: tuple[Thread, ...]) -> BoundSql:
    """The number of thread spans of all the threads."""
    parts = [f"SELECT count(*) AS n FROM view_instance('thread_spans', '{t.stream_id}')" for t in threads]
    return BoundSql(f"SELECT sum(n) AS n FROM ({' UNION ALL '.join(parts)})" if parts else "SELECT 0 AS n")


def logs_sql(process_id: str, level: int, search: str, limit: int) -> BoundSql:
    """The newest log entries at `level` or more severe whose message contains `search` (any case)."""
    params: dict[str, object] = {"level": level}
    where = "level <= $level"
    if search:
        params["needle"] = search.lower()
        where += " AND strpos(lower(msg), $needle) > 0"
    # A line emitted inside a span names it (OTLP log records carry their span context): it links there.
    return BoundSql(
        "SELECT time, level, target, msg, property_get(properties, 'otel.trace_id') AS trace_id,"
        " property_get(properties, 'otel.span_id') AS span_id"
        f" FROM view_instance('log_entries', '{process_id}') WHERE {where}"
        f" ORDER BY time DESC LIMIT {limit}",
        params,
    )


def measures_sql(process_id: str) -> BoundSql:
    """Each measure of the process (name, target, unit) with its number of points and time span."""
    return BoundSql(
        "SELECT name, target, unit, count(*) AS points, min(time) AS first, max(time) AS last"
        f" FROM view_instance('measures', '{process_id}') GROUP BY name, target, unit ORDER BY name, target, unit"
    )


def chart_sql(process_id: str, measure: Mapping[str, object], bin_ns: int) -> BoundSql:
    """min / avg / max / count of one measure per bin of `bin_ns` (a computed int, in the text)."""
    return BoundSql(
        f"SELECT date_bin(INTERVAL '{bin_ns} nanoseconds', time, TIMESTAMP '1970-01-01T00:00:00Z') AS bin,"
        " min(value) AS min, avg(value) AS avg, max(value) AS max, count(*) AS n"
        f" FROM view_instance('measures', '{process_id}')"
        " WHERE name = $name AND target = $target AND unit = $unit GROUP BY 1 ORDER BY 1",
        {k: measure[k] for k in ("name", "target", "unit")},
    )


class ProcessScreens(Screens):
    """The screens of one process, one per tab."""

    async def _open(self, request: web.Request) -> tuple[Process, TimeRange]:
        process = await load_process(self.lake.catalog, request.match_info["process_id"], principal_of(request))
        return process, lifetime_range(process, request.query)

    def _tab(
        self,
        request: web.Request,
        tab: str,
        process: Process,
        time_range: TimeRange,
        hidden: Mapping[str, object] | None = None,
        **context: object,
    ) -> web.Response:
        """The tab's page: its template (`process_<name>.html`) under the tabs and the time range."""
        suffix, label = TABS[tab]
        title = _title(process)
        return self.page(
            request,
            f"process_{tab}.html",
            title=title if tab == "overview" else f"{label} · {title}",
            process=process,
            time_range=time_range,
            tabs=TABS.values(),
            active=suffix,
            hidden=hidden or {},  # the other parameters the time-range form keeps
            **context,
        )

    async def overview(self, request: web.Request) -> web.Response:
        """The process's info, properties and counts."""
        process, time_range = await self._open(request)
        count_queries = {**count_sql(process.process_id), "thread spans": thread_spans_count_sql(process.threads)}
        tables = await asyncio.gather(*(self.rows(request, q, time_range) for q in count_queries.values()))
        counts = {label: rows[0]["n"] or 0 for label, rows in zip(count_queries, tables, strict=True)}
        counts["threads"] = len(process.threads)
        row = process.row
        return self._tab(
            request,
            "overview",
            process,
            time_range,
            crumbs=[(process.path, process.process_id[:8])],
            info=[(k, row[k]) for k in ("exe", "computer", "username", "realname", "distro", "cpu_brand")],
            start_ns=datetime_ns(row["start_time"]) if row["start_time"] else process.first_ns,
            parent=str(row["parent_process_id"]) if row["parent_process_id"] else None,
            counts=counts,
            count_queries=count_queries,
            properties=row["properties"] or [],
        )

    async def logs(self, request: web.Request) -> web.Response:
        """The process's log entries, filtered by level and text, newest first."""
        process, time_range = await self._open(request)
        level = int_param(request, "level", 6, 1, 6)
        limit = int_param(request, "limit", 200, 1, MAX_LIMIT)
        search = request.query.get("q", "").strip()
        query = logs_sql(process.process_id, level, search, limit)
        return self._tab(
            request,
            "logs",
            process,
            time_range,
            hidden={"level": level, "q": search},
            levels=LEVELS,
            level=level,
            search=search,
            limit=limit,
            max_limit=MAX_LIMIT,
            rows=await self.rows(request, query, time_range),
            query=query,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """The process's measures and, for the chosen one, its chart."""
        process, time_range = await self._open(request)
        list_query = measures_sql(process.process_id)
        measures = await self.rows(request, list_query, time_range)
        chosen = {k: request.query.get(k) for k in ("name", "target", "unit")}
        selected = next((m for m in measures if all(chosen[k] == m[k] for k in chosen)), None)
        if chosen["name"] is not None and selected is None:
            raise html.PageError(
                404,
                "Measure not found",
                f"process {process.process_id} has no measure '{chosen['name']}'"
                f" (target '{chosen['target']}', unit '{chosen['unit']}') in this time range",
            )
        chart = await self._chart(request, process.process_id, selected, time_range) if selected else {"chart": None}
        return self._tab(
            request,
            "metrics",
            process,
            time_range,
            hidden={k: v for k, v in chosen.items() if v is not None},
            measures=measures,
            list_query=list_query,
            **chart,
        )

    async def _chart(
        self, request: web.Request, process_id: str, measure: dict, time_range: TimeRange
    ) -> dict[str, object]:
        """What the template needs to draw the chart of `measure`."""
        bin_ns = max(1000, math.ceil((measure["last"] - measure["first"] + 1) / CHART_BINS))
        query = chart_sql(process_id, measure, bin_ns)
        bins = await self.rows(request, query, time_range)
        unit = measure["unit"]
        return {
            "chart": charts.chart(bins, bin_ns),
            "chart_title": f"{measure['name']} ({unit})" if unit else measure["name"],
            "chart_query": query,
        }

    async def spans(self, request: web.Request) -> web.Response:
        """The process's async span tree."""
        process, time_range = await self._open(request)
        source = url(f"/api/process/{process.process_id}/async-spans", _absolute(time_range))
        return self._tab(request, "spans", process, time_range, scripts=("spantree.js",), source=source)

    async def threads(self, request: web.Request) -> web.Response:
        """One call tree per thread of the process."""
        process, time_range = await self._open(request)
        return self._tab(
            request,
            "threads",
            process,
            time_range,
            scripts=("spantree.js",),
            threads=process.threads,
            range_params=_absolute(time_range),
        )

    async def perfetto(self, request: web.Request) -> web.Response:
        """Opening or downloading the process's trace in Perfetto."""
        process, time_range = await self._open(request)
        return self._tab(
            request, "perfetto", process, time_range, scripts=("perfetto.js",), title_of_process=_title(process)
        )


def _title(process: Process) -> str:
    return f"{process.row['exe'] or 'process'} · {process.process_id}"


def _absolute(time_range: TimeRange) -> dict[str, str]:
    """The range as fixed instants: every level a tree loads shares one timeline base."""
    return {"from": time_range.begin_rfc3339, "to": time_range.end_rfc3339}
