"""`POST /api/query-stream`: SQL results in micromegas analytics-web-srv's framing.

The request is `{sql, params, begin, end}` (`$name` in the SQL replaced by `params[name]`, quotes
doubled; `begin`/`end` RFC3339, the query range). The response (`application/x-micromegas-arrow-stream`)
is JSON header lines, each followed by Arrow IPC bytes: `{"type":"schema","size":N}` + the schema
message, `{"type":"batch","size":N,"rows":R}` + the record batch message (LZ4-framed bodies, as
micromegas writes them), then `{"type":"done"}`; a failure is `{"type":"error","code":…,"message":…}`.
As in micromegas, a request refused before streaming (bad body, SQL over the limits, admin function,
a denied query) answers one error frame with its HTTP status; a query that fails answers an error
frame in the stream. The query runs as every web query (`queries.WebQueries`): a client that goes
away stops it.

A client that does not read: each answer's kernel send buffer is SEND_BUFFER_BYTES (compressed frames
filled the default, autotuned to megabytes, with about 100 MB of batches each), aiohttp waits for the
transport past 64 KiB, and a write still waiting at the query's time limit ends the answer
(DEADLINE_EXCEEDED in the audit, the connection aborted: no frame can reach a client that does not read).
"""

from __future__ import annotations

import asyncio
import json
import socket

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import failures
from spanlake.lakehouse.query.runner import Query, ResultBatches
from spanlake.server.flightsql.streaming import conform, output_schema
from spanlake.server.http_body import read_body
from spanlake.server.web.api import request_range
from spanlake.server.web.queries import WebQueries, WebQuery, WebQueryError
from spanlake.server.web.time_range import TimeRangeError

CONTENT_TYPE = "application/x-micromegas-arrow-stream"
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
SEND_BUFFER_BYTES = 256 * 1024
END_OF_STREAM_BYTES = 8  # continuation and a zero length
LAST_WRITE_SECONDS = 5
_ERROR_CODES = {400: "INVALID_SQL", 403: "FORBIDDEN", 503: "UNAVAILABLE", 504: "TIMEOUT"}


def frame(kind: str, **fields: object) -> bytes:
    """One header line, serialized as serde_json does (no spaces)."""
    return (json.dumps({"type": kind, **fields}, separators=(",", ":")) + "\n").encode()


def error_frame(code: str, message: str) -> bytes:
    """An error header line (no Arrow bytes follow)."""
    return frame("error", code=code, message=message)


def substitute_macros(sql: str, params: dict[str, str]) -> str:
    """micromegas's macros: each `$key` becomes the value with its single quotes doubled."""
    for key, value in params.items():
        sql = sql.replace(f"${key}", value.replace("'", "''"))
    return sql


class IpcMessages:
    """The schema message, then each batch's messages in a buffer of Arrow's allocator: as Python bytes
    (three copies of each frame), glibc's per-thread heaps kept about 1.7 MB each once 50 unread
    answers had closed (issue 28)."""

    def __init__(self, schema: pa.Schema) -> None:
        """The messages of batches of `schema`."""
        self.schema = schema
        self.schema_bytes = schema.serialize().to_pybytes()

    def batch(self, batch: pa.RecordBatch) -> pa.Buffer:
        """The IPC messages of one batch (the schema message sent apart)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema, options=IPC_OPTIONS) as writer:
            writer.write_batch(batch)
        data = sink.getvalue()
        # Drop the writer's schema message (continuation, length, metadata) and its end-of-stream marker.
        start = 8 + int.from_bytes(data.slice(4, 4).to_pybytes(), "little")
        return data.slice(start, data.size - start - END_OF_STREAM_BYTES)


class QueryStream:
    """The route; its queries run as every web query (`queries.WebQueries`)."""

    def __init__(self, lake: Lake, queries: WebQueries) -> None:
        """Reads the body within the lake's SPANLAKE_REQUEST_BODY_TIMEOUT_S; runs queries with `queries`."""
        self.lake = lake
        self.queries = queries

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Refusals before the query (bad body, limits, admin function, deny list) answer one error
        frame with their status; failures once streaming, an error frame in the stream."""
        body = await read_body(request, self.lake.settings.request_body_timeout_s)
        try:
            sql, query_range = _parse(body)
        except (ValueError, TimeRangeError) as err:
            return _refused(400, "INVALID_SQL", str(err))
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
        try:
            async with self.queries.open(request, "query_stream", sql, query_range) as query:
                await query.run(query.query.session)  # the deny list: refused before streaming
                await response.prepare(request)
                _bound_send_buffer(request)
                await self._send(request, response, query)
        except _Abandoned:
            return response
        except WebQueryError as err:
            if not response.prepared:
                return _refused(err.status, error_code(err.status), err.message)
            await _last_write(request, response, error_frame(error_code(err.status), err.message))
            return response
        await response.write_eof()
        return response

    async def _send(self, request: web.Request, response: web.StreamResponse, query: WebQuery) -> None:
        batches = await query.run(_execute, query.query)
        try:
            messages = IpcMessages(batches.schema)
            await _write(
                request, response, query, frame("schema", size=len(messages.schema_bytes)) + messages.schema_bytes
            )
            while (encoded := await query.run(_next_encoded, batches, messages)) is not None:
                rows, data = encoded
                await _write(request, response, query, frame("batch", size=data.size, rows=rows))
                await _write(request, response, query, memoryview(data))  # sent from Arrow's buffer
        finally:
            batches.close()
        await _write(request, response, query, frame("done"))


def _bound_send_buffer(request: web.Request) -> None:
    """The answer's kernel send buffer limited to SEND_BUFFER_BYTES."""
    transport = request.transport
    connection = transport.get_extra_info("socket") if transport is not None else None
    if connection is not None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


async def _write(request: web.Request, response: web.StreamResponse, query: WebQuery, data: bytes | memoryview) -> None:
    """Writes `data`, waiting for the client at most until the query's time limit; past it the query
    fails DEADLINE_EXCEEDED (audited) and the connection is aborted."""
    try:
        await asyncio.wait_for(response.write(data), timeout=query.query.seconds_left())
    except TimeoutError:
        message = "the client read nothing until the query's time limit (SPANLAKE_QUERY_TIMEOUT_SECONDS)"
        query.query.fail(failures.deadline_exceeded(message, query.query.query_id))
        if request.transport is not None:
            request.transport.abort()
        raise _Abandoned from None


async def _last_write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Writes an error frame, waiting for the client at most LAST_WRITE_SECONDS (the query has ended:
    its time limit may be past), else aborts the connection."""
    try:
        await asyncio.wait_for(response.write(data), timeout=LAST_WRITE_SECONDS)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()


class _Abandoned(Exception):
    """The client did not read the answer in time: nothing more can be written to it."""


def error_code(status: int) -> str:
    """The error frame's code for an HTTP status, as analytics-web-srv names them."""
    return _ERROR_CODES.get(status, "INTERNAL")


class _Decoded:
    """A query's result batches with their dictionaries decoded, and the schema they have."""

    def __init__(self, batches: ResultBatches, schema: pa.Schema) -> None:
        self._batches = batches
        self.schema = output_schema(schema, preserve_dictionary=False)

    def next_batch(self) -> pa.RecordBatch | None:
        batch = self._batches.next_batch()
        return None if batch is None else conform(batch, self.schema)

    def close(self) -> None:
        self._batches.close()


def _execute(query: Query) -> _Decoded:
    """The query's result as decoded batches; a step."""
    df = query.plan()
    return _Decoded(query.execute(df), df.schema())


def _next_encoded(batches: _Decoded, messages: IpcMessages) -> tuple[int, pa.Buffer] | None:
    """The next batch's row count and IPC bytes, or None at the end; a step."""
    batch = batches.next_batch()
    return None if batch is None else (batch.num_rows, messages.batch(batch))


def _parse(body: bytes) -> tuple[str, tuple[int, int] | None]:
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"the body is not JSON: {err}") from None
    if not isinstance(request, dict) or not isinstance(request.get("sql"), str):
        raise ValueError('the body must be a JSON object with a "sql" string')
    params = request.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ValueError('"params" must map names to strings')
    return substitute_macros(request["sql"], params), request_range(request)


def _refused(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=error_frame(code, message).rstrip(b"\n"), content_type="application/json")
