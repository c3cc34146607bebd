"""The private PostgreSQL used when no database URL is configured (the `pgserver` wheel).

Its data lives in `<data-dir>/postgres` and survives restarts. pgserver counts the processes using a
data directory (their pids in `.handle_pids.json`) and stops the server when the last one exits. A
process killed without its exit handler leaves its pid there, and the server would then never be
stopped again: pids of processes that are gone are dropped before joining, so the next start adopts
the running server and its clean exit stops it.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

HANDLE_PIDS = ".handle_pids.json"


def start_embedded_postgres(data_dir: Path) -> str:
    """Starts (or joins) the embedded server and returns a postgresql:// URL for asyncpg."""
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
        forget_dead_handles(pg_dir)
    server = pgserver.get_server(pg_dir, cleanup_mode="stop")
    url = server.get_uri()
    log.debug("embedded PostgreSQL in %s", pg_dir)
    return _asyncpg_url(url)


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
        log.info("embedded PostgreSQL: adopting the server left running by exited process(es) %s", gone)
    return gone


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _asyncpg_url(url: str) -> str:
    # pgserver answers `postgresql://postgres:@/postgres?host=/socket/dir`; asyncpg reads the same
    # form but rejects the empty password marker, so drop it.
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.replace("postgres:@", "postgres@")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
