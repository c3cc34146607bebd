"""A lean HTTP/1.1 path for the three native ingestion routes (`/ingestion/insert_process`,
`insert_stream`, `insert_block`), in front of aiohttp on the ingestion port.

Each connection starts with `NativeConnection`, an asyncio `BufferedProtocol`: a request head is read
into a small buffer and a body straight into one buffer of its Content-Length (`recv_into`: no chunks,
no joining, no copy but the part that arrived with the head). A plain program's POST to a native route
is parsed and stored by `IngestionService`'s own code and answered once its row is committed.

A large body of a staged route (`insert_block`, on a local store) whose first bytes locate its stored
payload, as the sink writes it, has that payload moved from the socket into a temporary file of the
store by splice(2), not copied through this process (`PayloadSplice`): the route checks it in place and
links the file under its key, or the temporary file is removed (refused, cut short, timed out).

Anything else is handed to aiohttp unchanged, with the bytes already read replayed into it, for the
rest of the connection: another route, another method or HTTP version, a body without a plain
Content-Length or over the limit, `Transfer-Encoding`, `Expect`, `Upgrade`, a browser's request
(`Origin`, `Sec-Fetch-Site`: the site guard decides), a refused key (aiohttp answers 401 as before), a
repeated or unusual header, a head too long. So aiohttp's behaviour there is exactly what it was.

What the aiohttp routes guarantee holds here too: a request head must arrive within
SPANLAKE_REQUEST_BODY_TIMEOUT_S of the connection or the previous answer (else the connection is
closed), a body within that time of its head (else 408 and close); requests of a kept-alive
connection, pipelined ones included, are answered in order, reading paused while one is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, NamedTuple, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from spanlake.server.auth import AuthError, LookupNeeded
from spanlake.server.http_body import BodyTimeout
from spanlake.server.site_guard import SECURITY_HEADERS

if TYPE_CHECKING:
    from spanlake.lakehouse.object_store import StagedObject
    from spanlake.lakehouse.query.context import Principal

log = logging.getLogger(__name__)

# A request head longer than this (all of aiohttp's own limits are below it) is aiohttp's to judge.
HEAD_BUFFER_BYTES = 32 * 1024
# A native request's head: a POST's request line, then fields of a token's name and a value of printable
# ASCII and tabs, on lines ended by CRLF (anything else, a bare CR or LF, a folded line: aiohttp's).
_NATIVE_HEAD = re.compile(rb"POST ([!-~]+) HTTP/1\.1((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*)*)")
_HEAD_END = b"\r\n\r\n"
# Headers a native request is handed to aiohttp for, whatever their value.
_HANDED_OVER = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"origin", b"sec-fetch-site"))
# Bodies from this size on are read into buffers kept for reuse (`BodyBuffers`): a fresh 4 MiB buffer
# is zeroed and page-faulted for every request (1.6 ms of the loop's CPU a 4 MiB block, measured).
POOLED_BODY_BYTES = 64 * 1024
# The most bytes of body buffers kept between requests (8 senders of 4 MiB blocks need 32 MiB).
KEPT_BODY_BYTES = 64 * 1024 * 1024
# A staged route's bodies from this size on have their payload spliced into a file (`PayloadSplice`):
# a served 4 MiB block then costs one copy of its payload, not two (receive, then write).
STAGED_BODY_BYTES = 1024 * 1024
# A splice moves at most this much from the socket at a time (the pipe is grown to it where allowed).
_PIPE_BYTES = 1024 * 1024
# Headers read here: each at most once (a repeated one is aiohttp's to judge).
_READ = frozenset((b"content-length", b"authorization", b"connection", b"host"))
_CONNECTION_VALUES = {b"keep-alive": False, b"close": True}
_INTERNAL_ERROR_TEXT = f"{HTTPStatus(500).value} {HTTPStatus(500).phrase}\n\n{HTTPStatus(500).description}"
_SECURITY_HEADER_LINES = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items())


class StagedBody(NamedTuple):
    """A body whose stored payload is in a staged file: the bytes before it and after it, and the file
    (the route publishes or leaves it; it is discarded after the route returns)."""

    prefix: bytes
    staged: StagedObject
    tail: bytes


class Staging(NamedTuple):
    """A route whose large bodies have their payload staged: its path, what finds the payload in a
    body's first bytes (start and end, or None) and what makes a staged file of the payload's first bytes."""

    path: str
    locate: Callable[[bytes], tuple[int, int] | None]
    stage: Callable[[memoryview], StagedObject]


# A native route's work: the request body and the writer's principal in, nothing out (raises to refuse).
# The body's bytes are valid until the route returns: a large body's buffer is then read into again.
Route = Callable[[bytearray | memoryview | StagedBody, "Principal | None"], Awaitable[None]]
Answer = tuple[int, str, dict[str, str]]
_REFUSED = object()  # a key the key tables refused (or could not check)


class NativeRequest:
    """What a native request's head says: its route, key, declared body length and whether to close after."""

    __slots__ = ("authorization", "close", "length", "path")

    def __init__(self, path: str, authorization: str | None, length: int, close: bool) -> None:
        self.path = path
        self.authorization = authorization
        self.length = length
        self.close = close


def parse_head(head: bytes, paths: frozenset[str], body_limit: int) -> NativeRequest | None:
    """The native request of a complete head (without its final blank line), or None when it is for aiohttp."""
    native = _NATIVE_HEAD.fullmatch(head)
    path = native and native[1].decode()
    if path not in paths:
        return None
    fields: dict[bytes, bytes] = {}
    for line in native[2].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in _HANDED_OVER:
            return None
        if name in _READ:
            if name in fields:
                return None
            fields[name] = value.strip(b" \t")
    length = fields.get(b"content-length", b"")
    close = _CONNECTION_VALUES.get(fields.get(b"connection", b"keep-alive").lower())
    if not length.isdigit() or len(length) > 12 or int(length) > body_limit or close is None:
        return None
    authorization = fields.get(b"authorization")
    return NativeRequest(path, authorization.decode() if authorization is not None else None, int(length), close)


def answer_bytes(status: int, text: str = "", headers: dict[str, str] | None = None, close: bool = False) -> bytes:
    """An HTTP/1.1 answer as aiohttp writes a `web.Response` (with the site guard's security headers)."""
    body = text.encode()
    content_type = "text/plain; charset=utf-8" if text else "application/octet-stream"
    lines = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
    lines += f"Content-Length: {len(body)}\r\nDate: {_http_date()}\r\nServer: {SERVER_SOFTWARE}\r\n"
    lines += "Connection: close\r\n" if close else ""
    lines += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (lines + _SECURITY_HEADER_LINES + "\r\n").encode() + body


_date_second = 0
_date_text = ""


def _http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_second, _date_text
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_text = now, formatdate(now, usegmt=True)
    return _date_text


class BodyBuffers:
    """Request-body buffers kept for reuse, up to KEPT_BODY_BYTES: a body of POOLED_BODY_BYTES or more
    is read into a view of the smallest kept buffer that holds it (or of a new one, its length rounded up
    to a multiple of POOLED_BODY_BYTES), and its buffer is kept again once nothing holds a view of it."""

    def __init__(self, kept_bytes: int = KEPT_BODY_BYTES) -> None:
        self.kept_bytes = kept_bytes
        self.free: list[bytearray] = []

    def take(self, length: int) -> bytearray | memoryview:
        """A buffer of `length` bytes (of undefined content) to read a body into."""
        if length < POOLED_BODY_BYTES:
            return bytearray(length)
        fitting = [buffer for buffer in self.free if len(buffer) >= length]
        if not fitting:  # rounded up: the next bodies, a few bytes longer or shorter, fit in it too
            return memoryview(bytearray(-(-length // POOLED_BODY_BYTES) * POOLED_BODY_BYTES))[:length]
        buffer = min(fitting, key=len)
        self.free.remove(buffer)
        return memoryview(buffer)[:length]

    def give_back(self, body: bytearray | memoryview) -> None:
        """Keeps the buffer of a body `take` gave, unless a view of it is still held or too much is kept."""
        if not isinstance(body, memoryview):
            return
        buffer = body.obj
        try:
            body.release()
            buffer.pop()  # resizing raises while any view of the buffer is held; one byte less keeps its memory
        except BufferError:  # a view of the body outlived its route: its buffer is never written into again
            return
        buffer.append(0)
        self.free.append(buffer)
        while sum(map(len, self.free)) > self.kept_bytes:
            self.free.remove(min(self.free, key=len))


class NativeRoutes:
    """What the native connections of one server share: the routes, the key checks (`cached_principal`
    without waiting, `LookupNeeded` when `principal` must ask the key tables), the answers to
    failures, the limits, aiohttp's protocol factory for everything else and the route whose payloads
    are staged (`Staging`, None: none); and the open connections."""

    def __init__(
        self,
        routes: dict[str, Route],
        cached_principal: Callable[[str | None, str | None], Principal | None],
        principal: Callable[[str | None, str | None], Awaitable[Principal | None]],
        failure_answer: Callable[[str, Exception], Answer | None],
        aiohttp_server: web.Server,
        body_limit: int,
        timeout_s: float,
        staging: Staging | None = None,
    ) -> None:
        self.routes = routes
        self.paths = frozenset(routes)
        self.cached_principal = cached_principal
        self.principal = principal
        self.failure_answer = failure_answer
        self.aiohttp_server = aiohttp_server
        self.body_limit = body_limit
        self.timeout_s = timeout_s
        self.staging = staging
        self.connections: set[NativeConnection] = set()
        self.body_buffers = BodyBuffers()

    def __call__(self) -> NativeConnection:
        """A new connection's protocol (this object is the asyncio server's protocol factory)."""
        return NativeConnection(self)

    async def close(self) -> None:
        """Closes the idle connections and waits for the requests being served to be answered."""
        serving = [c.serving for c in self.connections if c.serving is not None]
        for connection in list(self.connections):
            connection.close_when_idle()
        if serving:
            await asyncio.wait(serving, timeout=self.timeout_s)


class PayloadSplice:
    """A body's payload moved from the socket (a duplicate of its descriptor, watched while the
    transport's reading is paused) through a pipe into its staged file, by splice(2)."""

    def __init__(self, socket_fd: int, staged: StagedObject, prefix: bytes, remaining: int, tail_length: int) -> None:
        self.staged = staged
        self.prefix = prefix
        self.remaining = remaining
        self.tail_length = tail_length
        self.fd = os.dup(socket_fd)
        self.pipe_out, self.pipe_in = os.pipe()
        with contextlib.suppress(OSError):  # over the system's pipe size limit: the default size, in more moves
            fcntl.fcntl(self.pipe_in, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)

    def move(self) -> bool | None:
        """Moves what the socket holds of the payload into the file: True once all of it is there, False
        while more is to come, None if the socket ended first (BlockingIOError if it held nothing)."""
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK  # read here: Linux's alone (`payload_staging`)
        moved = os.splice(self.fd, self.pipe_in, min(self.remaining, _PIPE_BYTES), flags=flags)
        if not moved:
            return None
        self.remaining -= moved
        while moved:
            moved -= os.splice(self.pipe_out, self.staged.fd, moved)
        return not self.remaining

    def read_tail(self, tail: bytearray) -> int:
        """Reads what the socket holds of the body's tail (the bytes after the payload) into `tail`, now
        rather than a turn of the loop later; how many bytes (the transport reads the rest)."""
        if not tail:
            return 0
        try:
            return os.readv(self.fd, [tail])
        except BlockingIOError:
            return 0

    def stop_moving(self) -> None:
        """Stops watching the socket and closes the duplicate and the pipe (once: the file stays)."""
        if self.fd < 0:
            return
        asyncio.get_running_loop().remove_reader(self.fd)
        for fd in (self.fd, self.pipe_out, self.pipe_in):
            os.close(fd)
        self.fd = -1

    def abandon(self) -> None:
        """Stops moving and removes the staged file: the request is not served."""
        self.stop_moving()
        self.staged.discard()


class NativeConnection(asyncio.BufferedProtocol):
    """One connection's native requests (see the module's docstring), until it is handed to aiohttp."""

    def __init__(self, routes: NativeRoutes) -> None:
        self.routes = routes
        self.transport: asyncio.Transport | None = None
        self.head = bytearray(HEAD_BUFFER_BYTES)
        self.head_filled = 0
        self.body: bytearray | memoryview | None = None
        self.body_filled = 0
        self.request: NativeRequest | None = None
        self.principal: Principal | None = None
        self.serving: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.splice: PayloadSplice | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Starts the clock for the first request's head."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self.routes.connections.add(self)
        self._start_timer(self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forgets the connection (a request being served still commits; its answer goes nowhere)."""
        self._stop_timer()
        self._abandon_splice()
        self.routes.connections.discard(self)

    def eof_received(self) -> bool:
        """The client's end: the transport closes (a request it ended early is never served)."""
        return False

    def get_buffer(self, sizehint: int) -> memoryview:
        """The body's unfilled part while a body is read, else the head buffer's."""
        if self.body is not None:
            return memoryview(self.body)[self.body_filled :]
        return memoryview(self.head)[self.head_filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """Counts what arrived and serves a request once its body is complete."""
        if self.body is None:
            self.head_filled += nbytes
            self._next_request()
            return
        self.body_filled += nbytes
        if self.body_filled == len(self.body):
            self._serve()

    def close_when_idle(self) -> None:
        """Closes the connection now if no request is being served, else after its answer."""
        self.closing = True
        if self.serving is None and self.transport is not None:
            self.transport.close()

    def _next_request(self) -> None:
        """Starts the request whose head is in the head buffer, if it is complete and native; hands the
        connection to aiohttp if it is not native."""
        end = self.head.find(_HEAD_END, 0, self.head_filled)
        if end < 0:
            if self.head_filled == len(self.head):
                self._hand_over()
            return
        request = parse_head(bytes(self.head[:end]), self.routes.paths, self.routes.body_limit)
        if request is None:
            self._hand_over()
            return
        self._stop_timer()
        self.request = request
        self.transport.pause_reading()  # until the key is checked: the body goes to aiohttp if refused
        body_start = end + len(_HEAD_END)
        try:
            principal = self.routes.cached_principal(request.authorization, self._peer())
        except LookupNeeded:
            self.serving = asyncio.get_running_loop().create_task(self._look_up_key(request, body_start))
        except AuthError:  # aiohttp checks the key again and answers 401 as before
            self._hand_over()
        else:
            self._read_body(principal, body_start)

    async def _look_up_key(self, request: NativeRequest, body_start: int) -> None:
        """Reads the body of a request whose key the key tables accept; hands the connection to aiohttp otherwise."""
        try:
            principal = await self.routes.principal(request.authorization, self._peer())
        except Exception:  # a refused key, or a failing check: aiohttp checks again and answers as before
            principal = _REFUSED
        self.serving = None
        if self.transport.is_closing():  # the client left meanwhile
            return
        if principal is _REFUSED:
            self._hand_over()
        else:
            self._read_body(principal, body_start)

    def _read_body(self, principal: Principal | None, body_start: int) -> None:
        """Takes the body's part already read; serves the request if that is all, else reads the rest."""
        request = self.request
        self.principal = principal
        if self._stage_payload(body_start):
            return
        self.body = self.routes.body_buffers.take(request.length)
        arrived = min(self.head_filled - body_start, request.length)
        self.body[:arrived] = self.head[body_start : body_start + arrived]
        self.body_filled = arrived
        rest = body_start + arrived
        self.head[: self.head_filled - rest] = self.head[rest : self.head_filled]
        self.head_filled -= rest
        if arrived == request.length:
            self._serve()
            return
        self._start_timer(self._body_timed_out)
        self.transport.resume_reading()

    def _stage_payload(self, body_start: int) -> bool:
        """Starts splicing the payload of a staged route's large body into a staged file, if the body's
        part already read locates it (then the rest is read by `_payload_arrived`); False otherwise."""
        staging, request = self.routes.staging, self.request
        if staging is None or request.path != staging.path or request.length < STAGED_BODY_BYTES:
            return False
        arrived = bytes(self.head[body_start : self.head_filled])
        located = staging.locate(arrived)
        if located is None or not len(arrived) < located[1] <= request.length:
            return False
        start, end = located
        try:
            staged = staging.stage(memoryview(arrived)[start:])
        except OSError as err:  # the usual read, whose write then fails as the store's writes fail
            log.warning("cannot stage a payload: %s", err)
            return False
        socket_fd = self.transport.get_extra_info("socket").fileno()
        tail_length = request.length - end
        self.splice = PayloadSplice(socket_fd, staged, arrived[:start], end - len(arrived), tail_length)
        self.head_filled = 0
        self._start_timer(self._body_timed_out)
        asyncio.get_running_loop().add_reader(self.splice.fd, self._payload_arrived)
        return True

    def _payload_arrived(self) -> None:
        """Moves what arrived of the payload; once it is all in its file, reads the body's tail."""
        try:
            moved = self.splice.move()
        except BlockingIOError:
            return
        except OSError as err:  # the connection reset, or the store's disk refusing: the client retries
            log.info("closed %s while receiving its payload: %s", self.request.path, err)
            moved = None
        if moved is None:
            self._abandon_splice()
            self.transport.close()
        elif moved:
            self.body = bytearray(self.splice.tail_length)
            self.body_filled = self.splice.read_tail(self.body)
            self.splice.stop_moving()
            if self.body_filled == len(self.body):
                self._serve()
                return
            self.transport.resume_reading()

    def _abandon_splice(self) -> None:
        if self.splice is not None:
            self.splice.abandon()
            self.splice = None

    def _serve(self) -> None:
        """Serves the complete request (reading paused meanwhile: pipelined requests wait their turn)."""
        self._stop_timer()
        self.transport.pause_reading()
        body, self.body = self.body, None
        if self.splice is not None:
            body, self.splice = StagedBody(self.splice.prefix, self.splice.staged, bytes(body)), None
        self.serving = asyncio.get_running_loop().create_task(self._answer(body))

    async def _answer(self, body: bytearray | memoryview | StagedBody) -> None:
        """Runs the route and writes its answer, then goes on with the next request (or closes)."""
        request = self.request
        close = request.close
        try:
            await self.routes.routes[request.path](body, self.principal)
            answer = answer_bytes(200, close=close)
        except Exception as err:  # every failure is answered: the known ones as aiohttp's middleware would
            known = self.routes.failure_answer(request.path, err)
            if known is None:  # as aiohttp answers an unexpected error
                log.exception("Error handling request from %s", self._peer(), exc_info=err)
                close = True
                answer = answer_bytes(500, _INTERNAL_ERROR_TEXT, close=True)
            else:
                answer = answer_bytes(*known, close=close)
        if isinstance(body, StagedBody):
            body.staged.discard()
        else:
            self.routes.body_buffers.give_back(body)
        self.serving = None
        if self.transport.is_closing():  # the client left meanwhile: the row is stored all the same
            return
        self.transport.write(answer)
        if close or self.closing:
            self.transport.close()
            return
        self._start_timer(self._head_timed_out)
        self.transport.resume_reading()
        self._next_request()

    def _hand_over(self) -> None:
        """The rest of the connection is aiohttp's, starting with the bytes read and not served here."""
        self._stop_timer()
        self.routes.connections.discard(self)
        handler = self.routes.aiohttp_server()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        if self.head_filled:
            handler.data_received(bytes(self.head[: self.head_filled]))
        self.transport.resume_reading()

    def _head_timed_out(self) -> None:
        """No whole request head within the time limit: closed, as aiohttp closes an idle connection."""
        self.timer = None
        self.transport.close()

    def _body_timed_out(self) -> None:
        """The body did not arrive in time: 408, and the connection closed."""
        self.timer = None
        err = BodyTimeout(f"request body not received within {self.routes.timeout_s:g} s")
        log.info("closed %s: %s", self.request.path, err)
        self.body = None
        self._abandon_splice()
        self.transport.write(answer_bytes(408, str(err), close=True))
        self.transport.close()

    def _start_timer(self, callback: Callable[[], None]) -> None:
        self._stop_timer()
        self.timer = asyncio.get_running_loop().call_later(self.routes.timeout_s, callback)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _peer(self) -> str | None:
        peer = self.transport.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) else None


class NativeHttpServer:
    """The ingestion port's server: native connections first, aiohttp's runner behind them."""

    def __init__(self, runner: web.AppRunner, routes: NativeRoutes) -> None:
        self.runner = runner
        self.routes = routes
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listens on `host:port` (no SO_REUSEPORT: a port in use is an error)."""
        self.server = await asyncio.get_running_loop().create_server(self.routes, host, port)

    async def start_on(self, listener: socket.socket) -> None:
        """Serves the connections of `listener`, a listening socket (an ingestion worker's)."""
        self.server = await asyncio.get_running_loop().create_server(self.routes, sock=listener)

    async def cleanup(self) -> None:
        """Stops listening, closes the native connections once answered, then stops aiohttp's runner."""
        if self.server is not None:
            self.server.close()
        await self.routes.close()
        await self.runner.cleanup()
