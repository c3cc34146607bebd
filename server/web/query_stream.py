"""`POST /api/query-stream`: SQL results in micromegas analytics-web-srv's framing.

The request is `{sql, params, begin, end}` (`$name` in the SQL replaced by `params[name]`, quotes
doubled; `begin`/`end` RFC3339, the query range). The response (`application/x-micromegas-arrow-stream`)
is JSON header lines, each followed by Arrow IPC bytes: `{"type":"schema","size":N}` + the schema
message, `{"type":"batch","size":N,"rows":R}` + the record batch message (LZ4-framed bodies, as
micromegas writes them), then `{"type":"done"}`; a failure is `{"type":"error","code":…,"message":…}`.
As in micromegas, a request refused before streaming (admin function, bad body) answers one error
frame with its HTTP status; a query that fails answers an error frame in the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.server.web import queries
from spanlake.server.web.api import request_range
from spanlake.server.web.auth_cookie import is_admin
from spanlake.server.web.time_range import TimeRangeError

CONTENT_TYPE = "application/x-micromegas-arrow-stream"
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def frame(kind: str, **fields: object) -> bytes:
    """One header line, serialized as serde_json does (no spaces)."""
    return (json.dumps({"type": kind, **fields}, separators=(",", ":")) + "\n").encode()


def error_frame(code: str, message: str) -> bytes:
    return frame("error", code=code, message=message)


def substitute_macros(sql: str, params: dict[str, str]) -> str:
    """micromegas's macros: each `$key` becomes the value with its single quotes doubled."""
    for key, value in params.items():
        sql = sql.replace(f"${key}", value.replace("'", "''"))
    return sql


class _Drain:
    """A write-only file that hands out what the IPC writer wrote since the last `take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class IpcMessages:
    """The schema message, then each batch's messages, as separate byte strings."""

    def __init__(self, schema: pa.Schema) -> None:
        self._drain = _Drain()
        self._writer = pa.ipc.new_stream(pa.PythonFile(self._drain, mode="w"), schema, options=IPC_OPTIONS)
        self._schema_pending = True  # the writer writes the schema with the first batch
        self.schema_bytes = schema.serialize().to_pybytes()

    def batch(self, batch: pa.RecordBatch) -> bytes:
        self._writer.write_batch(batch)
        data = self._drain.take()
        if self._schema_pending:  # drop the writer's schema message: continuation, length, metadata
            self._schema_pending = False
            data = data[8 + int.from_bytes(data[4:8], "little") :]
        return data


def _next_encoded(batches: Iterator[pa.RecordBatch], messages: IpcMessages) -> tuple[int, bytes] | None:
    batch = next(batches, None)
    return None if batch is None else (batch.num_rows, messages.batch(batch))


class QueryStream:
    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            sql, query_range = _parse(await request.read())
            queries.refuse_admin_functions(sql, is_admin(request))
        except (ValueError, TimeRangeError) as err:
            return _refused(400, "INVALID_SQL", str(err))
        except queries.WebQueryError as err:
            return _refused(err.status, "FORBIDDEN", err.message)
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            schema, batches = await asyncio.to_thread(queries.stream, self.lake, sql, query_range, is_admin(request))
        except queries.WebQueryError as err:
            await response.write(error_frame("INVALID_SQL" if err.status < 500 else "INTERNAL", err.message))
            return response
        try:
            await self._send(response, schema, batches)
        finally:
            batches.close()
        await response.write_eof()
        return response

    async def _send(self, response: web.StreamResponse, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> None:
        messages = IpcMessages(schema)
        await response.write(frame("schema", size=len(messages.schema_bytes)) + messages.schema_bytes)
        while True:
            try:
                encoded = await asyncio.to_thread(_next_encoded, batches, messages)
            except queries.WebQueryError as err:
                await response.write(error_frame("INTERNAL", err.message))
                return
            if encoded is None:
                break
            rows, data = encoded
            await response.write(frame("batch", size=len(data), rows=rows) + data)
        await response.write(frame("done"))


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
