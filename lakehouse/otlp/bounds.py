"""The time bounds of an OTLP resource's records (begin, end, nb_objects), as micromegas computes them
for the block row (`otel-ingestion/src/block.rs`).

Times are the records' u64 nanosecond stamps read as i64 (micromegas's `as i64`); records without a time
are left out of the bounds but counted. A resource where no record carries a time gets `(0, 0, n)`,
which the caller replaces by the arrival time.

Records and their stamps are read through the protobuf runtime in C (`leaves`, `stamps`): no Python
step per record. (Reading them from the serialized bytes with numpy, as the views do, costs 6 to 10
times more here: `benchmarks/otlp_throughput.py --ingest-cpu`.)
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

SUMMARY_ROWS_PER_POINT = 4  # a Summary point materializes up to _count/_sum/_min/_max


@dataclass(frozen=True)
class Bounds:
    """A block's time range in nanoseconds and its object count (`nb_objects`)."""

    begin_ns: int
    end_ns: int
    nb_objects: int


def leaves(parents: Iterable[Message], field: str) -> list[Message]:
    """The messages of a repeated field of every parent, in order: gathered in C (`map`, `chain`), with
    no Python step per message."""
    return list(itertools.chain.from_iterable(map(operator.attrgetter(field), parents)))


def stamps(messages: Sequence[Message], field: str) -> np.ndarray:
    """A u64 stamp field of every message as i64 (micromegas's `as i64`), read in C (`map`,
    `attrgetter`, `fromiter`): the protobuf runtime's own field reads, no Python step per message."""
    return np.fromiter(map(operator.attrgetter(field), messages), np.uint64, len(messages)).view(np.int64)


def logs_bounds(resource: ResourceLogs) -> Bounds | None:
    """Bounds of the log records (time, else observed time); None when there are none."""
    records = leaves(resource.scope_logs, "log_records")
    if not records:
        return None
    times = stamps(records, "time_unix_nano")
    times = np.where(times != 0, times, stamps(records, "observed_time_unix_nano"))
    return _min_max(times[times != 0], times[times != 0], len(records))


def spans_bounds(starts: np.ndarray, ends: np.ndarray) -> Bounds | None:
    """Bounds of spans from their start and end stamps (as i64): first start, last end; None when there
    are none. (`lakehouse.block_traces` reads the stamps, with the trace ids.)"""
    if not len(starts):
        return None
    return _min_max(starts[starts != 0], ends[ends != 0], len(starts))


def metrics_bounds(resource: ResourceMetrics) -> Bounds | None:
    """Bounds of the data points (a Summary point counts as 4 objects); None when there are none. A step
    per metric; its points are read in C (`stamps`)."""
    times: list[np.ndarray] = []
    count = 0
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            points = getattr(metric, kind).data_points
            times.append(stamps(points, "time_unix_nano"))
            count += len(points) * (SUMMARY_ROWS_PER_POINT if kind == "summary" else 1)
    if count == 0:
        return None
    found = np.concatenate(times)
    return _min_max(found[found != 0], found[found != 0], count)


def _min_max(begins: np.ndarray, ends: np.ndarray, count: int) -> Bounds:
    if len(begins) == 0 or len(ends) == 0:
        return Bounds(0, 0, count)
    return Bounds(int(begins.min()), int(ends.max()), count)
