"""The query deny list (micromegas's): admin-written rules, each a boolean SQL expression over what
is known of a query before it is planned (who, which client, its SQL and fingerprint). A query
matching a rule is refused before any work is done for it.

Rules are rows of `query_deny_list` in PostgreSQL; each lake (`lake.deny_list`) keeps them in a
snapshot, reloaded every REFRESH_SECONDS (so a rule written through another server process applies
within that delay) and updated at once by the process that adds or removes one. DataFusion parses and
evaluates the expressions, over a one-row table of the match context.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import asyncpg
import pyarrow as pa
from datafusion import DataFrame, SessionContext

from spanlake.lakehouse.catalog import Catalog
from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.loop import BackgroundLoop

log = logging.getLogger(__name__)

REFRESH_SECONDS = 10.0
MAX_RULES = 100
ADMIN_FUNCTIONS = ("deny_queries", "remove_query_denial", "list_query_denials")

# The columns a rule may name; all nullable strings (a header not sent is NULL, so a rule on it
# does not fire). `user_id`, not `user`: DataFusion parses a bare `user` as a function call.
MATCH_COLUMNS = (
    "user_id",
    "email",
    "service_account",
    "client",
    "agent",
    "entrypoint",
    "session",
    "notebook",
    "cell",
    "client_ip",
    "sql",
    "sql_hash",
)
MATCH_SCHEMA = pa.schema([pa.field(name, pa.utf8()) for name in MATCH_COLUMNS])
_PROBE = {name: "probe" for name in MATCH_COLUMNS}


@dataclass(frozen=True)
class DenyRule:
    """One row of `query_deny_list`."""

    rule_id: uuid.UUID
    created_at: dt.datetime
    created_by: str
    reason: str
    match_expr: str
    last_hit_at: dt.datetime | None


def _match_frame(attribution: dict[str, str | None]) -> DataFrame:
    """A one-row table `match_context` of the query's attribution."""
    ctx = SessionContext()
    columns = [pa.array([attribution.get(name)], pa.utf8()) for name in MATCH_COLUMNS]
    ctx.register_record_batches("match_context", [[pa.record_batch(columns, schema=MATCH_SCHEMA)]])
    return ctx.table("match_context")


def compile_rule(match_expr: str) -> None:
    """Checks that `match_expr` is a boolean expression over the match context that names one of its
    columns (a rule naming none would deny every query) and evaluates; QueryError otherwise."""
    frame = _match_frame(_PROBE)
    try:
        expr = frame.parse_sql_expr(match_expr)
        result = frame.select(expr.alias("denied"))
        result_type = result.schema().field("denied").type
        result.collect()
    except Exception as err:
        raise QueryError(f"deny_queries: invalid match_expr {match_expr!r}: {_first_line(err)}") from None
    text = str(expr)
    if "<subquery>" in text:
        raise QueryError(f"deny_queries: a query deny rule cannot hold a subquery: {match_expr}")
    if result_type != pa.bool_():
        raise QueryError(f"query deny rule must be a boolean expression, got {result_type}: {match_expr}")
    if not any(f"match_context.{name}" in text for name in MATCH_COLUMNS):
        raise QueryError(
            "query deny rule must reference at least one match-context column -- a rule with no column"
            f" reference would deny every query in the deployment: {match_expr}"
        )


def _first_line(err: Exception) -> str:
    return str(err).removeprefix("DataFusion error: ").split("\n", 1)[0]


def matching_rule(rules: list[DenyRule], attribution: dict[str, str | None]) -> DenyRule | None:
    """The oldest rule the query matches (NULL counts as no match), evaluated in one DataFusion pass;
    a rule that no longer evaluates is skipped."""
    if not rules:
        return None
    frame = _match_frame(attribution)
    exprs, named = [], []
    for index, rule in enumerate(rules):
        try:
            exprs.append(frame.parse_sql_expr(rule.match_expr).alias(f"r{index}"))
        except Exception:
            continue
        named.append((rule, f"r{index}"))
    if not exprs:
        return None
    row = frame.select(*exprs).to_pylist()[0]
    return next((rule for rule, column in named if row[column] is True), None)


class QueryDenyList:
    """The rules in force for one lake (its `deny_list`), from PostgreSQL, cached for REFRESH_SECONDS."""

    def __init__(self, loop: BackgroundLoop, pool: asyncpg.Pool) -> None:
        """An empty snapshot, loaded on the first check."""
        self._loop = loop
        self._catalog = Catalog(pool)
        self._lock = threading.Lock()
        self._rules: list[DenyRule] = []
        self._loaded_at = float("-inf")
        self._hits: dict[uuid.UUID, dt.datetime] = {}  # last hit of each rule since the last reload

    def rules(self) -> list[DenyRule]:
        """The snapshot, reloaded when older than REFRESH_SECONDS."""
        with self._lock:
            if time.monotonic() - self._loaded_at < REFRESH_SECONDS:
                return self._rules
        return self.reload()

    def reload(self) -> list[DenyRule]:
        """Writes the hits recorded since the last reload (one UPDATE per rule hit, not per query),
        then reads the rules."""
        rows = self._loop.run(self._catalog.load_denials(self._take_hits()))
        rules = [DenyRule(**dict(row)) for row in rows]
        with self._lock:
            self._rules, self._loaded_at = rules, time.monotonic()
        return rules

    def close(self) -> None:
        """Writes the hits recorded since the last reload (the lake is closing: there is no next one);
        with the database unreachable they are lost, with a warning."""
        try:
            self._loop.run(self._catalog.write_denial_hits(self._take_hits()))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("the last hits of the query deny rules were not written: %s", err)

    def _take_hits(self) -> dict[uuid.UUID, dt.datetime]:
        with self._lock:
            hits, self._hits = self._hits, {}
        return hits

    def check(self, attribution: dict[str, str | None]) -> DenyRule | None:
        """The rule denying this query, if any; its hit is kept for the next reload to write."""
        rule = matching_rule(self.rules(), attribution)
        if rule is not None:
            with self._lock:
                self._hits[rule.rule_id] = dt.datetime.now(dt.UTC)
        return rule

    def insert(self, match_expr: str, reason: str, created_by: str | None) -> uuid.UUID:
        """Validates and stores a rule; QueryError with micromegas's wording when it cannot be."""
        if not reason.strip():
            raise QueryError("deny_queries: reason must not be empty")
        if not created_by:
            raise QueryError(
                "deny_queries requires an authenticated caller identity, which this session does not carry"
            )
        if len(self.rules()) >= MAX_RULES:
            raise QueryError(
                f"deny_queries: at the cap of {MAX_RULES} rules; remove an existing rule with"
                " remove_query_denial(rule_id) before adding another"
            )
        compile_rule(match_expr)
        rule_id = uuid.uuid4()
        self._loop.run(self._catalog.insert_denial(rule_id, created_by, reason, match_expr))
        self.reload()
        return rule_id

    def remove(self, rule_id: str | None) -> str:
        """Deletes a rule; the message remove_query_denial answers for it."""
        if rule_id is None:
            return "ERROR: rule_id cannot be null"
        try:
            parsed = uuid.UUID(rule_id)
        except ValueError:
            return f"ERROR: '{rule_id}' is not a valid rule id"
        removed = self._loop.run(self._catalog.delete_denial(parsed))
        self.reload()
        return f"SUCCESS: removed rule {parsed}" if removed else f"ERROR: no such rule: {parsed}"


def admin_recovery(sql: str, is_admin: bool) -> bool:
    """An admin's statement that manages the deny list passes even a rule matching it (micromegas's
    escape hatch: a too-wide rule must not lock the admins out)."""
    lowered = sql.lower()
    return is_admin and any(name in lowered for name in ADMIN_FUNCTIONS)


def denial_message(rule: DenyRule, query_id: str) -> str:
    """micromegas's answer to a denied query."""
    return (
        f"query denied by rule {rule.rule_id} (reason: {rule.reason}); ask an admin to lift it with"
        f" remove_query_denial('{rule.rule_id}'); query_id={query_id}"
    )
