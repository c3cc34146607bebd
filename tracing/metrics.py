"""Metrics: `imetric(name, unit, value)` (unsigned 64-bit integers) and `fmetric(name, unit, value)` (floats).

Each (call site, name, unit) gets a `MetricMetadataDependency` descriptor once; a call appends one
tuple to the metrics stream. With properties the events are `TaggedIntegerMetricEvent` /
`TaggedFloatMetricEvent`. micromegas converts integer metrics in unit "ticks" to seconds using the
process's tick frequency.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from spanlake.tracing import dispatch as _dispatch
from spanlake.tracing.event_records import TYPE_BITS
from spanlake.tracing.registry import REGISTRY
from spanlake.tracing.udts import (
    FLOAT_METRIC_INDEX,
    INTEGER_METRIC_INDEX,
    TAGGED_FLOAT_METRIC_INDEX,
    TAGGED_INTEGER_METRIC_INDEX,
)

_now = time.perf_counter_ns
_getframe = sys._getframe
_U64 = (1 << 64) - 1
_call_sites: dict[tuple, tuple[int, int, Any]] = {}


def _codes_here(name: str, unit: str, frame: Any, plain: int, tagged: int) -> tuple[int, int, Any]:
    key = (id(frame.f_code), frame.f_lasti, name, unit)
    found = _call_sites.get(key)
    if found is None:
        desc = REGISTRY.metric(
            str(name), str(unit), frame.f_globals.get("__name__", ""), frame.f_code.co_filename, frame.f_lineno
        )
        # The code object is kept so that its id is never reused for another one.
        found = _call_sites[key] = (desc << TYPE_BITS | plain, desc << TYPE_BITS | tagged, frame.f_code)
    return found


def _append(codes: tuple[int, int, Any], value: int | float, properties: dict[str, str] | None) -> None:
    stream = _dispatch.metrics_stream
    events = stream.events
    if properties:
        events.append((codes[1], _now(), value, REGISTRY.property_set(properties)))
    else:
        events.append((codes[0], _now(), value, 0))
    if len(events) > stream.capacity:
        stream.full()


def imetric(name: str, unit: str, value: int, properties: dict[str, str] | None = None) -> None:
    """Records an integer measure (taken modulo 2**64, as an unsigned 64-bit value)."""
    codes = _codes_here(name, unit, _getframe(1), INTEGER_METRIC_INDEX, TAGGED_INTEGER_METRIC_INDEX)
    _append(codes, int(value) & _U64, properties)


def fmetric(name: str, unit: str, value: float, properties: dict[str, str] | None = None) -> None:
    """Records a floating-point measure."""
    codes = _codes_here(name, unit, _getframe(1), FLOAT_METRIC_INDEX, TAGGED_FLOAT_METRIC_INDEX)
    _append(codes, float(value), properties)
