"""Catalog changes announced across processes, so that a query reuses what it checked while nothing changed.

Every write that changes what an instance's query would find announces the instance on PostgreSQL's
`spanlake_catalog` channel, in the writing transaction (so at its commit, and never for a rollback):
a block's row (its process id), a partition's insert or retirement (its view instance id: a process,
a stream or 'global'). Each process that queries listens on one connection of its pool and keeps a
generation per announced key; a query's result may be reused while the generation it was computed at
is still the current one. Whatever the writer — this process, an ingestion worker, another role on
another machine — its announcement reaches every listener.

A notification travels on its own: a client acknowledged by a writer can query before the listener
has it. So a generation is read after a round trip on the listening connection that reads nothing
(`SELECT 1`): PostgreSQL hands a session the notifications committed before its statement ahead of
the statement's end, so every change committed before the query began is counted. Concurrent queries
share such a round trip when it started after they asked; a query starts its own as it begins
(`began_query`), so that the round trip runs while its session is built and its SQL planned, and its
generations wait for that very round trip (no hop of their own through the loop).

Trusting the listener without a round trip is wrong in general: a writer's commit signals the
listening session before the writer is acknowledged, but the notification still has to reach this
process, whose loop may not have read it yet when the writer's client sends its next query (a block
another process writes is seen by the very next query: tests/test_warm_queries.py). It is right when
this process is the catalog's only writer ("alone", the usual single `spanlake serve`), and it wrote
nothing since its last round trip:
* its own writes: each pool connection (`AnnouncingConnection`) counts the commits of the statements
  that announce, as they return (before any writer acknowledges them); a query after one makes a round
  trip again. (Listening on the writing connection itself would not do: PostgreSQL hands a session its
  own notifications only after the statement's answer, measured on PostgreSQL 16.)
* other processes: every connection of a lake's pool is named by the lake's token (PostgreSQL's
  `application_name`; one lake per process, as `spanlake serve`). Being alone is entered on the
  listening connection by taking SOLE_LOCK shared, then finding no other client connection to the
  database; a new pool connection of any lake, before its first statement, announces itself on
  WRITERS_CHANNEL and then takes SOLE_LOCK exclusively, which waits until every lake alone heard it
  and gave its shared lock up (`joined`). So a lake alone stops being so before another's first write
  can commit, let alone be acknowledged (tests/test_catalog_alone.py). It tries again at most every
  ALONE_RETRY_SECONDS while it is not (once the others' connections closed). Any other connection to
  the database (psql, a tool) keeps every lake from being alone while it is open.

While not listening (before the first query, after the connection dropped: PostgreSQL restarted)
nothing is reused; each new listening session starts a new epoch, so nothing computed before it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger(__name__)

CHANNEL = "spanlake_catalog"
# SQL announcing the key in parameter $n, to put in a writer's statement (pg_notify returns void), run
# through a lake's pool with execute, executemany, fetch, fetchval or fetchrow (`AnnouncingConnection`).
ANNOUNCE = "pg_notify('" + CHANNEL + "', {key})"
ANNOUNCING = ANNOUNCE.partition("{")[0]  # in the SQL of every statement that announces
# A listener that failed to start waits this long before trying again (the database may be restarting).
RETRY_SECONDS = 1.0

# Keys whose last change is remembered; a key forgotten reads as changed at the latest forgotten
# change, so a set computed before it is never reused by mistake (at worst checked once more).
MAX_KEYS = 100_000

# A new pool connection announces its process's token here before its first statement (`joined`).
WRITERS_CHANNEL = "spanlake_writers"
# The advisory lock a process alone holds shared on its listening connection ('spanlake' in ASCII).
SOLE_LOCK = 0x7370616E6C616B65
# How often a process that is not alone checks whether it became so (the others' connections closed).
ALONE_RETRY_SECONDS = 1.0
# How long a new connection waits for the processes alone to hear it: past it, the connection fails
# (so its writes do) rather than write unseen.
JOIN_TIMEOUT_SECONDS = 10.0
# The client connections to this database that are not this process's (any other may write).
OTHER_CONNECTIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND (backend_type = 'client backend' OR backend_type IS NULL) AND application_name IS DISTINCT FROM $1"
)

# (listening epoch, number of each key's last announced change in it)
Generation = tuple[int, ...]


@dataclass(frozen=True)
class QueryMark:
    """A query's beginning (see `began_query`): the round trips started before it, and the round trip
    started for it, which its generations wait for (without a hop of their own through the loop); None
    when the process was alone with nothing of its own to count (no round trip needed)."""

    round_trips_before: int
    round_trip: Future[Generation | None] | None


class AnnouncingConnection(asyncpg.Connection):
    """A pool connection that reports each commit of a change it announced (`on_commit`), as the
    statement committing it returns: before the writer's caller, who may acknowledge it, resumes."""

    on_commit: Callable[[], None] | None = None
    _announced = False  # a statement of the open transaction (or the last one) announced a change

    def _returned(self, query: str) -> None:
        """After a statement (also one that failed: counted to be safe)."""
        if ANNOUNCING in query:
            self._announced = True
        if self._announced and not self.is_in_transaction():
            self._announced = False
            if self.on_commit is not None:
                self.on_commit()

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        """asyncpg's `execute`, its announced commits reported."""
        try:
            return await super().execute(query, *args, **kwargs)
        finally:
            self._returned(query)

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> None:
        """asyncpg's `executemany`, its announced commits reported."""
        try:
            return await super().executemany(command, args, **kwargs)
        finally:
            self._returned(command)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[Any]:
        """asyncpg's `fetch`, its announced commits reported."""
        try:
            return await super().fetch(query, *args, **kwargs)
        finally:
            self._returned(query)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """asyncpg's `fetchval`, its announced commits reported."""
        try:
            return await super().fetchval(query, *args, **kwargs)
        finally:
            self._returned(query)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """asyncpg's `fetchrow`, its announced commits reported."""
        try:
            return await super().fetchrow(query, *args, **kwargs)
        finally:
            self._returned(query)


class CatalogChanges:
    """This process's generations of the announced keys, from a listening connection of the lake's pool."""

    def __init__(self) -> None:
        self._last_change: OrderedDict[str, int] = OrderedDict()
        self._changes = 0  # announcements received in this epoch
        self._forgotten = 0  # the latest change of the keys forgotten
        self._epoch = 0
        self._connection: asyncpg.pool.PoolConnectionProxy | None = None
        self._pool: asyncpg.Pool | None = None
        self._releasing: asyncio.Task[None] | None = None  # a dropped connection going back to the pool
        # Round trips on the listening connection, one at a time: how many started, and the number of the
        # last one that ended (every notification committed before it started is counted).
        self._round_trip = asyncio.Lock()
        self._round_trips_started = 0
        self._round_trip_ended = 0
        self._last_attempt = -RETRY_SECONDS
        self._starting = threading.Lock()
        self._followers: list[Callable[[str], None]] = []
        # Being the catalog's only writer (see the module's docstring).
        self.token = f"spanlake-{uuid.uuid4().hex}"  # the application_name of this lake's connections
        self._alone = False
        self._joining = asyncio.Lock()  # a new connection's announcement, or becoming alone: one at a time
        self._writers_heard = 0  # other processes' connections announced on WRITERS_CHANNEL
        self._last_alone_attempt = -ALONE_RETRY_SECONDS
        self._commits = 0  # commits of this process's pool announcing a change
        self._commits_counted = 0  # those whose notifications had come at the end of the last round trip

    @property
    def alone(self) -> bool:
        """Whether this process is the catalog's only writer, as far as it knows now."""
        return self._alone

    @property
    def round_trips(self) -> int:
        """The round trips started on the listening connection so far."""
        return self._round_trips_started

    @property
    def server_settings(self) -> dict[str, str]:
        """The session settings of this process's connections: its token as their application_name."""
        return {"application_name": self.token}

    def listen(self, lake: Lake) -> bool:
        """Starts listening unless already listening (or a recent attempt failed); whether it listens."""
        return self._connection is not None or self._start(lake)

    def follow(self, follower: Callable[[str], None]) -> None:
        """Calls `follower(key)` on the lake's loop for each key announced from now on (it must not block)."""
        self._followers.append(follower)

    def generation(self, lake: Lake, key: str, query_began: QueryMark | None = None) -> Generation | None:
        """The key's current generation, once the changes announced before this call (with a mark of
        `began_query`: before that query began) are counted; None when changes cannot be followed (then
        nothing may be reused)."""
        return self.generation_of(lake, (key,), query_began)

    def generation_of(
        self, lake: Lake, keys: tuple[str, ...], query_began: QueryMark | None = None
    ) -> Generation | None:
        """`generation` of several keys at once (one round trip at most)."""
        if self._connection is None and not self._start(lake):
            return None
        if self._counted():
            return self._current(keys)
        if query_began is not None and query_began.round_trip is not None:
            if self._round_trip_ended <= query_began.round_trips_before:
                query_began.round_trip.result()  # the query's own round trip, under way
            if self._round_trip_ended > query_began.round_trips_before:  # it ended (else the connection went)
                return self._current(keys)
        after = None if query_began is None else query_began.round_trips_before
        return lake.loop.run(self._generation_after_pending(keys, after))

    def _current(self, keys: tuple[str, ...]) -> Generation:
        return (self._epoch, *(self._last_change.get(key, self._forgotten) for key in keys))

    def began_query(self, lake: Lake) -> QueryMark | None:
        """A query begins: starts, without waiting for it, the round trip its generations are read after
        (it runs while the query is planned), unless every change is counted already; the mark to give
        `generation`. None while not following."""
        if self._connection is None and not self._start(lake):
            return None
        began = self._round_trips_started  # any round trip numbered above started after this line
        if self._counted():
            return QueryMark(began, None)
        if not self._alone and time.monotonic() - self._last_alone_attempt >= ALONE_RETRY_SECONDS:
            self._last_alone_attempt = time.monotonic()
            asyncio.run_coroutine_threadsafe(self._try_alone(), lake.loop.loop)
        round_trip = asyncio.run_coroutine_threadsafe(self._generation_after_pending((), began), lake.loop.loop)
        return QueryMark(began, round_trip)

    def _counted(self) -> bool:
        """Whether every change acknowledged so far is counted without a round trip: this process is
        alone and each of its own commits was followed by a round trip."""
        return self._alone and self._commits == self._commits_counted and self._connection is not None

    async def _generation_after_pending(self, keys: tuple[str, ...], asked_after: int | None) -> Generation | None:
        if asked_after is None:
            asked_after = self._round_trips_started
        async with self._round_trip:
            connection = self._connection
            if connection is None:
                return None
            if self._round_trip_ended <= asked_after:  # none started since the call: one now
                self._round_trips_started += 1
                number = self._round_trips_started
                commits = self._commits
                try:
                    await connection.execute("SELECT 1")
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    return None  # the connection is going: its termination stops the listening
                self._round_trip_ended = number
                self._commits_counted = max(self._commits_counted, commits)
            return self._current(keys)

    async def joined(self, connection: asyncpg.Connection) -> None:
        """A new connection of this lake's pool, before its first statement: its commits are counted, and
        unless this process is alone (then no other is), the processes alone hear of it and stop being so
        before it goes on (a timeout past JOIN_TIMEOUT_SECONDS fails the connection)."""
        if isinstance(connection, AnnouncingConnection):
            connection.on_commit = self._committed
        async with self._joining:
            if self._alone:
                return
            await connection.execute("SELECT pg_notify($1, $2)", WRITERS_CHANNEL, self.token)
            await connection.execute("SELECT pg_advisory_xact_lock($1)", SOLE_LOCK, timeout=JOIN_TIMEOUT_SECONDS)

    def _committed(self) -> None:
        self._commits += 1

    async def _try_alone(self) -> None:
        """Becomes alone if no other process has a connection to the database (see the module's docstring)."""
        async with self._joining, self._round_trip:
            connection = self._connection
            if connection is None or self._alone:
                return
            heard, commits = self._writers_heard, self._commits
            try:
                self._alone = await self._alone_on(connection, heard)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.info("could not check whether this process is the catalog's only writer: %s", err)
                return
            # Its statements were round trips: the notifications committed before them have come.
            self._commits_counted = max(self._commits_counted, commits)

    async def _alone_on(self, connection: asyncpg.pool.PoolConnectionProxy, heard: int) -> bool:
        """Takes SOLE_LOCK shared and finds no other process's connection, nor hears of one meanwhile
        (True); else gives the lock back (False)."""
        if not await connection.fetchval("SELECT pg_try_advisory_lock_shared($1)", SOLE_LOCK):
            return False  # a new connection is being announced
        alone = False
        try:
            others = await connection.fetchval(OTHER_CONNECTIONS, self.token)
            alone = others == 0 and heard == self._writers_heard
        finally:
            if not alone:
                await connection.execute("SELECT pg_advisory_unlock_shared($1)", SOLE_LOCK)
        return alone

    def _writer_joined(self, _connection: object, _pid: int, _channel: str, token: str) -> None:
        """Another process's new connection waits for the processes alone to give up SOLE_LOCK."""
        if token == self.token:
            return
        self._writers_heard += 1
        if self._alone:
            self._alone = False
            asyncio.get_running_loop().create_task(self._give_up_alone(self._connection))

    async def _give_up_alone(self, connection: asyncpg.pool.PoolConnectionProxy | None) -> None:
        async with self._round_trip:
            if connection is None or connection is not self._connection:
                return  # that connection's session, and its lock, ended
            # A connection going takes its session's locks with it.
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await connection.execute("SELECT pg_advisory_unlock_shared($1)", SOLE_LOCK)

    def _start(self, lake: Lake) -> bool:
        """Starts listening unless a recent attempt failed; whether it listens."""
        with self._starting:
            if self._connection is not None:
                return True
            if time.monotonic() - self._last_attempt < RETRY_SECONDS:
                return False
            self._last_attempt = time.monotonic()
            try:
                lake.loop.run(self._listen(lake.pool))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("not following catalog changes (every query checks the catalog): %s", err)
                return False
            self._last_alone_attempt = time.monotonic()
            lake.loop.run(self._try_alone())
            return True

    async def _listen(self, pool: asyncpg.Pool) -> None:
        connection = await pool.acquire()
        try:
            await connection.add_listener(CHANNEL, self._announced)
            await connection.add_listener(WRITERS_CHANNEL, self._writer_joined)
        except BaseException:
            await pool.release(connection)
            raise
        connection.add_termination_listener(self._terminated)
        self._epoch += 1
        self._last_change.clear()
        self._changes = self._forgotten = 0
        self._pool, self._connection = pool, connection

    def _announced(self, _connection: object, _pid: int, _channel: str, key: str) -> None:
        self._changes += 1
        self._last_change[key] = self._changes
        self._last_change.move_to_end(key)
        if len(self._last_change) > MAX_KEYS:
            _, self._forgotten = self._last_change.popitem(last=False)
        for follower in self._followers:
            follower(key)

    def _terminated(self, _connection: object) -> None:
        """The listening connection closed (PostgreSQL stopped): nothing is reused until listening again."""
        connection, self._connection = self._connection, None
        self._alone = False  # the connection's session held the lock
        if connection is not None and self._pool is not None:
            self._releasing = asyncio.get_running_loop().create_task(self._pool.release(connection))

    async def close(self) -> None:
        """Stops listening and gives the connection back to the pool (after a round trip under way: the
        connection runs one operation at a time; the round trips waiting then find it gone), without the
        lock of a process alone."""
        async with self._round_trip:
            connection, self._connection = self._connection, None
            alone, self._alone = self._alone, False
            if connection is not None and self._pool is not None:
                if not connection.is_closed():
                    await connection.remove_listener(CHANNEL, self._announced)
                    await connection.remove_listener(WRITERS_CHANNEL, self._writer_joined)
                    if alone:
                        await connection.execute("SELECT pg_advisory_unlock_shared($1)", SOLE_LOCK)
                await self._pool.release(connection)
