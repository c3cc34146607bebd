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

Trusting the listener without a round trip would be cheaper, and wrong: a writer's commit signals the
listening session before the writer is acknowledged, but the notification still has to reach this
process, whose loop may not have read it yet when the writer's client sends its next query (a block
another process writes is seen by the very next query: tests/test_warm_queries.py).

While not listening (before the first query, after the connection dropped: PostgreSQL restarted)
nothing is reused; each new listening session starts a new epoch, so nothing computed before it is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger(__name__)

CHANNEL = "spanlake_catalog"
# SQL announcing the key in parameter $n, to put in a writer's statement (pg_notify returns void).
ANNOUNCE = "pg_notify('" + CHANNEL + "', {key})"
# A listener that failed to start waits this long before trying again (the database may be restarting).
RETRY_SECONDS = 1.0

# Keys whose last change is remembered; a key forgotten reads as changed at the latest forgotten
# change, so a set computed before it is never reused by mistake (at worst checked once more).
MAX_KEYS = 100_000

Generation = tuple[int, int]  # (listening epoch, number of the key's last announced change in it)


@dataclass(frozen=True)
class QueryMark:
    """A query's beginning (see `began_query`): the round trips started before it, and the round trip
    started for it, which its generations wait for (without a hop of their own through the loop)."""

    round_trips_before: int
    round_trip: Future[Generation | None]


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
        if self._connection is None and not self._start(lake):
            return None
        if query_began is not None:
            if self._round_trip_ended <= query_began.round_trips_before:
                query_began.round_trip.result()  # the query's own round trip, under way
            if self._round_trip_ended > query_began.round_trips_before:  # it ended (else the connection went)
                return (self._epoch, self._last_change.get(key, self._forgotten))
        after = None if query_began is None else query_began.round_trips_before
        return lake.loop.run(self._generation_after_pending(key, after))

    def began_query(self, lake: Lake) -> QueryMark | None:
        """A query begins: starts, without waiting for it, the round trip its generations are read after
        (it runs while the query is planned); the mark to give `generation`. None while not following."""
        if self._connection is None and not self._start(lake):
            return None
        began = self._round_trips_started  # any round trip numbered above started after this line
        round_trip = asyncio.run_coroutine_threadsafe(self._generation_after_pending(None, began), lake.loop.loop)
        return QueryMark(began, round_trip)

    async def _generation_after_pending(self, key: str | None, asked_after: int | None) -> Generation | None:
        if asked_after is None:
            asked_after = self._round_trips_started
        async with self._round_trip:
            connection = self._connection
            if connection is None:
                return None
            if self._round_trip_ended <= asked_after:  # none started since the call: one now
                self._round_trips_started += 1
                number = self._round_trips_started
                try:
                    await connection.execute("SELECT 1")
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    return None  # the connection is going: its termination stops the listening
                self._round_trip_ended = number
            return (self._epoch, self._last_change.get(key, self._forgotten))

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
            return True

    async def _listen(self, pool: asyncpg.Pool) -> None:
        connection = await pool.acquire()
        try:
            await connection.add_listener(CHANNEL, self._announced)
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
        if connection is not None and self._pool is not None:
            self._releasing = asyncio.get_running_loop().create_task(self._pool.release(connection))

    async def close(self) -> None:
        """Stops listening and gives the connection back to the pool (after a round trip under way: the
        connection runs one operation at a time; the round trips waiting then find it gone)."""
        async with self._round_trip:
            connection, self._connection = self._connection, None
            if connection is not None and self._pool is not None:
                if not connection.is_closed():
                    await connection.remove_listener(CHANNEL, self._announced)
                await self._pool.release(connection)
