"""Request bodies read within a time limit, for every HTTP route that reads one (ingestion, the web
UI's `/api/sql` and `/api/query-stream`): a client sending too slowly (or stopping) gets 408 and its
connection closed, instead of holding the connection and its buffers forever."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

_Body = TypeVar("_Body", bytes, bytearray)


class BodyTimeout(Exception):
    """The client did not send its request body in time."""


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The request body, or `BodyTimeout` when the client takes longer than `timeout` seconds
    (SPANLAKE_REQUEST_BODY_TIMEOUT_S) to send it; 413 at once when the declared length is over the
    app's limit."""
    _refuse_declared_over_limit(request)
    return await _within(request.read(), timeout)


async def read_body_buffer(request: web.Request, timeout: float) -> bytes | bytearray:
    """As `read_body`, but a body of declared length is read into one buffer of that length as it
    arrives: no joining of chunks, no copy of the whole (a 4 MiB block is copied once, not three times).
    Short when the client ends the body early."""
    declared = _refuse_declared_over_limit(request)
    if declared is None:
        return await _within(request.read(), timeout)
    return await _within(_read_into_buffer(request.content, declared), timeout)


def _refuse_declared_over_limit(request: web.Request) -> int | None:
    """The declared body length; 413 when it is over the app's limit."""
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, declared)
    return declared


async def _within(reading: Awaitable[_Body], timeout: float) -> _Body:
    try:
        return await asyncio.wait_for(reading, timeout)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout:g} s") from None


async def _read_into_buffer(content: web.StreamReader, length: int) -> bytearray:
    """The `length` bytes of a body (aiohttp's parser passes no more than the declared length)."""
    buffer = bytearray(length)
    filled = 0
    with memoryview(buffer) as view:
        while filled < length:
            chunk = await content.readany()
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
    del buffer[filled:]
    return buffer


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Sends `response`, then closes the connection at once: aiohttp would otherwise linger up to 10 s
    reading the rest of a body the client is sending too slowly."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response
