"""DataFusion's optimized logical plan → a Daft DataFrame: DataFusion stays the planner of record.

DataFusion parses, resolves and optimizes the SQL; each plan node is then rebuilt with Daft's
DataFrame operations (scan, filter, projection, aggregate, join, sort, limit). A node or expression
without an exact Daft equivalent raises `ClusterUnsupported`, and the query runs on DataFusion.
Columns are carried under positional names (c0, c1, …) so qualified names (l.exe vs p.exe) never clash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import daft
import pyarrow as pa
from datafusion.plan import LogicalPlan

from spanlake.lakehouse.cluster.expressions import (
    Columns,
    daft_name,
    translate,
    translate_aggregate,
    translate_typed,
)
from spanlake.lakehouse.errors import ClusterUnsupported

# A view's rows in the query range as a Daft DataFrame, and the view's Arrow schema.
ViewScan = Callable[[str], tuple[daft.DataFrame, pa.Schema]]
_JOIN_TYPES = {"Inner": "inner", "Left": "left", "Right": "right"}


@dataclass(frozen=True)
class Translated:
    """A plan node rebuilt in Daft, with the DataFusion identity of each of its columns."""

    frame: daft.DataFrame
    columns: Columns


def scanned_tables(plan: LogicalPlan) -> set[str]:
    """Names of the tables a plan reads."""
    node = plan.to_variant()
    found = {node.table_name()} if type(node).__name__ == "TableScan" else set()
    for child in plan.inputs():
        found |= scanned_tables(child)
    return found


def translate_plan(plan: LogicalPlan, scan: ViewScan) -> Translated:
    """Rebuilds an optimized DataFusion plan over `scan`'s tables; ClusterUnsupported if it cannot."""
    node = plan.to_variant()
    kind = type(node).__name__
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ClusterUnsupported(f"plan node {kind}")
    return builder(node, plan, scan)


def _only_input(plan: LogicalPlan, scan: ViewScan) -> Translated:
    inputs = plan.inputs()
    if len(inputs) != 1:
        raise ClusterUnsupported("plan node with several inputs")
    return translate_plan(inputs[0], scan)


def _table_scan(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    name = node.table_name()
    frame, schema = scan(name)
    projected = node.projection() or [(i, field.name) for i, field in enumerate(schema)]
    frame = frame.select(*[daft.col(column).alias(daft_name(i)) for i, (_, column) in enumerate(projected)])
    columns = Columns(
        names=tuple((name, column) for _, column in projected),
        types=tuple(schema.field(column).type for _, column in projected),
    )
    for condition in node.filters():
        frame = frame.where(translate(condition, columns))
    if node.fetch() is not None:
        frame = frame.limit(node.fetch())
    return Translated(frame, columns)


def _filter(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    return Translated(below.frame.where(translate(node.predicate(), below.columns)), below.columns)


def _projection(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    return _project(below, list(node.projections()))


def _project(below: Translated, exprs: list) -> Translated:
    if not exprs:  # DataFusion projects nothing under count(*): Daft keeps a column to count rows of
        return Translated(below.frame, Columns((), ()))
    selected, names, types = [], [], []
    for i, expr in enumerate(exprs):
        value, data_type = translate_typed(expr, below.columns)
        selected.append(value.alias(daft_name(i)))
        names.append(_output_name(expr, below.columns))
        types.append(data_type)
    return Translated(below.frame.select(*selected), Columns(tuple(names), tuple(types)))


def _output_name(expr, columns: Columns) -> tuple[str | None, str]:
    """The (qualifier, name) DataFusion gives an expression's output column."""
    kind = expr.variant_name()
    if kind == "Alias":
        return None, expr.to_variant().alias()
    if kind == "Column":
        column = expr.to_variant()
        return columns.names[columns.index(column.relation(), column.name())][0], column.name()
    return None, expr.schema_name()


def _aggregate(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    groups, names, types = [], [], []
    for i, expr in enumerate(node.group_by_exprs()):
        value, data_type = translate_typed(expr, below.columns)
        groups.append(value.alias(daft_name(i)))
        names.append(_output_name(expr, below.columns))
        types.append(data_type)
    aggregations = []
    for j, expr in enumerate(node.aggregate_exprs(), start=len(groups)):
        value, data_type = translate_aggregate(expr, below.columns)
        aggregations.append(value.alias(daft_name(j)))
        names.append(_output_name(expr, below.columns))
        types.append(data_type)
    frame = below.frame.groupby(*groups).agg(*aggregations) if groups else below.frame.agg(*aggregations)
    return Translated(frame, Columns(tuple(names), tuple(types)))


def _sort(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    keys = list(node.sort_exprs())
    frame = below.frame.sort(
        [translate(key.expr(), below.columns) for key in keys],
        desc=[not key.ascending() for key in keys],
        nulls_first=[key.nulls_first() for key in keys],
    )
    if node.get_fetch_val() is not None:
        frame = frame.limit(node.get_fetch_val())
    return Translated(frame, below.columns)


def _limit(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    if node.skip() not in (None, 0) or node.fetch() is None:
        raise ClusterUnsupported("OFFSET")
    return Translated(below.frame.limit(node.fetch()), below.columns)


def _subquery_alias(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    alias = node.alias()
    names = tuple((alias, name) for _, name in below.columns.names)
    return Translated(below.frame, Columns(names, below.columns.types))


def _distinct(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    below = _only_input(plan, scan)
    return Translated(below.frame.distinct(), below.columns)


def _join(node, plan: LogicalPlan, scan: ViewScan) -> Translated:
    how = _JOIN_TYPES.get(str(node.join_type()))
    if how is None or node.filter() is not None or node.null_equals_null() or not node.on():
        raise ClusterUnsupported(f"{node.join_type()} join with a filter or without equality keys")
    left_plan, right_plan = plan.inputs()
    left, right = translate_plan(left_plan, scan), translate_plan(right_plan, scan)
    keys = node.on()
    left_frame = _join_side(left, "l", [a for a, _ in keys])
    right_frame = _join_side(right, "r", [b for _, b in keys])
    key_names = [f"{side}key{k}" for side in "lr" for k in range(len(keys))]
    joined = left_frame.join(right_frame, left_on=key_names[: len(keys)], right_on=key_names[len(keys) :], how=how)
    width = len(left.columns.names)
    frame = joined.select(
        *[daft.col(f"l{i}").alias(daft_name(i)) for i in range(width)],
        *[daft.col(f"r{j}").alias(daft_name(width + j)) for j in range(len(right.columns.names))],
    )
    columns = Columns(left.columns.names + right.columns.names, left.columns.types + right.columns.types)
    return Translated(frame, columns)


def _join_side(side: Translated, prefix: str, keys: list) -> daft.DataFrame:
    """One side of a join: its columns renamed apart from the other side's, plus its key values."""
    columns = [daft.col(daft_name(i)).alias(f"{prefix}{i}") for i in range(len(side.columns.names))]
    key_values = [translate(key, side.columns).alias(f"{prefix}key{k}") for k, key in enumerate(keys)]
    return side.frame.select(*columns, *key_values)


_BUILDERS = {
    "TableScan": _table_scan,
    "Filter": _filter,
    "Projection": _projection,
    "Aggregate": _aggregate,
    "Sort": _sort,
    "Limit": _limit,
    "SubqueryAlias": _subquery_alias,
    "Distinct": _distinct,
    "Join": _join,
}
