"""micromegas's SQL functions beyond the views: JSONB, properties, histograms and screen helpers.

Each family is vectorized over dictionary columns: a function of a jsonb or properties value runs once
per distinct dictionary entry and its answers are taken by index (columns.py).

Modules:

    columns          computing once per distinct dictionary entry, spreading the answers by index
    jsonb            jsonb_parse, jsonb_format_json, jsonb_get, jsonb_as_*, jsonb_array_length...
    jsonpath         the JSONPath subset of jsonb_path_query / jsonb_path_query_first
    properties       properties_to_dict, properties_to_jsonb, properties_to_array
    histograms       make_histogram, sum_histograms and the histogram accessors
    helpers          bin_center, lerp, unlerp, rgba, color_scale, lerp_color
    colormaps        the colormaps of color_scale (colorous's evaluation)
    table_functions  jsonb_each, jsonb_array_elements, expand_histogram
"""

from __future__ import annotations

from collections.abc import Callable

from datafusion import AggregateUDF, ScalarUDF

from spanlake.lakehouse.query.functions import helpers, histograms, jsonb, properties, table_functions
from spanlake.lakehouse.query.functions.table_functions import ContextFactory
from spanlake.lakehouse.query.off_runtime import OffRuntime


def scalar_udfs() -> list[ScalarUDF]:
    """Every scalar UDF of this package."""
    return [*jsonb.scalar_udfs(), *properties.scalar_udfs(), *histograms.scalar_udfs(), *helpers.scalar_udfs()]


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
