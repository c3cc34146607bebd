"""Applies the numbered SQL files of `migrations/` that a database does not have yet.

Each file runs in its own transaction together with the row that records it, so a failure leaves
the database at the previous version. A session-level advisory lock serializes servers that start
at the same time: the second one waits, then finds nothing left to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# Arbitrary constant shared by every spanlake process: "spanlake migrations" as an advisory lock key.
MIGRATION_LOCK_KEY = 0x5350_4C4B_4D49_47
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of `migrations/`: its version, file name and text."""

    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order (RuntimeError if a number repeats)."""
    found = []
    for entry in resources.files("spanlake.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    # Numbers are assigned to features ahead of time, so a branch may have 0008 before 0007 lands:
    # each file is applied once whatever the order; a number used twice is an error.
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"migrations must be numbered uniquely, found {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Brings the schema up to date; returns the names of the files applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        # Inside the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type.
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS spanlake_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM spanlake_migrations")}
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO spanlake_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
                )
            log.info("applied migration %s", migration.name)
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
