"""The time bounds of an OTLP resource's records (begin, end, nb_objects), as micromegas computes them
for the block row (`otel-ingestion/src/block.rs`).

Times are the records' u64 nanosecond stamps read as i64 (micromegas's `as i64`); records without a time
are left out of the bounds but counted. A resource where no record carries a time gets `(0, 0, n)`,
which the caller replaces by the arrival time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

SUMMARY_ROWS_PER_POINT = 4  # a Summary point materializes up to _count/_sum/_min/_max


@dataclass(frozen=True)
class Bounds:
    """A block's time range in nanoseconds and its object count (`nb_objects`)."""

    begin_ns: int
    end_ns: int
    nb_objects: int


def logs_bounds(resource: ResourceLogs) -> Bounds | None:
    """Bounds of the log records (time, else observed time); None when there are none."""
    records = [record for scope in resource.scope_logs for record in scope.log_records]
    if not records:
        return None
    times = _as_i64([r.time_unix_nano for r in records])
    observed = _as_i64([r.observed_time_unix_nano for r in records])
    times = np.where(times != 0, times, observed)
    return _min_max(times[times != 0], times[times != 0], len(records))


def spans_bounds(starts: np.ndarray, ends: np.ndarray) -> Bounds | None:
    """Bounds of spans from their start and end stamps (as i64): first start, last end; None when there
    are none. (`lakehouse.block_traces` reads the stamps, in the one pass that also reads trace ids.)"""
    if not len(starts):
        return None
    return _min_max(starts[starts != 0], ends[ends != 0], len(starts))


def metrics_bounds(resource: ResourceMetrics) -> Bounds | None:
    """Bounds of the data points (a Summary point counts as 4 objects); None when there are none."""
    times: list[int] = []
    count = 0
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            points = getattr(metric, kind).data_points
            times.extend(point.time_unix_nano for point in points)
            count += len(points) * (SUMMARY_ROWS_PER_POINT if kind == "summary" else 1)
    if count == 0:
        return None
    stamps = _as_i64(times)
    return _min_max(stamps[stamps != 0], stamps[stamps != 0], count)


def _as_i64(values: list[int]) -> np.ndarray:
    """u64 proto timestamps reinterpreted as i64, as micromegas's `as i64` does."""
    return np.array(values, dtype=np.uint64).view(np.int64)


def _min_max(begins: np.ndarray, ends: np.ndarray, count: int) -> Bounds:
    if len(begins) == 0 or len(ends) == 0:
        return Bounds(0, 0, count)
    return Bounds(int(begins.min()), int(ends.max()), count)
