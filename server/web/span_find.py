"""Finding a span by name anywhere in a tree, loaded or not: the match and the path from its root.

The span tree loads one level at a time, so a span deep in a large process is usually not on the page.
`find_path` answers the n-th span (in begin order) whose name contains the text, with its ancestors
found one parent at a time (one small query per level), so the page can expand exactly that path.
"""

from __future__ import annotations

from dataclasses import dataclass

from spanlake.lakehouse.query.runner import Query
from spanlake.server.web.queries import decoded, records

MAX_DEPTH = 256  # a chain longer than this is cut (and said so): a cycle in bad data must not loop


@dataclass(frozen=True)
class SpanTable:
    """Where a tree's spans are: the view instance, the filter keeping one row per span, the columns;
    `end_event` the filter of the rows holding span ends when they are rows of their own."""

    source: str
    one_row_per_span: str
    id: str
    parent: str
    begin: str
    columns: str  # a span's row as the tree shows it: id, parent, depth, begin[, end], name, target, filename, line
    end_event: str | None = None
    # The filter of rows that are a span's children: a thread's roots have parent 0 ("none"), which is
    # also the id of its first span (an async span's id is never 0: asking for 0's children lists the roots).
    child: str = "true"

    @classmethod
    def async_events(cls, process_id: str) -> SpanTable:
        """The async spans of a process (begin and end events are rows of their own)."""
        return cls(
            f"view_instance('async_events', '{process_id}')",
            "event_type = 'begin'",
            "span_id",
            "parent_span_id",
            "time",
            "span_id AS id, parent_span_id AS parent, depth, time AS begin, name, target, filename, line",
            "event_type = 'end'",
        )

    @classmethod
    def thread_spans(cls, stream_id: str) -> SpanTable:
        """The thread spans of a cpu stream (one row per span)."""
        columns = 'id, parent, depth, begin, "end", name, target, filename, line'
        return cls(
            f"view_instance('thread_spans', '{stream_id}')", "true", "id", "parent", "begin", columns, child="depth > 0"
        )


def match_sql(table: SpanTable, index: int) -> str:
    """The `index`-th span whose name contains `$needle` (lower case), with the number of such spans."""
    named = f"{table.one_row_per_span} AND strpos(lower(name), $needle) > 0"
    return (
        f"SELECT {table.id} AS id, {table.parent} AS parent, depth, name,"
        f" (SELECT count(*) FROM {table.source} WHERE {named}) AS total"
        f" FROM {table.source} WHERE {named} ORDER BY {table.begin}, {table.id} LIMIT 1 OFFSET {index}"
    )


def parent_sql(table: SpanTable) -> str:
    """The parent and depth of the span `$span`."""
    return (
        f"SELECT {table.parent} AS parent, depth FROM {table.source}"
        f" WHERE {table.one_row_per_span} AND {table.id} = $span"
    )


def find_path(query: Query, table: SpanTable, text: str, index: int) -> dict:
    """`{total, index, name, path}` of the query's `match_sql`: path is the ids from the root to the
    match (the match last); `complete` is false when an ancestor is outside the time range. A step of
    `query`: the ancestors are asked in its session."""
    [match] = _rows(query, None, {"needle": text.lower()}) or [None]
    if match is None:
        return {"total": 0, "index": index, "path": [], "complete": True}
    path, parent, depth = [str(match["id"])], match["parent"], match["depth"]
    while depth > 0 and len(path) < MAX_DEPTH:
        rows = _rows(query, parent_sql(table), {"span": parent})
        if not rows:
            break
        path.insert(0, str(parent))
        parent, depth = rows[0]["parent"], rows[0]["depth"]
    return {"total": match["total"], "index": index, "name": match["name"], "path": path, "complete": depth == 0}


def _rows(query: Query, sql: str | None, params: dict[str, object]) -> list[dict]:
    """The rows of `sql` (the query's own when None) with its placeholders bound to `params`."""
    return records(decoded(query.collect(query.plan(sql, params))))
