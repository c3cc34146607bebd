"""OTLP/HTTP export requests: content types, gzip bodies (with size and inflation-ratio limits), protobuf or
JSON parsing, status codes and the response and error bodies, as micromegas's `otel-ingestion`
handler answers them (`handler.rs`).

`blocks_from_request` is the entry point of the HTTP service: it parses a request and returns, for each
`Resource*` with records, the rows and payload to store, built by `spanlake.lakehouse.otlp.identity`
(deterministic ids, process row) from `bounds` (time range) and `envelope` (the stored bytes).
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from spanlake.lakehouse.errors import cut, shown
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock, resource_block
from spanlake.server import wire

WIRE_BODY_LIMIT = 20 * 1024 * 1024
DECOMPRESSED_BODY_LIMIT = 300 * 1024 * 1024
MAX_INFLATION_RATIO = 100  # SPANLAKE_MAX_INFLATION_RATIO's default
RATIO_FLOOR = 1024 * 1024  # bodies inflating to less are never refused for their ratio
_INFLATE_CHUNK = 4 * 1024 * 1024
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# OTLP-JSON carries these byte fields as hex, where proto3 JSON would use base64.
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class OtlpRequestError(Exception):
    """A request to refuse: `status` is the HTTP status, `message` is safe to send to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Signal:
    request_type: type[Message]
    response_type: type[Message]
    resources_field: str


def blocks_from_request(
    signal: str,
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    max_inflation_ratio: int = MAX_INFLATION_RATIO,
) -> list[OtlpResourceBlock]:
    """The blocks an OTLP/HTTP export stores, or `OtlpRequestError` (415, 400 or 413)."""
    spec = _signal(signal)
    encoding = request_encoding(content_type)
    if len(body) > WIRE_BODY_LIMIT:
        raise OtlpRequestError(413, f"request body is over {WIRE_BODY_LIMIT} bytes")
    request = _parse(spec, decompress_body(body, content_encoding, max_inflation_ratio), encoding, signal)
    return resource_blocks(signal, request)


def resource_blocks(signal: str, request: Message, extra_hash_input: bytes = b"") -> list[OtlpResourceBlock]:
    """The blocks of a parsed `Export*ServiceRequest`, one per resource with records; `extra_hash_input`
    is folded into the block ids (the webhook's headers). Raises OtlpRequestError (400) for a block the
    native route refuses too."""
    resources = getattr(request, _signal(signal).resources_field)
    blocks = (resource_block(signal, resource, extra_hash_input) for resource in resources)
    return [_storable(block) for block in blocks if block is not None]


def _storable(block: OtlpResourceBlock) -> OtlpResourceBlock:
    """The block, unless its rows hold what the native route refuses too (400): text PostgreSQL cannot
    store (a NUL in service.name...), a time range that ends before it begins."""
    try:
        wire.check_process(block.process)
        wire.check_stream(block.stream)
        wire.check_block_range(block.block)
    except wire.WireError as err:
        raise OtlpRequestError(400, str(err)) from None
    return block


def request_encoding(content_type: str | None) -> str:
    """`PROTOBUF` or `JSON` from a Content-Type header (parameters allowed), else a 415 error."""
    media = _media(content_type)
    if media not in (PROTOBUF, JSON):
        raise OtlpRequestError(415, f"Content-Type must be {PROTOBUF} or {JSON}")
    return media


def response_body(signal: str, content_type: str | None) -> tuple[bytes, str]:
    """The success body, an empty `Export*ServiceResponse` in the request's encoding, and its type."""
    response = _signal(signal).response_type()
    if _media(content_type) == JSON:
        return json_format.MessageToJson(response, indent=None).encode(), JSON
    return response.SerializeToString(), PROTOBUF


def error_body(status: int, message: str, content_type: str | None) -> tuple[bytes, str]:
    """A `google.rpc.Status` body: JSON for JSON requests, protobuf otherwise (as micromegas, even for 415)."""
    code = _GRPC_CODES.get(status, 13 if status >= 500 else 2)  # INTERNAL / UNKNOWN
    if _media(content_type) == JSON:
        return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode(), JSON
    return _Status(code=code, message=message).SerializeToString(), PROTOBUF


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _signal(signal: str) -> _Signal:
    try:
        return _SIGNALS[signal]
    except KeyError:
        raise ValueError(f"unknown OTLP signal {signal!r}: expected one of {sorted(_SIGNALS)}") from None


# --- request body ---------------------------------------------------------------------------------


def decompress_body(body: bytes, content_encoding: str | None, max_ratio: int = MAX_INFLATION_RATIO) -> bytes:
    """The body without its Content-Encoding (identity or gzip); OtlpRequestError (415, 400, 413)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise OtlpRequestError(415, f"unsupported Content-Encoding {content_encoding!r}: expected gzip")
    return gunzip(body, max_ratio)


def gunzip(body: bytes, max_ratio: int = MAX_INFLATION_RATIO, limit: int = DECOMPRESSED_BODY_LIMIT) -> bytes:
    """Inflates every gzip member, a chunk at a time, refusing past `limit` bytes (413) or past
    `max_ratio` times the body's size once over RATIO_FLOOR (400), without inflating more."""
    by_ratio = max(RATIO_FLOOR, len(body) * max_ratio)
    cap = min(limit, by_ratio)
    out: list[bytes] = []
    size = 0
    rest = body
    try:
        while rest:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while not inflater.eof:
                chunk = inflater.decompress(rest, min(_INFLATE_CHUNK, cap - size + 1))
                rest = inflater.unconsumed_tail
                if not chunk and not rest:
                    raise OtlpRequestError(400, "malformed gzip body: truncated stream")
                size += len(chunk)
                if size > cap:
                    raise _inflated_too_far(cap == by_ratio, len(body), max_ratio, limit)
                out.append(chunk)
            rest = inflater.unused_data
    except zlib.error as err:
        raise OtlpRequestError(400, f"malformed gzip body: {err}") from None
    return b"".join(out)


def _inflated_too_far(by_ratio: bool, body_size: int, max_ratio: int, limit: int) -> OtlpRequestError:
    if by_ratio:
        return OtlpRequestError(
            400,
            f"gzip body of {body_size} bytes inflates past {max_ratio} times its size"
            " (SPANLAKE_MAX_INFLATION_RATIO): refused as a decompression bomb",
        )
    return OtlpRequestError(413, f"decompressed body is over {limit} bytes")


def _parse(spec: _Signal, body: bytes, encoding: str, signal: str) -> Message:
    request = spec.request_type()
    try:
        if encoding == PROTOBUF:
            request.ParseFromString(body)
            # prost (micromegas) drops fields it does not know; re-encoding must not carry them either.
            request.DiscardUnknownFields()
        else:
            json_format.ParseDict(json.loads(body, object_hook=_hex_ids_to_base64), request, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as err:
        kind = "protobuf" if encoding == PROTOBUF else "json"
        raise OtlpRequestError(400, f"decoding {signal} ({kind}): {cut(str(err))}") from None
    return request


def _hex_ids_to_base64(obj: dict[str, Any]) -> dict[str, Any]:
    """OTLP-JSON trace/span ids are hex strings; proto3 JSON parsing expects base64 for bytes."""
    for key in _HEX_ID_KEYS.intersection(obj):
        value = obj[key]
        if isinstance(value, str):
            try:
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise ValueError(f"{key} is not a hex string: {shown(value)}") from None
    return obj


_SIGNALS = {
    "logs": _Signal(
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "resource_logs",
    ),
    "metrics": _Signal(
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "resource_metrics",
    ),
    "traces": _Signal(
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "resource_spans",
    ),
}

# --- google.rpc.Status, built in a private pool (googleapis-common-protos is not a dependency) -------
# HTTP status → gRPC code: 400/415 INVALID_ARGUMENT (as micromegas), 413 RESOURCE_EXHAUSTED (as gRPC's
# own size limits), 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED,
# 503 UNAVAILABLE.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 503: 14}


def _status_class() -> type[Message]:
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="spanlake/google_rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_Status = _status_class()
