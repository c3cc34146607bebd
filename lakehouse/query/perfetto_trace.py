"""`perfetto_trace_chunks(process_id, span_types, begin, end)`: a process's Perfetto trace as rows.

Planning resolves the arguments, materializes the process's `thread_spans` and `async_events`
partitions for the range, pairs the async spans (lakehouse/query/perfetto_spans.py: read in begin
order a slab at a time, memory bounded), and estimates from above how large the trace is.
Execution then produces the chunks lazily as the client reads, cut by size (SPANLAKE_PERFETTO_CHUNK_KIB:
a client walks chunks one by one, so fewer, larger ones are read faster), or with micromegas's rule
when it is 0 (a chunk ends at each flush, every 10 spans, and when 8 KiB are buffered): a task table
of one row per batch of about 1 MiB of chunks, a volatile scalar function giving each task row its
list of (chunk_id, chunk_data), unnested into rows. The chunk count is never predicted: a task row
past the end of the trace gives no chunk, and should the estimate fall short, the last one takes the
rest, still chunk by chunk.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import DataFrame, SessionContext, col, functions, lit, udf
from datafusion.expr import Expr

from spanlake import tracing
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import instances
from spanlake.lakehouse.query.off_runtime import OffRuntime
from spanlake.lakehouse.query.perfetto_spans import AsyncSpans, ThreadSpans
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.timestamps import TimeOutOfRange, parse_rfc3339_ns
from spanlake.lakehouse.view_sets import VIEW_SETS
from spanlake.views.perfetto.writer import CHUNK_THRESHOLD, SPAN_TYPES, SPANS_PER_FLUSH, PerfettoThread, trace_chunks

log = logging.getLogger(__name__)
BATCH_BYTES = 1024 * 1024  # chunks per record batch on the wire: the per-row cost is the client's
OUTPUT_SCHEMA = pa.schema(
    [pa.field("chunk_id", pa.int32(), nullable=False), pa.field("chunk_data", pa.binary(), nullable=False)]
)
CHUNK_ITEM = pa.struct(list(OUTPUT_SCHEMA))
CHUNK_LIST = pa.list_(pa.field("item", CHUNK_ITEM, nullable=False))


@dataclass
class TracePlan:
    """What a trace is written from: the process, its threads and the span sources, read as chunks are made."""

    process_id: str
    exe: str
    span_types: str
    threads: list[PerfettoThread]
    thread_spans: dict[str, ThreadSpans]  # by stream id
    async_spans: AsyncSpans | None
    estimated_bytes: int  # an upper estimate of the trace's size: how many batches to offer
    chunk_bytes: int  # chunks of about this size; 0: micromegas's chunks

    @property
    def batch_count(self) -> int:
        """Rows of the task table: enough batches of BATCH_BYTES for the estimate, and spare ones (a
        task past the end of the trace gives no chunk; the last one takes whatever is left)."""
        return 2 + 2 * -(-self.estimated_bytes // BATCH_BYTES)

    def chunks(self) -> Iterator[bytes]:
        """The trace's chunks, generated as they are read."""
        chunk_threshold, spans_per_flush = chunking(self.chunk_bytes)
        return trace_chunks(
            self.process_id,
            self.exe,
            self.threads,
            lambda stream_id: self.thread_spans[stream_id].batches(),
            lambda: self.async_spans.batches() if self.async_spans else [],
            self.span_types,
            chunk_threshold=chunk_threshold,
            spans_per_flush=spans_per_flush,
        )


def chunking(chunk_bytes: int) -> tuple[int, int | None]:
    """The writer's chunk threshold and spans per flush for chunks of about `chunk_bytes` (0: micromegas's)."""
    return (chunk_bytes, None) if chunk_bytes > 0 else (CHUNK_THRESHOLD, SPANS_PER_FLUSH)


def _partitions_dataset(lake: Lake, view_set_name: str, instance_id: str, range_ns: tuple[int, int]) -> ds.Dataset:
    """The instance's up-to-date partitions for the range (materialized first if stale)."""
    view = VIEW_SETS[view_set_name]
    keys = instances.instance_files(lake, view, instance_id, range_ns)
    filesystem, root = lake.store.arrow_filesystem()
    return ds.dataset([f"{root}/{key}" for key in keys], schema=view.schema, format="parquet", filesystem=filesystem)


def _threads(lake: Lake, process_id: uuid.UUID, range_ns: tuple[int, int]) -> list[PerfettoThread]:
    """cpu streams of the process with blocks in the range, by stream id (micromegas's thread list)."""
    rows = lake.loop.run(lake.catalog.cpu_streams_inserted_in(process_id, range_ns))
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


_ARGUMENTS = (
    ("First", "a string (the process ID)"),
    ("Second", "a string ('thread', 'async', or 'both')"),
    ("Third", "a timestamp (start time)"),
    ("Fourth", "a timestamp (end time)"),
)


def trace_arguments(args: Sequence[Expr]) -> tuple[str, str, int, int]:
    """(process_id, span_types, begin_ns, end_ns) of a perfetto_trace_chunks call, each refused with
    micromegas's wording: "<Nth> argument to perfetto_trace_chunks must be <what>, given <value>"."""
    if len(args) > len(_ARGUMENTS):
        raise QueryError(f"perfetto_trace_chunks takes 4 arguments, given {len(args)}")
    values: list[str | int] = []
    for index, (position, what) in enumerate(_ARGUMENTS):
        given = _literal_value(args[index]) if index < len(args) else None
        value = _string_argument(given) if index < 2 else _timestamp_argument(given)
        if value is None:
            shown = "None" if index >= len(args) else args[index].canonical_name()
            raise QueryError(f"{position} argument to perfetto_trace_chunks must be {what}, given {shown}")
        values.append(value)
    process_id, span_types, begin_ns, end_ns = values
    return str(process_id), str(span_types), int(begin_ns), int(end_ns)


def _literal_value(expr: Expr) -> pa.Scalar | None:
    try:
        value = expr.python_value()
    except Exception:
        return None
    return value if value.is_valid else None


def _string_argument(value: pa.Scalar | None) -> str | None:
    if value is None or not (pa.types.is_string(value.type) or pa.types.is_large_string(value.type)):
        return None
    return value.as_py()


def _timestamp_argument(value: pa.Scalar | None) -> int | None:
    """A TIMESTAMP literal (UTC ns) or an RFC3339 string, as micromegas's exp_to_timestamp."""
    if value is None:
        return None
    if pa.types.is_timestamp(value.type):
        return value.cast(pa.timestamp("ns")).value
    if pa.types.is_string(value.type):
        try:
            return parse_rfc3339_ns(value.as_py())
        except TimeOutOfRange as err:
            raise QueryError(str(err)) from None
        except ValueError:
            return None
    return None


def plan_trace(
    lake: Lake, process_id: str, span_types: str, begin_ns: int, end_ns: int, read_scope: ReadScope | None = None
) -> TracePlan:
    """The plan of `perfetto_trace_chunks(process_id, span_types, begin, end)`; QueryError for bad arguments
    (a process outside the read scope is not found)."""
    # The span type is checked first: micromegas's test expects it named even when the process id is bad too.
    if span_types not in SPAN_TYPES:
        raise QueryError(f"span_types must be 'thread', 'async', or 'both', given: {span_types}")
    try:
        process = uuid.UUID(process_id)
    except ValueError:
        # Named as an unknown process too: micromegas's error-handling test expects "Process <id> not found".
        raise QueryError(
            f"Trace generation failed: Process {process_id} not found (First argument to perfetto_trace_chunks"
            f" must be a valid UUID (the process ID), given '{process_id}')"
        ) from None
    if begin_ns >= end_ns:
        raise QueryError("perfetto_trace_chunks: begin must be before end")
    exe = lake.loop.run(lake.catalog.process_exe(process))
    if exe is None or (read_scope is not None and not read_scope.process_readable(process)):
        raise QueryError(f"Trace generation failed: Process {process} not found")
    range_ns = (begin_ns, end_ns)
    threads = _threads(lake, process, range_ns)
    thread_spans = {
        thread.stream_id: ThreadSpans.of(
            _partitions_dataset(lake, "thread_spans", thread.stream_id, range_ns), range_ns
        )
        for thread in threads
    }
    estimated = 64 * 1024 + sum(64 + len(thread.thread_name.encode()) for thread in threads)
    if span_types != "async":
        estimated += sum(spans.estimated_bytes for spans in thread_spans.values())
    async_spans = None
    if span_types != "thread":
        ends = [spans.last_end_ns for spans in thread_spans.values() if spans.last_end_ns is not None]
        last_event_ns = min(max(ends, default=begin_ns), end_ns)
        async_spans = AsyncSpans.of(
            _partitions_dataset(lake, "async_events", str(process), range_ns), range_ns, last_event_ns
        )
        estimated += async_spans.estimated_bytes
    chunk_bytes = lake.settings.perfetto_chunk_kib * 1024
    return TracePlan(str(process), exe, span_types, threads, thread_spans, async_spans, estimated, chunk_bytes)


def chunk_generator(plan: TracePlan) -> Callable[[pa.Array], pa.Array]:
    """The scalar function behind the task table: for each task row, the trace's next chunks (with their
    ids) up to about BATCH_BYTES, generated as the client reads; the last task row takes the rest, and
    rows past the end of the trace get none. Chunks are never glued: each is one chunk of the writer's."""
    chunks: Iterator[bytes] | None = None
    next_id = 0
    done = False

    def take(limit: float) -> list[tuple[int, bytes]]:
        nonlocal next_id, done
        taken, size = [], 0
        for chunk in chunks:
            taken.append((next_id, chunk))
            next_id += 1
            size += len(chunk)
            if size >= limit:
                return taken
        if not done:
            done = True
            # The spans are written: drop them and hand their pages back to the system now, not when
            # the query's objects go.
            plan.thread_spans.clear()
            plan.async_spans = None
            pa.default_memory_pool().release_unused()
        return taken

    def generate(task_ids: pa.Array) -> pa.Array:
        nonlocal chunks
        with tracing.async_span("perfetto.generate_chunks"):  # under the query's execution span
            if chunks is None:
                chunks = plan.chunks()
            last = plan.batch_count - 1
            rows = [take(float("inf") if task == last else BATCH_BYTES) for task in task_ids.to_pylist()]
            log.debug("perfetto trace of %s: %d chunks generated", plan.process_id, next_id)
            offsets = np.cumsum([0] + [len(row) for row in rows], dtype=np.int32)
            flat = [chunk for row in rows for chunk in row]
            items = pa.StructArray.from_arrays(
                [pa.array([i for i, _ in flat], pa.int32()), pa.array([c for _, c in flat], pa.binary())],
                fields=list(CHUNK_ITEM),
            )
            return pa.ListArray.from_arrays(pa.array(offsets), items, type=CHUNK_LIST)

    return generate


def trace_dataframe(ctx: SessionContext, plan: TracePlan, off_runtime: OffRuntime) -> DataFrame:
    """The trace as (chunk_id, chunk_data) rows, both NOT NULL: one task row per batch of about
    BATCH_BYTES of chunks, unnested (UnnestExec keeps each task's chunks as one output batch)."""
    tasks = [pa.record_batch({"task": pa.array([i], pa.int32())}) for i in range(plan.batch_count)]
    generate = udf(chunk_generator(plan), [pa.int32()], CHUNK_LIST, "volatile", "perfetto_chunks")
    frame = off_runtime.run(ctx.create_dataframe, [tasks], None, pa.schema([("task", pa.int32())]))
    chunks = frame.select(generate(col("task")).alias("chunk")).unnest_columns("chunk")
    # The unnested struct's fields read as nullable; the coalesce with a literal makes them NOT NULL.
    return chunks.select(
        functions.coalesce(col("chunk")["chunk_id"], lit(pa.scalar(0, pa.int32()))).alias("chunk_id"),
        functions.coalesce(col("chunk")["chunk_data"], lit(b"")).alias("chunk_data"),
    )
