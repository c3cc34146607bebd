"""SQL of recursive plan shapes, of a chosen size: set-operation chains, join chains, FROM lists,
nested subqueries, CASE arms, IN lists, CTEs referencing CTEs."""

from __future__ import annotations


def set_operations(branches: int, operator: str = "UNION ALL") -> str:
    """`SELECT 1 AS x` `branches` times, chained by `operator`."""
    return f" {operator} ".join(f"SELECT {i % 7} AS x" for i in range(branches))


def join_chain(relations: int) -> str:
    """`relations` one-row relations joined in a chain, each on the previous one."""
    joins = "".join(f" JOIN (VALUES (1)) t{i}(a) ON t{i}.a = t{i - 1}.a" for i in range(1, relations))
    return f"SELECT count(*) AS n FROM (VALUES (1)) t0(a){joins}"


def from_list(relations: int) -> str:
    """`relations` one-row relations in one FROM list (cross joined)."""
    return "SELECT count(*) AS n FROM " + ", ".join(f"(VALUES (1)) t{i}(a)" for i in range(relations))


def nested_subqueries(levels: int) -> str:
    """A subquery `levels` deep."""
    return "SELECT x FROM " + "(SELECT x FROM " * levels + "(SELECT 1 AS x) s" + ") s" * levels


def case_arms(arms: int) -> str:
    """One CASE of `arms` arms."""
    whens = " ".join(f"WHEN x = {i} THEN {i}" for i in range(arms))
    return f"SELECT CASE {whens} END AS y FROM (SELECT 1 AS x)"


def in_list(items: int) -> str:
    """An IN list of `items` integers."""
    return f"SELECT x FROM (SELECT 1 AS x) WHERE x IN ({', '.join(str(i) for i in range(items))})"


def ctes_of_ctes(width: int, levels: int) -> str:
    """`levels` CTEs, each a UNION ALL of `width` references to the previous: width**levels branches
    from a short text."""
    ctes = ["c0 AS (SELECT 1 AS x)"]
    ctes += [f"c{n} AS ({' UNION ALL '.join([f'SELECT x FROM c{n - 1}'] * width)})" for n in range(1, levels + 1)]
    return f"WITH {', '.join(ctes)} SELECT count(*) AS n FROM c{levels}"
