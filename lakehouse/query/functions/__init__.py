"""micromegas's SQL functions beyond the views: JSONB, properties, histograms and screen helpers.

Each family is vectorized over dictionary columns: a function of a jsonb or properties value runs once
per distinct dictionary entry and its answers are taken by index (columns.py).

Every type micromegas's functions take: datafusion-python gives a Python UDF one exact signature, so
`SIGNATURES` (signatures.py) is the one table of each jsonb and properties function's accepted argument
types and answer type. A function is registered with the types of spanlake's own columns; a call with
other accepted types is given its own signature by the planning step `signatures.sql` (DataFusion names
the refused call, the function is registered again in the query's session with its types, the query is
planned again). Measured against the alternatives: DataFusion's coercion into one exact type casts text
(LargeUtf8, Utf8View, dictionaries into Utf8) but nothing into or out of Binary, and a jsonb argument
cannot be cast to a properties list; datafusion-python 55 offers no Python hook into analysis or
planning (only Rust FFI rules), and no maintained package ships these functions as FFI UDFs.

Modules:

    columns          computing once per distinct dictionary entry, spreading the answers by index
    jsonb            jsonb_parse, jsonb_format_json, jsonb_get, jsonb_as_*, jsonb_array_length...
    jsonpath         the JSONPath subset of jsonb_path_query / jsonb_path_query_first
    properties       property_get, properties_length, properties_to_dict, properties_to_jsonb, ...
    signatures       the table of signatures and the planning step that gives each call its own
    histograms       make_histogram, sum_histograms and the histogram accessors
    helpers          bin_center, lerp, unlerp, rgba, color_scale, lerp_color
    colormaps        the colormaps of color_scale (colorous's evaluation)
    table_functions  jsonb_each, jsonb_array_elements, expand_histogram
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datafusion import AggregateUDF, DataFrame, ScalarUDF, SessionContext

from spanlake.lakehouse.query.functions import helpers, histograms, jsonb, properties, signatures, table_functions
from spanlake.lakehouse.query.functions.table_functions import ContextFactory
from spanlake.lakehouse.query.off_runtime import OffRuntime

# function name -> its signature: the jsonb and properties functions, whose arguments take several types.
SIGNATURES = {signature.name: signature for signature in [*jsonb.signatures(), *properties.signatures()]}


def scalar_udfs() -> list[ScalarUDF]:
    """Every scalar UDF of this package, each multi-type one with its default signature."""
    return [*signatures.udfs(list(SIGNATURES.values())), *histograms.scalar_udfs(), *helpers.scalar_udfs()]


def planned(ctx: SessionContext, sql: str, *args: Any, **kwargs: Any) -> DataFrame:
    """`ctx.sql(sql, ...)` with each call of a function of SIGNATURES given its arguments' signature."""
    return signatures.sql(ctx, SIGNATURES, sql, *args, **kwargs)


def aggregate_udfs() -> list[AggregateUDF]:
    """make_histogram and sum_histograms."""
    return histograms.aggregate_udfs()


def table_function_list(
    make_context: ContextFactory, off_runtime: OffRuntime
) -> list[tuple[str, Callable[..., object]]]:
    """(name, function) of each table function; `make_context` gives the fresh context that evaluates a
    subquery argument, on one of `off_runtime`'s threads."""
    return [
        ("jsonb_each", table_functions.jsonb_each(make_context, off_runtime)),
        ("jsonb_array_elements", table_functions.jsonb_array_elements(make_context, off_runtime)),
        ("expand_histogram", table_functions.expand_histogram(make_context, off_runtime)),
    ]
