"""The deny-list check in front of every statement, whichever door it came in by: the query's
attribution, as micromegas's match context, checked against the lake's rules before its session is
built; and the lakehouse's session factory, which checks it."""

from __future__ import annotations

import json

from datafusion import SessionContext

from spanlake import tracing
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.context import QueryContext, QueryDenied
from spanlake.lakehouse.query.limits import QueryLimits
from spanlake.lakehouse.query.read_scope import AudienceIndex
from spanlake.lakehouse.query.runner import QueryRunner
from spanlake.lakehouse.query.session import query_scope, splits_inputs
from spanlake.lakehouse.query.session_pool import SessionPool
from spanlake.lakehouse.query.view_ddl import ViewStatements
from spanlake.lakehouse.query_denials import admin_recovery, denial_message

# The match-context fields of micromegas's denial warning line, in its order.
_DENIAL_LOG_FIELDS = ("sql_hash", "user_id", "email", "client", "entrypoint", "client_ip")


def client_ip(peer: str) -> str:
    """A peer as gRPC writes it ('ipv4:127.0.0.1:39078', 'ipv6:[::1]:39078') → the address alone."""
    _, _, address = peer.partition(":")
    host = address.rpartition(":")[0] or address
    return host.strip("[]")


def attribution(query: QueryContext) -> dict[str, str | None]:
    """The match context a deny rule is evaluated over ("unknown" where micromegas says so)."""
    client = query.client
    return {
        "user_id": query.principal.name if query.principal is not None else "",
        "email": "",
        "service_account": None,
        "client": client.get("type") or "unknown",
        "agent": client.get("agent") or "unknown",
        "entrypoint": client.get("entrypoint") or "unknown",
        "session": client.get("session") or None,
        "notebook": client.get("notebook") or None,
        "cell": client.get("cell") or None,
        "client_ip": client_ip(client.get("peer", "")),
        "sql": query.sql,
        "sql_hash": query.sql_hash,
    }


def admit(lake: Lake, query: QueryContext, is_admin: bool) -> None:
    """Raises QueryDenied, with micromegas's message, if a deny rule matches the statement."""
    if not query.sql:
        return  # metadata requests carry no statement
    match_context = attribution(query)
    rule = lake.deny_list.check(match_context)
    if rule is not None and not admin_recovery(query.sql, is_admin):
        _signal_denial(str(rule.rule_id), rule.reason, match_context, query.query_id)
        raise QueryDenied(denial_message(rule, query.query_id))


def _signal_denial(rule_id: str, reason: str, match_context: dict[str, str | None], query_id: str) -> None:
    """micromegas's signals of a denial in the server's own telemetry: a warning line and `query_denied`."""
    fields = " ".join(
        f"{name}={match_context[name]}"
        for name in ("sql_hash", "user_id", "email", "client", "entrypoint", "client_ip")
    )
    tracing.warn(f"query denied rule_id={rule_id} reason={json.dumps(reason)} {fields} query_id={query_id}")
    tracing.imetric("query_denied", "count", 1, {"rule_id": rule_id})


class LakeSessions:
    """The lakehouse's session factory: the deny list checked, then a session for the query with its
    memory pool, reading only what the principal's audiences may read; admin functions for admins
    only (everyone when auth is off). Sessions whose query ended cleanly are given back and serve later
    queries (`session_pool.py`)."""

    def __init__(self, lake: Lake, memory_limit_bytes: int = 0) -> None:
        """Sessions of `lake`, each with a memory pool of `memory_limit_bytes` (0: unbounded)."""
        self._lake = lake
        self._audiences = AudienceIndex(lake)
        self._pool = SessionPool(lake, memory_limit_bytes)

    def __call__(self, query: QueryContext) -> SessionContext:
        """The session of `query` (QueryDenied if a deny rule matches it)."""
        principal = query.principal
        is_admin = principal is None or principal.is_admin
        admit(self._lake, query, is_admin)
        identity = principal.name if principal is not None else "anonymous"
        trace_parent = tracing.current_span_context()  # the table functions' parent: the query's
        with tracing.async_span("lakehouse.make_session_context"):
            read_scope = self._audiences.scope_for(principal)
            scope = query_scope(self._lake, trace_parent, query.query_range, identity, read_scope)
            return self._pool.session(scope, is_admin, splits_inputs(query.sql))

    def give_back(self, ctx: SessionContext) -> None:
        """Takes back the session of a query whose stream ended, for a later query."""
        self._pool.give_back(ctx)


def lakehouse_runner(lake: Lake) -> QueryRunner:
    """The runner of every door of a process: the lake's sessions, within the lake's settings
    (SPANLAKE_MAX_SQL_BYTES, _MAX_SQL_DEPTH, _MAX_SQL_JOINS, _MAX_PLAN_NODES, _QUERY_TIMEOUT_SECONDS,
    _QUERY_MEMORY_LIMIT_MB, _STREAM_BUFFER_MB, _RESULT_BUFFER_MB, _RESULT_BUFFER_WAIT_SECONDS)."""
    settings = lake.settings
    limits = QueryLimits(
        settings.max_sql_bytes,
        settings.max_sql_depth,
        settings.query_timeout_seconds,
        settings.max_sql_joins,
        settings.max_plan_nodes,
        settings.stream_buffer_mb << 20,
        settings.result_buffer_mb << 20,
        settings.result_buffer_wait_seconds,
    )
    sessions = LakeSessions(lake, settings.query_memory_limit_mb * 1024 * 1024)
    return QueryRunner(sessions, limits, ViewStatements(lake))
