"""What AWS sends through Firehose, as micromegas's `otel-ingestion` reads it (`cloudwatch_logs.rs`,
`cloudwatch_metrics.rs`, `handler::ingest_firehose_metrics`).

* Metric Streams (OpenTelemetry 1.0.0 output): a record packs one or more length-delimited
  `ExportMetricsServiceRequest` messages. A resource that carries only `aws.exporter.arn` (no
  service, host or process identity) is split into one resource per CloudWatch namespace (the
  `Namespace` attribute of each metric's first point): `service.name` = the namespace (else
  `AWS/Unknown`), `service.instance.id` = the exporter ARN, `service.namespace` emptied.
* CloudWatch Logs subscription filters: a record is gzip JSON `{messageType, owner, logGroup,
  logStream, logEvents: [{id, timestamp (ms), message}]}`; a `DATA_MESSAGE` becomes one resource
  (`service.name` = log group, `service.instance.id` = log stream, `cloud.account.id` = owner, and
  `aws.log.group.name` / `aws.log.stream.name`), one record per event (body = the message,
  attribute `aws.log.event.id`); control messages and messages without events store nothing.

Errors are `FirehoseRecordError`, worded as micromegas words them (`record[i] message[j]: ...`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics, ScopeMetrics

from spanlake.lakehouse.otlp.rust_text import attr_to_string

UNKNOWN_NAMESPACE = "AWS/Unknown"
MAX_DECOMPRESSED_RECORD_BYTES = 64 * 1024 * 1024
MAX_DECOMPRESSED_BATCH_BYTES = 300 * 1024 * 1024
_VARINT_MAX_BYTES = 10


class FirehoseRecordError(ValueError):
    """A record that cannot be read: the whole request answers 400 with this message."""


# --- metric streams --------------------------------------------------------------------------------


def length_delimited_metrics(record: bytes, index: int) -> Iterator[ExportMetricsServiceRequest]:
    """The `[varint length][message]` exports of one record, in order, each rewritten for CloudWatch."""
    offset, ordinal = 0, 0
    while offset < len(record):
        where = f"firehose record[{index}] message[{ordinal}]"
        length, offset = _varint(record, offset, where)
        if length > len(record) - offset:
            raise FirehoseRecordError(f"{where}: {_length_delimited_error('buffer underflow')}")
        request = ExportMetricsServiceRequest()
        try:
            request.ParseFromString(record[offset : offset + length])
        except DecodeError as err:
            raise FirehoseRecordError(f"{where}: {_length_delimited_error(str(err))}") from None
        request.DiscardUnknownFields()
        offset += length
        ordinal += 1
        yield rewrite_cloudwatch_metric_streams(request)


def _length_delimited_error(detail: str) -> str:
    return f"decoding metrics (length-delimited protobuf): failed to decode Protobuf message: {detail}"


def _varint(data: bytes, offset: int, where: str) -> tuple[int, int]:
    value = shift = 0
    for position in range(offset, min(len(data), offset + _VARINT_MAX_BYTES)):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position + 1
        shift += 7
    problem = "invalid varint" if len(data) - offset >= _VARINT_MAX_BYTES else "buffer underflow"
    raise FirehoseRecordError(f"{where}: {_length_delimited_error(problem)}")


def rewrite_cloudwatch_metric_streams(request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest:
    """Each CloudWatch Metric Streams resource split by namespace; other resources unchanged."""
    out = ExportMetricsServiceRequest()
    for resource in request.resource_metrics:
        if is_cloudwatch_metric_stream_resource(resource.resource.attributes):
            out.resource_metrics.extend(_by_namespace(resource))
        else:
            out.resource_metrics.append(resource)
    return out


def is_cloudwatch_metric_stream_resource(attributes: Any) -> bool:
    """An exporter ARN and nothing that identifies a service, host or process."""
    return (
        _normalized(attributes, "aws.exporter.arn") != ""
        and _normalized(attributes, "service.name") == ""
        and _normalized(attributes, "service.namespace") == ""
        and all(_normalized(attributes, key) == "" for key in ("host.id", "host.name", "service.instance.id"))
        and _raw(attributes, "process.pid") == ""
    )


def metric_namespace(metric: Metric) -> str | None:
    """The trimmed `Namespace` attribute of the metric's first data point, if not empty."""
    kind = metric.WhichOneof("data")
    points = getattr(metric, kind).data_points if kind else []
    if not points:
        return None
    value = _raw(points[0].attributes, "Namespace").strip()
    return value or None


def _by_namespace(resource: ResourceMetrics) -> list[ResourceMetrics]:
    # namespace key (lower case, None sorts first as Rust's Option) → (namespace as first seen, scopes)
    buckets: dict[str | None, tuple[str | None, list[ScopeMetrics]]] = {}
    for scope_metrics in resource.scope_metrics:
        per_namespace: dict[str | None, tuple[str | None, list[Metric]]] = {}
        for metric in scope_metrics.metrics:
            namespace = metric_namespace(metric)
            key = namespace.lower() if namespace is not None else None
            per_namespace.setdefault(key, (namespace, []))[1].append(metric)
        for key in _option_order(per_namespace):
            namespace, metrics = per_namespace[key]
            scope = ScopeMetrics(scope=scope_metrics.scope, schema_url=scope_metrics.schema_url, metrics=metrics)
            buckets.setdefault(key, (namespace, []))[1].append(scope)
    arn = _raw(resource.resource.attributes, "aws.exporter.arn")
    rewritten = []
    for key in _option_order(buckets):
        namespace, scopes = buckets[key]
        part = ResourceMetrics(schema_url=resource.schema_url, scope_metrics=scopes)
        part.resource.CopyFrom(resource.resource)
        _set(part.resource.attributes, "service.instance.id", arn)
        _set(part.resource.attributes, "service.name", namespace if namespace is not None else UNKNOWN_NAMESPACE)
        _clear_if_present(part.resource.attributes, "service.namespace")
        rewritten.append(part)
    return rewritten


def _option_order(keys: dict[str | None, Any]) -> list[str | None]:
    """BTreeMap<Option<String>> order: None first, then strings by their UTF-8 bytes."""
    return sorted(keys, key=lambda k: (k is not None, (k or "").encode()))


def _first(attributes: Any, key: str) -> KeyValue | None:
    return next((kv for kv in attributes if kv.key == key), None)


def _raw(attributes: Any, key: str) -> str:
    kv = _first(attributes, key)
    return attr_to_string(kv.value) if kv is not None and kv.HasField("value") else ""


def _normalized(attributes: Any, key: str) -> str:
    return _raw(attributes, key).strip().lower()


def _set(attributes: Any, key: str, value: str) -> None:
    kv = _first(attributes, key) or attributes.add(key=key)
    kv.value.Clear()
    kv.value.string_value = value


def _clear_if_present(attributes: Any, key: str) -> None:
    kv = _first(attributes, key)
    if kv is not None:
        kv.value.Clear()
        kv.value.string_value = ""


# --- logs subscription filters ---------------------------------------------------------------------


class DecompressedBudget:
    """The decompressed bytes of one Firehose batch so far, against the batch cap."""

    def __init__(self) -> None:
        self.total = 0


def cloudwatch_logs_request(record: bytes, index: int, budget: DecompressedBudget) -> ExportLogsServiceRequest | None:
    """The logs export of one subscription-filter record, or None for a control or empty message."""
    message = _record_json(_gunzip_record(record, index, budget), index)
    negative = next((event for event in message["logEvents"] if event["timestamp"] < 0), None)
    if negative is not None:
        raise FirehoseRecordError(
            f"cloudwatch logs record[{index}] logEvent id={negative['id']} has negative timestamp"
            f" {negative['timestamp']}"
        )
    if message["messageType"] == "CONTROL_MESSAGE" or not message["logEvents"]:
        return None
    return _logs_export(message)


def _gunzip_record(record: bytes, index: int, budget: DecompressedBudget) -> bytes:
    where = f"cloudwatch logs record[{index}] gunzip"
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member, as flate2's GzDecoder reads
    try:
        data = inflater.decompress(record, MAX_DECOMPRESSED_RECORD_BYTES + 1)
    except zlib.error as err:
        detail = "invalid gzip header" if "header" in str(err) else "corrupt deflate stream"
        raise FirehoseRecordError(f"{where}: {detail}") from None
    if len(data) > MAX_DECOMPRESSED_RECORD_BYTES:
        raise FirehoseRecordError(f"{where}: decompressed size exceeds {MAX_DECOMPRESSED_RECORD_BYTES} byte cap")
    if not inflater.eof:
        raise FirehoseRecordError(f"{where}: unexpected end of file" if record else f"{where}: invalid gzip header")
    budget.total += len(data)
    if budget.total > MAX_DECOMPRESSED_BATCH_BYTES:
        raise FirehoseRecordError(
            f"{where}: aggregate decompressed size across batch exceeds {MAX_DECOMPRESSED_BATCH_BYTES} byte cap"
        )
    return data


_MESSAGE_FIELDS = {"messageType": str, "owner": str, "logGroup": str, "logStream": str}
_EVENT_FIELDS = {"id": str, "timestamp": int, "message": str}


def _record_json(data: bytes, index: int) -> dict[str, Any]:
    """The subscription-filter message with the fields micromegas reads, type-checked as serde does."""
    where = f"cloudwatch logs record[{index}] json"
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise FirehoseRecordError(f"{where}: {err}") from None
    checked = _fields(message, _MESSAGE_FIELDS, where)
    events = message.get("logEvents", [])
    if not isinstance(events, list):
        raise FirehoseRecordError(f"{where}: logEvents must be an array")
    checked["logEvents"] = [_fields(event, _EVENT_FIELDS, f"{where}: logEvents[{i}]") for i, event in enumerate(events)]
    return checked


def _fields(value: Any, fields: dict[str, type], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FirehoseRecordError(f"{where}: expected an object")
    for name, kind in fields.items():
        if name not in value:
            raise FirehoseRecordError(f"{where}: missing field `{name}`")
        if not isinstance(value[name], kind) or isinstance(value[name], bool):
            raise FirehoseRecordError(f"{where}: field `{name}` must be {'a string' if kind is str else 'an integer'}")
    if "timestamp" in fields and not -(2**63) <= value["timestamp"] < 2**63:
        raise FirehoseRecordError(f"{where}: field `timestamp` is out of range for i64")
    return {name: value[name] for name in fields}


def _logs_export(message: dict[str, Any]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, field in (
        ("service.name", "logGroup"),
        ("service.instance.id", "logStream"),
        ("cloud.account.id", "owner"),
        ("aws.log.group.name", "logGroup"),
        ("aws.log.stream.name", "logStream"),
    ):
        resource_logs.resource.attributes.add(key=key).value.string_value = message[field]
    scope_logs = resource_logs.scope_logs.add()  # no scope, as micromegas (`scope: None`)
    for event in message["logEvents"]:
        record = scope_logs.log_records.add(time_unix_nano=min(event["timestamp"] * 1_000_000, 2**64 - 1))
        record.body.string_value = event["message"]
        record.attributes.add(key="aws.log.event.id").value.string_value = event["id"]
    return request
