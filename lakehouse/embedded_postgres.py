"""The private PostgreSQL used when no database URL is configured (the `pgserver` wheel).

Its data lives in `<data-dir>/postgres` and survives restarts. pgserver counts the processes using a
data directory (their pids in `.handle_pids.json`) and stops the server when the last one exits. A
process killed without its exit handler leaves its pid there, and the server would then never be
stopped again: pids of processes that are gone (zombies included: killed, not yet reaped) are dropped
before joining and again at each clean exit, so the next start adopts the running server and the
clean exit of the last spanlake process using it stops it.

A server that stops under a running spanlake (killed, out of memory) is restarted on the same data
directory by `EmbeddedPostgres.supervise`, a task on the lake's loop; the pool reconnects to it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import subprocess
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import psutil

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

HANDLE_PIDS = ".handle_pids.json"
POSTMASTER_PID = "postmaster.pid"
# How often the supervisor looks at the postmaster (its pid file and its /proc status), and how long it
# waits between restarts that failed (the killed server's backends may still hold its shared memory).
CHECK_INTERVAL_S = 0.5
RESTART_RETRY_S = 1.0
# What a failed `pg_ctl start` raises through pgserver (it asserts the server is ready after it).
RESTART_FAILURES = (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, AssertionError)
# The data directories whose list of users this process cleans of dead pids at its exit.
_SWEPT_AT_EXIT: set[Path] = set()


@dataclass
class EmbeddedPostgres:
    """The embedded server of one data directory, as this process started or adopted it."""

    server: PostgresServer

    @property
    def pg_dir(self) -> Path:
        """The server's data directory, `<data-dir>/postgres`."""
        return self.server.pgdata

    @property
    def url(self) -> str:
        """The postgresql:// URL asyncpg connects with (a Unix socket in the data directory)."""
        return _asyncpg_url(self.server.get_uri())

    def is_running(self) -> bool:
        """The postmaster named in `postmaster.pid` is alive (a zombie waiting for its reaper is not)."""
        return _process_status(postmaster_pid(self.pg_dir)) not in (None, psutil.STATUS_ZOMBIE)

    def restart(self) -> str | None:
        """Starts the server again on the same data directory (or adopts the one another spanlake
        process restarted first); returns its URL, or None if this process is exiting and has let go
        of the server (pgserver stops it then, on purpose)."""
        from pgserver.postgres_server import PostgresServer

        with PostgresServer._lock:  # the lock pgserver takes around starts: one process restarts it
            if self.pg_dir not in PostgresServer._instances:
                return None
            if _process_status(postmaster_pid(self.pg_dir)) == psutil.STATUS_ZOMBIE:
                self._forget_zombie_postmaster()
            self.server.ensure_postgres_running()
        return self.url

    def _forget_zombie_postmaster(self) -> None:
        """Removes the lock files naming a killed postmaster its parent has not reaped yet (the parent
        may be an init that never does): pgserver would adopt it (psutil counts zombies as running)
        and PostgreSQL refuse to start while that pid exists. Other stale lock files stay: PostgreSQL
        checks them itself (and its shared memory, for the dead server's backends still running)."""
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pg_dir)
        if info is None:
            return
        log.info("the embedded PostgreSQL's postmaster %d exited, not reaped yet: removing its lock files", info.pid)
        if info.socket_path is not None:
            Path(f"{info.socket_path}.lock").unlink(missing_ok=True)
        (self.pg_dir / POSTMASTER_PID).unlink(missing_ok=True)

    async def supervise(self, pool: asyncpg.Pool, server_settings: dict[str, str]) -> None:
        """Restarts the server whenever it stops, until cancelled; the pool then drops its connections
        to the dead server and connects to the new one (with these session settings, as before)."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            if self.is_running():
                continue
            log.warning("the embedded PostgreSQL in %s stopped: restarting it", self.pg_dir)
            url = await self._restart_until_it_runs()
            if url is None:
                return
            pool.set_connect_args(url, server_settings=server_settings)
            await pool.expire_connections()
            log.warning("the embedded PostgreSQL in %s is running again", self.pg_dir)

    async def _restart_until_it_runs(self) -> str | None:
        while True:
            try:
                return await asyncio.to_thread(self.restart)
            except RESTART_FAILURES as err:
                log.warning("restarting the embedded PostgreSQL failed (%s); next try in %g s", err, RESTART_RETRY_S)
            await asyncio.sleep(RESTART_RETRY_S)


def open_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Starts (or joins) the embedded server of `data_dir`; this process stops it at its exit if it is
    the last one using it."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, ssh, CI) and falls
        # back to /tmp/runtime-<uid>, which serves pgserver's lock file just as well.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver  # imported here: only the embedded default needs it
        from pgserver.postgres_server import PostgresServer

    pg_dir = data_dir.resolve() / "postgres"
    pg_dir.mkdir(parents=True, exist_ok=True)
    if not (pg_dir / "PG_VERSION").exists():
        log.info("creating the embedded PostgreSQL database in %s (first start: a few seconds)", pg_dir)
    with PostgresServer._lock:  # the lock pgserver itself takes around its pid list
        gone = forget_dead_handles(pg_dir)
    if gone:
        log.info("embedded PostgreSQL: adopting the server left running by exited process(es) %s", gone)
    embedded = EmbeddedPostgres(pgserver.get_server(pg_dir, cleanup_mode="stop"))
    if pg_dir not in _SWEPT_AT_EXIT:
        # Registered after pgserver's exit handler, so run before it (atexit runs the last first): a
        # process that crashed since this one started must not keep the server running after it.
        atexit.register(_forget_dead_handles_locked, pg_dir)
        _SWEPT_AT_EXIT.add(pg_dir)
    log.debug("embedded PostgreSQL in %s", pg_dir)
    return embedded


def start_embedded_postgres(data_dir: Path) -> str:
    """Starts (or joins) the embedded server and returns a postgresql:// URL for asyncpg."""
    return open_embedded_postgres(data_dir).url


def postmaster_pid(pg_dir: Path) -> int | None:
    """The pid in the data directory's `postmaster.pid`, or None if there is none."""
    try:
        return int((pg_dir / POSTMASTER_PID).read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _forget_dead_handles_locked(pg_dir: Path) -> None:
    from pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        forget_dead_handles(pg_dir)


def forget_dead_handles(pg_dir: Path) -> list[int]:
    """Drops the pids of exited processes from pgserver's list of users; returns the pids dropped."""
    path = pg_dir / HANDLE_PIDS
    try:
        pids = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    alive = [pid for pid in pids if _is_running(pid)]
    gone = sorted(set(pids) - set(alive))
    if gone:
        path.write_text(json.dumps(alive))
    return gone


def _is_running(pid: int) -> bool:
    """A process `pid` runs: a zombie (killed, not yet reaped by its parent) has exited."""
    return _process_status(pid) not in (None, psutil.STATUS_ZOMBIE)


def _process_status(pid: int | None) -> str | None:
    """psutil's status of the process `pid` (`psutil.STATUS_ZOMBIE`...); None if there is none."""
    if pid is None:
        return None
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None


def _asyncpg_url(url: str) -> str:
    # pgserver answers `postgresql://postgres:@/postgres?host=/socket/dir`; asyncpg reads the same
    # form but rejects the empty password marker, so drop it.
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.replace("postgres:@", "postgres@")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
