"""Request bodies read within a time limit, for every HTTP route that reads one (ingestion, the web
UI's `/api/sql` and `/api/query-stream`): a client sending too slowly (or stopping) gets 408 and its
connection closed, instead of holding the connection and its buffers forever."""

from __future__ import annotations

import asyncio

from aiohttp import web


class BodyTimeout(Exception):
    """The client did not send its request body in time."""


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The request body, or `BodyTimeout` when the client takes longer than `timeout` seconds
    (SPANLAKE_REQUEST_BODY_TIMEOUT_S) to send it; 413 at once when the declared length is over the
    app's limit."""
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, declared)
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout:g} s") from None


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Sends `response`, then closes the connection at once: aiohttp would otherwise linger up to 10 s
    reading the rest of a body the client is sending too slowly."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response
