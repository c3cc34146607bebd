"""The private PostgreSQL used when no database URL is configured (the `pgserver` wheel).

Its data lives in `<data-dir>/postgres` and survives restarts. pgserver counts the processes using a
data directory and stops the server when the last one exits.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path) -> str:
    """Starts (or joins) the embedded server and returns a postgresql:// URL for asyncpg."""
    import pgserver  # imported here: only the embedded default needs it

    pg_dir = data_dir.resolve() / "postgres"
    pg_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pg_dir, cleanup_mode="stop")
    url = server.get_uri()
    log.info("embedded PostgreSQL in %s", pg_dir)
    return _asyncpg_url(url)


def _asyncpg_url(url: str) -> str:
    # pgserver answers `postgresql://postgres:@/postgres?host=/socket/dir`; asyncpg reads the same
    # form but rejects the empty password marker, so drop it.
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.replace("postgres:@", "postgres@")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
