"""The traces of a block being ingested, for the trace index: the distinct trace ids its spans carry,
with the earliest begin and latest end of each trace's spans in the block (one entry per trace, not
per span, so indexing a block costs one small upsert)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

TRACE_ID_BYTES = 16
_TRACE_KEY = np.dtype([("high", ">u8"), ("low", ">u8")])  # a trace id's 16 bytes, sortable


@dataclass(frozen=True)
class BlockTraces:
    """Distinct trace ids (16 bytes each, ascending) with their spans' time range in one block."""

    trace_ids: list[bytes]
    begin_ns: list[int]
    end_ns: list[int]


NO_TRACES = BlockTraces([], [], [])


def grouped_traces(trace_ids: bytes, begin_ns: np.ndarray, end_ns: np.ndarray) -> BlockTraces:
    """One entry per distinct trace id of `trace_ids` (16 bytes per span, concatenated): the earliest
    begin and latest end of its spans. All-zero trace ids (invalid in W3C) are left out."""
    keys = np.frombuffer(trace_ids, _TRACE_KEY)
    valid = (keys["high"] != 0) | (keys["low"] != 0)
    keys, begin_ns, end_ns = keys[valid], begin_ns[valid], end_ns[valid]
    if not len(keys):
        return NO_TRACES
    unique, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    begins = np.full(len(unique), np.iinfo(np.int64).max)
    ends = np.full(len(unique), np.iinfo(np.int64).min)
    np.minimum.at(begins, inverse, begin_ns)
    np.maximum.at(ends, inverse, end_ns)
    raw = unique.tobytes()
    ids = [raw[i : i + TRACE_ID_BYTES] for i in range(0, len(raw), TRACE_ID_BYTES)]
    return BlockTraces(ids, begins.tolist(), ends.tolist())


def otlp_traces(resource: ResourceSpans) -> BlockTraces:
    """The traces of an OTLP spans resource (spans with a 16-byte trace id and a start time)."""
    spans = [
        span
        for scope in resource.scope_spans
        for span in scope.spans
        if len(span.trace_id) == TRACE_ID_BYTES and span.start_time_unix_nano
    ]
    if not spans:
        return NO_TRACES
    begins = np.array([s.start_time_unix_nano for s in spans], np.uint64).view(np.int64)
    ends = np.array([s.end_time_unix_nano for s in spans], np.uint64).view(np.int64)
    return grouped_traces(b"".join(s.trace_id for s in spans), begins, np.maximum(begins, ends))
