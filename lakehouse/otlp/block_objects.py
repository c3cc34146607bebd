"""Stored OTLP blocks as `parse_block` shows them, after micromegas's `otel/block_decoders.rs`: one
object per leaf record (log record, span, metric data point), in payload order.

An object's value is the leaf's OTLP/JSON (camelCase fields, ids in hex) with micromegas's envelope on
top: `__type`, `__attributes` (the leaf's), `__resource`, `__scope` (its `otel.scope.*` properties)
and, for data points, `__metric` (the metric's name, unit, description and kind-specific fields).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from spanlake.lakehouse.otlp.decode import attributes_object, read_resource, scope_extras
from spanlake.views.jsonb import JsonValue
from spanlake.views.meta import OTLP_LOGS_FORMAT, OTLP_METRICS_FORMAT, OTLP_TRACES_FORMAT

BlockObject = tuple[str, dict[str, JsonValue]]

# OTLP/JSON writes these ids in hex where protobuf's JSON mapping would write base64.
_HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")

# Metric data kind → the type name of its data points.
_POINT_TYPES = {
    "sum": "otlp.NumberDataPoint",
    "gauge": "otlp.NumberDataPoint",
    "histogram": "otlp.HistogramDataPoint",
    "exponential_histogram": "otlp.ExponentialHistogramDataPoint",
    "summary": "otlp.SummaryDataPoint",
}


def otlp_block_objects(stream_format: str, payload: bytes) -> list[BlockObject]:
    """(type name, value) of each leaf of a stored OTLP block (OtlpBlockError if it cannot be read)."""
    message_type, leaves = _READERS[stream_format]
    return list(leaves(read_resource(payload, message_type)))


def is_otlp_format(stream_format: str) -> bool:
    """True for the stream formats `otlp_block_objects` reads."""
    return stream_format in _READERS


def _leaf(type_name: str, leaf: Any, resource: JsonValue, scope: JsonValue) -> dict[str, JsonValue]:
    value: dict[str, JsonValue] = MessageToDict(leaf, always_print_fields_with_no_presence=True)
    for field in _HEX_ID_FIELDS:
        if field in value:
            value[field] = getattr(leaf, _snake(field)).hex()
    value.update(
        __type=type_name, __attributes=attributes_object(leaf.attributes, []), __resource=resource, __scope=scope
    )
    return value


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _resource_and_scopes(resource: Any, scopes: Any) -> Iterator[tuple[JsonValue, JsonValue, Any]]:
    resource_json = attributes_object(resource.resource.attributes, [])
    for scoped in scopes:
        yield resource_json, dict(scope_extras(scoped.scope, scoped.schema_url)), scoped


def _log_objects(resource: ResourceLogs) -> Iterator[BlockObject]:
    for resource_json, scope_json, scoped in _resource_and_scopes(resource, resource.scope_logs):
        for record in scoped.log_records:
            yield "otlp.LogRecord", _leaf("otlp.LogRecord", record, resource_json, scope_json)


def _span_objects(resource: ResourceSpans) -> Iterator[BlockObject]:
    for resource_json, scope_json, scoped in _resource_and_scopes(resource, resource.scope_spans):
        for span in scoped.spans:
            yield "otlp.Span", _leaf("otlp.Span", span, resource_json, scope_json)


def _metric_objects(resource: ResourceMetrics) -> Iterator[BlockObject]:
    for resource_json, scope_json, scoped in _resource_and_scopes(resource, resource.scope_metrics):
        for metric in scoped.metrics:
            kind = metric.WhichOneof("data")
            if kind is None:  # micromegas: no row, no ordinal
                continue
            type_name = _POINT_TYPES[kind]
            extras = _metric_extras(metric, kind)
            for point in getattr(metric, kind).data_points:
                value = _leaf(type_name, point, resource_json, scope_json)
                value["__metric"] = extras
                yield type_name, value


def _metric_extras(metric: Any, kind: str) -> dict[str, JsonValue]:
    extras: dict[str, JsonValue] = {"name": metric.name, "unit": metric.unit, "description": metric.description}
    if metric.metadata:
        extras["otel.metric.metadata"] = attributes_object(metric.metadata, [])
    extras["otel.metric.kind"] = kind
    data = getattr(metric, kind)
    if kind in ("sum", "histogram", "exponential_histogram"):
        extras["otel.metric.aggregation_temporality"] = int(data.aggregation_temporality)
    if kind == "sum":
        extras["otel.metric.is_monotonic"] = data.is_monotonic
    return extras


_READERS: dict[str, tuple[type, Callable[[Any], Iterator[BlockObject]]]] = {
    OTLP_LOGS_FORMAT: (ResourceLogs, _log_objects),
    OTLP_METRICS_FORMAT: (ResourceMetrics, _metric_objects),
    OTLP_TRACES_FORMAT: (ResourceSpans, _span_objects),
}
