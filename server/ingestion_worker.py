"""An ingestion worker process (`server.ingestion_workers` starts them): the ingestion API on its own
SO_REUSEPORT socket of the HTTP port, over its own lake on the parent's database and object store.

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

from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.settings import load_settings
from spanlake.server.auth import Authenticator, make_authenticator
from spanlake.server.ingestion import IngestionService, make_app_runner
from spanlake.server.ingestion_workers import (
    CHANNEL_FD_ENV,
    CONNECTION,
    HANDOFF_ENV,
    LISTEN,
    LISTENING,
    PEEK_BYTES,
    PREPARED,
    STOP_TIMEOUT_S,
    worker_serves,
)

log = logging.getLogger(__name__)

# A partial request line stays readable: the wait before looking again.
PEEK_RETRY_S = 0.005


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
    """A worker's HTTP server: the ingestion routes on its SO_REUSEPORT socket, other connections handed
    over to the parent when it serves the web UI."""

    def __init__(self, lake: Lake, authenticator: Authenticator | None, channel: socket.socket, handoff: bool) -> None:
        self.lake = lake
        self.authenticator = authenticator
        self.channel = channel
        self.handoff = handoff
        self._tasks: set[asyncio.Task[None]] = set()

    async def prepare(self) -> web.AppRunner:
        """The ingestion API's runner, set up, listening nowhere yet."""
        return await make_app_runner(IngestionService(self.lake, self.authenticator))

    async def listen(self, runner: web.AppRunner) -> None:
        """Serves `runner` on the worker's SO_REUSEPORT socket (OSError if it cannot listen)."""
        listener = reuse_port_socket(self.lake.settings.host, self.lake.settings.http_port)
        if self.handoff:
            self._keep(asyncio.get_running_loop().create_task(self._accept(listener, runner.server)))
        else:
            await web.SockSite(runner, listener).start()

    def stop_accepting(self) -> None:
        """Stops taking new connections (those accepted keep being served until the runner's cleanup)."""
        for task in self._tasks:
            task.cancel()

    async def _accept(self, listener: socket.socket, server: web.Server) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                connection, _ = await loop.sock_accept(listener)
                self._keep(loop.create_task(self._route(connection, server)))
        finally:
            listener.close()

    async def _route(self, connection: socket.socket, server: web.Server) -> None:
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
            await asyncio.get_running_loop().connect_accepted_socket(server, connection)
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
    configure_logging(settings.log_level)
    channel = socket.socket(fileno=int(os.environ[CHANNEL_FD_ENV]))
    lake = Lake.open(settings)  # not self-traced: the server's own process is the one its role marks
    try:
        server = WorkerServer(lake, make_authenticator(settings, lake), channel, os.environ.get(HANDOFF_ENV) == "1")
        runner = lake.loop.run(server.prepare())
        channel.sendall(PREPARED)
        if channel.recv(1) != LISTEN:  # the parent gave up (another worker failed) or is gone
            lake.loop.run(runner.cleanup())
            return 0
        try:
            lake.loop.run(server.listen(runner))
        except OSError as err:
            log.error("ingestion worker cannot listen on %s:%d: %s", settings.host, settings.http_port, err)
            return err.errno or 1
        channel.sendall(LISTENING)
        stop = _stop_on_signal_or_parent_gone(channel)
        stop.wait()
        lake.loop.loop.call_soon_threadsafe(server.stop_accepting)
        lake.loop.run(runner.cleanup(), timeout=STOP_TIMEOUT_S)
        return 0
    finally:
        lake.close()


if __name__ == "__main__":
    sys.exit(main())
