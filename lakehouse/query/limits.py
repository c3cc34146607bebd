"""What a query may ask of the planner: its SQL's size, expression depth and joins, its plan's size,
its time.

DataFusion plans and evaluates expressions recursively, in time that grows with the square of their
depth: `SELECT 1+1+…+1` with 10,000 terms overflowed a thread's stack (the whole server died with
SIGSEGV) and 5,000 took 21 s of CPU. Such SQL is refused before it reaches the planner.

Relations combined recurse the same way: sqlparser nests `a UNION ALL b UNION ALL …` and join chains
one level per branch (10,000 branches of `SELECT 1` killed the server; 2,000 take 9 s to plan), and
the optimizer's join planning grows faster than the cube of a join chain's length (100 joins: 0.4 s,
200: 4 s, 1,000: over a minute). So the joins, FROM-list items and set operations of the text are
counted (`max_sql_joins`). Common table expressions referenced several times multiply a plan without
lengthening its text (ten references to ten references … of a CTE), so once parsed, the logical plan's
nodes are counted as the optimizer will walk them, each reference in full (`max_plan_nodes`; 52,000
nodes, 10,000 UNION branches through CTEs, plan in 4 s). Nested subqueries and function calls are
bounded by sqlparser itself (50 levels); CASE arms and IN lists are flat lists, bounded by the SQL's
size (10,000 CASE arms or 100,000 IN items plan in about a second). Figures: docs/flightsql.md.

The depth is estimated from the tokens, without parsing: in each parenthesized group, the operators
of one expression (between commas and clause keywords) count one level each, and a group counts one
level more than the deepest expression it holds. It bounds the depth of DataFusion's expression tree
from above; strings, quoted identifiers and comments are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datafusion.plan import LogicalPlan

from spanlake.lakehouse.query.audit import kept_per_text


@dataclass(frozen=True)
class QueryLimits:
    """The limits of one query (settings SPANLAKE_MAX_SQL_BYTES, _MAX_SQL_DEPTH, _QUERY_TIMEOUT_SECONDS,
    _MAX_SQL_JOINS, _MAX_PLAN_NODES, _STREAM_BUFFER_MB, _RESULT_BUFFER_MB, _RESULT_BUFFER_WAIT_SECONDS)."""

    max_sql_bytes: int = 1_048_576
    max_sql_depth: int = 1000
    timeout_seconds: float = 300.0  # 0: none
    max_sql_joins: int = 128
    max_plan_nodes: int = 10_000
    stream_buffer_bytes: int = 16 << 20  # results computed, not yet sent, of one stream
    result_buffer_bytes: int = 256 << 20  # ... of all streams
    result_buffer_wait_seconds: float = 30.0  # longest wait for room in the full total

    def sql_problem(self, sql: str) -> str | None:
        """Why the planner must not see `sql`, or None."""
        size = len(sql.encode("utf-8", "surrogatepass"))
        if size > self.max_sql_bytes:
            return f"the SQL text is {size} bytes long, over the limit of {self.max_sql_bytes} (SPANLAKE_MAX_SQL_BYTES)"
        shape = sql_shape(sql)
        if shape.depth > self.max_sql_depth:
            return (
                f"the SQL expression is too deeply nested: depth {shape.depth} (operators chained plus parentheses"
                f" nested), over the limit of {self.max_sql_depth} (SPANLAKE_MAX_SQL_DEPTH)"
            )
        if shape.joins > self.max_sql_joins:
            return (
                f"the SQL combines too many relations: {shape.joins} joins, FROM-list items and set operations"
                f" (UNION, INTERSECT, EXCEPT), over the limit of {self.max_sql_joins} (SPANLAKE_MAX_SQL_JOINS)"
            )
        return None

    def plan_problem(self, plan: LogicalPlan) -> str | None:
        """Why the optimizer must not see this logical plan (before optimization), or None."""
        if plan_nodes_over(plan, self.max_plan_nodes):
            return (
                f"the query's plan is too large: over {self.max_plan_nodes} nodes, common table expressions"
                f" counted at each reference (SPANLAKE_MAX_PLAN_NODES)"
            )
        return None


def plan_nodes_over(plan: LogicalPlan, limit: int) -> bool:
    """Whether the plan has more than `limit` nodes, shared inputs counted at each use; stops counting
    past the limit (an exponential plan is never walked in full)."""
    pending = [plan]
    count = 0
    while pending:
        count += 1
        if count > limit:
            return True
        pending += pending.pop().inputs()
    return False


_TOKEN = re.compile(
    r"""'(?:[^']|'')*'?            # string literal (an unterminated one runs to the end)
      | "(?:[^"]|"")*"?            # quoted identifier
      | `[^`]*`?
      | --[^\n]*                   # comments
      | /\*.*?(?:\*/|\Z)
      | (?P<open>[(\[])
      | (?P<close>[)\]])
      | (?P<separator>[,;])
      | (?P<operator>[-+*/%<>=!|&^~#@:]+)
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    """,
    re.VERBOSE | re.DOTALL,
)
_COMBINING_WORDS = frozenset({"JOIN", "UNION", "INTERSECT", "EXCEPT"})
# Clause words that end a FROM list (JOIN, ON, USING and AS do not).
_FROM_ENDING_WORDS = frozenset(
    {"SELECT", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET", "UNION", "INTERSECT", "EXCEPT", "WINDOW"}
)
_OPERATOR_WORDS = frozenset({"AND", "OR", "NOT", "IS", "LIKE", "ILIKE", "SIMILAR", "IN", "BETWEEN", "COLLATE"})
_CLAUSE_WORDS = frozenset(
    {
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP",
        "HAVING",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "JOIN",
        "ON",
        "USING",
        "WITH",
        "AS",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
    }
)


class _Group:
    """One parenthesized group being scanned."""

    __slots__ = ("deepest", "deepest_child", "in_from", "operators")

    def __init__(self) -> None:
        self.in_from = False  # between FROM and the clause after it: a comma adds a relation
        self.operators = 0  # in the current expression
        self.deepest_child = 0  # deepest group in the current expression
        self.deepest = 0  # deepest expression ended so far

    def end_expression(self) -> None:
        self.deepest = max(self.deepest, self.operators + self.deepest_child)
        self.operators = self.deepest_child = 0

    def depth(self) -> int:
        return max(self.deepest, self.operators + self.deepest_child)


@dataclass(frozen=True)
class SqlShape:
    """What the text of a query says of its plan: an upper bound of its expressions' depth, and how
    many joins, FROM-list commas and set operations it has."""

    depth: int
    joins: int


def expression_depth(sql: str) -> int:
    """An upper bound of the depth of the expressions in `sql` (see the module's docstring)."""
    return sql_shape(sql).depth


@kept_per_text
def sql_shape(sql: str) -> SqlShape:
    """The shape of `sql` from its tokens, without parsing (see the module's docstring)."""
    groups = [_Group()]
    joins = 0
    for token in _TOKEN.finditer(sql):
        kind = token.lastgroup
        if kind == "word":
            word = token.group().upper()
            kind = "operator" if word in _OPERATOR_WORDS else "separator" if word in _CLAUSE_WORDS else None
            joins += word in _COMBINING_WORDS
            if word == "FROM" or word in _FROM_ENDING_WORDS:
                groups[-1].in_from = word == "FROM"
        elif kind == "separator" and groups[-1].in_from and token.group() == ",":
            joins += 1
        if kind == "operator":
            groups[-1].operators += 1
        elif kind == "separator":
            groups[-1].end_expression()
        elif kind == "open":
            groups.append(_Group())
        elif kind == "close" and len(groups) > 1:
            _close(groups)
    while len(groups) > 1:  # unclosed groups: the parser will refuse them, but they count
        _close(groups)
    return SqlShape(groups[0].depth(), joins)


def _close(groups: list[_Group]) -> None:
    closed = groups.pop()
    groups[-1].deepest_child = max(groups[-1].deepest_child, 1 + closed.depth())
