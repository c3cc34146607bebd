"""The time bounds of an OTLP resource's records (begin, end, nb_objects), as micromegas computes them
for the block row (`otel-ingestion/src/block.rs`).

Times are the records' u64 nanosecond stamps read as i64 (micromegas's `as i64`); records without a time
are left out of the bounds but counted. A resource where no record carries a time gets `(0, 0, n)`,
which the caller replaces by the arrival time. The stamps are read from the resource's wire format with
numpy (`log_arrays`, `span_arrays`, `metric_arrays`): no Python step per record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spanlake.lakehouse.otlp.log_arrays import LogFields
from spanlake.lakehouse.otlp.metric_arrays import MetricFields


@dataclass(frozen=True)
class Bounds:
    """A block's time range in nanoseconds and its object count (`nb_objects`)."""

    begin_ns: int
    end_ns: int
    nb_objects: int


def logs_bounds(logs: LogFields) -> Bounds | None:
    """Bounds of the log records (time, else observed time); None when there are none."""
    if not logs.records.count:
        return None
    times = logs.stamps(1)
    times = np.where(times != 0, times, logs.stamps(11))
    return _min_max(times[times != 0], times[times != 0], logs.records.count)


def spans_bounds(starts: np.ndarray, ends: np.ndarray) -> Bounds | None:
    """Bounds of spans from their start and end stamps (as i64): first start, last end; None when there
    are none. (`lakehouse.block_traces` reads the stamps, with the trace ids.)"""
    if not len(starts):
        return None
    return _min_max(starts[starts != 0], ends[ends != 0], len(starts))


def metrics_bounds(metrics: MetricFields) -> Bounds | None:
    """Bounds of the data points (a Summary point counts as 4 objects); None when there are none."""
    count = metrics.object_count
    if count == 0:
        return None
    stamps = metrics.point_times()
    return _min_max(stamps[stamps != 0], stamps[stamps != 0], count)


def _min_max(begins: np.ndarray, ends: np.ndarray, count: int) -> Bounds:
    if len(begins) == 0 or len(ends) == 0:
        return Bounds(0, 0, count)
    return Bounds(int(begins.min()), int(ends.max()), count)
