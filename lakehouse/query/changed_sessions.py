"""Sessions a query changed beyond its own scope — settings set, functions registered again with other
types — which must never serve another query (`session_pool.py`)."""

from __future__ import annotations

import weakref

from datafusion import SessionContext

_changed: weakref.WeakSet[SessionContext] = weakref.WeakSet()


def mark_changed(ctx: SessionContext) -> None:
    """Notes that `ctx` was changed: it ends with its query."""
    _changed.add(ctx)


def changed(ctx: SessionContext) -> bool:
    """Whether `ctx` was changed by a query."""
    return ctx in _changed
