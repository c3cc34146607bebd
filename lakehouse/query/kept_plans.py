"""Statements' logical plans kept in their session, so that a statement asked again is not planned again.

Dashboards, notebooks and benchmarks send the same SQL text again and again, with the same range headers.
Planning it (parsing, the schema provider's tables, the partition lookup) costs as much as a small
query's execution, and several times more when the server's caches went cold meanwhile (a served query
after a pause). A pooled session (`session_pool.py`) keeps the logical plan of each statement it planned,
and a later query of the same text, row limit and query range in that session starts from it: a new
DataFrame of the plan in the session's state of now (`create_dataframe_from_logical_plan`). The plan is
kept unoptimized: it is optimized at each execution, so `now()` is the new query's time.

What is kept, and while when:
* only the plans of statements that read nothing but the built-in global views scanned from their files
  (SCANNED_VIEWS: a scan holds no rows; the merged views, `processes` and the like, are rows in memory,
  which a kept plan would hold) or no table at all: no table function (they run at planning, some of
  them write, and their answers are in the plan), no SQL-defined view, no table the session registered;
  without bound parameter values; for a scope without a read scope or an insert range (their filters
  depend on who asks, on the bucket);
* a plan that read a global view holds the partition files of its planning: it is reused while the
  catalog generation of the global instances is the one read before its first table was asked (the
  generation under which `fresh_instances` reuses their partition sets), so a new or retired partition
  plans it again; changes not followed (no generation) keep nothing;
* every check made per query still runs: the limits on the SQL text before, the deny list as the
  session is built, keys and audiences at the door; the plan's shape limits passed when it was made.

The physical plan is not kept: DataFusion 55 executes a plan's scans once (the same ExecutionPlan executed
again answers no rows: tests/test_kept_plans.py), and a RepartitionExec executed again panics ("partition
not used yet").
At most MAX_PLANS plans per session, of SQL texts up to MAX_SQL_CHARS; a session not given back to its
pool (its query failed, or changed it) drops them with it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datafusion import DataFrame, SessionContext
from datafusion.plan import LogicalPlan

from spanlake.lakehouse.catalog_changes import Generation
from spanlake.lakehouse.view_sets import GLOBAL_TABLES, VIEW_SETS

if TYPE_CHECKING:
    from spanlake.lakehouse.query.session import GlobalTables

MAX_PLANS = 16
SCANNED_VIEWS = frozenset(name for name in GLOBAL_TABLES if VIEW_SETS[name].merge is None)
MAX_SQL_CHARS = 16 * 1024

# (SQL text, row limit): what the runner asks for; the scope's query range completes the key.
StatementKey = tuple[str, int | None]


@dataclass(frozen=True)
class _Kept:
    plan: LogicalPlan
    generation: Generation | None  # of the global instances when it read a global view; None: it read none


class KeptPlans:
    """The plans of one session's statements, by statement and query range (see the module's docstring)."""

    def __init__(self, tables: GlobalTables) -> None:
        """Plans of the session whose schema provider is `tables` (it notes what each planning asks)."""
        self._tables = tables
        self._plans: OrderedDict[tuple, _Kept] = OrderedDict()

    def find(self, ctx: SessionContext, statement: StatementKey) -> DataFrame | None:
        """The statement's kept plan as a new DataFrame of `ctx`, if one still holds; else None, and
        the planning that follows is noted for `keep`."""
        self._tables.begin_planning()
        key = self._key(statement)
        kept = None if key is None else self._plans.get(key)
        if kept is None:
            return None
        if kept.generation is not None and kept.generation != self._tables.global_generation():
            del self._plans[key]
            return None
        self._plans.move_to_end(key)
        return ctx.create_dataframe_from_logical_plan(kept.plan)

    def keep(self, statement: StatementKey, df: DataFrame) -> None:
        """Keeps the plan `find` did not have, if what its planning read allows it."""
        key = self._key(statement)
        asked = self._tables.asked
        if key is None or any(name not in SCANNED_VIEWS for name in asked):
            return
        generation = self._tables.planned_generation
        if asked and generation is None:
            return  # catalog changes not followed: nothing read may be reused
        self._plans[key] = _Kept(df.logical_plan(), generation if asked else None)
        self._plans.move_to_end(key)
        while len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)

    def _key(self, statement: StatementKey) -> tuple | None:
        """The statement's key in the session's current scope; None for what is never kept."""
        scope = self._tables.scope
        if scope.read_scope is not None or scope.insert_range is not None or len(statement[0]) > MAX_SQL_CHARS:
            return None
        return (*statement, scope.query_range)
