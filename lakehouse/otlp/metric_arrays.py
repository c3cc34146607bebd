"""A `ResourceMetrics` → its data points and the rows of `measures`, read from the protobuf wire format with
numpy (`wire`, `value_arrays`): no Python step per metric, data point or quantile.

The rows are those the former per-point decoder gave (the tests keep it as the reference, walking
protobuf objects; micromegas's `metrics_block_processor.rs`): one per Sum or Gauge point with a time and
a value, its properties the point's attributes (a repeated key keeps its last value) with the metric's
`otel.metric.*` on top; a Summary point without the no-recorded-value flag fans out to `<name>_count`
(unit ""), `<name>_sum`, then `<name>_min` / `<name>_max` at its first quantile 0.0 / 1.0, in their
order, its properties its attributes alone; histograms have no row. Rows come in payload order.

A metric's `data` is a oneof: the last kind given wins, and a kind given again after another starts
afresh (the protobuf runtime clears a oneof's message when the case changes), so only the bodies of the
chosen kind after the last body of another kind are its data (`MetricFields.superseded`: the others,
still checked as protobuf parses them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.descriptor import Descriptor
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Exemplar,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
    Summary,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanlake.lakehouse.otlp import jsonb_arrays as jb
from spanlake.lakehouse.otlp import value_arrays as va
from spanlake.lakehouse.otlp.wire import FIXED64, LEN, VARINT, Bodies, Buffer, Fields, read_fields

GAUGE, SUM, HISTOGRAM, EXPONENTIAL_HISTOGRAM, SUMMARY = 5, 7, 9, 10, 11  # Metric's `data` field numbers
_DATA_KINDS = np.array([GAUGE, SUM, HISTOGRAM, EXPONENTIAL_HISTOGRAM, SUMMARY])
_DATA_TYPES = {
    GAUGE: Gauge.DESCRIPTOR,
    SUM: Sum.DESCRIPTOR,
    HISTOGRAM: Histogram.DESCRIPTOR,
    EXPONENTIAL_HISTOGRAM: ExponentialHistogram.DESCRIPTOR,
    SUMMARY: Summary.DESCRIPTOR,
}
_NO_RECORDED_VALUE = np.uint64(1)  # DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_RESOURCE_METRICS = va.tags_of(ResourceMetrics.DESCRIPTOR)
_SCOPE_METRICS = va.tags_of(ScopeMetrics.DESCRIPTOR)
_METRIC = va.tags_of(Metric.DESCRIPTOR)
_DATA = frozenset().union(*(va.tags_of(d) for d in _DATA_TYPES.values()))
_NUMBER_POINT = va.tags_of(NumberDataPoint.DESCRIPTOR)
_SUMMARY_POINT = va.tags_of(SummaryDataPoint.DESCRIPTOR)
_QUANTILE = va.tags_of(SummaryDataPoint.ValueAtQuantile.DESCRIPTOR)
_EXEMPLAR = va.tags_of(Exemplar.DESCRIPTOR)
_HISTOGRAM_POINT = va.tags_of(HistogramDataPoint.DESCRIPTOR)
_EXPONENTIAL_POINT = va.tags_of(ExponentialHistogramDataPoint.DESCRIPTOR)
_TEXT = pa.large_utf8()


@dataclass(frozen=True)
class Points:
    """Data points of some kinds: their fields (one message per point, in payload order) and metrics."""

    fields: Fields
    metric: np.ndarray  # the metric (index) of each point
    start: np.ndarray  # where each point's body starts (the payload order of points of all kinds)

    def times(self, buffer: Buffer) -> np.ndarray:
        """Every point's `time_unix_nano` (field 3 in every point type) as i64, 0 when absent."""
        return va.as_i64(va.stamps(buffer, self.fields, 3))


@dataclass(frozen=True)
class MetricFields:
    """The metrics of a ResourceMetrics as wire fields, their data and their points by kind."""

    buffer: Buffer
    resource: Fields
    scope_metrics: Fields
    metrics: Fields
    metric_scope: np.ndarray  # the ScopeMetrics (index) of each metric
    kind: np.ndarray  # per metric, its data kind (GAUGE...), 0 when it has none
    data: Fields  # the fields of the metrics' data messages (owner: the metric)
    superseded: np.ndarray  # fields of `metrics`: data bodies a later kind replaced
    numbers: Points  # Gauge and Sum points
    summaries: Points
    histograms: Points
    exponential_histograms: Points

    def text(self, number: int) -> pa.Array:
        """A string field of every metric (name 1, description 2, unit 3), empty when absent."""
        return va.field_text(self.buffer, self.metrics, self.metrics.last(number, LEN))

    def scope_names(self) -> pa.Array:
        """The scope name of every ScopeMetrics (empty when absent)."""
        scopes = read_fields(self.buffer, self.scope_metrics.merged(1), va.SCOPE_TAGS)
        return va.field_text(self.buffer, scopes, scopes.last(1, LEN))

    def data_varint(self, number: int) -> np.ndarray:
        """A varint field of every metric's data message (0 when absent)."""
        return va.pick(self.data.varint, self.data.last(number, VARINT))


def metric_fields(objects: bytes) -> MetricFields:
    """The metrics and data points of a serialized ResourceMetrics (WireError if it is not one)."""
    buffer = Buffer.of(objects)
    resource = read_fields(buffer, Bodies.whole(buffer), _RESOURCE_METRICS)
    scope_metrics = read_fields(buffer, resource.repeated(2)[0], _SCOPE_METRICS)
    metric_bodies, metric_scope = scope_metrics.repeated(2)
    metrics = read_fields(buffer, metric_bodies, _METRIC)
    kind, chosen, superseded = _data_fields(metrics)
    data = read_fields(
        buffer, Bodies(metrics.start[chosen], metrics.end[chosen], metrics.owner[chosen], metrics.count), _DATA
    )
    point_bodies, point_metric = data.repeated(1)
    point_kind = kind[point_metric]

    def points(kinds: tuple[int, ...], tags: frozenset[int]) -> Points:
        rows = np.flatnonzero(np.isin(point_kind, kinds))
        bodies = Bodies(point_bodies.start[rows], point_bodies.end[rows], np.arange(len(rows)), len(rows))
        return Points(read_fields(buffer, bodies, tags), point_metric[rows], bodies.start)

    return MetricFields(
        buffer=buffer,
        resource=resource,
        scope_metrics=scope_metrics,
        metrics=metrics,
        metric_scope=metric_scope,
        kind=kind,
        data=data,
        superseded=superseded,
        numbers=points((GAUGE, SUM), _NUMBER_POINT),
        summaries=points((SUMMARY,), _SUMMARY_POINT),
        histograms=points((HISTOGRAM,), _HISTOGRAM_POINT),
        exponential_histograms=points((EXPONENTIAL_HISTOGRAM,), _EXPONENTIAL_POINT),
    )


def _data_fields(metrics: Fields) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per metric its data kind (the last `data` field given); the fields of its data message (the bodies
    of that kind after the last body of another kind) and the superseded ones."""
    found = np.flatnonzero(np.isin(metrics.number, _DATA_KINDS) & (metrics.wire == LEN))
    owners = metrics.owner[found]
    last = np.r_[owners[1:] != owners[:-1], True] if len(found) else np.zeros(0, bool)
    kind = np.zeros(metrics.count, np.int64)
    kind[owners[last]] = metrics.number[found[last]]
    other = metrics.number[found] != kind[owners]
    last_other = np.full(metrics.count, -1, np.int64)
    np.maximum.at(last_other, owners[other], found[other])
    kept = ~other & (found > last_other[owners])
    return kind, found[kept], found[~kept]


def check_unread(fields: MetricFields) -> None:
    """WireError unless the parts no column reads (resource, scopes, descriptions, metadata, histograms,
    exemplars, superseded data) are as the protobuf runtime requires: well formed, valid UTF-8."""
    buffer, metrics = fields.buffer, fields.metrics
    for owner, number, descriptor in (
        (fields.resource, 1, Resource.DESCRIPTOR),
        (fields.scope_metrics, 1, InstrumentationScope.DESCRIPTOR),
        (metrics, 12, KeyValue.DESCRIPTOR),
        (fields.numbers.fields, 5, Exemplar.DESCRIPTOR),
    ):
        _check_each(buffer, owner, owner.select(number, LEN), descriptor)
    for owner, number in ((fields.resource, 3), (fields.scope_metrics, 3), (metrics, 1), (metrics, 2), (metrics, 3)):
        va.field_text(buffer, owner, owner.select(number, LEN))
    for number, descriptor in _DATA_TYPES.items():
        _check_each(buffer, metrics, fields.superseded[metrics.number[fields.superseded] == number], descriptor)
    va.check_fields(buffer, fields.histograms.fields, HistogramDataPoint.DESCRIPTOR)
    va.check_fields(buffer, fields.exponential_histograms.fields, ExponentialHistogramDataPoint.DESCRIPTOR)


def _check_each(buffer: Buffer, fields: Fields, index: np.ndarray, descriptor: Descriptor) -> None:
    """`check_message` of the message fields at `index`, each its own message."""
    own = np.arange(len(index), dtype=np.int64)
    va.check_message(buffer, Bodies(fields.start[index], fields.end[index], own, len(index)), descriptor)


# --- measures rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureRows:
    """The `measures` rows of a block, in payload order."""

    time_ns: np.ndarray  # int64
    value: np.ndarray  # float64
    target: pa.Array  # large utf8
    name: pa.Array
    unit: pa.Array
    properties: pa.Array  # databend-jsonb objects


@dataclass(frozen=True)
class _Part:
    """Rows of one kind of point: each row's point (byte position, for payload order) and rank in it."""

    position: np.ndarray
    rank: np.ndarray
    metric: np.ndarray
    time_ns: np.ndarray
    value: np.ndarray
    suffix: pa.Array  # appended to the metric's name
    has_unit: np.ndarray  # bool: the metric's unit, else ""
    properties: pa.Array


def measure_rows(fields: MetricFields) -> MeasureRows:
    """The rows of Sum and Gauge points, then of Summary points, merged in payload order."""
    parts = [_number_rows(fields), _summary_rows(fields)]
    position = np.concatenate([p.position for p in parts])
    order = np.lexsort((np.concatenate([p.rank for p in parts]), position))
    metric = np.concatenate([p.metric for p in parts])[order]
    names = fields.text(1).take(pa.array(metric))
    suffixes = pa.concat_arrays([p.suffix for p in parts]).take(pa.array(order))
    units = pc.if_else(
        pa.array(np.concatenate([p.has_unit for p in parts])[order]), fields.text(3).take(pa.array(metric)), ""
    )
    return MeasureRows(
        time_ns=np.concatenate([p.time_ns for p in parts])[order],
        value=np.concatenate([p.value for p in parts])[order],
        target=fields.scope_names().take(pa.array(fields.metric_scope[metric])),
        name=pc.binary_join_element_wise(names, suffixes, pa.scalar("", _TEXT)),
        unit=units.cast(_TEXT),
        properties=pa.concat_arrays([p.properties for p in parts]).take(pa.array(order)),
    )


def _number_rows(fields: MetricFields) -> _Part:
    """One row per Sum or Gauge point with a time and a value."""
    buffer, points = fields.buffer, fields.numbers.fields
    metric = fields.numbers.metric
    as_double, as_int = points.last(4, FIXED64), points.last(6, FIXED64)
    is_int = as_int > as_double  # the oneof's last field given
    raw = buffer.fixed64(va.pick(points.start, np.maximum(as_double, as_int)))
    value = np.where(is_int, raw.view(np.int64).astype(np.float64), raw.view(np.float64))
    times = fields.numbers.times(buffer)
    kept = np.flatnonzero((times != 0) & ((as_double >= 0) | (as_int >= 0)))
    properties = _number_properties(fields)
    count = len(kept)
    return _Part(
        position=fields.numbers.start[kept],
        rank=np.zeros(count, np.int64),
        metric=metric[kept],
        time_ns=times[kept],
        value=value[kept],
        suffix=va.repeat_text("", count),
        has_unit=np.ones(count, bool),
        properties=properties.take(pa.array(kept, pa.int64())),
    )


def _number_properties(fields: MetricFields) -> pa.Array:
    """Per Sum or Gauge point, its attributes with `otel.metric.*` on top (a Sum's temporality and
    monotonicity, the kind)."""
    buffer, points = fields.buffer, fields.numbers.fields
    point_kind = fields.kind[fields.numbers.metric]
    attribute_bodies, attribute_point = points.repeated(7)
    attributes = va.key_values(buffer, attribute_bodies)
    sums = np.flatnonzero(point_kind == SUM)
    sum_metric = fields.numbers.metric[sums]
    temporality = va.as_i32(fields.data_varint(2))[sum_metric]
    monotonic = fields.data_varint(3)[sum_metric] != 0
    kinds = pc.if_else(pa.array(point_kind == SUM), "sum", "gauge").cast(_TEXT)
    parts = [
        (attributes.keys, attributes.values, attribute_point),
        (va.repeat_text("otel.metric.aggregation_temporality", len(sums)), jb.integers(temporality), sums),
        (va.repeat_text("otel.metric.is_monotonic", len(sums)), jb.booleans(monotonic), sums),
        (va.repeat_text("otel.metric.kind", points.count), jb.strings(kinds), np.arange(points.count)),
    ]
    return va.objects_of(parts, points.count)


def _summary_rows(fields: MetricFields) -> _Part:
    """Per Summary point with a time and a recorded value: `_count`, `_sum`, then `_min` and `_max` at
    its first quantile 0.0 and 1.0, in the order of its quantiles."""
    buffer, points = fields.buffer, fields.summaries.fields
    times = fields.summaries.times(buffer)
    flags = va.pick(points.varint, points.last(8, VARINT))
    kept = (times != 0) & ((flags & _NO_RECORDED_VALUE) == 0)
    counts = va.stamps(buffer, points, 4).astype(np.float64)
    sums = va.stamps(buffer, points, 5).view(np.float64)
    quantile, value, quantile_point, quantile_start = _quantiles(fields)
    extremes = _first_per_point(quantile_point, quantile == 0.0) | _first_per_point(quantile_point, quantile == 1.0)
    extremes &= kept[quantile_point]
    rows = np.flatnonzero(kept)
    point = np.concatenate([rows, rows, quantile_point[extremes]])
    attribute_bodies, attribute_point = points.repeated(7)
    attributes = va.key_values(buffer, attribute_bodies)
    properties = va.objects_of([(attributes.keys, attributes.values, attribute_point)], points.count)
    count = len(rows)
    statistics = pc.if_else(pa.array(quantile[extremes] == 0.0), "_min", "_max").cast(_TEXT)
    return _Part(
        position=fields.summaries.start[point],
        rank=np.concatenate([np.zeros(count, np.int64), np.ones(count, np.int64), 2 + quantile_start[extremes]]),
        metric=fields.summaries.metric[point],
        time_ns=times[point],
        value=np.concatenate([counts[rows], sums[rows], value[extremes]]),
        suffix=pa.concat_arrays([va.repeat_text("_count", count), va.repeat_text("_sum", count), statistics]),
        has_unit=np.r_[np.zeros(count, bool), np.ones(count + int(extremes.sum()), bool)],
        properties=properties.take(pa.array(point, pa.int64())),
    )


def _quantiles(fields: MetricFields) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every quantile of the Summary points: its quantile and value (0.0 when absent), its point, and
    where its body starts (its order within the point)."""
    bodies, point = fields.summaries.fields.repeated(6)
    found = read_fields(fields.buffer, bodies, _QUANTILE)
    quantile = va.stamps(fields.buffer, found, 1).view(np.float64)
    return quantile, va.stamps(fields.buffer, found, 2).view(np.float64), point, bodies.start


def _first_per_point(point: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which rows are the first of their point (`point` nondecreasing) among those of `mask`."""
    rows = np.flatnonzero(mask)
    first = np.zeros(len(mask), bool)
    first[rows[np.r_[True, point[rows][1:] != point[rows][:-1]]] if len(rows) else rows] = True
    return first
