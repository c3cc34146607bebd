"""DataFusion expressions → Daft expressions, for the shapes both engines evaluate the same way.

Anything else raises `Unsupported`: the query then runs on DataFusion. Columns are resolved by the
`Columns` of the node below (DataFusion's qualified names → Daft's positional `c0`, `c1`, …).
Timestamps are compared and binned as int64 nanoseconds, so no precision is lost on either side.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import daft
import pyarrow as pa
from datafusion.expr import Expr

from spanlake.lakehouse.errors import ClusterUnsupported as Unsupported

_NS_PER_DAY = 86_400 * 1_000_000_000
_TRUNC_STRIDES = {
    "second": 1_000_000_000,
    "minute": 60 * 1_000_000_000,
    "hour": 3_600 * 1_000_000_000,
    "day": _NS_PER_DAY,
}
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
_CAST_TARGET = re.compile(r" AS ([\w(), ]+)\)$")
_CAST_TYPES = {"Int32": pa.int32(), "Int64": pa.int64(), "Float64": pa.float64(), "Utf8": pa.utf8()}
_LOGIC: dict[str, Callable[[Any, Any], Any]] = {"AND": lambda a, b: a & b, "OR": lambda a, b: a | b}
_AGGREGATES: dict[str, Callable[[Any], Any]] = {
    "sum": lambda e: e.sum(),
    "min": lambda e: e.min(),
    "max": lambda e: e.max(),
    "avg": lambda e: e.mean(),
}


@dataclass(frozen=True)
class Columns:
    """The output columns of a translated node: DataFusion's (qualifier, name) and Arrow type of each,
    in the order of Daft's positional names c0, c1, …"""

    names: tuple[tuple[str | None, str], ...]
    types: tuple[pa.DataType, ...]

    def index(self, qualifier: str | None, name: str) -> int:
        """Position of a DataFusion column; Unsupported if it is not exactly one of ours."""
        found = [i for i, (q, n) in enumerate(self.names) if n == name and (qualifier is None or q == qualifier)]
        if len(found) != 1:
            raise Unsupported(f"column {qualifier + '.' if qualifier else ''}{name} cannot be resolved")
        return found[0]


def daft_name(index: int) -> str:
    """Daft's positional name of the column at `index` (c0, c1, …)."""
    return f"c{index}"


def translate(expr: Expr, columns: Columns) -> daft.Expression:
    """One DataFusion expression as a Daft expression over `columns`."""
    return _translated(expr, columns)[0]


def translate_typed(expr: Expr, columns: Columns) -> tuple[daft.Expression, pa.DataType | None]:
    """The Daft expression and the Arrow type of its value where it matters (timestamps), else None."""
    return _translated(expr, columns)


def translate_aggregate(expr: Expr, columns: Columns) -> tuple[daft.Expression, pa.DataType | None]:
    """An aggregate call (count, count distinct, sum, min, max, avg) as a Daft aggregation, typed."""
    expr = _unaliased(expr)
    if expr.variant_name() != "AggregateFunction":
        raise Unsupported(f"aggregate expression {expr.variant_name()}")
    call = expr.to_variant()
    name, args = call.aggregate_type(), call.args()
    if name == "count" and len(args) == 1:
        if args[0].variant_name() == "Literal":  # count(*): DataFusion counts a constant
            return daft.col(daft_name(0)).count("all"), pa.int64()
        argument = translate(args[0], columns)
        return (argument.count_distinct() if call.is_distinct() else argument.count("valid")), pa.int64()
    if name in _AGGREGATES and len(args) == 1 and not call.is_distinct():
        argument, data_type = _translated(args[0], columns)
        return _AGGREGATES[name](argument), data_type if name in ("min", "max") else None
    raise Unsupported(f"aggregate {name}{' distinct' if call.is_distinct() else ''}")


def _unaliased(expr: Expr) -> Expr:
    while expr.variant_name() == "Alias":
        expr = expr.to_variant().expr()
    return expr


def _translated(expr: Expr, columns: Columns) -> tuple[daft.Expression, pa.DataType | None]:
    """The Daft expression and, where the translation needs it, the Arrow type of its value."""
    kind = expr.variant_name()
    node = expr.to_variant() if kind not in ("ScalarFunction", "AggregateFunction") else None
    if kind == "Alias":
        return _translated(node.expr(), columns)
    if kind == "Column":
        index = columns.index(node.relation(), node.name())
        return daft.col(daft_name(index)), columns.types[index]
    if kind == "Literal":
        return _literal(expr)
    if kind == "BinaryExpr":
        return _binary(node, columns)
    if kind in ("Like", "ILike"):
        return _like(kind, node, columns), pa.bool_()
    if kind == "Not":
        return ~translate(node.expr(), columns), pa.bool_()
    if kind == "IsNull":
        return translate(node.expr(), columns).is_null(), pa.bool_()
    if kind == "IsNotNull":
        return translate(node.expr(), columns).not_null(), pa.bool_()
    if kind == "Between":
        low = _comparison(">=", node.expr(), node.low(), columns)
        high = _comparison("<=", node.expr(), node.high(), columns)
        return (~(low & high) if node.negated() else low & high), pa.bool_()
    if kind == "InList":
        values = [_literal_value(item) for item in node.list()]
        membership = translate(node.expr(), columns).is_in(values)
        return (~membership if node.negated() else membership), pa.bool_()
    if kind == "ScalarFunction":
        return _scalar_function(expr, columns)
    if kind == "Cast":
        return _cast(expr, node, columns)
    raise Unsupported(f"expression {kind}")


def _cast(expr: Expr, node: Any, columns: Columns) -> tuple[daft.Expression, pa.DataType | None]:
    """Casts between text and dictionary-of-text (one type in Daft), or to a plain number or text.

    datafusion-python does not expose a cast's target type: it is read off the expression's name."""
    value, data_type = _translated(node.expr(), columns)
    target = _CAST_TARGET.search(expr.canonical_name())
    target_name = target.group(1) if target else ""
    if target_name in ("Utf8", "Dictionary(Int32, Utf8)") and data_type is not None and _is_text(data_type):
        return value, pa.utf8()
    arrow_type = _CAST_TYPES.get(target_name)
    if arrow_type is None:
        raise Unsupported(f"cast to {target_name or 'an unknown type'}")
    if data_type is not None and pa.types.is_timestamp(data_type):
        raise Unsupported("cast of a timestamp")
    return value.cast(daft.DataType.from_arrow_type(arrow_type)), arrow_type


def _literal(expr: Expr) -> tuple[daft.Expression, pa.DataType]:
    scalar = expr.python_value()
    if pa.types.is_timestamp(scalar.type):  # compared as int64 ns: see _as_nanoseconds
        if scalar.type.unit != "ns":
            raise Unsupported(f"timestamps in {scalar.type.unit}")
        return daft.lit(scalar.value), pa.int64()
    if not (_is_number(scalar.type) or _is_text(scalar.type) or pa.types.is_boolean(scalar.type)):
        raise Unsupported(f"literal of type {scalar.type}")
    return daft.lit(scalar.as_py()), scalar.type


def _literal_value(expr: Expr) -> Any:
    if expr.variant_name() != "Literal":
        raise Unsupported("IN list of non-constant values")
    scalar = expr.python_value()
    if pa.types.is_timestamp(scalar.type):
        raise Unsupported("IN list of timestamps")
    return scalar.as_py()


def _is_number(data_type: pa.DataType | None) -> bool:
    return data_type is not None and (pa.types.is_integer(data_type) or pa.types.is_floating(data_type))


def _is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _binary(node: Any, columns: Columns) -> tuple[daft.Expression, pa.DataType | None]:
    op = node.op()
    if op in _LOGIC:
        return _LOGIC[op](translate(node.left(), columns), translate(node.right(), columns)), pa.bool_()
    if op in _COMPARISONS:
        return _comparison(op, node.left(), node.right(), columns), pa.bool_()
    if op in _ARITHMETIC:
        left, left_type = _translated(node.left(), columns)
        right, right_type = _translated(node.right(), columns)
        if not all(
            t is not None and (pa.types.is_integer(t) or pa.types.is_floating(t)) for t in (left_type, right_type)
        ):
            raise Unsupported(f"arithmetic {op} on non-numbers")
        return _ARITHMETIC[op](left, right), None
    raise Unsupported(f"operator {op}")


def _comparison(op: str, left_expr: Expr, right_expr: Expr, columns: Columns) -> daft.Expression:
    """A comparison; timestamps on either side are compared as int64 nanoseconds."""
    left, left_type = _translated(left_expr, columns)
    right, right_type = _translated(right_expr, columns)
    left, right = _as_nanoseconds(left, left_type), _as_nanoseconds(right, right_type)
    return _COMPARISONS[op](left, right)


def _as_nanoseconds(value: daft.Expression, data_type: pa.DataType | None) -> daft.Expression:
    if data_type is None or not pa.types.is_timestamp(data_type):
        return value
    if data_type.unit != "ns":
        raise Unsupported(f"timestamps in {data_type.unit}")
    return value.cast(daft.DataType.int64())


def _like(kind: str, node: Any, columns: Columns) -> daft.Expression:
    if node.escape_char() is not None:
        raise Unsupported("LIKE with ESCAPE")
    pattern = node.pattern()
    if pattern.variant_name() != "Literal":
        raise Unsupported("LIKE with a non-constant pattern")
    text = pattern.python_value().as_py()
    value = translate(node.expr(), columns)
    matched = value.ilike(text) if kind == "ILike" else value.like(text)
    return ~matched if node.negated() else matched


def _scalar_function(expr: Expr, columns: Columns) -> tuple[daft.Expression, pa.DataType | None]:
    name = expr.rex_call_operator()
    args = expr.rex_call_operands()
    if name == "date_bin" and len(args) == 2:
        return _binned(args[1], _interval_ns(args[0]), columns)
    if name == "date_trunc" and len(args) == 2 and args[0].variant_name() == "Literal":
        unit = args[0].python_value().as_py()
        if unit in _TRUNC_STRIDES:
            return _binned(args[1], _TRUNC_STRIDES[unit], columns)
    if name in ("lower", "upper") and len(args) == 1:
        value = translate(args[0], columns)
        return (value.lower() if name == "lower" else value.upper()), pa.utf8()
    raise Unsupported(f"function {name}")


def _interval_ns(expr: Expr) -> int:
    if expr.variant_name() != "Literal":
        raise Unsupported("date_bin with a non-constant stride")
    interval = expr.python_value().as_py()
    months, days, nanoseconds = interval.months, interval.days, interval.nanoseconds
    stride = days * _NS_PER_DAY + nanoseconds
    if months or stride <= 0:
        raise Unsupported("date_bin stride in months, or not positive")
    return stride


def _binned(value_expr: Expr, stride: int, columns: Columns) -> tuple[daft.Expression, pa.DataType]:
    """floor(t / stride) * stride from the epoch, exactly, whatever sign convention `%` has."""
    value, data_type = _translated(value_expr, columns)
    if data_type is None or not pa.types.is_timestamp(data_type) or data_type.unit != "ns":
        raise Unsupported("time binning of a non-nanosecond-timestamp value")
    ns = value.cast(daft.DataType.int64())
    floored = ns - ((ns % stride) + stride) % stride
    return floored.cast(daft.DataType.timestamp("ns", data_type.tz)), data_type
