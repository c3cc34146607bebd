"""The stored OTLP block: the CBOR envelope `{dependencies: b"", objects: <Resource* protobuf>}` written to
the object store, with the protobuf bytes encoded the way micromegas's encoder (prost) writes them, so
the same export gives the same bytes, hence the same block id, in both.

prost writes fields in tag order, but a oneof at the position of its *lowest* tag. The protobuf runtime
writes strict tag order. They differ only where a oneof's later variant is set while a field with a tag
in between is present: NumberDataPoint.as_int (6) vs exemplars (5), and Exemplar.as_int (6) vs
span_id (4) / trace_id (5). Such resources are re-encoded field by field.
"""

from __future__ import annotations

from typing import Any

import cbor2
from google.protobuf.message import Message
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.otlp.metric_arrays import MetricFields, metric_fields, reordered_by_prost
from spanlake.lakehouse.protobuf_wire import length_delimited

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


def write_envelope(objects: bytes) -> bytes:
    """The stored payload of a block whose objects are `objects` (a Resource* protobuf)."""
    return cbor2.dumps({"dependencies": b"", "objects": objects})


def read_envelope(payload: bytes) -> bytes:
    """The objects bytes (a Resource* protobuf) of a stored payload, else `OtlpBlockError`."""
    try:
        envelope = cbor2.loads(payload)
    except Exception as err:  # cbor2 raises several types for malformed input
        raise OtlpBlockError(f"OTLP block envelope is not CBOR: {err}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("objects"), bytes):
        raise OtlpBlockError("OTLP block envelope must be a map with an 'objects' byte string")
    return envelope["objects"]


def serialize(resource: Message) -> bytes:
    """A ResourceLogs / ResourceSpans as prost encodes it (there, the same as the protobuf runtime)."""
    return resource.SerializeToString()


def serialize_metrics(resource: ResourceMetrics) -> tuple[bytes, MetricFields]:
    """A ResourceMetrics as prost encodes it (re-encoded field by field only where the orders differ,
    which its wire fields tell: `metric_arrays.reordered_by_prost`), and those fields."""
    objects = resource.SerializeToString()
    fields = metric_fields(objects)
    return (prost_encoding(resource) if reordered_by_prost(fields) else objects), fields


def prost_encoding(message: Message) -> bytes:
    """`message` as prost encodes it (fields by tag, a oneof at its lowest tag), for the metrics types."""
    return b"".join(
        _prost_field(message, field, value) for field, value in sorted(message.ListFields(), key=_prost_rank)
    )


def _prost_rank(item: tuple[Any, Any]) -> int:
    field = item[0]
    oneof = field.containing_oneof
    return min(f.number for f in oneof.fields) if oneof is not None else field.number


def _prost_field(message: Message, field: Any, value: Any) -> bytes:
    if field.message_type is not None and field.message_type.full_name in _PROST_PATH:
        items = value if field.label == field.LABEL_REPEATED else [value]
        return b"".join(length_delimited(field.number, body) for body in map(prost_encoding, items))
    alone = type(message)()
    if field.label == field.LABEL_REPEATED:
        getattr(alone, field.name).extend(value)
    elif field.message_type is not None:
        getattr(alone, field.name).CopyFrom(value)
    else:
        setattr(alone, field.name, value)
    return alone.SerializeToString()
