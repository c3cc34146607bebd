"""Sessions kept from one query to the next, so that DataFusion's parquet metadata is read once.

DataFusion caches the footers (and page indexes) of the parquet files it reads in a session's runtime,
and datafusion-python builds a runtime per `SessionContext`: a new session per query read every footer
of its files again (50 hourly partitions: 2-5 ms of a 16 ms GROUP BY, benchmarks/row_groups.py), and
registered its table functions and UDFs again (0.3 ms). Here a session whose query ended cleanly is
given back and serves a later query of the same kind (admin or not, inputs split or not), once given
that query's scope (`session.QueryScope`).

What keeps a reused session's answers those of a new one:
* freshness: DataFusion asks the schema provider for its tables and calls the table functions at each
  planning, which find the catalog as of the query's beginning; only the parquet metadata is cached,
  by path, size and modification time (a file written again is read again);
* the read scope, the query range and the query's identity are read from the scope when a function
  runs, never captured; the tables a table function built for a query (kept while that query is
  planned again, `table_function.py`) are forgotten when the session serves the next;
* limits and stops: a session serves one query at a time and is given back only once its query's
  stream ended (no operator of it holds memory): its memory pool is the query's alone;
* a session a query changed is never given back: a table registered in it (`create_dataframe`, a web
  page's view), settings changed or functions registered again (`changed_sessions`);
* no leak: at most MAX_IDLE_PER_KIND idle sessions per kind; a session not given back (its query
  failed or was stopped, or its plan expired in the plan cache) is dropped as before, and nothing a
  session holds refers to it (`session.py`).
"""

from __future__ import annotations

import threading

from datafusion import SessionContext

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import changed_sessions
from spanlake.lakehouse.query.session import LakeSession, QueryScope, new_session

# Each idle session keeps its files' metadata (DataFusion bounds it per session); the most recently
# given back serves first, so its cache is the warmest.
MAX_IDLE_PER_KIND = 2


class SessionPool:
    """Idle sessions of one lake, by kind (admin functions or not, inputs split or not). Thread-safe."""

    def __init__(self, lake: Lake, memory_limit_bytes: int | None) -> None:
        """Sessions with a memory pool of `memory_limit_bytes` each (0 or None: unbounded)."""
        self._lake = lake
        self._memory_limit_bytes = memory_limit_bytes
        self._idle: dict[tuple[bool, bool], list[LakeSession]] = {}
        self._lock = threading.Lock()

    def session(self, scope: QueryScope, is_admin: bool, split_inputs: bool) -> LakeSession:
        """A session serving the query of `scope`: an idle one of its kind, else a new one."""
        with self._lock:
            idle = self._idle.get((is_admin, split_inputs))
            ctx = idle.pop() if idle else None
        if ctx is None:
            return new_session(self._lake, scope, is_admin, split_inputs, self._memory_limit_bytes)
        ctx.serve(scope)
        return ctx

    def give_back(self, ctx: SessionContext) -> None:
        """Keeps a session whose query's stream ended, for a later query, unless its query changed it."""
        if not isinstance(ctx, LakeSession) or ctx.tables.registered or changed_sessions.changed(ctx):
            return
        with self._lock:
            idle = self._idle.setdefault((ctx.is_admin, ctx.split_inputs), [])
            if len(idle) < MAX_IDLE_PER_KIND:
                idle.append(ctx)
