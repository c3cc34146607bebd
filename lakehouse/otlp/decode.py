"""Stored OTLP blocks → the columns their views take: logs → `log_entries` (and `log_stats`), metrics →
`measures`, traces → `async_events` and `otel_spans`.

A stored OTLP block is the CBOR envelope `{dependencies: b"", objects: <Resource* protobuf>}` written
at ingestion. Blocks are read from the protobuf wire format with numpy, with no Python step per record
(`span_arrays`, `log_arrays`, `metric_arrays`). This
module hands arrays over: which rows they become is the view's own contract (`views/log_entries.py`,
`views/measures.py`, `views/async_events.py`). The mapping follows micromegas's
`analytics/src/lakehouse/otel/{logs,metrics}_block_processor.rs` and `attrs.rs`: attribute values keep
their JSON types in the databend-jsonb properties (numbers, booleans, arrays, nested objects), as
micromegas writes them; bytes become base64 strings. Only spans with a start, an end, a 16-byte trace
id and an 8-byte span id are kept (the spans micromegas's `otel_spans` keeps).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue

from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.otlp import log_arrays, metric_arrays, span_arrays
from spanlake.lakehouse.otlp.envelope import read_envelope
from spanlake.lakehouse.otlp.log_arrays import LogFields
from spanlake.lakehouse.otlp.metric_arrays import MetricFields
from spanlake.lakehouse.otlp.span_arrays import SpanFields
from spanlake.lakehouse.otlp.wire import WireError
from spanlake.views.async_events import SpanColumns
from spanlake.views.columns import Coded
from spanlake.views.jsonb import JsonValue
from spanlake.views.log_entries import LogColumns
from spanlake.views.measures import MeasureColumns
from spanlake.views.meta import OTLP_LOGS_FORMAT, OTLP_METRICS_FORMAT, OTLP_TRACES_FORMAT, BlockMeta, ProcessMeta
from spanlake.views.otel_spans import SPAN_KINDS, STATUS_CODES, OtelSpanColumns
from spanlake.views.otel_spans import VIEW_SET_NAME as OTEL_SPANS
from spanlake.views.traces import VIEW_SET_NAME as TRACES
from spanlake.views.view import OtlpBlock, View

# severity_number → micromegas level; index = severity_number (0..24), anything else → Info (4).
_LEVELS = np.array([4] + [6] * 4 + [5] * 4 + [4] * 4 + [3] * 4 + [2] * 4 + [1] * 4, dtype=np.int32)


# --- stored block ----------------------------------------------------------------------------------


def otlp_block(
    view: View, stream_format: str, payload: bytes, process: ProcessMeta, block: BlockMeta
) -> OtlpBlock[LogColumns | MeasureColumns | SpanColumns | OtelSpanColumns]:
    """One stored OTLP block as the input of `view.rows_from_otlp`; OtlpBlockError when the view takes
    no block of this format or the block cannot be read."""
    extract = None
    if stream_format == view.otlp_format:
        extract = _VIEW_EXTRACTORS.get(view.name) or _EXTRACTORS.get(stream_format)
    if extract is None:
        raise OtlpBlockError(f"view {view.name!r} has no rows for blocks of format {stream_format!r}")
    return OtlpBlock(extract(payload, block), block, process)


def read_resource(payload: bytes, message_type: type[Message]) -> Any:
    """The Resource* message of a stored OTLP block (OtlpBlockError if it is not one)."""
    objects = read_envelope(payload)
    try:
        return message_type.FromString(objects)
    except DecodeError as err:
        raise OtlpBlockError(f"OTLP block objects are not a {message_type.DESCRIPTOR.name}: {err}") from None


# --- logs ------------------------------------------------------------------------------------------


def extract_logs(logs: LogFields, fallback_time_ns: int) -> LogColumns:
    """One row per log record, in payload order; records without any time get `fallback_time_ns`."""
    stamps, observed = logs.stamps(1), logs.stamps(11)
    severities = logs.severities()
    in_range = (severities >= 0) & (severities < len(_LEVELS))
    return LogColumns(
        time_ns=np.where(stamps != 0, stamps, np.where(observed != 0, observed, fallback_time_ns)),
        level=np.where(in_range, _LEVELS[np.where(in_range, severities, 0)], 4).astype(np.int32),
        msg=log_arrays.messages(logs),
        target=_coded(logs.scope_names()),
        properties=log_arrays.properties(logs),
    )


def read_logs(payload: bytes, fallback_time_ns: int) -> LogColumns:
    """The log_entries columns of a stored OTLP logs block (OtlpBlockError if it cannot be read)."""
    objects = read_envelope(payload)
    try:
        return extract_logs(log_arrays.log_fields(objects), fallback_time_ns)
    except WireError as err:
        raise OtlpBlockError(f"OTLP block objects are not a ResourceLogs: {err}") from None


def scope_extras(scope: InstrumentationScope, schema_url: str) -> list[tuple[str, JsonValue]]:
    """The `otel.scope.*` properties of rows from this scope (empty fields, valueless attributes left out)."""
    extras: list[tuple[str, JsonValue]] = []
    if scope.name:
        extras.append(("otel.scope.name", scope.name))
    if scope.version:
        extras.append(("otel.scope.version", scope.version))
    extras.extend(
        (f"otel.scope.attr.{kv.key}", any_value_to_json(kv.value)) for kv in scope.attributes if kv.HasField("value")
    )
    if schema_url:
        extras.append(("otel.scope.schema_url", schema_url))
    return extras


# --- metrics ---------------------------------------------------------------------------------------


def extract_measures(metrics: MetricFields) -> MeasureColumns:
    """One row per Sum/Gauge point and up to four per Summary point, in payload order
    (`metric_arrays.measure_rows`)."""
    metric_arrays.check_unread(metrics)
    rows = metric_arrays.measure_rows(metrics)
    return MeasureColumns(
        time_ns=rows.time_ns,
        value=rows.value,
        target=_coded(rows.target),
        name=_coded(rows.name),
        unit=_coded(rows.unit),
        properties=_coded(rows.properties),
    )


def read_measures(payload: bytes) -> MeasureColumns:
    """The measures columns of a stored OTLP metrics block (OtlpBlockError if it cannot be read)."""
    objects = read_envelope(payload)
    try:
        return extract_measures(metric_arrays.metric_fields(objects))
    except WireError as err:
        raise OtlpBlockError(f"OTLP block objects are not a ResourceMetrics: {err}") from None


# --- traces ----------------------------------------------------------------------------------------
# Read from the protobuf wire format with numpy (`span_arrays`): no Python step per span.


def extract_spans(spans: SpanFields) -> SpanColumns:
    """The `async_events` columns: one row per span with both times and W3C-sized ids, in payload order."""
    kept = spans.kept
    rows = pa.array(np.flatnonzero(kept))
    return SpanColumns(
        start_ns=spans.start_ns[kept],
        end_ns=spans.end_ns[kept],
        trace_id=spans.id_bytes(spans.trace_id, span_arrays.TRACE_ID_BYTES)[kept],
        span_id=_ids_as_i64(spans.id_bytes(spans.span_id, span_arrays.SPAN_ID_BYTES)[kept]),
        parent_span_id=_ids_as_i64(spans.id_bytes(spans.parent_span_id, span_arrays.SPAN_ID_BYTES)[kept]),
        name=_coded(spans.text(5).take(rows)),
        target=_coded(spans.scope_names().take(pa.array(spans.span_scope[kept]))),
    )


def extract_otel_spans(spans: SpanFields) -> OtelSpanColumns:
    """The `otel_spans` columns: every span with both times and W3C-sized ids, in payload order."""
    kept = spans.kept
    rows = pa.array(np.flatnonzero(kept))
    codes, messages = span_arrays.status(spans)
    return OtelSpanColumns(
        trace_id=spans.id_bytes(spans.trace_id, span_arrays.TRACE_ID_BYTES)[kept],
        span_id=spans.id_bytes(spans.span_id, span_arrays.SPAN_ID_BYTES)[kept],
        parent_span_id=spans.id_bytes(spans.parent_span_id, span_arrays.SPAN_ID_BYTES)[kept],
        has_parent=spans.has_id(spans.parent_span_id, span_arrays.SPAN_ID_BYTES)[kept],
        start_ns=spans.start_ns[kept],
        end_ns=spans.end_ns[kept],
        name=spans.text(5).take(rows),
        kind=_enum_index(spans.kinds()[kept], len(SPAN_KINDS)),
        status=_enum_index(codes[kept], len(STATUS_CODES)),
        status_message=messages.take(rows),
        properties=span_arrays.properties(spans).take(rows),
        events=span_arrays.events(spans).take(rows),
        links=span_arrays.links(spans).take(rows),
    )


def read_spans(payload: bytes, columns: Callable[[SpanFields], Any]) -> Any:
    """`columns` of the spans of a stored OTLP traces block (OtlpBlockError if it cannot be read)."""
    objects = read_envelope(payload)
    try:
        return columns(span_arrays.span_fields(objects))
    except WireError as err:
        raise OtlpBlockError(f"OTLP block objects are not a ResourceSpans: {err}") from None


def _coded(values: pa.Array) -> Coded[Any]:
    """Strings (or byte strings) as codes and their distinct values."""
    encoded = pc.dictionary_encode(values)
    return Coded(encoded.indices.to_numpy().astype(np.int64), encoded.dictionary.to_pylist())


def _enum_index(numbers: np.ndarray, size: int) -> np.ndarray:
    """Enum numbers as indexes of their names; an unknown number reads as the first name (prost's default)."""
    return np.where((numbers >= 0) & (numbers < size), numbers, 0)


def _ids_as_i64(ids: np.ndarray) -> np.ndarray:
    """8-byte ids (S8) as big-endian two's-complement int64."""
    return np.ascontiguousarray(ids).view(">i8").astype(np.int64)


# --- attribute values ------------------------------------------------------------------------------


def attributes_object(attributes: Sequence[KeyValue], extras: Sequence[tuple[str, JsonValue]]) -> dict[str, JsonValue]:
    """`{key: value}` of the attributes (a repeated key keeps its last value), then the extras on top."""
    found: dict[str, JsonValue] = {}
    for kv in attributes:  # an unset value reads as an empty AnyValue: null
        value = kv.value
        found[kv.key] = value.string_value if value.WhichOneof("value") == "string_value" else any_value_to_json(value)
    found.update(extras)
    return found


def any_value_to_json(value: AnyValue) -> JsonValue:
    """An OTLP value as micromegas stores it in jsonb: bytes as base64, profiling string refs as null."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind in ("bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value":
        return [any_value_to_json(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_object(value.kvlist_value.values, [])
    return None


Extractor = Callable[[bytes, BlockMeta], LogColumns | MeasureColumns | SpanColumns | OtelSpanColumns]
_EXTRACTORS: dict[str, Extractor] = {
    OTLP_LOGS_FORMAT: lambda payload, block: read_logs(payload, block.begin_time_ns),
    OTLP_METRICS_FORMAT: lambda payload, _: read_measures(payload),
    OTLP_TRACES_FORMAT: lambda payload, _: read_spans(payload, extract_spans),
}
# Views that read a format differently from its default columns above.
_VIEW_EXTRACTORS: dict[str, Extractor] = {
    name: lambda payload, _: read_spans(payload, extract_otel_spans) for name in (OTEL_SPANS, TRACES)
}
