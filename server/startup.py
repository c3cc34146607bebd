"""What `spanlake` checks, sets and says around start-up: free ports, the data directory's lock, the
allocators' options, where the data lives, the ready text (UI address, a client snippet) and the
getting-started text."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import urllib.parse
from pathlib import Path
from typing import TextIO

from spanlake.lakehouse.settings import Settings

LOCK_FILE = "spanlake.lock"

# mimalloc's options for the copies linked into DataFusion (its global allocator, mimalloc 2.2) and
# pyarrow, read from the environment when their libraries load (docs/flightsql.md, Memory given back).
# Memory freed by a thread that then idles or exits stayed with it: after 50 unread Flight streams the
# server kept +160 to +320 MB (benchmarks/unread_memory.py). Eagerly committed arenas are advised as
# transparent huge pages, which a few touched bytes fill to 2 MiB; an exiting thread's free pages were
# left for another to reclaim; an active thread purged what it freed only when it happened to look.
ALLOCATOR_OPTIONS = {
    "MIMALLOC_ARENA_EAGER_COMMIT": "0",  # commit arenas as used, so never as huge pages
    "MIMALLOC_ABANDONED_PAGE_PURGE": "1",  # an exiting thread gives its free pages back to the system
    "MIMALLOC_GENERIC_COLLECT": "1",  # a thread collects its heap every 100 allocations off the fast path
}

GETTING_STARTED = """\
spanlake: a telemetry lakehouse speaking the micromegas protocols.

Getting started:
  spanlake serve                                  run it here (data in ./spanlake-data; HTTP :9000, Flight SQL :50051)
  spanlake generate --url http://127.0.0.1:9000   send it generated telemetry (spans, logs, metrics)
  spanlake query "SELECT process_id, exe, start_time FROM processes"
                                                  query it (or any Flight SQL client: grpc://127.0.0.1:50051)
  http://127.0.0.1:9000/                          the web UI, while `spanlake serve` runs

Every command: spanlake --help; a command's flags: spanlake serve --help. More in README.md and docs/.
"""


class StartupError(Exception):
    """spanlake cannot start as configured; the message is one line for the user."""


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raises StartupError naming the first port (by its flag) another process listens on."""
    for flag, port in ports.items():
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind((host, port))
            except OSError as err:
                raise listen_error(host, port, flag, err) from None


def listen_error(host: str, port: int, flag: str, err: OSError) -> StartupError:
    """The one-line error for a port the server cannot listen on (at the check or at the real bind)."""
    if err.errno == errno.EADDRINUSE or "in use" in str(err):
        return StartupError(
            f"port {port} on {host} is already in use (another spanlake serve?): stop it, or choose "
            f"another port with {flag}"
        )
    return StartupError(f"cannot listen on {host}:{port} ({flag}): {err.strerror or err}")


class DataDirLock:
    """An exclusive lock on `<data-dir>/spanlake.lock` (flock: released by the kernel when the process
    dies) holding the pid and ports of the `spanlake serve` that uses the directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir.resolve() / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, holder: str) -> None:
        """Takes the lock for `holder` (written into the file) or raises StartupError naming the one who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another spanlake process"
            os.close(fd)
            raise StartupError(
                f"the data directory {self.path.parent} is in use by {running}: stop it, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empties the lock file and releases the lock; a no-op if not held."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def set_allocator_options() -> None:
    """Sets ALLOCATOR_OPTIONS in the environment (those not set already): before DataFusion or pyarrow loads."""
    for name, value in ALLOCATOR_OPTIONS.items():
        os.environ.setdefault(name, value)


def uses_data_dir(settings: Settings) -> bool:
    """The embedded PostgreSQL or the default local object store live in the data directory."""
    return settings.database_url is None or settings.object_store_uri is None


def where_data_lives(settings: Settings) -> str:
    """One line saying where the database and the object store are."""
    if settings.database_url is None:
        database = f"embedded PostgreSQL in {settings.data_dir.resolve() / 'postgres'}"
    else:
        parts = urllib.parse.urlsplit(settings.database_url)
        database = f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    return f"spanlake data: {database}; objects in {settings.lake_uri}"


def client_host(host: str) -> str:
    """The address a local client connects to: a wildcard listen address means this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def print_ready(settings: Settings, roles: tuple[str, ...], out: TextIO) -> None:
    """The lines printed once every role serves: the UI address and a client snippet to paste."""
    host = client_host(settings.host)
    if "ingest" in roles:
        print(f"spanlake ready: open the UI at http://{host}:{settings.http_port}/", file=out)
    else:
        print("spanlake ready", file=out)
    if "flightsql" in roles:
        print(
            "query it from Python (pip install micromegas):\n"
            "    import micromegas\n"
            f'    client = micromegas.connect("grpc://{host}:{settings.flightsql_port}")\n'
            '    print(client.query("SELECT process_id, exe, start_time FROM processes'
            ' ORDER BY start_time DESC LIMIT 10"))',
            file=out,
        )
    out.flush()
