"""`Lake`: what a spanlake process opens once — the catalog database, the object store, the loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from spanlake.lakehouse.catalog import Catalog
from spanlake.lakehouse.embedded_postgres import start_embedded_postgres
from spanlake.lakehouse.loop import BackgroundLoop
from spanlake.lakehouse.migrate import migrate
from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Lake:
    settings: Settings
    database_url: str
    loop: BackgroundLoop
    pool: asyncpg.Pool
    catalog: Catalog
    store: ObjectStore

    @classmethod
    def open(cls, settings: Settings, pool_size: int = 10) -> Lake:
        """Connects (starting the embedded PostgreSQL if no URL is set) and applies migrations."""
        database_url = settings.database_url or start_embedded_postgres(settings.data_dir)
        store = ObjectStore(settings.lake_uri, settings.s3_endpoint)
        loop = BackgroundLoop()
        try:
            pool = loop.run(_open_pool(database_url, pool_size))
        except BaseException:
            loop.stop()
            raise
        return cls(settings, database_url, loop, pool, Catalog(pool), store)

    def close(self) -> None:
        try:
            self.loop.run(self.pool.close(), timeout=10)
        finally:
            self.loop.stop()


async def _open_pool(database_url: str, pool_size: int) -> asyncpg.Pool:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return await asyncpg.create_pool(database_url, min_size=1, max_size=pool_size, reset=_keep_session)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Connections go back to the pool as they are: spanlake sets no session state (its advisory
    locks are transaction-scoped), and asyncpg's default reset costs a round trip per query."""
