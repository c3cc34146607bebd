"""Rows in memory as DataFusion frames, in one context the queries share.

A frame made from batches blocks on DataFusion's runtime, where a table function runs (it panics there):
a query hands the rows it found to `off_runtime`, a thread hand-off that costs more than the frame
itself on a busy machine. Rows known before a query asks for them (a live tail built ahead, the rows a
written tail keeps: `decode_ahead.py`) get their frame where they are made, off any query's path.
"""

from __future__ import annotations

import functools
import uuid

import pyarrow as pa
from datafusion import DataFrame, SessionContext


@functools.cache
def rows_context() -> SessionContext:
    """The context in-memory rows are registered in, shared by the queries: a new context a query cost
    more (~80 µs) than the frame itself. It keeps no table: each is dropped once its frame is made. Its
    settings play no part: a frame is planned and executed by the session of the query reading it."""
    return SessionContext()


def rows_frame(batches: list[pa.RecordBatch], schema: pa.Schema) -> DataFrame:
    """These batches as a frame (one partition); the frame keeps them, the shared context does not.
    Never on a DataFusion runtime thread (see the module's docstring)."""
    name = f"rows_{uuid.uuid4().hex}"
    context = rows_context()
    try:
        return context.create_dataframe([batches], name, schema)
    finally:
        context.deregister_table(name)


def plain_rows(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """The batches without their schema's notes (a view's notes for merges): a frame's schema has none."""
    return [batch.replace_schema_metadata(None) for batch in batches]
