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

from spanlake.server.web import charts, html
from spanlake.server.web.html import esc, link, url
from spanlake.server.web.pages import MAX_LIMIT, Screens, int_param, sql_details
from spanlake.server.web.queries import records, sql_literal
from spanlake.server.web.time_range import TimeRange, absolute, parse_range

LEVELS = {1: "fatal", 2: "error", 3: "warn", 4: "info", 5: "debug", 6: "trace"}
CHART_BINS = 120
TABS = (
    ("", "Overview"),
    ("/logs", "Logs"),
    ("/metrics", "Metrics"),
    ("/spans", "Async spans"),
    ("/threads", "Threads"),
    ("/perfetto", "Perfetto"),
)


@dataclass(frozen=True)
class Thread:
    stream_id: str
    name: str


@dataclass(frozen=True)
class Process:
    process_id: str
    row: asyncpg.Record
    first_ns: int  # earliest block begin (or the start time)
    last_ns: int  # latest block end
    threads: tuple[Thread, ...]

    @property
    def path(self) -> str:
        return f"/process/{self.process_id}"


def datetime_ns(value: dt.datetime) -> int:
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def parse_process_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise html.PageError(400, "Bad process id", f"'{text}' is not a process id (a UUID)") from None


async def load_process(pool: asyncpg.Pool, text: str) -> Process:
    """The process of the URL from the catalog; a 400 or 404 page for a bad or unknown id."""
    pid = parse_process_id(text)
    row = await pool.fetchrow("SELECT * FROM processes WHERE process_id = $1", pid)
    if row is None:
        raise html.PageError(404, "Process not found", f"there is no process {pid} in this lake")
    bounds = await pool.fetchrow(
        "SELECT min(begin_time) AS first, max(end_time) AS last FROM blocks WHERE process_id = $1", pid
    )
    first = datetime_ns(bounds["first"]) if bounds["first"] else None
    start = datetime_ns(row["start_time"]) if row["start_time"] else first or time.time_ns()
    first = min(start, first) if first is not None else start
    last = datetime_ns(bounds["last"]) if bounds["last"] else start
    streams = await pool.fetch(
        "SELECT stream_id, properties FROM streams WHERE process_id = $1 AND 'cpu' = ANY(tags)"
        " ORDER BY insert_time, stream_id",
        pid,
    )
    return Process(str(pid), row, first, max(last, first + 1_000_000), tuple(_thread(s) for s in streams))


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


def count_sql(process_id: str) -> dict[str, str]:
    """The SQL behind each count of the overview, by label."""
    return {
        "log entries": f"SELECT count(*) AS n FROM view_instance('log_entries', '{process_id}')",
        "measures": f"SELECT count(*) AS n FROM view_instance('measures', '{process_id}')",
        "async spans": f"SELECT count(*) AS n FROM view_instance('async_events', '{process_id}')"
        " WHERE event_type = 'begin'",
    }


def thread_spans_count_sql(threads: tuple[Thread, ...]) -> str:
    parts = [f"SELECT count(*) AS n FROM view_instance('thread_spans', '{t.stream_id}')" for t in threads]
    return f"SELECT sum(n) AS n FROM ({' UNION ALL '.join(parts)})" if parts else "SELECT 0 AS n"


class ProcessScreens(Screens):
    async def _open(self, request: web.Request, tab: str) -> tuple[Process, TimeRange, str]:
        process = await load_process(self.lake.pool, request.match_info["process_id"])
        time_range = lifetime_range(process, request.query)
        return process, time_range, _tabs(process, tab, time_range)

    def _title(self, process: Process) -> str:
        return f"{process.row['exe'] or 'process'} · {process.process_id}"

    async def overview(self, request: web.Request) -> web.Response:
        process, time_range, tabs = await self._open(request, "")
        sqls = {**count_sql(process.process_id), "thread spans": thread_spans_count_sql(process.threads)}
        tables = await asyncio.gather(*(self.table(request, sql, time_range) for sql in sqls.values()))
        counts = {label: t.column("n")[0].as_py() or 0 for label, t in zip(sqls, tables, strict=True)}
        counts["threads"] = len(process.threads)
        rows = [
            [esc(label), f"<span class=count data-count={esc(label.replace(' ', '-'))}>{n:,}</span>"]
            for label, n in counts.items()
        ]
        body = tabs + html.time_form(process.path, time_range) + "<div class=cols>"
        body += "<section><h2>Process</h2>" + html.table(["", ""], _info_rows(process), "info", "info") + "</section>"
        body += "<section><h2>Counts</h2>" + html.table(["", ""], rows, "info", "counts")
        body += "".join(sql_details(sql, time_range, f"SQL of {label}") for label, sql in sqls.items())
        properties = [[esc(p["key"]), esc(p["value"])] for p in process.row["properties"] or []]
        body += "</section><section><h2>Properties</h2>" + html.table(["", ""], properties, "info", "properties")
        body += "</section></div>"
        return self.page(request, self._title(process), body, crumbs=[(process.path, process.process_id[:8])])

    async def logs(self, request: web.Request) -> web.Response:
        process, time_range, tabs = await self._open(request, "/logs")
        level = int_param(request, "level", 6, 1, 6)
        limit = int_param(request, "limit", 200, 1, MAX_LIMIT)
        search = request.query.get("q", "").strip()
        where = f" WHERE level <= {level}"
        if search:
            where += f" AND strpos(lower(msg), {sql_literal(search.lower())}) > 0"
        sql = (
            f"SELECT time, level, target, msg FROM view_instance('log_entries', '{process.process_id}'){where}"
            f" ORDER BY time DESC LIMIT {limit}"
        )
        rows = records(await self.table(request, sql, time_range))
        options = "".join(
            f"<option value={n}{' selected' if n == level else ''}>{name} and above</option>"
            for n, name in LEVELS.items()
        )
        keep = "".join(f'<input type=hidden name={k} value="{esc(v)}">' for k, v in time_range.query.items())
        form = f"""<form class=search method=get>{keep}<label>level <select name=level>{options}</select></label>
<input type=search name=q value="{esc(search)}" placeholder="text in the message" size=30>
<label>rows <input name=limit type=number min=1 max={MAX_LIMIT} value={limit}></label><button>Filter</button></form>"""
        cells = [
            [
                esc(html.format_time(r["time"])),
                f"<span class='level lvl-{r['level']}'>{esc(LEVELS.get(r['level'], r['level']))}</span>",
                esc(r["target"]),
                f"<pre class=msg>{esc(r['msg'])}</pre>",
            ]
            for r in rows
        ]
        body = (
            tabs
            + html.time_form(process.path + "/logs", time_range, {"level": level, "q": search})
            + form
            + f"<p class=summary id=summary>{len(rows)} entries, newest first"
            f"{' (row limit reached)' if len(rows) == limit else ''}</p>"
            + html.table(["time", "level", "target", "message"], cells, "grid logs", "logs")
            + sql_details(sql, time_range)
        )
        return self.page(request, f"Logs · {self._title(process)}", body)

    async def metrics(self, request: web.Request) -> web.Response:
        process, time_range, tabs = await self._open(request, "/metrics")
        pid = process.process_id
        list_sql = (
            f"SELECT name, target, unit, count(*) AS points, min(time) AS first, max(time) AS last"
            f" FROM view_instance('measures', '{pid}') GROUP BY name, target, unit ORDER BY name, target, unit"
        )
        measures = records(await self.table(request, list_sql, time_range))
        chosen = {k: request.query.get(k) for k in ("name", "target", "unit")}
        selected = next((m for m in measures if all(chosen[k] == m[k] for k in chosen)), None)
        if chosen["name"] is not None and selected is None:
            raise html.PageError(
                404,
                "Measure not found",
                f"process {pid} has no measure '{chosen['name']}'"
                f" (target '{chosen['target']}', unit '{chosen['unit']}') in this time range",
            )
        chart = (
            await self._chart(request, pid, selected, time_range)
            if selected
            else ("<p class=hint>Pick a measure to chart it.</p>")
        )
        cells = [
            [
                link(
                    url(
                        process.path + "/metrics",
                        {**time_range.query, "name": m["name"], "target": m["target"], "unit": m["unit"]},
                    ),
                    m["name"] or "(no name)",
                    "measure",
                ),
                esc(m["target"]),
                esc(m["unit"]),
                f"{m['points']:,}",
            ]
            for m in measures
        ]
        body = (
            tabs
            + html.time_form(process.path + "/metrics", time_range, {k: v for k, v in chosen.items() if v is not None})
            + "<div class=cols><section class=measures>"
            + html.table(["measure", "target", "unit", "points"], cells, "grid", "measures")
            + sql_details(list_sql, time_range)
            + f"</section><section class=chart>{chart}</section></div>"
        )
        return self.page(request, f"Metrics · {self._title(process)}", body)

    async def _chart(self, request: web.Request, pid: str, measure: dict, time_range: TimeRange) -> str:
        first, last = measure["first"], measure["last"]
        bin_ns = max(1000, math.ceil((last - first + 1) / CHART_BINS))
        where = " AND ".join(f"{k} = {sql_literal(measure[k])}" for k in ("name", "target", "unit"))
        sql = (
            f"SELECT date_bin(INTERVAL '{bin_ns} nanoseconds', time, TIMESTAMP '1970-01-01T00:00:00Z') AS bin,"
            f" min(value) AS min, avg(value) AS avg, max(value) AS max, count(*) AS n"
            f" FROM view_instance('measures', '{pid}') WHERE {where} GROUP BY 1 ORDER BY 1"
        )
        bins = records(await self.table(request, sql, time_range))
        title = f"{measure['name']} ({measure['unit']})" if measure["unit"] else measure["name"]
        return charts.chart_section(title, bins, bin_ns) + sql_details(sql, time_range)

    async def spans(self, request: web.Request) -> web.Response:
        process, time_range, tabs = await self._open(request, "/spans")
        source = url(f"/api/process/{process.process_id}/async-spans", _absolute(time_range))
        body = tabs + html.time_form(process.path + "/spans", time_range) + span_tree(source, "async-tree")
        return self.page(request, f"Async spans · {self._title(process)}", body, scripts=("spantree.js",))

    async def threads(self, request: web.Request) -> web.Response:
        process, time_range, tabs = await self._open(request, "/threads")
        sections = (
            "".join(
                f"<details class=thread data-stream={esc(t.stream_id)}><summary>{esc(t.name)}"
                f" <code>{esc(t.stream_id)}</code></summary>"
                + span_tree(
                    url(f"/api/stream/{t.stream_id}/thread-spans", _absolute(time_range)), f"tree-{t.stream_id}"
                )
                + "</details>"
                for t in process.threads
            )
            or "<p class=hint>This process has no thread streams.</p>"
        )
        body = tabs + html.time_form(process.path + "/threads", time_range) + sections
        return self.page(request, f"Threads · {self._title(process)}", body, scripts=("spantree.js",))

    async def perfetto(self, request: web.Request) -> web.Response:
        process, time_range, tabs = await self._open(request, "/perfetto")
        radios = "".join(
            f"<label><input type=radio name=spans value={v}{' checked' if v == 'both' else ''}> {v}</label>"
            for v in ("thread", "async", "both")
        )
        body = f"""{tabs}{html.time_form(process.path + "/perfetto", time_range)}
<form id=perfetto class=perfetto data-url="/api/perfetto/{esc(process.process_id)}"
 data-begin="{esc(time_range.begin_rfc3339)}" data-end="{esc(time_range.end_rfc3339)}"
 data-title="{esc(self._title(process))}"><fieldset><legend>spans</legend>{radios}</fieldset>
<button type=button id=open-perfetto>Open in Perfetto</button> <button type=button id=download>Download</button>
<button type=button id=cancel hidden>Cancel</button></form>
<p id=progress class=status aria-live=polite></p><div id=perfetto-error class=error role=alert hidden></div>"""
        return self.page(request, f"Perfetto · {self._title(process)}", body, scripts=("perfetto.js",))


def span_tree(source: str, ident: str) -> str:
    """The span tree's frame; spantree.js fills it from `source` (top level first, children on demand)."""
    return f"""<div class=spantree id="{esc(ident)}" data-source="{esc(source)}">
<div class=tree-toolbar><input type=search class=tree-search placeholder="highlight spans by name">
<span class=tree-status></span></div><div class=tree-head><span>span</span><span>duration</span>
<span>timeline</span></div><div class=tree-rows role=tree></div><aside class=span-details hidden></aside></div>"""


def _absolute(time_range: TimeRange) -> dict[str, str]:
    """The range as fixed instants: every level a tree loads shares one timeline base."""
    return {"from": time_range.begin_rfc3339, "to": time_range.end_rfc3339}


def _tabs(process: Process, active: str, time_range: TimeRange) -> str:
    items = "".join(
        link(url(process.path + suffix, time_range.query), label, "tab active" if suffix == active else "tab")
        for suffix, label in TABS
    )
    return f"<nav class=tabs>{items}</nav>"


def _info_rows(process: Process) -> list[list[str]]:
    row = process.row
    start = datetime_ns(row["start_time"]) if row["start_time"] else process.first_ns
    parent = row["parent_process_id"]
    rows = [[esc(k), esc(row[k])] for k in ("exe", "computer", "username", "realname", "distro", "cpu_brand")]
    rows += [
        ["process id", f"<code>{esc(process.process_id)}</code>"],
        ["start", esc(html.format_time(start))],
        ["duration", esc(html.format_duration(process.last_ns - start))],
        ["parent", link(f"/process/{parent}", str(parent)) if parent else ""],
    ]
    return rows
