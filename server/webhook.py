"""`POST /ingestion/webhook`: any webhook producer's request becomes one OTLP log record, as micromegas's
`servers/webhook.rs` and `otel-ingestion` `handler::build_webhook_request` make it.

Three headers describe the resource: `X-Micromegas-Service-Name` → `service.name`,
`X-Micromegas-Service-Namespace` → `service.namespace` (each left out when absent or not visible
ASCII), `X-Micromegas-Target` → the scope name. The body, as text (invalid UTF-8 replaced by U+FFFD),
is the record's body; severity Info, no timestamps (the block takes the arrival time). The whole
header set, canonicalized, goes into the block id, so two deliveries of one body with different
headers are two blocks while a retried delivery is stored once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO

from spanlake import tracing
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock
from spanlake.server import otlp

HEADER_SERVICE_NAME = "X-Micromegas-Service-Name"
HEADER_SERVICE_NAMESPACE = "X-Micromegas-Service-Namespace"
HEADER_TARGET = "X-Micromegas-Target"
# Headers the gzip decompression step consumes (tower-http removes them before micromegas hashes).
_DECOMPRESSION_HEADERS = frozenset({b"content-encoding", b"content-length"})


StoreBlocks = Callable[[web.Request, list[OtlpResourceBlock]], Awaitable[None]]


class WebhookError(ValueError):
    """A webhook request to refuse with 400 (the message is sent as the answer's text)."""


def route(store: StoreBlocks) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The route's handler: 200 with an empty body once stored, else 400/413/415 with the reason as text."""

    @tracing.span_fn(name="ingestion.webhook")
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding")
        try:
            if len(body) > otlp.WIRE_BODY_LIMIT:
                raise otlp.OtlpRequestError(413, f"request body is over {otlp.WIRE_BODY_LIMIT} bytes")
            body = otlp.decompress_body(body, encoding)
            gzipped = (encoding or "identity").strip().lower() != "identity"
            blocks = await asyncio.to_thread(webhook_blocks, request.raw_headers, body, gzipped)
        except otlp.OtlpRequestError as err:
            return _error(err.status, err.message)
        except WebhookError as err:
            return _error(400, str(err))
        await store(request, blocks)
        return web.Response()

    return handle


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain", charset="utf-8")


def webhook_blocks(
    headers: Iterable[tuple[bytes, bytes]], body: bytes, decompressed: bool = False
) -> list[OtlpResourceBlock]:
    """The block one webhook request stores; `headers` as received (raw bytes), `decompressed` when the
    body arrived gzip-encoded."""
    if not body:
        raise WebhookError("empty body")
    pairs = [(name.lower(), value) for name, value in headers]
    if decompressed:
        pairs = [(name, value) for name, value in pairs if name not in _DECOMPRESSION_HEADERS]
    request = webhook_request(pairs, body)
    return otlp.resource_blocks("logs", request, canonical_header_bytes(pairs))


def webhook_request(headers: list[tuple[bytes, bytes]], body: bytes) -> ExportLogsServiceRequest:
    """The synthetic logs export of a webhook request (`headers`: lower-cased names, raw values)."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for header, key in ((HEADER_SERVICE_NAME, "service.name"), (HEADER_SERVICE_NAMESPACE, "service.namespace")):
        value = _header_text(headers, header)
        if value is not None:
            resource_logs.resource.attributes.add(key=key).value.string_value = value
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = _header_text(headers, HEADER_TARGET) or ""
    record = scope_logs.log_records.add(severity_number=SEVERITY_NUMBER_INFO)
    record.body.string_value = body.decode("utf-8", errors="replace")
    return request


def canonical_header_bytes(headers: list[tuple[bytes, bytes]]) -> bytes:
    """name\\0value\\0 for each header, names lower-cased, sorted by (name, value): wire order is free."""
    return b"".join(name + b"\0" + value + b"\0" for name, value in sorted(headers))


def _header_text(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The first value of a header when it is visible ASCII (what the http crate's `to_str` accepts)."""
    wanted = name.lower().encode()
    value = next((v for n, v in headers if n == wanted), None)
    if value is None or not all(32 <= b < 127 or b == 9 for b in value):
        return None
    return value.decode("ascii")
