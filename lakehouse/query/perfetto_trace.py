"""`perfetto_trace_chunks(process_id, span_types, begin, end)`: a process's Perfetto trace as rows.

Planning resolves the arguments, materializes the process's `thread_spans` and `async_events`
partitions for the range, pairs the async spans, and counts the chunks the trace will have: with
micromegas's chunking rule, a chunk ends at each flush (after the descriptors and every 10th span),
so the count follows from the span counts. Execution then produces the chunks lazily, a few per
batch, as the client reads: a volatile scalar function over a task table of chunk ids.

A chunk also ends when 8 KiB are buffered, which only long names or hundreds of threads cause; such
extra chunks are appended to the last row, so ids stay gapless and the bytes are the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from datafusion import DataFrame, SessionContext, col, udf

from spanlake import tracing
from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import instances
from spanlake.lakehouse.query.off_runtime import off_runtime
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.perfetto.writer import SPAN_TYPES, SPANS_PER_FLUSH, PerfettoThread, trace_chunks

CHUNKS_PER_BATCH = 16  # chunks generated per step of the client's reading (~128 KiB)
THREAD_COLUMNS = ["begin", "end", "name", "target", "filename", "line"]
ASYNC_COLUMNS = ["span_id", "parent_span_id", "begin", "end", "name", "target", "filename", "line"]
OUTPUT_SCHEMA = pa.schema(
    [pa.field("chunk_id", pa.int32(), nullable=False), pa.field("chunk_data", pa.binary(), nullable=False)]
)


@dataclass
class TracePlan:
    lake: Lake
    process_id: str
    exe: str
    span_types: str
    range_ns: tuple[int, int]
    threads: list[PerfettoThread]
    thread_span_counts: list[int]
    async_spans: pa.Table

    @property
    def chunk_count(self) -> int:
        """Chunks if no 8 KiB threshold is crossed: one per non-empty flush."""
        chunks = 1 + bool(self.threads) + (self.span_types != "thread")
        pending = False
        counts = self.thread_span_counts if self.span_types != "async" else []
        if self.span_types != "thread":
            counts = [*counts, self.async_spans.num_rows]
        for count in counts:
            chunks += count // SPANS_PER_FLUSH
            pending = count % SPANS_PER_FLUSH != 0 or (pending and count == 0)
        return chunks + pending

    def thread_spans(self, stream_id: str) -> Iterator[pa.RecordBatch]:
        table = _thread_spans_table(self.lake, stream_id, self.range_ns)
        if table.num_rows > 1 and not _is_sorted(table.column("begin")):
            table = table.sort_by("begin")
        yield from table.to_batches(max_chunksize=64 * 1024)

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


def _async_spans(lake: Lake, process_id: str, range_ns: tuple[int, int]) -> pa.Table:
    """Begin and end events both in the range, paired by span id, begin < end, in begin order; name and
    location from the begin event (micromegas's query)."""
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
    spans = begins.join(ends, "span_id", join_type="inner", use_threads=False)
    spans = spans.filter(pc.less(spans.column("begin"), spans.column("end")))
    return spans.select(ASYNC_COLUMNS).sort_by("begin")


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
    counts = []
    if span_types != "async":
        for thread in threads:
            dataset = _partitions_dataset(lake, "thread_spans", thread.stream_id, range_ns)
            counts.append(dataset.count_rows(filter=_thread_filter(range_ns)))
    async_spans = pa.table({name: [] for name in ASYNC_COLUMNS})
    if span_types != "thread":
        async_spans = _async_spans(lake, str(process), range_ns)
    return TracePlan(lake, str(process), exe, span_types, range_ns, threads, counts, async_spans)


def chunk_generator(plan: TracePlan) -> Callable[[pa.Array], pa.Array]:
    """The scalar function behind chunk_data: chunk i for task row i, in order, generated on demand."""
    total = plan.chunk_count
    chunks: Iterator[bytes] | None = None

    def generate(chunk_ids: pa.Array) -> pa.Array:
        nonlocal chunks
        with tracing.async_span("perfetto.generate_chunks"):  # under the query's execution span
            if chunks is None:
                chunks = plan.chunks()
            out = []
            for chunk_id in chunk_ids.to_pylist():
                if chunk_id == total - 1:  # the last row takes whatever the trace still holds
                    out.append(b"".join(chunks))
                else:
                    out.append(next(chunks))
            return pa.array(out, pa.binary())

    return generate


def trace_dataframe(ctx: SessionContext, plan: TracePlan) -> DataFrame:
    ids = pa.array(range(plan.chunk_count), pa.int32())
    tasks = [
        pa.record_batch({"chunk_id": ids.slice(i, CHUNKS_PER_BATCH)}) for i in range(0, len(ids), CHUNKS_PER_BATCH)
    ]
    generate = udf(chunk_generator(plan), [pa.int32()], pa.binary(), "volatile", "perfetto_chunk")
    frame = off_runtime(ctx.create_dataframe, [tasks], None, pa.schema([("chunk_id", pa.int32())]))
    return frame.select(col("chunk_id"), generate(col("chunk_id")).alias("chunk_data"))
