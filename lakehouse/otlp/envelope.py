"""The stored OTLP block: the CBOR envelope `{dependencies: b"", objects: <Resource* protobuf>}` written to
the object store, with the protobuf bytes encoded the way micromegas's encoder (prost) writes them, so
the same export gives the same bytes, hence the same block id, in both.

prost writes fields in tag order, but a oneof at the position of its *lowest* tag. The protobuf runtime
writes strict tag order. They differ only where a oneof's later variant is set while a field with a tag
in between is present: NumberDataPoint.as_int (6) vs exemplars (5), and Exemplar.as_int (6) vs
span_id (4) / trace_id (5). In such resources those fields are moved into prost's order (`prost_order`).
"""

from __future__ import annotations

import operator

import cbor2
import numpy as np
from google.protobuf.message import Message
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar, ResourceMetrics

from spanlake.lakehouse.errors import OtlpBlockError
from spanlake.lakehouse.otlp.metric_arrays import metric_fields
from spanlake.lakehouse.otlp.value_arrays import tags_of
from spanlake.lakehouse.otlp.wire import FIXED64, LEN, Bodies, Fields, read_fields

_EXEMPLAR = tags_of(Exemplar.DESCRIPTOR)
_EXEMPLARS = operator.attrgetter("exemplars")


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


def serialize_metrics(resource: ResourceMetrics) -> bytes:
    """A ResourceMetrics as prost encodes it: the runtime's bytes, their fields moved into prost's order
    where the orders differ (`prost_order`), which only points with exemplars can need. Whether any has
    some is asked per metric, its points' exemplars read in C (`map`, `any`)."""
    objects = resource.SerializeToString()
    with_exemplars = any(
        any(map(_EXEMPLARS, getattr(metric, kind).data_points))
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if (kind := metric.WhichOneof("data")) in ("gauge", "sum", "histogram", "exponential_histogram")
    )
    return prost_order(objects) if with_exemplars else objects


def prost_order(objects: bytes) -> bytes:
    """A ResourceMetrics serialized by the protobuf runtime (no unknown fields: every route discards them)
    with the fields of its NumberDataPoints and Exemplars in prost's order: `as_int` (6) at the oneof's
    lowest tag, before `exemplars` (5) and before `span_id` / `trace_id` (4, 5). Moving fields within a
    message keeps its length, so the enclosing lengths hold: each byte moves by the moves of the fields
    holding it (its own message's and its ancestors'), summed over a difference array; numpy throughout."""
    fields = metric_fields(objects)
    shift = np.zeros(fields.buffer.size + 1, np.int64)
    numbers = fields.numbers
    _move_fields(shift, numbers.fields, numbers.start, as_int_rank=4)
    sources = ((numbers.fields, 5), (fields.histograms.fields, 8), (fields.exponential_histograms.fields, 11))
    starts = np.concatenate([points.start[points.select(number, LEN)] for points, number in sources])
    ends = np.concatenate([points.end[points.select(number, LEN)] for points, number in sources])
    order = np.argsort(starts, kind="stable")  # bodies in byte order, as `read_fields` takes them
    count = len(order)
    exemplars = read_fields(fields.buffer, Bodies(starts[order], ends[order], np.arange(count), count), _EXEMPLAR)
    _move_fields(shift, exemplars, starts[order], as_int_rank=3)
    if not shift.any():  # already in prost's order
        return objects
    size = fields.buffer.size
    moved = np.empty(size, np.uint8)
    moved[np.arange(size) + np.cumsum(shift[:size])] = fields.buffer.data[:size]
    return moved.tobytes()


def _move_fields(shift: np.ndarray, fields: Fields, body_start: np.ndarray, as_int_rank: int) -> None:
    """Adds to `shift` the moves that put each message's fields in prost's order: by field number, the
    `as_int` (6, fixed64) at `as_int_rank`. Each message is one body (the runtime writes it so)."""
    count = len(fields.number)
    if not count:
        return
    owner = fields.owner
    first = np.r_[True, owner[1:] != owner[:-1]]
    key_start = np.where(first, body_start[owner], np.r_[0, fields.end[:-1]])
    rank = np.where((fields.number == 6) & (fields.wire == FIXED64), as_int_rank, fields.number)
    order = np.lexsort((rank, owner))  # owners keep their places: fields move within their message
    length = (fields.end - key_start)[order]
    before = np.cumsum(length) - length
    group_first = np.flatnonzero(first)[np.cumsum(first) - 1]  # each row's first row of its message
    new_start = np.empty(count, np.int64)
    new_start[order] = body_start[owner[order]] + before - before[group_first]
    delta = new_start - key_start
    np.add.at(shift, key_start, delta)
    np.add.at(shift, fields.end, -delta)
