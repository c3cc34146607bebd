"""`perfetto_trace_chunks(process_id, span_types, begin, end)`: a process's Perfetto trace as rows.

Planning resolves the arguments, materializes the process's `thread_spans` and `async_events`
partitions for the range, pairs the async spans, and estimates from above how large the trace is.
Execution then produces the chunks lazily as the client reads, with micromegas's chunking rule (a
chunk ends at each flush and when 8 KiB are buffered): a task table of one row per batch of about
1 MiB of chunks, a volatile scalar function giving each task row its list of (chunk_id, chunk_data),
unnested into rows. The chunk count is never predicted: a task row past the end of the trace gives
no chunk, and should the estimate fall short, the last one takes the rest, still chunk by chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from datafusion import DataFrame, SessionContext, col, functions, lit, udf

from spanlake import tracing
from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import instances
from spanlake.lakehouse.query.off_runtime import off_runtime
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.perfetto.writer import SPAN_TYPES, PerfettoThread, trace_chunks

BATCH_BYTES = 1024 * 1024  # chunks per record batch on the wire: the per-row cost is the client's
SPAN_BYTES_ESTIMATE = 160  # an upper estimate of a span's two packets, interned strings aside
THREAD_COLUMNS = ["id", "begin", "end", "name", "target", "filename", "line"]
ASYNC_COLUMNS = ["span_id", "parent_span_id", "begin", "end", "name", "target", "filename", "line"]
OUTPUT_SCHEMA = pa.schema(
    [pa.field("chunk_id", pa.int32(), nullable=False), pa.field("chunk_data", pa.binary(), nullable=False)]
)
CHUNK_ITEM = pa.struct(list(OUTPUT_SCHEMA))
CHUNK_LIST = pa.list_(pa.field("item", CHUNK_ITEM, nullable=False))


@dataclass
class TracePlan:
    lake: Lake
    process_id: str
    exe: str
    span_types: str
    range_ns: tuple[int, int]
    threads: list[PerfettoThread]
    thread_ends: dict[str, int]  # stream id -> the latest end of its spans: spans ending there are cut
    async_spans: pa.Table
    estimated_bytes: int  # an upper estimate of the trace's size: how many batches to offer

    @property
    def batch_count(self) -> int:
        """Rows of the task table: enough batches of BATCH_BYTES for the estimate, and spare ones (a
        task past the end of the trace gives no chunk; the last one takes whatever is left)."""
        return 2 + 2 * -(-self.estimated_bytes // BATCH_BYTES)

    def thread_spans(self, stream_id: str) -> Iterator[pa.RecordBatch]:
        table = _thread_spans_table(self.lake, stream_id, self.range_ns)
        if table.num_rows > 1 and not _is_sorted(table.column("begin")):
            table = table.sort_by("begin")
        # The call tree ends a span never closed at the end of the data; the thread root (id -1) is not one.
        cut = pc.and_(
            pc.equal(table.column("end"), _ts(self.thread_ends.get(stream_id, -1))),
            pc.not_equal(table.column("id"), -1),
        )
        yield from table.append_column("unfinished", cut).to_batches(max_chunksize=64 * 1024)

    def chunks(self) -> Iterator[bytes]:
        return trace_chunks(
            self.process_id, self.exe, self.threads, self.thread_spans, lambda: self.async_spans, self.span_types
        )


def _is_sorted(column: pa.ChunkedArray) -> bool:
    values = column.cast(pa.int64()).to_numpy()
    return bool((values[1:] >= values[:-1]).all())


def _partitions_dataset(lake: Lake, view_set_name: str, instance_id: str, range_ns: tuple[int, int]) -> ds.Dataset:
    """The instance's up-to-date partitions for the range (materialized first if stale)."""
    view = VIEW_SETS[view_set_name]
    keys = instances.instance_files(lake, view, instance_id, range_ns)
    filesystem, root = lake.store.arrow_filesystem()
    return ds.dataset([f"{root}/{key}" for key in keys], schema=view.schema, format="parquet", filesystem=filesystem)


def _ts(ns: int) -> pa.Scalar:
    return pa.scalar(ns, pa.timestamp("ns", tz="+00:00"))


def _thread_filter(range_ns: tuple[int, int]) -> ds.Expression:
    return (ds.field("begin") <= _ts(range_ns[1])) & (ds.field("end") >= _ts(range_ns[0]))


def _thread_spans_table(lake: Lake, stream_id: str, range_ns: tuple[int, int]) -> pa.Table:
    dataset = _partitions_dataset(lake, "thread_spans", stream_id, range_ns)
    return dataset.to_table(columns=THREAD_COLUMNS, filter=_thread_filter(range_ns))


def _async_spans(lake: Lake, process_id: str, range_ns: tuple[int, int], last_event_ns: int) -> pa.Table:
    """Begin events in the range paired by span id with their end, begin < end, in begin order; name and
    location from the begin event (micromegas's query). A begin without an end (the process crashed or
    is still running) ends at the process's last event in the range, `unfinished`; an end without a
    begin in the range is left out, as micromegas does."""
    events = _partitions_dataset(lake, "async_events", process_id, range_ns).to_table(
        columns=["event_type", "span_id", "parent_span_id", "time", "name", "target", "filename", "line"],
        filter=(ds.field("time") >= _ts(range_ns[0])) & (ds.field("time") <= _ts(range_ns[1])),
    )
    kind = events.column("event_type").cast(pa.utf8())
    # Acero's join cannot carry dictionaries that differ between chunks: decode the strings first.
    for name in ("name", "target", "filename"):
        events = events.set_column(events.schema.get_field_index(name), name, events.column(name).cast(pa.utf8()))
    begins = (
        events.filter(pc.equal(kind, "begin"))
        .drop_columns(["event_type"])
        .rename_columns(["span_id", "parent_span_id", "begin", "name", "target", "filename", "line"])
    )
    ends = events.filter(pc.equal(kind, "end")).select(["span_id", "time"]).rename_columns(["span_id", "end"])
    spans = begins.join(ends, "span_id", join_type="left outer", use_threads=False)
    unfinished = pc.is_null(spans.column("end"))
    if events.num_rows:
        last_event_ns = max(last_event_ns, pc.max(events.column("time")).cast(pa.int64()).as_py())
    # At least 1 ns long: a span begun at the last event would otherwise be dropped as empty.
    last = pc.max_element_wise(
        pc.add(spans.column("begin").cast(pa.int64()), 1), pa.scalar(last_event_ns, pa.int64())
    ).cast(spans.schema.field("begin").type)
    spans = spans.set_column(
        spans.schema.get_field_index("end"), "end", pc.if_else(unfinished, last, spans.column("end"))
    ).append_column("unfinished", unfinished)
    spans = spans.filter(pc.less(spans.column("begin"), spans.column("end")))
    return spans.select([*ASYNC_COLUMNS, "unfinished"]).sort_by("begin")


def _threads(lake: Lake, process_id: uuid.UUID, range_ns: tuple[int, int]) -> list[PerfettoThread]:
    """cpu streams of the process with blocks in the range, by stream id (micromegas's thread list)."""
    rows = lake.loop.run(
        lake.pool.fetch(
            "SELECT s.stream_id, s.properties FROM streams s WHERE s.process_id = $1 AND 'cpu' = ANY(s.tags)"
            " AND EXISTS (SELECT 1 FROM blocks b WHERE b.stream_id = s.stream_id AND b.begin_time <= $3"
            "  AND b.insert_time >= $2) ORDER BY s.stream_id::text",
            process_id,
            ns_to_datetime(range_ns[0]),
            ns_to_datetime(range_ns[1]),
        )
    )
    threads = []
    for row in rows:
        properties = {p["key"]: p["value"] for p in row["properties"] or []}
        thread_id = properties.get("thread-id") or str(row["stream_id"])
        name = properties.get("thread-name") or ""
        try:
            tid = int(properties.get("thread-id", ""))
        except ValueError:
            tid = 0
        threads.append(PerfettoThread(str(row["stream_id"]), tid, f"{name}-{thread_id}" if name else thread_id))
    return threads


def plan_trace(lake: Lake, process_id: str, span_types: str, begin_ns: int, end_ns: int) -> TracePlan:
    try:
        process = uuid.UUID(process_id)
    except ValueError:
        raise QueryError(
            f"First argument to perfetto_trace_chunks must be a valid UUID (the process ID), given '{process_id}'"
        ) from None
    if span_types not in SPAN_TYPES:
        raise QueryError(f"span_types must be 'thread', 'async', or 'both', given: {span_types}")
    if begin_ns >= end_ns:
        raise QueryError("perfetto_trace_chunks: begin must be before end")
    exe = lake.loop.run(lake.pool.fetchval("SELECT exe FROM processes WHERE process_id = $1", process))
    if exe is None:
        raise QueryError(f"Trace generation failed: Process {process} not found")
    range_ns = (begin_ns, end_ns)
    threads = _threads(lake, process, range_ns)
    estimated = 64 * 1024 + sum(64 + len(thread.thread_name.encode()) for thread in threads)
    thread_ends: dict[str, int] = {}
    for thread in threads:
        footers = _footer_summary(_partitions_dataset(lake, "thread_spans", thread.stream_id, range_ns))
        if span_types != "async":
            estimated += footers.estimated_bytes
        if footers.last_end_ns is not None:
            thread_ends[thread.stream_id] = footers.last_end_ns
    last_event_ns = min(max(thread_ends.values(), default=begin_ns), end_ns)
    async_spans = pa.table({name: [] for name in ASYNC_COLUMNS})
    if span_types != "thread":
        async_spans = _async_spans(lake, str(process), range_ns, last_event_ns)
        estimated += async_spans.num_rows * SPAN_BYTES_ESTIMATE + async_spans.nbytes
    return TracePlan(lake, str(process), exe, span_types, range_ns, threads, thread_ends, async_spans, estimated)


@dataclass(frozen=True)
class _FooterSummary:
    estimated_bytes: int  # an upper estimate of the trace bytes of the spans
    last_end_ns: int | None  # the latest span end: where the data ends


def _footer_summary(dataset: ds.Dataset) -> _FooterSummary:
    """What the parquet footers of a thread's spans tell: a span's packets, its interned strings at
    most as large as their uncompressed columns, and the latest `end` of the statistics."""
    total, last_end = 0, None
    for fragment in dataset.get_fragments():
        metadata = fragment.metadata
        total += metadata.num_rows * SPAN_BYTES_ESTIMATE
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for index in range(row_group.num_columns):
                column = row_group.column(index)
                if column.path_in_schema in ("name", "target", "filename"):
                    total += column.total_uncompressed_size
                elif column.path_in_schema == "end" and column.statistics and column.statistics.has_min_max:
                    last_end = max(last_end or 0, column.statistics.max_raw)
    return _FooterSummary(total, last_end)


def chunk_generator(plan: TracePlan) -> Callable[[pa.Array], pa.Array]:
    """The scalar function behind the task table: for each task row, the trace's next chunks (with their
    ids) up to about BATCH_BYTES, generated as the client reads; the last task row takes the rest, and
    rows past the end of the trace get none. Chunks are never glued: each is one chunk of the rule."""
    chunks: Iterator[bytes] | None = None
    next_id = 0

    def take(limit: float) -> list[tuple[int, bytes]]:
        nonlocal next_id
        taken, size = [], 0
        for chunk in chunks:
            taken.append((next_id, chunk))
            next_id += 1
            size += len(chunk)
            if size >= limit:
                break
        return taken

    def generate(task_ids: pa.Array) -> pa.Array:
        nonlocal chunks
        with tracing.async_span("perfetto.generate_chunks"):  # under the query's execution span
            if chunks is None:
                chunks = plan.chunks()
            last = plan.batch_count - 1
            rows = [take(float("inf") if task == last else BATCH_BYTES) for task in task_ids.to_pylist()]
            offsets = np.cumsum([0] + [len(row) for row in rows], dtype=np.int32)
            flat = [chunk for row in rows for chunk in row]
            items = pa.StructArray.from_arrays(
                [pa.array([i for i, _ in flat], pa.int32()), pa.array([c for _, c in flat], pa.binary())],
                fields=list(CHUNK_ITEM),
            )
            return pa.ListArray.from_arrays(pa.array(offsets), items, type=CHUNK_LIST)

    return generate


def trace_dataframe(ctx: SessionContext, plan: TracePlan) -> DataFrame:
    """The trace as (chunk_id, chunk_data) rows, both NOT NULL: one task row per batch of about
    BATCH_BYTES of chunks, unnested (UnnestExec keeps each task's chunks as one output batch)."""
    tasks = [pa.record_batch({"task": pa.array([i], pa.int32())}) for i in range(plan.batch_count)]
    generate = udf(chunk_generator(plan), [pa.int32()], CHUNK_LIST, "volatile", "perfetto_chunks")
    frame = off_runtime(ctx.create_dataframe, [tasks], None, pa.schema([("task", pa.int32())]))
    chunks = frame.select(generate(col("task")).alias("chunk")).unnest_columns("chunk")
    # The unnested struct's fields read as nullable; the coalesce with a literal makes them NOT NULL.
    return chunks.select(
        functions.coalesce(col("chunk")["chunk_id"], lit(pa.scalar(0, pa.int32()))).alias("chunk_id"),
        functions.coalesce(col("chunk")["chunk_data"], lit(b"")).alias("chunk_data"),
    )
