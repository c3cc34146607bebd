"""`process_spans(process_id, 'thread'|'async'|'both')`: every span of a process in one table, as
micromegas's: `stream_id` and `thread_name` (dictionaries), then the thread_spans columns. Thread
spans come first, thread by thread (cpu streams by stream id, named "name-id" or the id alone);
async spans follow with stream_id '' and thread_name 'async', paired from their begin and end events
(begin < end), in begin order. With a query range, only the spans that meet it."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from datafusion import Table

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.instances import instance_files
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views import thread_spans
from spanlake.views.schema_types import TIMESTAMP, required

SPAN_TYPES = ("thread", "async", "both")
LABEL_TYPE = pa.dictionary(pa.int16(), pa.utf8())
SCHEMA = pa.schema([required("stream_id", LABEL_TYPE), required("thread_name", LABEL_TYPE), *thread_spans.SCHEMA])
SPAN_COLUMNS = thread_spans.SCHEMA.names


def process_spans(
    lake: Lake,
    process_id: str,
    span_types: str,
    query_range: tuple[int, int] | None,
    read_scope: ReadScope | None = None,
) -> Table:
    """`process_spans(process_id, span_types)`: the process's thread and/or async spans, labelled by
    thread (none for a process outside the read scope, as for an unknown one)."""
    try:
        process = uuid.UUID(process_id)
    except ValueError:
        raise QueryError(
            f"First argument to process_spans must be a valid UUID (the process ID), given '{process_id}'"
        ) from None
    if span_types not in SPAN_TYPES:
        raise QueryError(f"span_types must be 'thread', 'async', or 'both', given: {span_types}")
    if read_scope is not None and not read_scope.process_readable(process):
        return lake.off_runtime.memory_table(SCHEMA.empty_table())
    parts = []
    if span_types != "async":
        for stream_id, thread_name in _threads(lake, process, query_range):
            spans = _read(lake, "thread_spans", stream_id, query_range, SPAN_COLUMNS)
            parts.append(_labelled(spans, stream_id, thread_name))
    if span_types != "thread":
        parts.append(_labelled(_async_spans(lake, str(process), query_range), "", "async"))
    return lake.off_runtime.memory_table(pa.concat_tables(parts) if parts else SCHEMA.empty_table())


def _threads(lake: Lake, process: uuid.UUID, query_range: tuple[int, int] | None) -> list[tuple[str, str]]:
    """(stream id, display name) of the process's cpu streams with blocks (in the range, if any)."""
    rows = lake.loop.run(lake.catalog.cpu_streams_with_events(process, query_range))
    threads = []
    for row in rows:
        properties = {p["key"]: p["value"] for p in row["properties"] or []}
        thread_id = properties.get("thread-id") or str(row["stream_id"])
        name = properties.get("thread-name") or ""
        threads.append((str(row["stream_id"]), f"{name}-{thread_id}" if name else thread_id))
    return threads


def _read(
    lake: Lake, view_set_name: str, instance_id: str, query_range: tuple[int, int] | None, columns: list[str]
) -> pa.Table:
    """The instance's rows (JIT first) meeting the query range, as the session's view_instance reads them."""
    view = VIEW_SETS[view_set_name]
    filesystem, root = lake.store.arrow_filesystem()
    keys = instance_files(lake, view, instance_id, query_range)
    dataset = ds.dataset([f"{root}/{k}" for k in keys], schema=view.schema, format="parquet", filesystem=filesystem)
    row_filter = None
    if query_range is not None:
        earliest, latest = view.time_columns
        row_filter = (ds.field(earliest) <= _ts(query_range[1])) & (ds.field(latest) >= _ts(query_range[0]))
    return dataset.to_table(columns=columns, filter=row_filter)


def _ts(ns: int) -> pa.Scalar:
    return pa.scalar(ns, TIMESTAMP)


def _async_spans(lake: Lake, process_id: str, query_range: tuple[int, int] | None) -> pa.Table:
    """Begin events joined to their end events on span id (micromegas's query): id, parent, depth
    and hash, name and location from the begin event."""
    events = _read(
        lake,
        "async_events",
        process_id,
        query_range,
        ["event_type", "span_id", "parent_span_id", "depth", "hash", "time", "name", "target", "filename", "line"],
    )
    # Acero's join cannot carry dictionaries that differ between chunks: decode the strings first.
    for name in ("event_type", "name", "target", "filename"):
        events = events.set_column(events.schema.get_field_index(name), name, events.column(name).cast(pa.utf8()))
    kind = events.column("event_type")
    begins = (
        events.filter(pc.equal(kind, "begin"))
        .drop_columns(["event_type"])
        .rename_columns(["id", "parent", "depth", "hash", "begin", "name", "target", "filename", "line"])
    )
    ends = events.filter(pc.equal(kind, "end")).select(["span_id", "time"]).rename_columns(["id", "end"])
    spans = begins.join(ends, "id", join_type="inner", use_threads=False)
    spans = spans.filter(pc.less(spans.column("begin"), spans.column("end"))).sort_by("begin")
    duration = pc.subtract(spans.column("end").cast(pa.int64()), spans.column("begin").cast(pa.int64()))
    spans = spans.append_column("duration", duration)
    return pa.table(
        [spans.column(name).cast(field.type) for name, field in zip(SPAN_COLUMNS, thread_spans.SCHEMA, strict=True)],
        schema=thread_spans.SCHEMA,
    )


def _labelled(spans: pa.Table, stream_id: str, thread_name: str) -> pa.Table:
    rows = spans.num_rows
    labels = [
        pa.DictionaryArray.from_arrays(np.zeros(rows, np.int16), pa.array([value]))
        for value in (stream_id, thread_name)
    ]
    columns = [*labels, *(spans.column(name).cast(SCHEMA.field(name).type) for name in SPAN_COLUMNS)]
    return pa.table(columns, schema=SCHEMA)
