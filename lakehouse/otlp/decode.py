"""Stored OTLP blocks → view rows: logs → `log_entries`, metrics → `measures`, traces → `async_events`.

A stored OTLP block is the CBOR envelope `{dependencies: b"", objects: <Resource* protobuf>}` written by
`server.otlp`. The mapping to `log_entries` and `measures` is micromegas's
(`analytics/src/lakehouse/otel/{logs,metrics}_block_processor.rs`, `attrs.rs`):

* logs: time = `time_unix_nano`, else `observed_time_unix_nano`, else the block's begin time; level =
  severity 1–4→6 (trace), 5–8→5, 9–12→4, 13–16→3, 17–20→2, 21–24→1 (fatal), anything else → 4;
  msg = the body as text; target = the scope name; properties = the record's attributes plus
  `otel.scope.{name,version,attr.*,schema_url}`, `otel.trace_id`/`otel.span_id` (hex, only when 16/8
  bytes long), `otel.severity_text`, `otel.event_name`.
* metrics: one row per Sum/Gauge point with a time and a value (properties = the point's attributes
  plus `otel.metric.kind`, and for sums `otel.metric.aggregation_temporality`/`is_monotonic`); Summary
  points become `<name>_count` (unit ""), `<name>_sum`, and `<name>_min`/`<name>_max` for the first
  quantile 0.0/1.0 entries (properties = attributes only; points flagged NO_RECORDED_VALUE are dropped);
  histograms are skipped.

Attribute values keep their JSON types in the databend-jsonb properties (numbers, booleans, arrays,
nested objects), as micromegas writes them; bytes become base64 strings.

micromegas has no OTLP source for `async_events`; spanlake adds one. Each span with a start, an end, a
16-byte trace id and an 8-byte span id (the spans micromegas's `otel_spans` keeps) gives a `begin` row at
its start and an `end` row at its end, rows ordered by time. `span_id` / `parent_span_id` are the 8 id
bytes read as a big-endian two's-complement int64 (`int.from_bytes(id, "big", signed=True)`; a span
without a valid parent gets 0, like a native root). `depth` counts the span's ancestors found in the
same block (same trace id): a parent exported in another block makes the span a root here. name = the
span name, target = the scope name, filename = "", line = 0, hash = the scope hash of those four.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanlake.lakehouse.otlp.rust_text import rust_display_f64
from spanlake.views import async_events, jsonb, log_entries, measures
from spanlake.views.columns import Coded, block_identity_columns, constant_dictionary, dictionary_array, timestamp_array
from spanlake.views.jsonb import JsonValue
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.properties import constant_properties_array
from spanlake.views.scope import scope_hash

OTLP_LOGS_FORMAT = "otlp/v1/logs"
OTLP_METRICS_FORMAT = "otlp/v1/metrics"
OTLP_TRACES_FORMAT = "otlp/v1/traces"


# severity_number → micromegas level; index = severity_number (0..24), anything else → Info (4).
_LEVELS = np.array([4] + [6] * 4 + [5] * 4 + [4] * 4 + [3] * 4 + [2] * 4 + [1] * 4, dtype=np.int32)
_NO_RECORDED_VALUE = 1  # DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK


class OtlpBlockError(ValueError):
    """A stored OTLP block that cannot be read (bad envelope or protobuf)."""


# --- public entry points ---------------------------------------------------------------------------


def log_entries_batch(payload: bytes, process: ProcessMeta, block: BlockMeta) -> pa.RecordBatch:
    """The `log_entries` rows of an `otlp/v1/logs` block."""
    logs = extract_logs(_resource(payload, ResourceLogs), block.begin_time_ns)
    n = len(logs.time_ns)
    columns = [
        *block_identity_columns(process, block, n),
        timestamp_array(logs.time_ns),
        dictionary_array(logs.target),
        pa.array(logs.level, pa.int32()),
        pa.array(logs.msg, pa.utf8()),
        binary_dictionary(logs.properties),
        constant_properties_array(process.properties, n),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=log_entries.SCHEMA)


def measures_batch(payload: bytes, process: ProcessMeta, block: BlockMeta) -> pa.RecordBatch:
    """The `measures` rows of an `otlp/v1/metrics` block."""
    points = extract_measures(_resource(payload, ResourceMetrics))
    n = len(points.time_ns)
    columns = [
        *block_identity_columns(process, block, n),
        timestamp_array(points.time_ns),
        dictionary_array(points.target),
        dictionary_array(points.name),
        dictionary_array(points.unit),
        pa.array(points.value, pa.float64()),
        binary_dictionary(points.properties),
        constant_properties_array(process.properties, n),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=measures.SCHEMA)


def async_events_batch(payload: bytes, process: ProcessMeta, block: BlockMeta) -> pa.RecordBatch:
    """The `async_events` rows of an `otlp/v1/traces` block: a begin and an end row per span."""
    spans = extract_spans(_resource(payload, ResourceSpans))
    n = len(spans.start_ns)
    times = np.concatenate([spans.start_ns, spans.end_ns])
    order = np.argsort(times, kind="stable")  # begins come first among equal times
    span_rows = np.concatenate([np.arange(n), np.arange(n)])[order]
    is_end = (np.arange(2 * n) >= n)[order]
    names = spans.name.take(span_rows)
    targets = spans.target.take(span_rows)
    hashes = _scope_hashes(spans.name, spans.target)[span_rows]
    columns = [
        constant_dictionary(block.stream_id, 2 * n),
        constant_dictionary(block.block_id, 2 * n),
        timestamp_array(times[order]),
        dictionary_array(Coded(is_end.astype(np.int64), ["begin", "end"])),
        pa.array(spans.span_id[span_rows], pa.int64()),
        pa.array(spans.parent_span_id[span_rows], pa.int64()),
        pa.array(spans.depth[span_rows], pa.uint32()),
        pa.array(hashes, pa.uint32()),
        dictionary_array(names),
        constant_dictionary("", 2 * n),
        dictionary_array(targets),
        pa.array(np.zeros(2 * n, np.uint32), pa.uint32()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=async_events.SCHEMA)


BatchBuilder = Callable[[bytes, ProcessMeta, BlockMeta], pa.RecordBatch]
VIEW_BUILDERS: dict[tuple[str, str], BatchBuilder] = {
    (log_entries.VIEW_SET_NAME, OTLP_LOGS_FORMAT): log_entries_batch,
    (measures.VIEW_SET_NAME, OTLP_METRICS_FORMAT): measures_batch,
    (async_events.VIEW_SET_NAME, OTLP_TRACES_FORMAT): async_events_batch,
}


def otlp_view_batch(
    view_set_name: str, stream_format: str, payload: bytes, process: ProcessMeta, block: BlockMeta
) -> pa.RecordBatch:
    """Rows of `view_set_name` from one OTLP block; ValueError when that view takes no such block."""
    builder = VIEW_BUILDERS.get((view_set_name, stream_format))
    if builder is None:
        raise ValueError(f"view {view_set_name!r} has no rows for blocks of format {stream_format!r}")
    return builder(payload, process, block)


# --- stored block ----------------------------------------------------------------------------------


def _resource(payload: bytes, message_type: type[Message]) -> Any:
    try:
        envelope = cbor2.loads(payload)
    except Exception as err:  # cbor2 raises several types for malformed input
        raise OtlpBlockError(f"OTLP block envelope is not CBOR: {err}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("objects"), bytes):
        raise OtlpBlockError("OTLP block envelope must be a map with an 'objects' byte string")
    try:
        return message_type.FromString(envelope["objects"])
    except DecodeError as err:
        raise OtlpBlockError(f"OTLP block objects are not a {message_type.DESCRIPTOR.name}: {err}") from None


def binary_dictionary(coded: Coded[bytes]) -> pa.Array:
    """`Dictionary(Int32, Binary)` with deduplicated values."""
    unique: dict[bytes, int] = {}
    remap = np.array([unique.setdefault(value, len(unique)) for value in coded.values], dtype=np.int32)
    indices = remap[coded.codes] if len(remap) else np.zeros(0, np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(unique), pa.binary()))


class _Interner:
    """Codes for values as they come: equal values share one code (and one Arrow dictionary entry)."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        return self.index.setdefault(value, len(self.index))

    def coded(self, codes: Sequence[int] | np.ndarray) -> Coded[Any]:
        return Coded(np.asarray(codes, dtype=np.int64), list(self.index))


def _as_i64(values: Sequence[int]) -> np.ndarray:
    """u64 proto timestamps as i64, as micromegas's `as i64` casts them."""
    return np.array(values, dtype=np.uint64).view(np.int64)


# --- logs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogColumns:
    time_ns: np.ndarray  # int64
    level: np.ndarray  # int32
    msg: list[str]
    target: Coded[str]
    properties: Coded[bytes]  # databend-jsonb objects


def extract_logs(resource: ResourceLogs, fallback_time_ns: int) -> LogColumns:
    """One row per log record, in payload order; records without any time get `fallback_time_ns`."""
    targets, properties = _Interner(), _Interner()
    times: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    msgs: list[str] = []
    target_codes: list[np.ndarray] = []
    property_codes: list[int] = []
    for scope_logs in resource.scope_logs:
        records = scope_logs.log_records
        extras = scope_extras(scope_logs.scope, scope_logs.schema_url)
        stamps = _as_i64([r.time_unix_nano for r in records])
        observed = _as_i64([r.observed_time_unix_nano for r in records])
        times.append(np.where(stamps != 0, stamps, np.where(observed != 0, observed, fallback_time_ns)))
        severities = np.array([r.severity_number for r in records], dtype=np.int64)
        in_range = (severities >= 0) & (severities < len(_LEVELS))
        levels.append(np.where(in_range, _LEVELS[np.where(in_range, severities, 0)], 4).astype(np.int32))
        msgs.extend(any_value_to_string(r.body) if r.HasField("body") else "" for r in records)
        target_codes.append(np.full(len(records), targets.code(scope_logs.scope.name), np.int64))
        property_codes.extend(properties.code(jsonb.encode(_log_properties(r, extras))) for r in records)
    return LogColumns(
        time_ns=np.concatenate(times) if times else np.zeros(0, np.int64),
        level=np.concatenate(levels) if levels else np.zeros(0, np.int32),
        msg=msgs,
        target=targets.coded(np.concatenate(target_codes) if target_codes else []),
        properties=properties.coded(property_codes),
    )


def _log_properties(record: Any, extras: list[tuple[str, JsonValue]]) -> dict[str, JsonValue]:
    more = list(extras)
    if len(record.trace_id) == 16:  # W3C sizes only: a half-size id would break correlation joins
        more.append(("otel.trace_id", record.trace_id.hex()))
    if len(record.span_id) == 8:
        more.append(("otel.span_id", record.span_id.hex()))
    if record.severity_text:
        more.append(("otel.severity_text", record.severity_text))
    if record.event_name:
        more.append(("otel.event_name", record.event_name))
    return attributes_object(record.attributes, more)


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


@dataclass(frozen=True)
class MeasureColumns:
    time_ns: np.ndarray  # int64
    value: np.ndarray  # float64
    target: Coded[str]
    name: Coded[str]
    unit: Coded[str]
    properties: Coded[bytes]


@dataclass
class _MeasureRows:
    """Rows appended metric by metric, in payload order."""

    times: list[np.ndarray]
    values: list[np.ndarray]
    targets: list[np.ndarray]
    names: list[np.ndarray]
    units: list[np.ndarray]
    properties: list[np.ndarray]

    def add(
        self,
        times: np.ndarray,
        values: np.ndarray,
        target: int,
        name: int | np.ndarray,
        unit: int | np.ndarray,
        properties: np.ndarray,
    ) -> None:
        n = len(times)
        self.times.append(times)
        self.values.append(values)
        self.targets.append(np.full(n, target, np.int64))
        self.names.append(np.broadcast_to(np.asarray(name, np.int64), (n,)))
        self.units.append(np.broadcast_to(np.asarray(unit, np.int64), (n,)))
        self.properties.append(properties)


def extract_measures(resource: ResourceMetrics) -> MeasureColumns:
    """One row per Sum/Gauge point and up to four per Summary point, in payload order."""
    strings, properties = _Interner(), _Interner()
    rows = _MeasureRows([], [], [], [], [], [])
    for scope_metrics in resource.scope_metrics:
        target = strings.code(scope_metrics.scope.name)
        for metric in scope_metrics.metrics:
            kind = metric.WhichOneof("data")
            if kind in ("sum", "gauge"):
                _add_number_points(rows, strings, properties, target, metric, kind)
            elif kind == "summary":
                _add_summary_points(rows, strings, properties, target, metric)
            # histograms and exponential histograms have no scalar value: skipped, as micromegas does
    if not rows.times:
        empty = Coded(np.zeros(0, np.int64), [])
        return MeasureColumns(np.zeros(0, np.int64), np.zeros(0, np.float64), empty, empty, empty, empty)
    names = strings.coded(np.concatenate(rows.names))
    return MeasureColumns(
        time_ns=np.concatenate(rows.times),
        value=np.concatenate(rows.values),
        target=strings.coded(np.concatenate(rows.targets)),
        name=names,
        unit=strings.coded(np.concatenate(rows.units)),
        properties=properties.coded(np.concatenate(rows.properties)),
    )


def _number_extras(metric: Any, kind: str) -> list[tuple[str, JsonValue]]:
    if kind == "gauge":
        return [("otel.metric.kind", "gauge")]
    return [
        ("otel.metric.aggregation_temporality", int(metric.sum.aggregation_temporality)),
        ("otel.metric.is_monotonic", bool(metric.sum.is_monotonic)),
        ("otel.metric.kind", "sum"),
    ]


def _add_number_points(
    rows: _MeasureRows, strings: _Interner, properties: _Interner, target: int, metric: Any, kind: str
) -> None:
    points = getattr(metric, kind).data_points
    value_kinds = [p.WhichOneof("value") for p in points]
    times = _as_i64([p.time_unix_nano for p in points])
    keep = (times != 0) & np.array([k is not None for k in value_kinds], dtype=bool)
    if not keep.any():
        return
    kept = np.flatnonzero(keep).tolist()
    values = np.array(
        [points[i].as_double if value_kinds[i] == "as_double" else float(points[i].as_int) for i in kept],
        dtype=np.float64,
    )
    extras = _number_extras(metric, kind)
    codes = np.array(
        [properties.code(jsonb.encode(attributes_object(points[i].attributes, extras))) for i in kept], dtype=np.int64
    )
    rows.add(times[keep], values, target, strings.code(metric.name), strings.code(metric.unit), codes)


def _add_summary_points(
    rows: _MeasureRows, strings: _Interner, properties: _Interner, target: int, metric: Any
) -> None:
    """Each point fans out to _count, _sum, then _min/_max at its first quantile 0.0/1.0 entries."""
    suffixed = {suffix: strings.code(f"{metric.name}{suffix}") for suffix in ("_count", "_sum", "_min", "_max")}
    no_unit, unit = strings.code(""), strings.code(metric.unit)
    times, values, names, units, codes = [], [], [], [], []
    for point in metric.summary.data_points:
        time_ns = int(_as_i64([point.time_unix_nano])[0])
        if point.flags & _NO_RECORDED_VALUE or time_ns == 0:
            continue
        code = properties.code(jsonb.encode(attributes_object(point.attributes, [])))
        statistics = [("_count", no_unit, float(point.count)), ("_sum", unit, point.sum)]
        seen: set[float] = set()
        for quantile in point.quantile_values:
            if quantile.quantile in (0.0, 1.0) and quantile.quantile not in seen:
                seen.add(quantile.quantile)
                statistics.append(("_min" if quantile.quantile == 0.0 else "_max", unit, quantile.value))
        for suffix, unit_code, value in statistics:
            times.append(time_ns)
            values.append(value)
            names.append(suffixed[suffix])
            units.append(unit_code)
            codes.append(code)
    if times:
        rows.add(
            np.array(times, np.int64),
            np.array(values, np.float64),
            target,
            np.array(names, np.int64),
            np.array(units, np.int64),
            np.array(codes, np.int64),
        )


# --- traces ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanColumns:
    start_ns: np.ndarray  # int64
    end_ns: np.ndarray  # int64
    span_id: np.ndarray  # int64
    parent_span_id: np.ndarray  # int64, 0 without a valid parent
    depth: np.ndarray  # uint32
    name: Coded[str]
    target: Coded[str]


def extract_spans(resource: ResourceSpans) -> SpanColumns:
    """One row per span with both times and W3C-sized ids, in payload order, with its depth."""
    names, targets = _Interner(), _Interner()
    spans: list[Any] = []
    target_codes: list[int] = []
    for scope_spans in resource.scope_spans:
        kept = [
            s
            for s in scope_spans.spans
            if s.start_time_unix_nano and s.end_time_unix_nano and len(s.trace_id) == 16 and len(s.span_id) == 8
        ]
        spans.extend(kept)
        target_codes.extend([targets.code(scope_spans.scope.name)] * len(kept))
    trace_ids = _id_matrix([s.trace_id for s in spans], 16)
    span_ids = _id_matrix([s.span_id for s in spans], 8)
    parent_ids = _id_matrix([s.parent_span_id if len(s.parent_span_id) == 8 else bytes(8) for s in spans], 8)
    parents = _parent_indices(trace_ids, span_ids, parent_ids)
    return SpanColumns(
        start_ns=_as_i64([s.start_time_unix_nano for s in spans]),
        end_ns=_as_i64([s.end_time_unix_nano for s in spans]),
        span_id=_ids_as_i64(span_ids),
        parent_span_id=_ids_as_i64(parent_ids),
        depth=chain_depths(parents),
        name=names.coded([names.code(s.name) for s in spans]),
        target=targets.coded(target_codes),
    )


def _id_matrix(ids: list[bytes], width: int) -> np.ndarray:
    """One row of `width` id bytes per span (uint8)."""
    return np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(len(ids), width)


def _ids_as_i64(ids: np.ndarray) -> np.ndarray:
    """8-byte ids as big-endian two's-complement int64."""
    return np.ascontiguousarray(ids).view(">i8").reshape(len(ids)).astype(np.int64)


def _parent_indices(trace_ids: np.ndarray, span_ids: np.ndarray, parent_ids: np.ndarray) -> np.ndarray:
    """Row of each span's parent (same trace id and span id == parent id) within the block, else -1."""
    n = len(span_ids)
    if n == 0:
        return np.zeros(0, np.int64)
    keys = np.ascontiguousarray(np.hstack([trace_ids, span_ids])).view("S24").reshape(n)
    wanted = np.ascontiguousarray(np.hstack([trace_ids, parent_ids])).view("S24").reshape(n)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    slots = np.minimum(np.searchsorted(sorted_keys, wanted), n - 1)
    found = (sorted_keys[slots] == wanted) & parent_ids.any(axis=1)
    return np.where(found, order[slots], -1)


def chain_depths(parents: np.ndarray) -> np.ndarray:
    """Number of ancestors of each row following `parents` (-1 = none), by pointer jumping.

    Each round adds the depth gathered by the row's current ancestor and jumps to that ancestor's
    ancestor, so chains of any length resolve in log2(n)+1 rounds. Rows whose chain loops (corrupt
    parent ids) never reach a root: they are given depth 0.
    """
    n = len(parents)
    depth = (parents >= 0).astype(np.int64)
    jump = parents.astype(np.int64)
    for _ in range(max(1, int(n).bit_length() + 1)):
        active = jump >= 0
        if not active.any():
            break
        targets = jump[active]
        depth[active] += depth[targets]
        jump[active] = jump[targets]
    depth[jump >= 0] = 0
    return depth.astype(np.uint32)


def _scope_hashes(names: Coded[str], targets: Coded[str]) -> np.ndarray:
    """scope_hash(name, "", target, 0) per span, computed once per distinct (name, target)."""
    if len(names.codes) == 0:
        return np.zeros(0, np.uint32)
    width = len(targets.values)
    pairs, inverse = np.unique(names.codes * width + targets.codes, return_inverse=True)
    hashes = [scope_hash(names.values[pair // width], "", targets.values[pair % width], 0) for pair in pairs.tolist()]
    return np.array(hashes, dtype=np.uint32)[inverse.reshape(-1)]


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


def any_value_to_string(value: AnyValue) -> str:
    """micromegas's text of a log body: scalars as Rust prints them, arrays and maps as compact JSON."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return rust_display_f64(value.double_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("bytes_value", "array_value", "kvlist_value"):
        converted = any_value_to_json(value)
        return converted if kind == "bytes_value" else jsonb.compact_json(converted)
    return ""
