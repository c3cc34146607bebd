"""Rows of several partitions as one, by a SQL query over them (a SQL-defined view's
`merge_partitions_query`, `{source}` standing for the partitions' rows), run by DataFusion in a
context of its own. Call it off DataFusion's runtime threads (planning there panics)."""

from __future__ import annotations

import pyarrow as pa
from datafusion import SessionContext

SOURCE_TABLE = "source"


def merge_with_query(query: str, schema: pa.Schema, partitions: pa.Table) -> pa.Table:
    """The query's result over `partitions` (as `{source}`), cast to the view's `schema`."""
    ctx = SessionContext()
    batches = partitions.to_batches() or [pa.RecordBatch.from_pylist([], schema)]
    ctx.register_record_batches(SOURCE_TABLE, [batches])
    return ctx.sql(query.replace("{source}", SOURCE_TABLE)).to_arrow_table().cast(schema)
