"""OTLP metrics blocks read from the protobuf wire format with numpy (`lakehouse/otlp/metric_arrays.py`)
give the `measures` columns the former per-point decoder gave (kept here as the reference, walking
protobuf objects), on a generated corpus of gauges, sums, histograms, exponential histograms and
summaries with attributes of every type, flags, quantiles, empty and unknown fields and a oneof given
twice; malformed or truncated blocks give a clear error, or, where the protobuf runtime still reads them,
the same values. Metrics stored in prost's field order (`envelope.prost_order`, moving fields with numpy)
have the bytes the former field-by-field re-encoding gave."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Exemplar,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    SummaryDataPoint,
)
from test_otlp_span_arrays import _TEXTS, T0, key_values

from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.otlp import decode
from spanlake.lakehouse.otlp.decode import attributes_object
from spanlake.lakehouse.otlp.envelope import serialize_metrics, write_envelope
from spanlake.lakehouse.protobuf_wire import length_delimited
from spanlake.views import jsonb

_NO_RECORDED_VALUE = 1


# --- the reference: the former decoder, one point at a time -----------------------------------------


def _i64(value: int) -> int:
    return struct.unpack("<q", struct.pack("<Q", value))[0]


def _number_extras(metric: Metric, kind: str) -> list[tuple[str, Any]]:
    if kind == "gauge":
        return [("otel.metric.kind", "gauge")]
    return [
        ("otel.metric.aggregation_temporality", int(metric.sum.aggregation_temporality)),
        ("otel.metric.is_monotonic", bool(metric.sum.is_monotonic)),
        ("otel.metric.kind", "sum"),
    ]


def reference_measures(resource: ResourceMetrics) -> dict[str, list]:
    """The former `extract_measures`, as plain columns."""
    rows: dict[str, list] = {name: [] for name in ("time_ns", "value", "target", "name", "unit", "properties")}

    def add(time_ns: int, value: float, target: str, name: str, unit: str, properties: bytes) -> None:
        for column, item in zip(rows, (time_ns, value, target, name, unit, properties), strict=True):
            rows[column].append(item)

    for scope_metrics in resource.scope_metrics:
        target = scope_metrics.scope.name
        for metric in scope_metrics.metrics:
            kind = metric.WhichOneof("data")
            if kind in ("sum", "gauge"):
                extras = _number_extras(metric, kind)
                for point in getattr(metric, kind).data_points:
                    value_kind = point.WhichOneof("value")
                    if _i64(point.time_unix_nano) == 0 or value_kind is None:
                        continue
                    value = point.as_double if value_kind == "as_double" else float(point.as_int)
                    properties = jsonb.encode(attributes_object(point.attributes, extras))
                    add(_i64(point.time_unix_nano), value, target, metric.name, metric.unit, properties)
            elif kind == "summary":
                for point in metric.summary.data_points:
                    time_ns = _i64(point.time_unix_nano)
                    if point.flags & _NO_RECORDED_VALUE or time_ns == 0:
                        continue
                    properties = jsonb.encode(attributes_object(point.attributes, []))
                    statistics = [("_count", "", float(point.count)), ("_sum", metric.unit, point.sum)]
                    seen: set[float] = set()
                    for quantile in point.quantile_values:
                        if quantile.quantile in (0.0, 1.0) and quantile.quantile not in seen:
                            seen.add(quantile.quantile)
                            suffix = "_min" if quantile.quantile == 0.0 else "_max"
                            statistics.append((suffix, metric.unit, quantile.value))
                    for suffix, unit, value in statistics:
                        add(time_ns, value, target, f"{metric.name}{suffix}", unit, properties)
    return rows


def measure_columns(payload: bytes) -> dict[str, list]:
    c = decode.read_measures(payload)
    return {
        "time_ns": c.time_ns.tolist(),
        "value": c.value.tolist(),
        "target": [c.target.values[i] for i in c.target.codes],
        "name": [c.name.values[i] for i in c.name.codes],
        "unit": [c.unit.values[i] for i in c.unit.codes],
        "properties": [c.properties.values[i] for i in c.properties.codes],
    }


def same(found: dict[str, list], expected: dict[str, list]) -> bool:
    """Equal columns, NaN values equal to NaN."""
    values = [struct.pack("<d", v) for v in found["value"]], [struct.pack("<d", v) for v in expected["value"]]
    rest = {k: v for k, v in found.items() if k != "value"}, {k: v for k, v in expected.items() if k != "value"}
    return values[0] == values[1] and rest[0] == rest[1]


# --- a generated corpus ----------------------------------------------------------------------------

_DOUBLES = [0.0, -0.0, 1.5, -2.25e300, float("nan"), float("inf"), 1.0, 5e-324]


def _stamp(rng: random.Random, i: int) -> int:
    return rng.choice([T0 + i, T0 + i, T0 + i, 0, 2**64 - 5])


def _exemplars(rng: random.Random) -> list[Exemplar]:
    found = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        exemplar = Exemplar(time_unix_nano=T0, span_id=rng.choice([b"", rng.randbytes(8)]))
        exemplar.trace_id = rng.choice([b"", rng.randbytes(16)])
        if rng.random() < 0.5:
            exemplar.as_int = rng.choice([0, -3, 2**62])
        else:
            exemplar.as_double = rng.choice(_DOUBLES)
        exemplar.filtered_attributes.extend(key_values(rng))
        found.append(exemplar)
    return found


def _number_point(rng: random.Random, i: int) -> NumberDataPoint:
    point = NumberDataPoint(time_unix_nano=_stamp(rng, i), start_time_unix_nano=rng.choice([0, T0]))
    choice = rng.choice(["double", "int", "none"])
    if choice == "double":
        point.as_double = rng.choice(_DOUBLES)
    elif choice == "int":
        point.as_int = rng.choice([0, 1, -1, 2**53 + 1, -(2**63), 2**63 - 1])
    point.flags = rng.choice([0, 0, 1])
    point.attributes.extend(key_values(rng))
    point.exemplars.extend(_exemplars(rng))
    return point


def _summary_point(rng: random.Random, i: int) -> SummaryDataPoint:
    point = SummaryDataPoint(time_unix_nano=_stamp(rng, i), count=rng.choice([0, 7, 2**64 - 1, 2**53 + 1]))
    point.sum = rng.choice(_DOUBLES)
    point.flags = rng.choice([0, 0, 0, 1, 3])
    point.attributes.extend(key_values(rng))
    for _ in range(rng.randrange(5)):
        quantile = point.quantile_values.add(quantile=rng.choice([0.0, -0.0, 0.5, 1.0, 0.99, float("nan")]))
        quantile.value = rng.choice(_DOUBLES)
    return point


def random_metric(rng: random.Random, i: int) -> Metric:
    metric = Metric(name=rng.choice(_TEXTS), unit=rng.choice(["", "By", "ms", "日本"]), description=rng.choice(_TEXTS))
    if rng.random() < 0.2:
        metric.metadata.extend(key_values(rng))
    kind = rng.choice(["gauge", "sum", "sum", "histogram", "exponential_histogram", "summary", None])
    points = range(rng.randrange(6))
    if kind == "gauge":
        metric.gauge.data_points.extend(_number_point(rng, i + p) for p in points)
    elif kind == "sum":
        metric.sum.aggregation_temporality = rng.choice([0, 1, 2, 7, -1])
        metric.sum.is_monotonic = rng.random() < 0.5
        metric.sum.data_points.extend(_number_point(rng, i + p) for p in points)
    elif kind == "summary":
        metric.summary.data_points.extend(_summary_point(rng, i + p) for p in points)
    elif kind == "histogram":
        metric.histogram.aggregation_temporality = 2
        for p in points:
            point = metric.histogram.data_points.add(time_unix_nano=_stamp(rng, i + p), count=3, sum=1.5)
            point.bucket_counts.extend([1, 2])
            point.explicit_bounds.append(0.5)
            point.attributes.extend(key_values(rng))
            point.exemplars.extend(_exemplars(rng))
    elif kind == "exponential_histogram":
        for p in points:
            point = metric.exponential_histogram.data_points.add(time_unix_nano=_stamp(rng, i + p), scale=-2)
            point.positive.bucket_counts.extend([3, 4])
            point.attributes.extend(key_values(rng))
    return metric


def random_metrics(seed: int, metrics: int = 8) -> ResourceMetrics:
    """A resource of up to 3 scopes of up to `metrics` - 1 random metrics each."""
    rng = random.Random(seed)
    resource = ResourceMetrics(schema_url=rng.choice(["", "https://resource"]))
    resource.resource.attributes.extend(key_values(rng))
    for s in range(rng.randrange(4)):
        scope_metrics = resource.scope_metrics.add(schema_url=rng.choice(["", "https://schemas/1.21"]))
        if rng.random() < 0.8:
            scope_metrics.scope.name = rng.choice(["", "meter", "日本"])
            scope_metrics.scope.version = rng.choice(["", "1.2"])
            scope_metrics.scope.attributes.extend(key_values(rng))
        scope_metrics.metrics.extend(random_metric(rng, 1000 * s + 10 * m) for m in range(rng.randrange(metrics)))
    return resource


def reference_or_none(objects: bytes) -> dict[str, list] | None:
    try:
        return reference_measures(ResourceMetrics.FromString(objects))
    except DecodeError:
        return None


# --- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,metrics", [(seed, 8) for seed in range(60)] + [(seed, 200) for seed in range(3)])
def test_columns_equal_the_former_decoders_on_a_varied_corpus(seed: int, metrics: int) -> None:
    resource = random_metrics(seed, metrics)
    assert same(measure_columns(write_envelope(resource.SerializeToString())), reference_measures(resource))


def test_corpus_covers_every_kind_and_value_type() -> None:
    kinds: set[str | None] = set()
    names: set[str] = set()
    values: set[str] = set()
    for seed in range(60):
        resource = random_metrics(seed)
        kinds.update(m.WhichOneof("data") for s in resource.scope_metrics for m in s.metrics)
        columns = measure_columns(write_envelope(resource.SerializeToString()))
        names.update(name[-4:] for name in columns["name"])
        for properties in columns["properties"]:
            values.update(type(v).__name__ for v in jsonb.decode(properties).values())
    assert kinds == {"gauge", "sum", "histogram", "exponential_histogram", "summary", None}
    assert {"_min", "_max", "_sum", "ount"} <= names
    assert values >= {"str", "bool", "int", "float", "list", "dict", "NoneType"}


def _scope_of(*metrics: bytes) -> bytes:
    """A ResourceMetrics of one ScopeMetrics holding these metric bodies."""
    return length_delimited(2, b"".join(length_delimited(2, metric) for metric in metrics))


def test_a_oneof_given_again_after_another_kind_starts_afresh() -> None:
    """gauge, sum, gauge: the metric is a gauge of the last gauge's points only (protobuf clears the
    oneof's message when its case changes); a kind given twice in a row is merged."""
    gauge = Metric(name="g")
    gauge.gauge.data_points.add(time_unix_nano=T0, as_double=1.0)
    total = Metric(name="s")
    total.sum.data_points.add(time_unix_nano=T0 + 1, as_int=2)
    later = Metric()
    later.gauge.data_points.add(time_unix_nano=T0 + 2, as_double=3.0)
    objects = _scope_of(
        gauge.SerializeToString() + total.SerializeToString() + later.SerializeToString(),
        later.SerializeToString() + later.SerializeToString(),
    )
    columns = measure_columns(write_envelope(objects))
    assert columns["value"] == [3.0, 3.0, 3.0] and columns["name"] == ["s", "", ""]
    assert same(columns, reference_or_none(objects))


# Fields the schema does not know: field 127 varint, field 100 LEN, field 6 fixed32 (and 0x12 inside).
_UNKNOWN = b"\xf8\x07\x2a" + b"\xa2\x06\x03\x12\x01\x0a" + b"\x35\x12\x02\x0a\x04"


@pytest.mark.parametrize("points", [3, 40])
def test_unknown_fields_are_skipped(points: int) -> None:
    metric = Metric(name="m", unit="s")
    metric.sum.is_monotonic = True
    for i in range(points):
        point = metric.sum.data_points.add(time_unix_nano=T0 + i, as_double=i / 2)
        for k in range(20):  # past the stepped fields of a point too
            point.attributes.add(key=f"k{k}").value.int_value = i
    summary = Metric(name="q")
    summary.summary.data_points.add(time_unix_nano=T0, count=2, sum=3.0).quantile_values.add(quantile=1.0, value=9)
    body = b"".join(length_delimited(2, m.SerializeToString() + _UNKNOWN) + _UNKNOWN for m in (metric, summary, metric))
    objects = _UNKNOWN + length_delimited(2, body + _UNKNOWN)
    expected = reference_or_none(objects)
    assert expected is not None and len(expected["value"]) == 2 * points + 3
    assert same(measure_columns(write_envelope(objects)), expected)


@pytest.mark.parametrize("seed", range(8))
def test_truncated_or_corrupted_blocks_error_clearly_or_read_as_protobuf_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    objects = random_metrics(700 + seed, 8 if seed % 2 else 40).SerializeToString()
    failures = 0
    for _ in range(40):
        damaged = bytearray(objects[: rng.randrange(len(objects) + 1)])
        if damaged and rng.random() < 0.5:
            damaged[rng.randrange(len(damaged))] = rng.choice([0x00, 0x0A, 0x12, 0x80, 0xFF, rng.randrange(256)])
        expected = reference_or_none(bytes(damaged))
        if expected is None:
            failures += 1
            with pytest.raises(OtlpBlockError, match="not a ResourceMetrics"):
                measure_columns(write_envelope(bytes(damaged)))
        else:
            assert same(measure_columns(write_envelope(bytes(damaged))), expected)
    assert failures > 0


def test_an_empty_block_has_no_rows() -> None:
    columns = measure_columns(write_envelope(b""))
    assert columns == {name: [] for name in ("time_ns", "value", "target", "name", "unit", "properties")}


_PROST_PATH = frozenset(
    f"opentelemetry.proto.metrics.v1.{name}"
    for name in (
        "ResourceMetrics",
        "ScopeMetrics",
        "Metric",
        "Gauge",
        "Sum",
        "Histogram",
        "ExponentialHistogram",
        "NumberDataPoint",
        "HistogramDataPoint",
        "ExponentialHistogramDataPoint",
        "Exemplar",
    )
)


def prost_encoding(message: Any) -> bytes:
    """The former re-encoding, field by field: `message` as prost encodes it (fields by tag, a oneof at
    its lowest tag)."""

    def rank(item: tuple[Any, Any]) -> int:
        oneof = item[0].containing_oneof
        return min(f.number for f in oneof.fields) if oneof is not None else item[0].number

    def encoded(field: Any, value: Any) -> bytes:
        if field.message_type is not None and field.message_type.full_name in _PROST_PATH:
            items = value if field.label == field.LABEL_REPEATED else [value]
            return b"".join(length_delimited(field.number, prost_encoding(item)) for item in items)
        alone = type(message)()
        if field.label == field.LABEL_REPEATED:
            getattr(alone, field.name).extend(value)
        elif field.message_type is not None:
            getattr(alone, field.name).CopyFrom(value)
        else:
            setattr(alone, field.name, value)
        return alone.SerializeToString()

    return b"".join(encoded(field, value) for field, value in sorted(message.ListFields(), key=rank))


def _reference_reorders(point: Any) -> bool:
    """The former per-point check: where prost's field order differs from the runtime's."""
    if not point.exemplars:
        return False
    if point.DESCRIPTOR.name == "NumberDataPoint" and point.WhichOneof("value") == "as_int":
        return True
    return any(e.WhichOneof("value") == "as_int" and (e.span_id or e.trace_id) for e in point.exemplars)


@pytest.mark.parametrize("seed", range(40))
def test_stored_bytes_equal_the_former_per_point_choice_of_encoding(seed: int) -> None:
    resource = random_metrics(seed)
    reorders = any(
        _reference_reorders(point)
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if (kind := metric.WhichOneof("data")) in ("gauge", "sum", "histogram", "exponential_histogram")
        for point in getattr(metric, kind).data_points
    )
    expected = prost_encoding(resource) if reorders else resource.SerializeToString()
    assert serialize_metrics(resource) == expected


def test_the_corpus_has_resources_prost_reorders_and_resources_it_does_not() -> None:
    stored = [serialize_metrics(random_metrics(seed)) for seed in range(40)]
    as_runtime = [random_metrics(seed).SerializeToString() for seed in range(40)]
    assert 5 < sum(a != b for a, b in zip(stored, as_runtime, strict=True)) < 35


def _histogram_point(body: bytes, exponential: bool = False) -> bytes:
    """A ResourceMetrics of one (exponential) histogram metric of one point of this body."""
    data = length_delimited(1, body)  # (Exponential)Histogram.data_points
    return _scope_of(length_delimited(10 if exponential else 9, data))


@pytest.mark.parametrize(
    "objects",
    [
        b"\x80\x80\x80\x80\x10\x01",  # field number 2^29: past protobuf's largest
        _histogram_point(length_delimited(6, b"\x01\x02\x03")),  # packed fixed64 bucket counts of 3 bytes
        _histogram_point(length_delimited(7, bytes(12))),  # packed doubles of 12 bytes
        _histogram_point(length_delimited(8, length_delimited(2, b"\x81")), exponential=True),  # a cut varint
        _histogram_point(length_delimited(8, length_delimited(2, b"\xff" * 10 + b"\x01")), exponential=True),
    ],
)
def test_blocks_protobuf_refuses_are_refused(objects: bytes) -> None:
    """Malformed where no column reads (a field number, packed histogram buckets): refused as protobuf does."""
    assert reference_or_none(objects) is None
    with pytest.raises(OtlpBlockError, match="not a ResourceMetrics"):
        measure_columns(write_envelope(objects))


def test_whole_packed_buckets_are_read() -> None:
    objects = _histogram_point(length_delimited(8, length_delimited(2, b"\x81\x01\x05")), exponential=True)
    assert reference_or_none(objects) == measure_columns(write_envelope(objects))  # no rows, no error
