"""One level of a span tree (the top-level spans, or the children of one span), a page at a time.

A request plans the tree's view instance once (one partition lookup, one just-in-time check) as a
view of its session, then asks it two questions: the page of the level's spans in begin order with
the level's total, and, for the page's spans only (their ids as literals, so the scan filters with
a hash set), their ends and numbers of children, in one scan. The two are joined with pyarrow.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from spanlake.lakehouse.query.runner import Query
from spanlake.server.web.queries import decoded
from spanlake.server.web.span_find import SpanTable

VIEW = "tree_spans"  # the view instance, as its session names it


def page_sql(table: SpanTable, parent: int | None, limit: int, offset: int = 0) -> str:
    """The level's spans from `offset`, at most `limit`, in begin order, each with the level's total;
    the children of `$parent` when `parent` is given."""
    level = "depth = 0" if parent is None else f"{table.parent} = $parent AND {table.child}"
    where = f"{table.one_row_per_span} AND {level}"
    return (
        f"SELECT {table.columns}, (SELECT count(*) FROM {VIEW} WHERE {where}) AS total FROM {VIEW}"
        f" WHERE {where} ORDER BY {table.begin}, {table.id} LIMIT {limit} OFFSET {offset}"
    )


def around_sql(table: SpanTable, ids: pa.Array) -> str:
    """Per span of `ids` (as `key`): its number of children and, when ends are rows of their own, its
    end. Each row counts once: an end row for its own span, a begin row for its parent."""
    id_list = ", ".join(str(i) for i in pc.unique(ids).to_pylist())
    children = f"{table.one_row_per_span} AND {table.child} AND {table.parent} IN ({id_list})"
    if table.end_event is None:
        return f"SELECT {table.parent} AS key, count(*) AS children FROM {VIEW} WHERE {children} GROUP BY 1"
    end = f"{table.end_event} AND {table.id} IN ({id_list})"
    return (
        f"SELECT CASE WHEN {table.end_event} THEN {table.id} ELSE {table.parent} END AS key,"
        f" max(CASE WHEN {table.end_event} THEN {table.begin} END) AS end,"
        f" count(CASE WHEN {table.one_row_per_span} AND {table.child} THEN 1 END) AS children"
        f" FROM {VIEW} WHERE ({end}) OR ({children}) GROUP BY 1"
    )


def source_sql(table: SpanTable) -> str:
    """The tree's view instance, the statement a level's query is admitted and audited with."""
    return f"SELECT * FROM {table.source}"


def load_level(query: Query, table: SpanTable, parent: int | None, limit: int, offset: int) -> pa.Table:
    """The page's spans as rows `id, parent, depth, begin, end, name, target, filename, line,
    children, total` (`end` null when outside the range); a step of `query`, whose SQL is
    `source_sql(table)`."""
    query.session().register_view(VIEW, query.plan())
    page = decoded(query.collect(query.plan(page_sql(table, parent, limit, offset), {"parent": parent})))
    if page.num_rows:
        around = decoded(query.collect(query.plan(around_sql(table, page.column("id")))))
    else:
        around = pa.table(
            {
                "key": pa.array([], pa.int64()),
                "end": pa.array([], pa.timestamp("ns")),
                "children": pa.array([], pa.int64()),
            }
        )
    # A span with no row in `around` (a leaf, its end outside the range) gets nulls, then 0 children.
    found = pc.index_in(page.column("id"), value_set=around.column("key"))
    if table.end_event is not None:
        page = page.add_column(page.schema.get_field_index("begin") + 1, "end", pc.take(around.column("end"), found))
    children = pc.fill_null(pc.take(around.column("children"), found), 0)
    return page.add_column(page.schema.get_field_index("total"), "children", children)
