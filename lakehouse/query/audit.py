"""One structured JSON line per query on the `flightsql_query_audit` logger (micromegas's log target),
with its SQL and the SQL's fingerprint, whichever door the query came in by (`rpc` names it: DoGet,
GetFlightInfo, … for Flight SQL, web.sql, web.query_stream, … for the web UI).

A query's record is emitted exactly once: when its stream ends ("ok"), when it fails ("error", with
the class user|resource|internal|denied), or when the client goes away before the end ("incomplete").
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from spanlake import tracing
from spanlake.lakehouse.query.context import Principal
from spanlake.lakehouse.query.failures import Failure
from spanlake.lakehouse.timestamps import format_rfc3339_ns

AUDIT_LOGGER = "flightsql_query_audit"
_audit_log = logging.getLogger(AUDIT_LOGGER)


# SQL tokens, as micromegas's fingerprint sees them: comments and whitespace (dropped), string and
# number literals (each becomes `?`), quoted identifiers (kept verbatim), words (lower-cased), and
# any other character.
_TOKENS = re.compile(
    r"""(?P<skip>\s+|--[^\n]*|/\*.*?\*/)"""
    r"""|(?P<literal>[EeNnXx]?'(?:[^']|'')*'|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"""
    r"""|(?P<quoted>"(?:[^"]|"")*"|`[^`]*`)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_$]*)"""
    r"""|(?P<other>.)""",
    re.DOTALL,
)


# Dashboards send the same statements again and again: what is read from the last KEPT_STATEMENTS
# texts of up to KEPT_SQL_CHARS is kept (tokenizing a 2 KB statement takes a tenth of a millisecond).
KEPT_SQL_CHARS = 16_384
KEPT_STATEMENTS = 512

T = TypeVar("T")


def kept_per_text(read: Callable[[str], T]) -> Callable[[str], T]:
    """`read` of a statement's text, its answers for the last KEPT_STATEMENTS short texts kept."""
    kept = functools.lru_cache(maxsize=KEPT_STATEMENTS)(read)

    @functools.wraps(read)
    def read_or_kept(sql: str) -> T:
        return kept(sql) if len(sql) <= KEPT_SQL_CHARS else read(sql)

    return read_or_kept


@kept_per_text
def sql_hash(sql: str) -> str:
    """The statement's fingerprint (micromegas's): the first 16 hex digits of the SHA-256 of its
    tokens with literals replaced by `?`, so the refreshes of one dashboard panel, which differ only
    in their time literals, share it. It is what a deny rule on `sql_hash` names."""
    parts = []
    for match in _TOKENS.finditer(sql):
        kind = match.lastgroup
        if kind == "skip":
            continue
        text = match.group()
        parts.append("?" if kind == "literal" else text.lower() if kind == "word" else text)
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]


def _query_metrics(record: dict[str, Any]) -> None:
    """The query's figures as metrics of spanlake's own process (self-tracing; discarded when off)."""
    tags = {"rpc": record["rpc"], "status": record["status"]}
    tracing.fmetric("query_planning_time", "ms", record["planning_ms"], tags)
    tracing.fmetric("query_execution_time", "ms", record["execution_ms"], tags)
    tracing.fmetric("query_total_time", "ms", record["total_ms"], tags)
    tracing.imetric("query_rows_out", "count", record["rows"], tags)
    tracing.imetric("query_bytes_out", "bytes", record["bytes"], tags)


class QueryAudit:
    """Timings, volumes and outcome of one query, filled in as it runs."""

    def __init__(
        self,
        query_id: str,
        rpc: str,
        sql: str,
        client: dict[str, str],
        principal: Principal | None,
        recorded: bool = True,
    ) -> None:
        """Starts the query's clock; `rpc` is the door (Flight SQL's RPC, or `web.<door>`); nothing is
        written when not `recorded`."""
        self.query_id = query_id
        self._start = time.perf_counter()
        self._rpc = rpc
        self.sql = sql
        self.sql_hash = sql_hash(sql)
        self._client = client
        self._user = principal.name if principal is not None else ""
        self.query_range: tuple[int, int] | None = None
        self.limit: int | None = None
        self.plan_cached = False  # Flight's plan cache: a GetFlightInfo's plan executed by its DoGet
        self.plan_kept = False  # the session's kept plan of the same statement (kept_plans.py)
        self.planning_ms = 0.0
        self.execution_ms = 0.0
        self.rows = 0
        self.bytes = 0
        self.engine = "datafusion"  # or "cluster": where the query ran
        self.engine_note: str | None = None  # with a query cluster: why DataFusion ran it
        self._emitted = not recorded
        self._lock = threading.Lock()

    def ok(self) -> None:
        """The query ended with all its results sent."""
        self._emit("ok", None)

    def fail(self, failure: Failure) -> Failure:
        """The query failed; returns the failure, to be raised."""
        self._emit("error", failure)
        return failure

    def incomplete(self) -> None:
        """The client went away before the end (no-op once the record is written)."""
        self._emit("incomplete", None)

    def _emit(self, status: str, failure: Failure | None) -> None:
        with self._lock:
            if self._emitted:
                return
            self._emitted = True
        record = self._record(status, failure)
        _audit_log.info(json.dumps(record, separators=(",", ":")))
        _query_metrics(record)

    def _record(self, status: str, failure: Failure | None) -> dict[str, Any]:
        begin, end = map(format_rfc3339_ns, self.query_range) if self.query_range is not None else (None, None)
        client = self._client
        return {
            "query_id": self.query_id,
            "rpc": self._rpc,
            "client": client.get("type", "unknown"),
            "agent": client.get("agent", "unknown"),
            "entrypoint": client.get("entrypoint", "unknown"),
            "session": client.get("session"),
            "notebook": client.get("notebook"),
            "cell": client.get("cell"),
            "peer": client.get("peer", ""),
            "user": self._user,
            "sql": self.sql,
            "sql_hash": self.sql_hash,
            "range_begin": begin,
            "range_end": end,
            "limit": self.limit,
            "plan_cached": self.plan_cached,
            "plan_kept": self.plan_kept,
            "planning_ms": round(self.planning_ms, 3),
            "execution_ms": round(self.execution_ms, 3),
            "total_ms": round((time.perf_counter() - self._start) * 1000.0, 3),
            "rows": self.rows,
            "bytes": self.bytes,
            "engine": self.engine,
            "engine_note": self.engine_note,
            "status": status,
            "error_class": failure.error_class if failure is not None else None,
            "error": failure.message if failure is not None else None,
        }
