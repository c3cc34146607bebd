"""Table functions over one jsonb or histogram argument: jsonb_each, jsonb_array_elements,
expand_histogram.

The argument is a constant (DataFusion folds `jsonb_parse('...')` to one before the call) or a scalar
subquery such as `(SELECT properties FROM processes WHERE ...)`: its plan already holds its tables, so
it runs in a fresh context (never the calling session, whose thread is planning this call). It must
answer at most one row (micromegas expands several); none reads as NULL, which expands to no rows.

The jsonb `value` columns are `Dictionary(Int32, Binary)` (micromegas: Binary) so that the jsonb UDFs,
which take that one type, read them directly: `SELECT key, jsonb_as_string(value) FROM jsonb_each(...)`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import SessionContext, Table
from datafusion.expr import Expr

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query.functions.histograms import HISTOGRAM
from spanlake.lakehouse.query.functions.jsonb import decoded
from spanlake.lakehouse.query.off_runtime import OffRuntime
from spanlake.views import jsonb
from spanlake.views.jsonb import JsonValue
from spanlake.views.schema_types import DICT_JSONB

ContextFactory = Callable[[], SessionContext]
EACH_SCHEMA = pa.schema([pa.field("key", pa.utf8(), nullable=False), pa.field("value", DICT_JSONB, nullable=False)])
ELEMENTS_SCHEMA = pa.schema([pa.field("value", DICT_JSONB, nullable=False)])
EXPANDED_SCHEMA = pa.schema(
    [pa.field("bin_center", pa.float64(), nullable=False), pa.field("count", pa.uint64(), nullable=False)]
)


def argument_values(
    name: str, what: str, args: tuple[object, ...], make_context: ContextFactory, off_runtime: OffRuntime
) -> pa.Array:
    """The values of a table function's single argument: the constant, or the subquery's value."""
    if len(args) != 1:
        raise QueryError(f"{name} requires exactly one argument ({what})")
    expr = Expr(args[0])
    try:
        constant = expr.python_value()
    except TypeError:  # not a literal: a scalar subquery
        return off_runtime.run(_evaluate, name, expr, make_context)
    return pa.array([constant.as_py()], constant.type)


def _evaluate(name: str, expr: Expr, make_context: ContextFactory) -> pa.Array:
    """The value of a scalar subquery (NULL when it answers no row). datafusion-python exposes no
    subquery plan to run on its own, so unlike micromegas a subquery of several rows is refused."""
    try:
        batches = make_context().read_empty().select(expr).collect()
    except Exception as err:  # the binding raises a bare Exception for the subquery's own errors
        raise QueryError(f"{name}: {str(err).removeprefix('DataFusion error: ')}") from None
    columns = [batch.column(0) for batch in batches]
    return pa.concat_arrays(columns) if columns else pa.array([], pa.null())


def _jsonb_rows(name: str, values: pa.Array) -> list[bytes]:
    """The non-NULL jsonb values of the argument (a Binary, LargeBinary or Dictionary(Int32, Binary) column)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary.take(values.indices)
    if pa.types.is_large_binary(values.type):
        values = values.cast(pa.binary())
    if not (pa.types.is_binary(values.type) or pa.types.is_null(values.type)):
        raise QueryError(f"{name} argument must be Binary (JSONB), got: {values.type}")
    return [value for value in values.to_pylist() if value is not None]


def _dictionary_jsonb(values: list[JsonValue]) -> pa.Array:
    encoded = pc.dictionary_encode(pa.array([jsonb.encode(value) for value in values], pa.binary()))
    return encoded.cast(DICT_JSONB)


def jsonb_each(make_context: ContextFactory, off_runtime: OffRuntime) -> Callable[..., Table]:
    """`jsonb_each(jsonb)`: (key, value) per object member, or per array element with its index as key."""

    def each(*args: object) -> Table:
        keys: list[str] = []
        members: list[JsonValue] = []
        values = argument_values("jsonb_each", "a JSONB object", args, make_context, off_runtime)
        for data in _jsonb_rows("jsonb_each", values):
            value = decoded("jsonb_each", data)
            if isinstance(value, dict):
                keys.extend(value)
                members.extend(value.values())
            elif isinstance(value, list):
                keys.extend(str(index) for index in range(len(value)))
                members.extend(value)
            else:
                raise QueryError("jsonb_each: input is not a JSONB object or array")
        table = pa.table([pa.array(keys, pa.utf8()), _dictionary_jsonb(members)], schema=EACH_SCHEMA)
        return off_runtime.memory_table(table)

    return each


def jsonb_array_elements(make_context: ContextFactory, off_runtime: OffRuntime) -> Callable[..., Table]:
    """`jsonb_array_elements(jsonb)`: one `value` row per element of a jsonb array."""

    def array_elements(*args: object) -> Table:
        elements: list[JsonValue] = []
        values = argument_values("jsonb_array_elements", "a JSONB array", args, make_context, off_runtime)
        for data in _jsonb_rows("jsonb_array_elements", values):
            value = decoded("jsonb_array_elements", data)
            if not isinstance(value, list):
                raise QueryError("jsonb_array_elements: input is not a JSONB array")
            elements.extend(value)
        return off_runtime.memory_table(pa.table([_dictionary_jsonb(elements)], schema=ELEMENTS_SCHEMA))

    return array_elements


def expand_histogram(make_context: ContextFactory, off_runtime: OffRuntime) -> Callable[..., Table]:
    """`expand_histogram(histogram)`: (bin_center, count) per bin of the first histogram."""

    def expand(*args: object) -> Table:
        values = argument_values("expand_histogram", "a histogram", args, make_context, off_runtime)
        if not pa.types.is_struct(values.type):
            raise QueryError(f"expand_histogram argument must be a struct (histogram), got: {values.type}")
        if not len(values) or not values[0].is_valid:
            return off_runtime.memory_table(EXPANDED_SCHEMA.empty_table())
        histogram = values.cast(HISTOGRAM)[0].as_py()
        start, end, counts = histogram["start"], histogram["end"], histogram["bins"]
        # A zero-width histogram gets unit-wide bins, as micromegas does.
        width = 1.0 if abs(end - start) < np.finfo(np.float64).eps else (end - start) / max(len(counts), 1)
        centers = start + (np.arange(len(counts), dtype=np.float64) + 0.5) * width
        table = pa.table([pa.array(centers, pa.float64()), pa.array(counts, pa.uint64())], schema=EXPANDED_SCHEMA)
        return off_runtime.memory_table(table)

    return expand
