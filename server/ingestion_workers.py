"""Ingestion worker processes: several processes serve the ingestion API on one HTTP port (each its own
socket with SO_REUSEPORT: the kernel spreads the connections), so HTTP parsing, payload writes and
catalog groups use every core.

The parent (`spanlake serve`, `spanlake ingest`) keeps the data directory's lock and the embedded
PostgreSQL: it starts the workers with its settings and its database URL, and each worker opens its own
lake (a pool on the same database, the same object store). Each worker is tied to the parent by a Unix
socket pair: it says on it when it is prepared, listens when told (once every worker is prepared) and
says so; and it shuts down, finishing the requests it has, when the parent closes the pair, on purpose
or by dying. A worker that exits on its own is replaced.

When the parent serves the web UI on the same port, every request is answered as one process answers
it: a worker hands over (SCM_RIGHTS) every connection whose first request is not for `/ingestion/`, to
be served by the parent; a later request of one of its own connections that is not for `/ingestion/`
is forwarded to the parent's web server over a Unix socket in a directory only this user reads, with
the client's address in `CLIENT_HEADER` (trusted on that socket only: `forwarded_client`), so the
login throttling and the site guard's checks see what they would see directly.

The worker's side is `server.ingestion_worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.settings import SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

CHANNEL_FD_ENV = "SPANLAKE_INGESTION_CHANNEL_FD"  # the worker's end of its socket pair
PARENT_WEB_ENV = "SPANLAKE_INGESTION_PARENT_WEB"  # the parent web server's Unix socket; empty: none
CLIENT_HEADER = "X-Spanlake-Forwarded-Client"  # a forwarded request's client address
PREPARED = b"P"  # worker → parent: its lake is open, its app set up
LISTEN = b"L"  # parent → worker: every worker is prepared, listen now
LISTENING = b"R"  # worker → parent: it listens on the port
CONNECTION = b"C"
INGESTION_PREFIX = b"/ingestion/"
# A request line's first bytes: enough for the method and the ingestion prefix.
PEEK_BYTES = 32
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def worker_serves_path(path: str) -> bool:
    """Whether a worker serves a request for `path` (the ingestion API); the parent serves the others."""
    return path.startswith(INGESTION_PREFIX.decode())


def worker_serves(head: bytes) -> bool | None:
    """Whether a connection whose first bytes are `head` is the worker's (its first request is for the
    ingestion API); None while too few bytes have come to tell."""
    target = head.partition(b" ")[2]
    if target.startswith(INGESTION_PREFIX):
        return True
    if len(head) >= PEEK_BYTES or not INGESTION_PREFIX.startswith(target):
        return False
    return None


# -- the parent's side ----------------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process and the parent's end of its socket pair."""

    process: subprocess.Popen
    channel: socket.socket


class IngestionWorkers:
    """The ingestion worker processes of the HTTP port, and the parent's web server the connections they
    hand over go to (None: they serve every connection themselves)."""

    def __init__(self, lake: Lake, count: int, address: tuple[str, int], web_runner: web.AppRunner | None) -> None:
        self.lake = lake
        self.count = count
        self.address = address
        self.web_runner = web_runner
        self.workers: list[Worker] = []
        self._stopping = False
        self._tasks: set[asyncio.Task[object]] = set()
        self._web_socket_dir: Path | None = None

    async def start(self) -> None:
        """Starts every worker and returns once all of them listen; OSError (the worker's) if one cannot.

        The workers listen only once every one of them is ready to serve (they start together), so the
        port answers when the whole ingestion API is there, as it did with one process."""
        if self.web_runner is not None:
            await self._serve_forwarded_requests(self.web_runner)
        prepared = await asyncio.gather(*(self._prepare_worker() for _ in range(self.count)), return_exceptions=True)
        self.workers = [worker for worker in prepared if isinstance(worker, Worker)]
        listening = await asyncio.gather(*(self._listen(worker) for worker in self.workers), return_exceptions=True)
        failure = next((err for err in [*prepared, *listening] if isinstance(err, BaseException)), None)
        if failure is not None:
            await self.cleanup()
            raise failure
        for worker in self.workers:
            self._watch(worker)

    async def cleanup(self) -> None:
        """Stops the workers (each finishes the requests it has), then the parent's web server."""
        self._stopping = True
        for worker in self.workers:
            _close_channel(worker)  # the worker's signal to stop
        await asyncio.gather(*(asyncio.to_thread(_wait_or_kill, worker.process) for worker in self.workers))
        self.workers = []
        if self.web_runner is not None:
            await self.web_runner.cleanup()
        if self._web_socket_dir is not None:
            shutil.rmtree(self._web_socket_dir, ignore_errors=True)

    @property
    def web_socket(self) -> str:
        """The Unix socket the workers forward the web UI's requests to ('' when there is no web UI)."""
        return str(self._web_socket_dir / "web.sock") if self._web_socket_dir is not None else ""

    async def _serve_forwarded_requests(self, web_runner: web.AppRunner) -> None:
        """The web server on a Unix socket too, in a new directory only this user may enter."""
        self._web_socket_dir = Path(tempfile.mkdtemp(prefix="spanlake-web-"))  # mode 0700
        await web.UnixSite(web_runner, self.web_socket).start()

    async def _prepare_worker(self) -> Worker:
        """A new worker process, once it has opened its lake and is ready to listen."""
        parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = worker_environment(self.lake, self.address, worker_end.fileno(), self.web_socket)
        with worker_end:
            process = subprocess.Popen(
                [sys.executable, "-m", "spanlake.server.ingestion_worker"], env=env, pass_fds=[worker_end.fileno()]
            )
        parent_end.setblocking(False)
        worker = Worker(process, parent_end)
        try:
            await _expect(worker, PREPARED)
        except BaseException:
            parent_end.close()
            await asyncio.to_thread(_wait_or_kill, process)
            raise
        return worker

    async def _listen(self, worker: Worker) -> None:
        """Tells the worker to listen; returns once it does (OSError if it cannot)."""
        await asyncio.get_running_loop().sock_sendall(worker.channel, LISTEN)
        await _expect(worker, LISTENING)

    def _watch(self, worker: Worker) -> None:
        asyncio.get_running_loop().add_reader(worker.channel.fileno(), self._on_message, worker)

    def _on_message(self, worker: Worker) -> None:
        """A connection handed over (served by the parent's web server), or the worker gone (replaced)."""
        try:
            message, fds, _, _ = socket.recv_fds(worker.channel, 1, 1)
        except BlockingIOError:
            return
        loop = asyncio.get_running_loop()
        for fd in fds:
            connection = socket.socket(fileno=fd)
            if message == CONNECTION and self.web_runner is not None and self.web_runner.server is not None:
                connection.setblocking(False)
                self._spawn(loop.connect_accepted_socket(self.web_runner.server, connection))
            else:
                connection.close()
        if not message:
            _close_channel(worker)
            if not self._stopping:
                self._spawn(self._replace(worker))

    async def _replace(self, gone: Worker) -> None:
        status = await asyncio.to_thread(gone.process.wait)
        log.warning("ingestion worker %d exited with status %s: starting another", gone.process.pid, status)
        try:
            replacement = await self._prepare_worker()
        except (OSError, TimeoutError) as err:
            log.error("could not start an ingestion worker in place of %d: %s", gone.process.pid, err)
            return
        if self._stopping:  # stopped meanwhile
            replacement.channel.close()
            await asyncio.to_thread(_wait_or_kill, replacement.process)
            return
        self.workers = [replacement if worker is gone else worker for worker in self.workers]
        await self._listen(replacement)
        self._watch(replacement)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _close_channel(worker: Worker) -> None:
    """Closes the parent's end of the worker's channel (once), and stops watching it."""
    if worker.channel.fileno() >= 0:
        asyncio.get_running_loop().remove_reader(worker.channel.fileno())
        worker.channel.close()


async def _expect(worker: Worker, message: bytes) -> None:
    """Waits for the worker to say `message`; OSError if it exits instead (its status is the errno of what
    it could not do: the port's bind)."""
    said = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(worker.channel, 1), READY_TIMEOUT_S)
    if said != message:
        status = await asyncio.to_thread(worker.process.wait)
        raise OSError(status, f"an ingestion worker exited with status {status} (its log says why)")


def worker_environment(lake: Lake, address: tuple[str, int], channel_fd: int, web_socket: str) -> dict[str, str]:
    """The worker's environment: the parent's settings as their variables, the address to listen on, the
    parent's database URL (the embedded PostgreSQL's too), the channel's descriptor, the parent web
    server's Unix socket."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPANLAKE_")}
    for option in SETTINGS:
        value = getattr(lake.settings, option.name)
        if value is not None:
            env[option.env] = str(value)
    env["SPANLAKE_DATA_DIR"] = str(lake.settings.data_dir.resolve())
    env["SPANLAKE_OBJECT_STORE_URI"] = lake.settings.lake_uri
    env["SPANLAKE_DATABASE_URL"] = lake.database_url
    env["SPANLAKE_HOST"], env["SPANLAKE_HTTP_PORT"] = address[0], str(address[1])
    env[CHANNEL_FD_ENV] = str(channel_fd)
    env[PARENT_WEB_ENV] = web_socket
    return env


@web.middleware
async def forwarded_client(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request a worker forwarded over the parent's Unix socket, with its client's address as `remote`
    (`CLIENT_HEADER` is believed on that socket only: only this user's processes can reach it)."""
    transport = request.transport
    connection = transport.get_extra_info("socket") if transport is not None else None
    if connection is not None and connection.family == socket.AF_UNIX:
        headers = request.headers.copy()
        client = headers.popall(CLIENT_HEADER, [""])[-1]
        forwarded = request.clone(remote=client, headers=headers)
        try:
            return await handler(forwarded)
        finally:  # aiohttp prepares the answer with the request it made: what the handlers noted goes with it
            request.update(forwarded)
    return await handler(request)


def _wait_or_kill(process: subprocess.Popen) -> None:
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("ingestion worker %d did not stop within %g s: killing it", process.pid, STOP_TIMEOUT_S)
        process.kill()
        process.wait()
