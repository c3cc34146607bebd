"""The read side of access control: what one query may read, by the audiences of its principal.

A scoped principal (an analytics key with `read_audiences`, a signed-in reader) reads only the
processes stamped with one of its audiences; admins and legacy keys are unscoped (`AudienceIndex.scope_for`
gives None, and nothing is filtered). Global views keep only readable processes' rows (a view
without a `process_id` column shows none, one with `process_ids` only the rows whose processes are all
readable: fail closed); the functions taking an id treat another
audience's id exactly as an id that does not exist, with the same answer, so a denial is never an
existence oracle. As micromegas (read_scope.rs, audience_guard.rs, ownership_rewrite.rs).

A new function taking an id takes the session's `ReadScope | None` (`session._table_functions`) and,
where it finds the id, treats `not read_scope.process_readable(process_id)` as not found: the seam
for `trace_spans` (the trace index, issue 23).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Awaitable, Callable

import pyarrow as pa
from datafusion import col, functions, lit
from datafusion.expr import Expr

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.context import Principal
from spanlake.views.view import View

PROCESS_COLUMN = "process_id"
# A global view whose rows gather several processes (`traces`): a row is readable when all of them are.
PROCESS_LIST_COLUMN = "process_ids"


# A process's audience never changes once stored (the first insert wins), nor does a stream's or a
# block's process: a found one is cached for good. The processes of a set of audiences grow: their
# ids are cached this long (a new process shows up at most this late, never another audience's).
PROCESS_IDS_SECONDS = 1.0
MAX_CACHED_IDS = 100_000

AudienceLookup = Callable[[uuid.UUID], Awaitable[tuple[str | None] | None]]


class AudienceIndex:
    """The audiences of processes, streams and blocks, and the processes of audiences, cached for every
    query of a runner (the scopes it makes read through it). Thread-safe."""

    def __init__(self, lake: Lake) -> None:
        """An index over `lake`'s catalog."""
        self.lake = lake
        self._lock = threading.Lock()
        self._audiences: dict[tuple[str, uuid.UUID], str | None] = {}
        self._process_ids: dict[frozenset[str], tuple[float, list[str]]] = {}

    def scope_for(self, principal: Principal | None) -> ReadScope | None:
        """The scope of a principal's queries; None when it reads everything (no auth, admins, legacy keys)."""
        if principal is None or principal.read_audiences is None:
            return None
        return ReadScope(self, principal.read_audiences)

    def process_ids(self, audiences: frozenset[str]) -> list[str]:
        """The ids of the processes stamped with one of `audiences`."""
        now = time.monotonic()
        with self._lock:
            cached = self._process_ids.get(audiences)
        if cached is not None and cached[0] > now:
            return cached[1]
        ids = self.lake.loop.run(self.lake.catalog.audience_processes(sorted(audiences)))
        with self._lock:
            if len(self._process_ids) >= MAX_CACHED_IDS // 1000:
                self._process_ids.clear()
            self._process_ids[audiences] = (now + PROCESS_IDS_SECONDS, ids)
        return ids

    def audience(self, kind: str, id_: uuid.UUID) -> tuple[str | None] | None:
        """(the audience of a process or stream,) or None while it is unknown."""
        with self._lock:
            if (kind, id_) in self._audiences:
                return (self._audiences[(kind, id_)],)
        lookup: AudienceLookup = {
            "process": self.lake.catalog.process_audience,
            "stream": self.lake.catalog.stream_audience,
        }[kind]
        # An error here propagates: the query fails, nothing is read (fail closed).
        found = self.lake.loop.run(lookup(id_))
        if found is not None:
            with self._lock:
                if len(self._audiences) >= MAX_CACHED_IDS:
                    self._audiences.clear()
                self._audiences[(kind, id_)] = found[0]
        return found


class ReadScope:
    """The processes one query may read: those stamped with one of its audiences."""

    def __init__(self, index: AudienceIndex, audiences: frozenset[str]) -> None:
        """A scope reading the processes stamped with one of `audiences`, looked up in `index`."""
        self.index = index
        self.audiences = audiences

    def process_ids(self) -> list[str]:
        """The ids of every readable process."""
        return self.index.process_ids(self.audiences)

    def rows(self, view: View) -> Expr:
        """The filter keeping a global view's readable rows."""
        names = view.schema.names
        ids = self.process_ids()
        if not ids or (PROCESS_COLUMN not in names and PROCESS_LIST_COLUMN not in names):
            return lit(False)
        readable = [lit(pa.scalar(i, pa.utf8())) for i in ids]
        if PROCESS_COLUMN in names:
            return functions.in_list(col(PROCESS_COLUMN), readable)
        return functions.array_has_all(functions.make_array(*readable), col(PROCESS_LIST_COLUMN))

    def process_readable(self, process_id: uuid.UUID) -> bool:
        """Whether the process exists in a readable audience."""
        return self._readable("process", process_id)

    def stream_readable(self, stream_id: uuid.UUID) -> bool:
        """Whether the stream's process exists in a readable audience."""
        return self._readable("stream", stream_id)

    def _readable(self, kind: str, id_: uuid.UUID) -> bool:
        found = self.index.audience(kind, id_)
        return found is not None and found[0] in self.audiences  # unstamped (None): never


def can_read(principal: Principal | None, audience: str | None) -> bool:
    """Whether a principal reads what is stamped `audience` (None: unstamped, read by unscoped principals only)."""
    return principal is None or principal.read_audiences is None or audience in principal.read_audiences
