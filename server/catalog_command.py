"""`spanlake api-key` and `spanlake migrate`: the commands that need the catalog database alone.

They open one asyncpg connection and apply the missing migrations as `Lake.open` does, but open no
lake: no DataFusion, object store or background loop, so they start in the time asyncpg takes to
import. Without a database URL they find, adopt or start the data directory's embedded PostgreSQL as
the servers do (and pgserver stops it at exit when no other process uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from spanlake.lakehouse.catalog.api_keys import ApiKeys, check_audience, hash_key, new_key
from spanlake.lakehouse.embedded_postgres import open_embedded_postgres
from spanlake.lakehouse.migrate import migrate
from spanlake.lakehouse.settings import Settings


class _KeysOnConnection(ApiKeys):
    """The catalog's key statements over one connection (asyncpg's connection answers the pool's
    `execute`/`fetchrow`)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.pool = conn


@asynccontextmanager
async def _catalog_connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the catalog database, its schema up to date."""
    url = settings.database_url or open_embedded_postgres(settings.data_dir).url
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        yield conn
    finally:
        await conn.close()


async def _migrate(settings: Settings) -> None:
    async with _catalog_connection(settings):
        pass


def run_migrate(settings: Settings) -> int:
    """Creates or upgrades the schema; the exit status."""
    asyncio.run(_migrate(settings))
    print("database schema is up to date")
    return 0


@dataclass(frozen=True)
class _NewKey:
    """The key asked for: an ingestion key (`write_audience`), an analytics key (`read_audiences`), or
    a legacy key reading and writing everything (neither)."""

    name: str
    is_admin: bool
    write_audience: str | None
    read_audiences: list[str] | None

    @classmethod
    def of(cls, args: argparse.Namespace) -> _NewKey:
        """The key the arguments ask for; ValueError for a bad audience name."""
        write = None if args.audience is None else check_audience(args.audience)
        if args.read_audiences is None:
            return cls(args.name, args.admin, write, None)
        read = [check_audience(a) for a in args.read_audiences.split(",")] if args.read_audiences else []
        return cls(args.name, args.admin, write, read)


async def _store_key(settings: Settings, new: _NewKey, key_hash: bytes) -> str:
    """Stores the key's hash; returns what kind of key it is."""
    async with _catalog_connection(settings) as conn:
        keys = _KeysOnConnection(conn)
        if new.write_audience is not None:
            await keys.add_ingestion_key(new.name, key_hash, new.write_audience, "cli", [])
            return f"ingestion key writing into audience '{new.write_audience}'"
        if new.read_audiences is not None:
            await keys.add_analytics_key(new.name, key_hash, new.read_audiences, "cli", [], new.is_admin)
            return f"analytics key reading {', '.join(new.read_audiences)}"
        await keys.add_api_key(new.name, key_hash, new.is_admin)
        return "API key"


def run_api_key(args: argparse.Namespace, settings: Settings) -> int:
    """Creates the key, prints it on stdout (its kind on stderr); the exit status (2 on a bad audience)."""
    try:
        new = _NewKey.of(args)
    except ValueError as err:
        print(f"spanlake api-key: {err}", file=sys.stderr)
        return 2
    key = new_key()
    kind = asyncio.run(_store_key(settings, new, hash_key(key)))
    print(key)
    print(f"# {kind} '{args.name}' created; only its SHA-256 is stored: keep the key now.", file=sys.stderr)
    return 0
