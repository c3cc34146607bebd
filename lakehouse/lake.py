"""`Lake`: what a spanlake process opens once — the catalog database, the object store, the loop —
and the services built on them: the payload-reading pool, the settle queue, decoding ahead, the pool running
DataFusion calls for table functions, the query deny list. `Lake.close()` stops them all: no thread
of the lake's is left running, and settles queued before it are finished."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import asyncpg

from spanlake.lakehouse.catalog import Catalog
from spanlake.lakehouse.catalog_changes import AnnouncingConnection, CatalogChanges
from spanlake.lakehouse.decode_ahead import DecodeAhead
from spanlake.lakehouse.embedded_postgres import EmbeddedPostgres, open_embedded_postgres
from spanlake.lakehouse.live_refresh import LiveRefresh
from spanlake.lakehouse.loop import BackgroundLoop
from spanlake.lakehouse.migrate import migrate
from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.query.fresh_instances import FreshInstances
from spanlake.lakehouse.query.off_runtime import OffRuntime
from spanlake.lakehouse.query.scan_frames import ScanFrames
from spanlake.lakehouse.query_denials import QueryDenyList
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.settle_queue import SettleQueue
from spanlake.lakehouse.sql_views import SqlViews

log = logging.getLogger(__name__)


# Threads reading block payloads from the object store for the views' decoders.
IO_THREADS = 8


@dataclass
class Lake:
    """An open lake: its connections and the services queries and ingestion share."""

    settings: Settings
    database_url: str
    loop: BackgroundLoop
    pool: asyncpg.Pool
    catalog: Catalog
    store: ObjectStore
    deny_list: QueryDenyList
    # Threads start on first use, so a lake that reads nothing starts none.
    io_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(IO_THREADS, thread_name_prefix="lake-io")
    )
    settler: SettleQueue = field(default_factory=SettleQueue)
    off_runtime: OffRuntime = field(default_factory=OffRuntime)
    sql_views: SqlViews = field(default_factory=SqlViews)  # the stored `CREATE MATERIALIZED VIEW`s
    # The catalog's announced changes (listened to from the first query on) and the instances' partition
    # sets found up to date, reused while no change is announced.
    catalog_changes: CatalogChanges = field(default_factory=CatalogChanges)
    fresh_instances: FreshInstances = field(default_factory=FreshInstances)
    scan_frames: ScanFrames = field(default_factory=ScanFrames)  # their files' scans, reused as they are
    live_refresh: LiveRefresh = field(default_factory=LiveRefresh)  # live instances materialized as blocks arrive
    decode_ahead: DecodeAhead = field(init=False)  # live processes' blocks decoded as they arrive
    # The embedded PostgreSQL (no database URL configured) and the task restarting it when it stops.
    embedded: EmbeddedPostgres | None = None
    supervisor: Future[None] | None = None

    def __post_init__(self) -> None:
        """Sets up decoding ahead (it decodes with this lake)."""
        self.decode_ahead = DecodeAhead(self)

    @classmethod
    def open(cls, settings: Settings, pool_size: int = 10) -> Lake:
        """Connects (starting the embedded PostgreSQL if no URL is set, supervised) and applies migrations."""
        embedded = None if settings.database_url else open_embedded_postgres(settings.data_dir)
        database_url = settings.database_url or embedded.url
        store = ObjectStore(settings.lake_uri, settings.s3_endpoint)
        loop = BackgroundLoop()
        changes = CatalogChanges()
        try:
            pool = loop.run(_open_pool(database_url, pool_size, changes))
        except BaseException:
            loop.stop()
            raise
        deny_list = QueryDenyList(loop, pool)
        lake = cls(
            settings,
            database_url,
            loop,
            pool,
            Catalog(pool),
            store,
            deny_list,
            catalog_changes=changes,
            embedded=embedded,
        )
        lake.live_refresh.seconds = settings.live_refresh_seconds
        lake.catalog_changes.follow(lambda key: lake.live_refresh.announced(lake.settler, key))
        if embedded is not None:
            supervise = embedded.supervise(pool, changes.server_settings)
            lake.supervisor = asyncio.run_coroutine_threadsafe(supervise, loop.loop)
        return lake

    def __enter__(self) -> Lake:
        """The lake itself: `with Lake.open(settings) as lake:` closes it on the way out."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Closes the lake."""
        self.close()

    def close(self) -> None:
        """Finishes the queued settles, writes the deny rules' last hits, then stops the lake's threads
        and closes its connections."""
        try:
            self.decode_ahead.close()  # first with the settle queue: both read through the pool and loop
            self.settler.close()  # settling reads payloads and writes through the pool and loop
            self.sql_views.query_threads.close()  # before off_runtime: their scans run there
            self.off_runtime.close()
            self.io_pool.shutdown(wait=True, cancel_futures=True)
            self.deny_list.close()
            if self.supervisor is not None:  # before the pool: a restart in flight would reconfigure it
                self.supervisor.cancel()
            self.loop.run(self.catalog_changes.close(), timeout=10)  # its connection back to the pool
            self.loop.run(self.pool.close(), timeout=10)
        finally:
            self.loop.stop()


async def _open_pool(database_url: str, pool_size: int, changes: CatalogChanges) -> asyncpg.Pool:
    """The lake's pool, once migrated: connections named by the lake's token, whose announced changes
    `changes` counts (`catalog_changes.py`)."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=pool_size,
        reset=_keep_session,
        connection_class=AnnouncingConnection,
        init=changes.joined,
        server_settings=changes.server_settings,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Connections go back to the pool as they are: spanlake sets no session state (its advisory
    locks are transaction-scoped), and asyncpg's default reset costs a round trip per query."""
