"""The read side of access control: what one query may read, by the audiences of its principal.

A scoped principal (an analytics key with `read_audiences`, a signed-in reader) reads only the
processes stamped with one of its audiences; admins and legacy keys are unscoped (`for_principal`
gives None, and nothing is filtered). Global views keep only readable processes' rows (a view
without a `process_id` column shows none: fail closed); the functions taking an id treat another
audience's id exactly as an id that does not exist, with the same answer, so a denial is never an
existence oracle. As micromegas (read_scope.rs, audience_guard.rs, ownership_rewrite.rs).

A new function taking an id takes the session's `ReadScope | None` (`session._table_functions`) and,
where it finds the id, treats `not read_scope.process_readable(process_id)` as not found: the seam
for `trace_spans` (the trace index, issue 23).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable

import pyarrow as pa
from datafusion import col, functions, lit
from datafusion.expr import Expr

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.context import Principal
from spanlake.views.view import View

PROCESS_COLUMN = "process_id"


class ReadScope:
    """The processes a query may read (looked up once per query, on first use). Thread-safe: table
    functions run on DataFusion's threads."""

    def __init__(self, lake: Lake, audiences: frozenset[str]) -> None:
        """A scope reading the processes stamped with one of `audiences`."""
        self.lake = lake
        self.audiences = audiences
        self._lock = threading.Lock()
        self._process_ids: list[str] | None = None
        self._readable: dict[tuple[str, uuid.UUID], bool] = {}

    def process_ids(self) -> list[str]:
        """The ids of every readable process."""
        with self._lock:
            if self._process_ids is None:
                self._process_ids = self.lake.loop.run(self.lake.catalog.audience_processes(sorted(self.audiences)))
            return self._process_ids

    def rows(self, view: View) -> Expr:
        """The filter keeping a global view's readable rows."""
        if PROCESS_COLUMN not in view.schema.names:
            return lit(False)
        ids = self.process_ids()
        if not ids:
            return lit(False)
        return functions.in_list(col(PROCESS_COLUMN), [lit(pa.scalar(i, pa.utf8())) for i in ids])

    def process_readable(self, process_id: uuid.UUID) -> bool:
        """Whether the process exists in a readable audience."""
        return self._readable_by("process", process_id, self.lake.catalog.process_audience)

    def stream_readable(self, stream_id: uuid.UUID) -> bool:
        """Whether the stream's process exists in a readable audience."""
        return self._readable_by("stream", stream_id, self.lake.catalog.stream_audience)

    def block_readable(self, block_id: uuid.UUID) -> bool:
        """Whether the block's process exists in a readable audience."""
        return self._readable_by("block", block_id, self.lake.catalog.block_audience)

    def _readable_by(
        self, kind: str, id_: uuid.UUID, audience_of: Callable[[uuid.UUID], Awaitable[tuple[str | None] | None]]
    ) -> bool:
        with self._lock:
            known = self._readable.get((kind, id_))
        if known is not None:
            return known
        # An error here propagates: the query fails, nothing is read (fail closed).
        found = self.lake.loop.run(audience_of(id_))
        readable = found is not None and found[0] in self.audiences  # unstamped (None): never
        with self._lock:
            self._readable[(kind, id_)] = readable
        return readable


def can_read(principal: Principal | None, audience: str | None) -> bool:
    """Whether a principal reads what is stamped `audience` (None: unstamped, read by unscoped principals only)."""
    return principal is None or principal.read_audiences is None or audience in principal.read_audiences


def for_principal(lake: Lake, principal: Principal | None) -> ReadScope | None:
    """The scope of a principal's queries; None when it reads everything (no auth, admins, legacy keys)."""
    if principal is None or principal.read_audiences is None:
        return None
    return ReadScope(lake, principal.read_audiences)
