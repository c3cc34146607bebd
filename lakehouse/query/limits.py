"""What a query may ask of the planner: its SQL's size and expression depth, its time.

DataFusion plans and evaluates expressions recursively, in time that grows with the square of their
depth: `SELECT 1+1+…+1` with 10,000 terms overflowed a thread's stack (the whole server died with
SIGSEGV) and 5,000 took 21 s of CPU. Such SQL is refused before it reaches the planner.

The depth is estimated from the tokens, without parsing: in each parenthesized group, the operators
of one expression (between commas and clause keywords) count one level each, and a group counts one
level more than the deepest expression it holds. It bounds the depth of DataFusion's expression tree
from above; strings, quoted identifiers and comments are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class QueryLimits:
    """The limits of one query (settings SPANLAKE_MAX_SQL_BYTES, _MAX_SQL_DEPTH, _QUERY_TIMEOUT_SECONDS)."""

    max_sql_bytes: int = 1_048_576
    max_sql_depth: int = 1000
    timeout_seconds: float = 300.0  # 0: none

    def sql_problem(self, sql: str) -> str | None:
        """Why the planner must not see `sql`, or None."""
        size = len(sql.encode("utf-8", "surrogatepass"))
        if size > self.max_sql_bytes:
            return f"the SQL text is {size} bytes long, over the limit of {self.max_sql_bytes} (SPANLAKE_MAX_SQL_BYTES)"
        depth = expression_depth(sql)
        if depth > self.max_sql_depth:
            return (
                f"the SQL expression is too deeply nested: depth {depth} (operators chained plus parentheses"
                f" nested), over the limit of {self.max_sql_depth} (SPANLAKE_MAX_SQL_DEPTH)"
            )
        return None


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

    __slots__ = ("deepest", "deepest_child", "operators")

    def __init__(self) -> None:
        self.operators = 0  # in the current expression
        self.deepest_child = 0  # deepest group in the current expression
        self.deepest = 0  # deepest expression ended so far

    def end_expression(self) -> None:
        self.deepest = max(self.deepest, self.operators + self.deepest_child)
        self.operators = self.deepest_child = 0

    def depth(self) -> int:
        return max(self.deepest, self.operators + self.deepest_child)


def expression_depth(sql: str) -> int:
    """An upper bound of the depth of the expressions in `sql` (see the module's docstring)."""
    groups = [_Group()]
    for token in _TOKEN.finditer(sql):
        kind = token.lastgroup
        if kind == "word":
            word = token.group().upper()
            kind = "operator" if word in _OPERATOR_WORDS else "separator" if word in _CLAUSE_WORDS else None
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
    return groups[0].depth()


def _close(groups: list[_Group]) -> None:
    closed = groups.pop()
    groups[-1].deepest_child = max(groups[-1].deepest_child, 1 + closed.depth())
