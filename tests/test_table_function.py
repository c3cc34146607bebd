"""Table function declarations (`TableFunction`): arity, constants, NULLs and kinds checked with one
wording, optional trailing arguments, and the values handed to the build."""

from __future__ import annotations

import pyarrow as pa
import pytest
from datafusion import col, lit

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query.table_function import Arg, Kind, TableFunction

RANGE = TableFunction(
    "materialize_partitions",
    lambda *values: values,
    (
        Arg("view_set_name", Kind.STRING),
        Arg("begin", Kind.TIMESTAMP),
        Arg("end", Kind.TIMESTAMP),
        Arg("partition_delta_seconds", Kind.INTEGER),
    ),
    optional=1,
)
PORTED = TableFunction("parse_block", lambda block_id: block_id, (Arg("block_id", Kind.STRING),), capitalized=True)
NONE = TableFunction("list_view_sets", lambda: "listed")


def text(value: str) -> object:
    return lit(pa.scalar(value, pa.utf8()))


def test_values_reach_the_build_with_optional_arguments_left_out() -> None:
    midnight = lit(pa.scalar(1_704_067_200_000_000_000, pa.timestamp("ns", "UTC")))
    assert RANGE(text("measures"), text("2024-01-01T00:00:00Z"), midnight) == (
        "measures",
        1_704_067_200_000_000_000,
        1_704_067_200_000_000_000,
    )
    assert RANGE(text("measures"), midnight, midnight, lit(3600))[3] == 3600
    assert NONE() == "listed"


@pytest.mark.parametrize(
    ("function", "args", "message"),
    [
        (
            RANGE,
            (text("x"),),
            "materialize_partitions takes 3 or 4 arguments: (view_set_name, begin, end[, partition_delta_seconds])",
        ),
        (PORTED, (), "parse_block takes 1 argument: (block_id)"),
        (NONE, (lit(1),), "list_view_sets takes no arguments, given 1"),
        (
            RANGE,
            (lit(1), text("x"), text("y")),
            "first argument of materialize_partitions must be a string, given int64",
        ),
        (PORTED, (lit(1),), "First argument of parse_block must be a string, given int64"),
        (
            RANGE,
            (text("x"), text("soon"), text("y")),
            "second argument of materialize_partitions: not an RFC3339 timestamp: 'soon'",
        ),
        (
            RANGE,
            (text("x"), lit(2), text("y")),
            "second argument of materialize_partitions must be a timestamp, given int64",
        ),
        (
            RANGE,
            (text("x"), text("2024-01-01T00:00:00Z"), text("2024-01-02T00:00:00Z"), text("1")),
            "fourth argument of materialize_partitions must be an integer, given string",
        ),
        (PORTED, (lit(pa.scalar(None, pa.utf8())),), "First argument of parse_block must not be NULL"),
        (PORTED, (col("block_id"),), "First argument of parse_block must be a constant"),
    ],
)
def test_arguments_that_do_not_fit_are_refused(function: TableFunction, args: tuple, message: str) -> None:
    with pytest.raises(QueryError) as refused:
        function(*args)
    assert str(refused.value) == message
