"""The Kinesis Data Firehose HTTP endpoint delivery routes, as micromegas's `servers/firehose*.rs` serve
them: `POST /ingestion/otlp/v1/metrics/firehose` (CloudWatch Metric Streams) and
`POST /ingestion/cloudwatch/v1/logs/firehose` (CloudWatch Logs subscription filters).

The request is Firehose's JSON envelope `{requestId, timestamp, records: [{data: <base64>}]}`
(optionally gzip Content-Encoding); the answer is always JSON `{requestId, timestamp[, errorMessage]}`
with the request id of the `X-Amz-Firehose-Request-Id` header, else the envelope's, else "".
Firehose cannot send `Authorization`: with API keys configured, its `X-Amz-Firehose-Access-Key`
header is checked as a bearer key (401 when missing or wrong); without any key the routes are open.
A bad envelope or record answers 400 with micromegas's `parse error (<signal>): ...` message; the
records before a bad one are stored, as micromegas writes each one before reading the next.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from spanlake import tracing
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock
from spanlake.server import cloudwatch, otlp
from spanlake.server.auth import INGESTION, Authenticator, AuthError

log = logging.getLogger(__name__)

METRICS_PATH = "/ingestion/otlp/v1/metrics/firehose"
LOGS_PATH = "/ingestion/cloudwatch/v1/logs/firehose"
PATHS = (METRICS_PATH, LOGS_PATH)
HEADER_ACCESS_KEY = "X-Amz-Firehose-Access-Key"
HEADER_REQUEST_ID = "X-Amz-Firehose-Request-Id"
_BASE64_SYMBOLS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*")

StoreBlocks = Callable[[web.Request, list[OtlpResourceBlock]], Awaitable[None]]


class FirehoseError(ValueError):
    """A request to refuse with `status`; `message` is the answer's errorMessage."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Envelope:
    """A decoded Firehose request: its request id and the base64-decoded records."""

    request_id: str
    records: list[bytes]


def add_routes(app: web.Application, store: StoreBlocks, authenticator: Authenticator | None) -> None:
    """Registers both Firehose routes (they authenticate themselves: keep them out of bearer auth)."""
    app.router.add_post(METRICS_PATH, _route("metrics", _metrics_blocks, store, authenticator))
    app.router.add_post(LOGS_PATH, _route("logs", _logs_blocks, store, authenticator))


def response(status: int, request_id: str, error_message: str | None = None) -> web.Response:
    """Firehose's ack (200) or error answer."""
    body: dict[str, Any] = {"requestId": request_id, "timestamp": time.time_ns() // 1_000_000}
    if error_message is not None:
        body["errorMessage"] = error_message
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


# Each decoder turns the records into the blocks of each message, in order, raising at the first bad one.
Decoder = Callable[[list[bytes]], Iterator[list[OtlpResourceBlock]]]


def _route(
    signal: str, decode: Decoder, store: StoreBlocks, authenticator: Authenticator | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    @tracing.span_fn(name=f"ingestion.firehose_{signal}")
    async def handle(request: web.Request) -> web.Response:
        request_id = request.headers.get(HEADER_REQUEST_ID, "")
        if authenticator is not None:
            refused = await _refused(request, authenticator, request_id)
            if refused is not None:
                return refused
        try:
            envelope = await asyncio.to_thread(_envelope, await request.read(), request, signal)
        except FirehoseError as err:
            log.info("rejected Firehose %s request %r: %s", signal, request_id, err.message)
            return response(err.status, request_id, err.message)
        request_id = request_id or envelope.request_id
        blocks, error = await asyncio.to_thread(_decoded, decode, envelope.records)
        await store(request, blocks)
        if error is not None:
            log.info("rejected Firehose %s request %r: %s", signal, request_id, error)
            return response(400, request_id, f"parse error ({signal}): {error}")
        return response(200, request_id)

    return handle


async def _refused(request: web.Request, authenticator: Authenticator, request_id: str) -> web.Response | None:
    key = request.headers.get(HEADER_ACCESS_KEY)
    # The authenticator decides whether a key is needed at all: open while no key exists, like
    # every other ingestion route (micromegas: open when its ingestion runs without keys).
    try:
        header = None if key is None else f"Bearer {key}"
        request["principal"] = await asyncio.to_thread(authenticator.authenticate, header, INGESTION, request.remote)
    except AuthError:
        return response(401, request_id, f"missing {HEADER_ACCESS_KEY}" if key is None else "invalid access key")
    return None


def _decoded(decode: Decoder, records: list[bytes]) -> tuple[list[OtlpResourceBlock], str | None]:
    """The blocks of every message before the first bad one, and that one's error (None: all good)."""
    blocks: list[OtlpResourceBlock] = []
    try:
        for message_blocks in decode(records):
            blocks.extend(message_blocks)
    except cloudwatch.FirehoseRecordError as err:
        return blocks, str(err)
    return blocks, None


def _metrics_blocks(records: list[bytes]) -> Iterator[list[OtlpResourceBlock]]:
    for index, record in enumerate(records):
        for export in cloudwatch.length_delimited_metrics(record, index):
            yield otlp.resource_blocks("metrics", export)


def _logs_blocks(records: list[bytes]) -> Iterator[list[OtlpResourceBlock]]:
    budget = cloudwatch.DecompressedBudget()
    for index, record in enumerate(records):
        export = cloudwatch.cloudwatch_logs_request(record, index, budget)
        if export is not None:
            yield otlp.resource_blocks("logs", export)


# --- the envelope ----------------------------------------------------------------------------------


def _envelope(body: bytes, request: web.Request, signal: str) -> Envelope:
    if len(body) > otlp.WIRE_BODY_LIMIT:
        raise FirehoseError(413, f"request body is over {otlp.WIRE_BODY_LIMIT} bytes")
    try:
        body = otlp.decompress_body(body, request.headers.get("Content-Encoding"))
    except otlp.OtlpRequestError as err:
        raise FirehoseError(err.status, f"parse error ({signal}): {err.message}") from None
    try:
        return decode_envelope(body)
    except ValueError as err:
        raise FirehoseError(400, f"parse error ({signal}): {err}") from None


def decode_envelope(body: bytes) -> Envelope:
    """The request id and decoded records of a Firehose body; ValueError worded as micromegas's."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"firehose envelope json: {err}") from None
    if not isinstance(parsed, dict):
        raise ValueError("firehose envelope json: expected an object")
    request_id = parsed.get("requestId")
    if request_id is not None and not isinstance(request_id, str):
        raise ValueError("firehose envelope json: requestId must be a string")
    records = parsed.get("records", [])
    if not isinstance(records, list):
        raise ValueError("firehose envelope json: records must be an array")
    return Envelope(request_id or "", [_record_data(record, i) for i, record in enumerate(records)])


def _record_data(record: Any, index: int) -> bytes:
    if not isinstance(record, dict) or "data" not in record:
        raise ValueError(f"firehose envelope json: records[{index}]: missing field `data`")
    if not isinstance(record["data"], str):
        raise ValueError(f"firehose envelope json: records[{index}]: data must be a string")
    try:
        return strict_base64(record["data"].encode("utf-8", errors="surrogatepass"))
    except ValueError as err:
        raise ValueError(f"firehose record[{index}] base64: {err}") from None


def strict_base64(text: bytes) -> bytes:
    """Standard padded base64, refused in the base64 crate's words (invalid symbol, length, padding,
    non-canonical last symbol)."""
    symbols = _BASE64_ALPHABET.match(text).end()  # type: ignore[union-attr]  # `*` always matches
    padding = len(text) - symbols
    if text[symbols:].strip(b"="):  # something after the symbols that is not only padding
        raise ValueError(f"Invalid symbol {text[symbols]}, offset {symbols}.")
    if symbols % 4 == 1:
        raise ValueError(f"Invalid input length: {symbols}")
    if (symbols + padding) % 4 or padding > 2 or (padding and symbols % 4 == 0):
        raise ValueError("Invalid padding")
    unused_bits = {2: 0b1111, 3: 0b11}.get(symbols % 4, 0)
    if unused_bits and _BASE64_SYMBOLS.index(text[symbols - 1]) & unused_bits:
        raise ValueError(f"Invalid last symbol {text[symbols - 1]}, offset {symbols - 1}.")
    return binascii.a2b_base64(text, strict_mode=True)
