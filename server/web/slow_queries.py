"""The "slow queries" screen: this server's own slow queries (self-tracing), and the span tree of each.

A query the slow-query rule counted as slow has a root entry (lakehouse.query.slow_queries) with
`"slow":true` in this process's `log_entries`; its audit record (target `flightsql_query_audit`) gives
who ran what. `/slow-queries/<span id>` shows the spans kept under its root, indented by depth.
"""

from __future__ import annotations

import json

from aiohttp import web

from spanlake import tracing
from spanlake.lakehouse.query import slow_queries
from spanlake.lakehouse.query.audit import AUDIT_LOGGER
from spanlake.server.web import html
from spanlake.server.web.pages import BoundSql, Screens
from spanlake.server.web.time_range import parse_range

LISTED = 100
_QUERY_ID = """regexp_match(msg, '"query_id":"([^"]+)"')[1]"""


def slow_queries_sql(process_id: str) -> BoundSql:
    """The latest slow queries of the process: root entry and audit record, newest first."""
    logs = f"view_instance('log_entries', '{process_id}')"
    return BoundSql(
        f"""WITH roots AS (
  SELECT time, msg AS root, {_QUERY_ID} AS query_id FROM {logs}
  WHERE target = $rule_target AND strpos(msg, '"slow":true') > 0
), audits AS (
  SELECT msg AS audit, {_QUERY_ID} AS query_id FROM {logs} WHERE target = $audit_target
)
SELECT r.time, r.root, a.audit FROM roots r LEFT JOIN audits a ON r.query_id = a.query_id
ORDER BY r.time DESC LIMIT {LISTED}""",
        {"rule_target": slow_queries.__name__, "audit_target": AUDIT_LOGGER},
    )


def span_tree_sql(process_id: str, root_span_id: int) -> BoundSql:
    """Every stored span under the root (the root included), begin and end, in begin order."""
    events = f"view_instance('async_events', '{process_id}')"
    return BoundSql(
        f"""WITH RECURSIVE spans AS (
  SELECT b.span_id, b.parent_span_id, b.depth, b.name, b.time AS begin_time, e.time AS end_time
  FROM {events} b JOIN {events} e ON b.span_id = e.span_id
  WHERE b.event_type = 'begin' AND e.event_type = 'end'
), tree AS (
  SELECT * FROM spans WHERE span_id = $root
  UNION ALL
  SELECT s.* FROM spans s JOIN tree t ON s.parent_span_id = t.span_id
)
SELECT span_id, depth, name, begin_time, end_time FROM tree ORDER BY begin_time, depth""",
        {"root": root_span_id},
    )


def _own_process_id() -> str:
    """This server's self-traced process (404 without self-tracing)."""
    process = tracing.current_process()
    if process is None:
        raise html.PageError(404, "Not found", "self-tracing is off: this server records no slow queries")
    return str(process.process_id)


def _listed(row: dict) -> dict:
    """A listed query: when it ended, its root entry, its audit record (empty if not found)."""
    return {"time": row["time"], "root": json.loads(row["root"]), "audit": json.loads(row["audit"] or "{}")}


class SlowQueryScreens(Screens):
    """`/slow-queries` and `/slow-queries/<root span id>`."""

    async def list(self, request: web.Request) -> web.Response:
        """The slow queries of this server, newest first, each linked to its span tree."""
        time_range = parse_range(request.query, "now-24h")
        query = slow_queries_sql(_own_process_id())
        rows = [_listed(row) for row in await self.rows(request, query, time_range)]
        return self.page(
            request,
            "slow_queries.html",
            title="Slow queries",
            time_range=time_range,
            threshold_seconds=slow_queries.current_rule().slow_query_seconds,
            rows=rows,
            query=query,
        )

    async def tree(self, request: web.Request) -> web.Response:
        """The kept spans of one slow query, indented by depth."""
        text = request.match_info["span_id"]
        if not text.isdigit():
            raise html.PageError(400, "Bad request", f"'{text}' is not a span id")
        process_id = _own_process_id()
        rows = await self.rows(request, span_tree_sql(process_id, int(text)), None)
        if not rows:
            raise html.PageError(404, "Not found", f"no stored span {text} in this server's async events")
        return self.page(
            request,
            "slow_query_tree.html",
            title=f"Span tree of query span {text}",
            process_id=process_id,
            top_depth=rows[0]["depth"],
            rows=rows,
        )
