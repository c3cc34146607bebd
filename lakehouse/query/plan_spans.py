"""DataFusion's execution as spans: one span per physical operator, from the executed plan's metrics.

`df.execute_stream()` plans the query again, out of reach; so the query runs the plan it keeps
(`PlanStream`): a plan of one partition is one stream; the partitions of a larger plan are read at
once (as DataFusion's coalescing does) by one thread per core, each taking a batch of each of its
partitions in turn, into the stream's buffer, bounded in bytes (`result_buffer`). One thread per
partition costs more: every batch handed between threads takes the GIL, and many threads contend for
it (benchmarks/plan_stream.py).

When a slow query ends (`QuerySpan.when_slow`), `record_operator_spans` turns each operator's
metrics into a span under the execution span, nested as the plan is: its interval is the earliest
`start_timestamp` and the latest `end_timestamp` over its partitions (an operator without them spans
its children's), its figures (output rows, compute time, bytes scanned, row groups pruned, ...) go to
the query span's entries.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import datafusion
from datafusion.plan import ExecutionPlan

from spanlake import tracing
from spanlake.lakehouse.query.loop_joins import executable_plan
from spanlake.lakehouse.query.query_thread import shielded
from spanlake.lakehouse.query.result_buffer import UNBOUNDED, ByteBudget, StreamBuffer
from spanlake.lakehouse.query.slow_queries import QuerySpan

READER_THREADS = os.cpu_count() or 2
# Counters worth showing, beyond rows and compute time; summed over partitions.
_COUNTERS = (
    "output_bytes",
    "bytes_scanned",
    "row_groups_pruned_statistics",
    "row_groups_matched_statistics",
    "row_groups_pruned_bloom_filter",
    "page_index_rows_pruned",
    "files_ranges_pruned_statistics",
    "spill_count",
    "spilled_bytes",
)


class _End:
    """A reader thread's last item: its failure, if any."""

    __slots__ = ("failure",)

    def __init__(self, failure: Exception | None) -> None:
        self.failure = failure


@dataclass
class ExecutedPlan:
    """A plan being executed, when its execution began and when its stream ended (perf_counter_ns; 0:
    not seen to end)."""

    plan: ExecutionPlan
    started_ns: int
    ended_ns: int = 0


class PlanStream:
    """The batches (pyarrow RecordBatch) of `plan` executed in `ctx`, all partitions at once; `plan`
    keeps the metrics. Dropping or closing it stops the reader threads after their current batch."""

    def __init__(self, ctx: datafusion.SessionContext, plan: ExecutionPlan, buffer: StreamBuffer) -> None:
        self.executed = ExecutedPlan(plan, time.perf_counter_ns())
        count = plan.partition_count
        self._single = ctx.execute(plan, 0) if count == 1 else None
        self._buffer = buffer
        self._running = min(count, READER_THREADS) if count > 1 else 0
        weakref.finalize(self, buffer.close)
        streams = [ctx.execute(plan, partition) for partition in range(count)] if self._running else []
        # Shielded: `Thread.start` waits on a Condition, which a stop landing there would leave taken.
        with shielded():
            for reader in range(self._running):
                # Each thread runs in a copy of this context: spans begun there have this span as parent.
                thread = threading.Thread(
                    target=contextvars.copy_context().run,
                    args=(_pump, streams[reader :: self._running], buffer),
                    name=f"spanlake-plan-reader-{reader}",
                    daemon=True,
                )
                thread.start()

    @classmethod
    def start(
        cls,
        ctx: datafusion.SessionContext,
        df: datafusion.DataFrame,
        stream_limit: int = UNBOUNDED,
        total: ByteBudget | None = None,
    ) -> PlanStream:
        """Plans `df` physically and starts executing it, holding at most about `stream_limit` bytes of
        computed batches and waiting while `total` is used up (see result_buffer)."""
        buffer = StreamBuffer(stream_limit, total if total is not None else ByteBudget(UNBOUNDED))
        return cls(ctx, executable_plan(ctx, df), buffer)

    def __iter__(self) -> PlanStream:
        """The stream itself: an iterator of batches."""
        return self

    def __next__(self) -> Any:
        """The next batch of any partition; StopIteration when all have ended."""
        try:
            return self._next_batch()
        except StopIteration:
            self.executed.ended_ns = time.perf_counter_ns()
            raise

    def _next_batch(self) -> Any:
        if self._single is not None:
            return self._next_single()
        while self._running:
            item = self._buffer.get()
            if type(item) is not _End:
                return item
            self._running -= 1
            if item.failure is not None:
                self.close()
                raise item.failure
        raise StopIteration

    def _next_single(self) -> Any:
        """The next batch of the only partition, computed once the buffers have room for it."""
        self._buffer.hand_back()
        reserved = self._buffer.reserve()
        if reserved is None:
            raise StopIteration
        batch = next(self._single, None)
        if batch is None:
            self._buffer.unreserve(reserved)
            raise StopIteration
        batch = batch.to_pyarrow()
        self._buffer.hand(batch.get_total_buffer_size(), reserved)
        return batch

    def close(self) -> None:
        """Stops the reader threads (after the batch each is computing) and gives back what the stream
        holds."""
        self._buffer.close()


def _pump(streams: list, buffer: StreamBuffer) -> None:
    """Moves the partitions' batches into the buffer, a batch of each in turn, each once the buffer has
    room, until they end or the buffer is closed."""
    failure = None
    try:
        while streams:
            for stream in tuple(streams):
                reserved = buffer.reserve()
                if reserved is None:
                    return
                batch = next(stream, None)
                if batch is None:
                    buffer.unreserve(reserved)
                    streams.remove(stream)
                    continue
                batch = batch.to_pyarrow()
                buffer.put(batch, batch.get_total_buffer_size(), reserved)
    except Exception as exc:  # handed to the query, which raises it as its failure
        failure = exc
    buffer.put(_End(failure), 0, 0)


def record_operator_spans(executed: ExecutedPlan, parent: tracing.SpanContext, query_span: QuerySpan) -> None:
    """One span per operator of the executed plan, under `parent` (the execution span), within the
    execution's lifetime so far; their figures are given to `query_span`. Called through
    `query_span.when_slow`: a fast query, which would drop them, does not pay for them."""
    now_ns = time.perf_counter_ns()
    wall_to_perf = now_ns - time.time_ns()
    bounds = (executed.started_ns, executed.ended_ns or now_ns)
    _record(executed.plan, parent, bounds, wall_to_perf, query_span)


def _record(
    node: ExecutionPlan,
    parent: tracing.SpanContext,
    bounds: tuple[int, int],
    wall_to_perf: int,
    query_span: QuerySpan,
) -> None:
    """Records the node's span and its subtree's (nothing for a subtree without timestamps)."""
    interval = _interval(node, wall_to_perf, bounds)
    if interval is None:
        return
    name = node.display().split(":", 1)[0].strip()
    context = tracing.record_async_span(f"datafusion.{name}", parent, *interval)
    query_span.describe_span(context[0], _figures(node))
    for child in node.children():
        _record(child, context, interval, wall_to_perf, query_span)


def _interval(node: ExecutionPlan, wall_to_perf: int, bounds: tuple[int, int]) -> tuple[int, int] | None:
    """The node's own interval, else the union of its children's; None if nothing below has timestamps."""
    metrics = node.metrics()
    interval = _own_interval(metrics.metrics() if metrics is not None else [], wall_to_perf, bounds)
    if interval is not None:
        return interval
    found = [i for i in (_interval(child, wall_to_perf, bounds) for child in node.children()) if i is not None]
    return (min(begin for begin, _ in found), max(end for _, end in found)) if found else None


def _own_interval(values: list, wall_to_perf: int, bounds: tuple[int, int]) -> tuple[int, int] | None:
    """The earliest start and latest end over the operator's partitions, clamped into `bounds`."""
    starts = [m.value for m in values if m.name == "start_timestamp" and m.value is not None]
    if not starts:
        return None
    ends = [m.value for m in values if m.name == "end_timestamp" and m.value is not None]
    low, high = bounds
    begin = min(max(_perf_ns(min(starts), wall_to_perf), low), high)
    end = max(min(_perf_ns(max(ends), wall_to_perf), high), begin) if ends else high
    return begin, end


def _perf_ns(moment: dt.datetime, wall_to_perf: int) -> int:
    """A DataFusion timestamp (UTC wall clock) on the spans' clock (perf_counter_ns)."""
    wall_ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    return wall_ns + wall_to_perf


def _figures(node: ExecutionPlan) -> dict[str, Any]:
    """The operator's description and its counters summed over partitions."""
    figures: dict[str, Any] = {"operator": node.display()[:500]}
    metrics = node.metrics()
    if metrics is None:
        return figures
    figures["output_rows"] = metrics.output_rows
    elapsed = metrics.elapsed_compute
    figures["elapsed_compute_ms"] = None if elapsed is None else round(elapsed / 1e6, 3)
    for name in _COUNTERS:
        value = metrics.sum_by_name(name)
        if value:
            figures[name] = value
    return figures
