"""The `otel_spans` view: one row per OTLP span of a `trace` stream, as micromegas exposes them
(`otel/spans_table.rs`, `otel/spans_view.rs`, `otel/spans_block_processor.rs`). The same spans also
give `async_events` rows (begin and end events, `views/async_events.py`).

Spans without a start or end time, or whose trace id is not 16 bytes or span id not 8 bytes, are
left out. `parent_span_id` is NULL unless it is 8 bytes; `kind` and `status` are the enum names
(`UNSPECIFIED`, `INTERNAL`, … / `UNSET`, `OK`, `ERROR`; unknown numbers read as the first);
`status_message` is NULL when empty or without a status; `properties` are the span attributes plus
`otel.scope.*`; `events` and `links` are jsonb arrays of `{time, name, attributes}` and
`{trace_id, span_id, attributes}` (hex ids). Per process, just in time; no global instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views.columns import Coded, dictionary_array, timestamp_array
from spanlake.views.meta import OTLP_TRACES_FORMAT
from spanlake.views.properties import constant_properties_array
from spanlake.views.schema_types import DICT_JSONB, DICT_UTF8, TIMESTAMP, optional, required
from spanlake.views.view import HOUR_SECONDS, OtlpBlock, OtlpRun, View, each_process_run

VIEW_SET_NAME = "otel_spans"
FILE_SCHEMA_HASH = bytes([1])  # micromegas's SCHEMA_VERSION

SCHEMA = pa.schema(
    [
        required("process_id", DICT_UTF8),
        required("stream_id", DICT_UTF8),
        required("block_id", DICT_UTF8),
        required("insert_time", TIMESTAMP),
        required("exe", pa.utf8()),
        required("username", pa.utf8()),
        required("computer", pa.utf8()),
        required("process_properties", DICT_JSONB),
        required("trace_id", pa.binary(16)),
        required("span_id", pa.binary(8)),
        optional("parent_span_id", pa.binary(8)),
        required("start_time", TIMESTAMP),
        required("end_time", TIMESTAMP),
        required("duration", pa.int64()),
        required("name", DICT_UTF8),
        required("kind", DICT_UTF8),
        required("status", DICT_UTF8),
        optional("status_message", pa.utf8()),
        required("properties", DICT_JSONB),
        required("events", pa.binary()),
        required("links", pa.binary()),
    ]
)

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")


@dataclass(frozen=True)
class OtelSpanColumns:
    """The kept spans of one OTLP traces block, in payload order (the lakehouse parses them)."""

    trace_id: np.ndarray  # S16
    span_id: np.ndarray  # S8
    parent_span_id: np.ndarray  # S8, meaningful where has_parent
    has_parent: np.ndarray  # bool
    start_ns: np.ndarray  # int64
    end_ns: np.ndarray  # int64
    name: pa.Array  # strings
    kind: np.ndarray  # int64 index into SPAN_KINDS
    status: np.ndarray  # int64 index into STATUS_CODES
    status_message: pa.Array  # strings, null when none
    properties: pa.Array  # binary: databend-jsonb objects
    events: pa.Array  # binary: databend-jsonb arrays
    links: pa.Array


def otlp_run_batch(blocks: Sequence[OtlpBlock[OtelSpanColumns]]) -> pa.RecordBatch:
    """The otel_spans rows of consecutive OTLP traces blocks of one process, built at once."""
    run = OtlpRun.of(blocks)
    columns, process = run.columns, run.process
    n = len(columns.start_ns)
    process_id, stream_id, block_id, insert_time = run.identity_columns(n)[:4]  # here exe... are plain strings
    arrays = [
        process_id,
        stream_id,
        block_id,
        insert_time,
        _constant_string(process.exe, n),
        _constant_string(process.username, n),
        _constant_string(process.computer, n),
        constant_properties_array(process.properties, n),
        _fixed_binary(columns.trace_id, 16),
        _fixed_binary(columns.span_id, 8),
        _fixed_binary(columns.parent_span_id, 8, valid=columns.has_parent),
        timestamp_array(columns.start_ns),
        timestamp_array(columns.end_ns),
        pa.array(columns.end_ns - columns.start_ns, pa.int64()),
        pc.dictionary_encode(columns.name.cast(pa.utf8())),
        dictionary_array(Coded(columns.kind, SPAN_KINDS)),
        dictionary_array(Coded(columns.status, STATUS_CODES)),
        columns.status_message.cast(pa.utf8()),
        pc.dictionary_encode(columns.properties.cast(pa.binary())),
        columns.events.cast(pa.binary()),
        columns.links.cast(pa.binary()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _constant_string(value: str, length: int) -> pa.Array:
    return pa.array([value], pa.utf8()).take(pa.array(np.zeros(length, np.int64)))


def _fixed_binary(ids: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    data = pa.py_buffer(np.ascontiguousarray(ids, f"S{width}").tobytes())
    mask = None if valid is None else pa.array(valid, pa.bool_()).buffers()[1]
    nulls = 0 if valid is None else int(len(ids) - np.count_nonzero(valid))
    return pa.Array.from_buffers(pa.binary(width), len(ids), [mask if nulls else None, data], null_count=nulls)


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=False,
    stream_tags=("trace",),
    time_columns=("start_time", "end_time"),
    rows_from_otlp=each_process_run(otlp_run_batch),
    otlp_format=OTLP_TRACES_FORMAT,
    max_partition_seconds=HOUR_SECONDS,
    blockwise_formats=frozenset([OTLP_TRACES_FORMAT]),
)
