"""An ingestion worker process (`server.ingestion_workers` starts them): the ingestion API on its own
SO_REUSEPORT socket of the HTTP port, over its own lake on the parent's database and object store; the
web UI's connections handed over to the parent, and the web UI's requests of its own connections
forwarded to the parent's web server (`ParentWeb`).

    python -m spanlake.server.ingestion_worker   (started by the parent, never by hand)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.settings import load_settings
from spanlake.server.auth import Authenticator, make_authenticator
from spanlake.server.ingestion import IngestionService, make_app_runner, native_routes
from spanlake.server.ingestion_workers import (
    CHANNEL_FD_ENV,
    CLIENT_HEADER,
    CONNECTION,
    LISTEN,
    LISTENING,
    PARENT_WEB_ENV,
    PEEK_BYTES,
    PREPARED,
    STOP_TIMEOUT_S,
    Handler,
    worker_serves,
    worker_serves_path,
)
from spanlake.server.native_http import NativeHttpServer

log = logging.getLogger(__name__)

# A partial request line stays readable: the wait before looking again.
PEEK_RETRY_S = 0.005
# Headers of one connection, not of the request: not forwarded either way (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
)


class ParentWeb:
    """Forwards a request the worker does not serve (not for `/ingestion/`) to the parent's web server on
    its Unix socket, with the client's address, and streams its answer back as the parent made it."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Before the worker's own checks: a request for the parent goes there as it came."""
        if worker_serves_path(request.path):
            return await handler(request)
        try:
            return await self.forward(request)
        except aiohttp.ClientConnectorError as err:  # the parent stopping (or gone): the worker stops next
            log.warning("could not forward %s to the main process: %s", request.path, err)
            return web.Response(status=503, text="server stopping, retry later", headers={"Retry-After": "5"})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """The parent's answer to `request` (its body streamed both ways)."""
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        headers.popall(CLIENT_HEADER, None)  # only the worker says who the client is
        headers[CLIENT_HEADER] = request.remote or ""
        url = URL("http://parent" + request.raw_path, encoded=True)
        body = request.content if request.body_exists else None
        answer = self.session().request(request.method, url, headers=headers, data=body, allow_redirects=False)
        async with answer as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if upstream.headers.get("Connection", "").lower() == "close":
                response.force_close()  # the parent closes its connection (408): so does the worker
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def session(self) -> aiohttp.ClientSession:
        """The client of the parent's socket: no cookie jar (each request carries its client's), no
        header of its own, no time limit (the parent's own limits apply), bodies as they come."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(self.socket_path),
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        """Closes the connections to the parent."""
        if self._session is not None:
            await self._session.close()


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port that other sockets with SO_REUSEPORT share."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(1024)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class WorkerServer:
    """A worker's HTTP server: the ingestion routes on its SO_REUSEPORT socket (the native routes' plain
    requests on the lean path, `server.native_http`, as the parent serves them without workers), other
    connections handed over to the parent when it serves the web UI."""

    def __init__(
        self, lake: Lake, authenticator: Authenticator | None, channel: socket.socket, parent_web: ParentWeb | None
    ) -> None:
        """`parent_web`: where the web UI's requests go (None: no web UI, the worker answers everything)."""
        self.lake = lake
        self.authenticator = authenticator
        self.channel = channel
        self.parent_web = parent_web
        self.handoff = parent_web is not None
        self._tasks: set[asyncio.Task[None]] = set()

    async def prepare(self) -> NativeHttpServer:
        """The ingestion API's server (the lean path in front of aiohttp's runner), listening nowhere yet."""
        outer = self.parent_web.middleware if self.parent_web is not None else None
        service = IngestionService(self.lake, self.authenticator)
        runner = await make_app_runner(service, outer)
        return NativeHttpServer(runner, native_routes(service, runner))

    async def listen(self, http: NativeHttpServer) -> None:
        """Serves `http` on the worker's SO_REUSEPORT socket (OSError if it cannot listen)."""
        listener = reuse_port_socket(self.lake.settings.host, self.lake.settings.http_port)
        if self.handoff:
            self._keep(asyncio.get_running_loop().create_task(self._accept(listener, http)))
        else:
            await http.start_on(listener)

    def stop_accepting(self) -> None:
        """Stops taking new connections (those accepted keep being served until the runner's cleanup)."""
        for task in self._tasks:
            task.cancel()

    async def _accept(self, listener: socket.socket, http: NativeHttpServer) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                connection, _ = await loop.sock_accept(listener)
                self._keep(loop.create_task(self._route(connection, http)))
        finally:
            listener.close()

    async def _route(self, connection: socket.socket, http: NativeHttpServer) -> None:
        """Serves the connection here if its first request is for the ingestion API, else hands it over."""
        try:
            async with asyncio.timeout(self.lake.settings.request_body_timeout_s):
                ours = await _first_request_is_ours(connection)
        except (TimeoutError, OSError):  # sent no request line in time, or reset
            connection.close()
            return
        if ours is None:  # closed before a request
            connection.close()
        elif ours:
            await asyncio.get_running_loop().connect_accepted_socket(http.routes, connection)
        else:
            with connection, contextlib.suppress(ConnectionError):  # the parent gone: the client sees a close
                socket.send_fds(self.channel, [CONNECTION], [connection.fileno()])

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _first_request_is_ours(connection: socket.socket) -> bool | None:
    """`worker_serves` of the connection's first bytes, read without taking them; None if it closes first."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            head = connection.recv(PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            await _readable(loop, connection)
            continue
        if not head:
            return None
        ours = worker_serves(head)
        if ours is not None:
            return ours
        await asyncio.sleep(PEEK_RETRY_S)


async def _readable(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    readable = loop.create_future()
    loop.add_reader(connection.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(connection.fileno())


def _stop_on_signal_or_parent_gone(channel: socket.socket) -> threading.Event:
    """Set on SIGTERM or SIGINT, or when the parent closes the channel (or dies)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def watch_parent() -> None:
        while channel.recv(1):  # the parent sends nothing more: any return but EOF is not expected
            pass
        stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    return stop


def main() -> int:
    """A worker's life: open the lake, say it is prepared, listen when the parent says so, serve until told
    to stop; its exit status is the errno of a failed listen."""
    from spanlake.server.cli import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, serving=False)
    channel = socket.socket(fileno=int(os.environ[CHANNEL_FD_ENV]))
    parent_web = ParentWeb(os.environ[PARENT_WEB_ENV]) if os.environ.get(PARENT_WEB_ENV) else None
    lake = Lake.open(settings)  # not self-traced: the server's own process is the one its role marks
    authenticator = None
    try:
        authenticator = make_authenticator(settings, lake)
        return serve(lake, WorkerServer(lake, authenticator, channel, parent_web))
    finally:
        if parent_web is not None:
            lake.loop.run(parent_web.close())
        if authenticator is not None:
            authenticator.close()
        lake.close()


def serve(lake: Lake, server: WorkerServer) -> int:
    """Prepares, says so, listens when told, serves until told to stop; the errno of a failed listen."""
    http = lake.loop.run(server.prepare())
    server.channel.sendall(PREPARED)
    if server.channel.recv(1) != LISTEN:  # the parent gave up (another worker failed) or is gone
        lake.loop.run(http.cleanup())
        return 0
    try:
        lake.loop.run(server.listen(http))
    except OSError as err:
        log.error("ingestion worker cannot listen on %s:%d: %s", lake.settings.host, lake.settings.http_port, err)
        return err.errno or 1
    server.channel.sendall(LISTENING)
    stop = _stop_on_signal_or_parent_gone(server.channel)
    stop.wait()
    lake.loop.loop.call_soon_threadsafe(server.stop_accepting)
    lake.loop.run(http.cleanup(), timeout=STOP_TIMEOUT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
