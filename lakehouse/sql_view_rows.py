"""The queries of a SQL-defined view (see `sql_views.py`), run for a bucket of insert time: the
source count and the rows (its merge query is the view's `merge`, `views/merge_query.py`). They run
in a lakehouse session whose global views hold only their partitions inserted in the bucket, on
threads of their own (a table function such as `materialize_partitions` calls them from DataFusion's
runtime, where planning panics)."""

from __future__ import annotations

import pyarrow as pa
from datafusion import SessionContext

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import functions
from spanlake.lakehouse.query.runner import READ_ONLY
from spanlake.lakehouse.timestamps import format_rfc3339_ns
from spanlake.views.view import SqlSource, View


def with_range(query: str, begin_ns: int, end_ns: int) -> str:
    """The query with `{begin}` and `{end}` standing for the bucket's insert range."""
    return query.replace("{begin}", format_rfc3339_ns(begin_ns)).replace("{end}", format_rfc3339_ns(end_ns))


def bucket_session(lake: Lake, begin_ns: int, end_ns: int) -> SessionContext:
    """A session whose global views hold their partitions inserted in [begin, end) only."""
    # Imported here: the session imports the table functions, which import batch_update, which imports this.
    from spanlake.lakehouse.query.session import make_session_context

    return make_session_context(lake, is_admin=False, insert_range=(begin_ns, end_ns))


def source_count(lake: Lake, source: SqlSource, begin_ns: int, end_ns: int) -> int:
    """The bucket's source count: the `count` column of the count query's one row (NULL: 0)."""
    return lake.sql_views.query_threads.run(_count, lake, source, begin_ns, end_ns)


def _count(lake: Lake, source: SqlSource, begin_ns: int, end_ns: int) -> int:
    ctx = bucket_session(lake, begin_ns, end_ns)
    table = functions.planned(ctx, with_range(source.count_src_query, begin_ns, end_ns), READ_ONLY).to_arrow_table()
    values = table.column("count").to_pylist() if table.num_rows else []
    return int(values[0] or 0) if values else 0


def extracted(lake: Lake, view: View, begin_ns: int, end_ns: int) -> pa.Table:
    """The bucket's rows, as the view's schema."""
    return lake.sql_views.query_threads.run(_extract, lake, view, begin_ns, end_ns)


def _extract(lake: Lake, view: View, begin_ns: int, end_ns: int) -> pa.Table:
    if view.sql is None:
        raise ValueError(f"{view.name} is not a SQL-defined view")
    ctx = bucket_session(lake, begin_ns, end_ns)
    table = functions.planned(ctx, with_range(view.sql.extract_query, begin_ns, end_ns), READ_ONLY).to_arrow_table()
    return table.cast(view.schema)
