"""Every jsonb and properties function with every argument type its signature accepts (the one table,
`functions.SIGNATURES`), through a running `spanlake serve`, read with the micromegas client and ADBC.

Each call's arguments are built in SQL from one known value per case, cast to the type under test; every
type must give the same answer, of micromegas's answer type.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import adbc_driver_flightsql.dbapi as adbc
import micromegas
import pyarrow as pa
import pytest
from test_sql_functions import assert_invalid, failure, server, uri  # noqa: F401 (the served processes and their url)

from spanlake.lakehouse.query.functions import SIGNATURES
from spanlake.lakehouse.query.functions.signatures import (
    DICT_PROPERTY_LIST,
    JSONB,
    PROPERTIES,
    PROPERTY_LIST,
    PROPERTY_LIST_ARGUMENT,
    TEXT,
    Argument,
    Signature,
    type_text,
)
from spanlake.views import jsonb
from spanlake.views.schema_types import DICT_JSONB

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
OBJECT = {"a": 1, "b": "x", "c": [1, 2]}
PROPERTY_MAP = {"a": "1", "b": "x"}
PROPERTY_ENTRIES = [{"key": "a", "value": "1"}, {"key": "b", "value": "x"}]


@dataclass(frozen=True)
class Case:
    """Known arguments of a function (a JSON value, a property map or a text per argument) and its answer,
    as read back in Python (jsonb answers decoded)."""

    arguments: tuple[Any, ...]
    expected: Any


CASES = {
    "jsonb_parse": Case(('{"b": [1, 2], "a": "x"}',), {"a": "x", "b": [1, 2]}),
    "jsonb_format_json": Case((OBJECT,), '{"a":1,"b":"x","c":[1,2]}'),
    "jsonb_get": Case((OBJECT, "B"), "x"),  # case-insensitive after no exact match
    "jsonb_as_string": Case(("text",), "text"),
    "jsonb_as_f64": Case((1.5,), 1.5),
    "jsonb_as_i64": Case((-7,), -7),
    "jsonb_array_length": Case(([1, "x", {}],), 3),
    "jsonb_object_keys": Case((OBJECT,), ["a", "b", "c"]),
    "jsonb_path_query": Case((OBJECT, "$.c[*]"), [1, 2]),
    "jsonb_path_query_first": Case((OBJECT, "$.c[1]"), 2),
    "property_get": Case((PROPERTY_MAP, "b"), "x"),
    "properties_length": Case((PROPERTY_MAP,), 2),
    "properties_to_dict": Case((PROPERTY_MAP,), PROPERTY_ENTRIES),
    "properties_to_jsonb": Case((PROPERTY_MAP,), PROPERTY_MAP),
    "properties_to_array": Case((PROPERTY_MAP,), PROPERTY_ENTRIES),
}


def typed_sql(argument: Argument, value: Any, data_type: pa.DataType) -> str:
    """SQL giving `value` as `data_type`: jsonb from its JSON, properties from jsonb or a struct list."""
    if argument is TEXT:
        return _cast(f"'{value}'", data_type, pa.utf8())
    if argument is JSONB or data_type in JSONB.accepted:
        return _cast(f"jsonb_parse('{json.dumps(value)}')", data_type, DICT_JSONB)
    entries = ", ".join(f"named_struct('key', '{key}', 'value', '{text}')" for key, text in value.items())
    as_lists = {
        PROPERTY_LIST_ARGUMENT: "[{}]",
        DICT_PROPERTY_LIST: "properties_to_dict([{}])",
        PROPERTY_LIST: "properties_to_array(properties_to_dict([{}]))",
    }
    return as_lists[data_type].format(entries)


def _cast(sql: str, data_type: pa.DataType, built_as: pa.DataType) -> str:
    return sql if data_type == built_as else f"arrow_cast({sql}, '{type_text(data_type)}')"


def calls() -> list[Any]:
    """(signature, argument types) for every function and every accepted combination of types."""
    return [
        pytest.param(
            signature,
            types,
            id=f"{signature.name}({', '.join(map(type_text, types))})",
        )
        for signature in SIGNATURES.values()
        for types in itertools.product(*(argument.accepted for argument in signature.arguments))
        if (signature.name, types) != SELF_BUILT_CALL
    ]


# Not a case: SQL builds a List<Property> only with properties_to_array itself (arrow_cast cannot name
# the list's 'Property' field), so the call would pass one function two types.
SELF_BUILT_CALL = ("properties_to_array", (PROPERTY_LIST,))


def call_sql(signature: Signature, types: tuple[pa.DataType, ...]) -> str:
    """The query calling `signature` with its case's arguments as `types`."""
    case = CASES[signature.name]
    arguments = ", ".join(
        typed_sql(argument, value, data_type)
        for argument, value, data_type in zip(signature.arguments, case.arguments, types, strict=True)
    )
    return f"SELECT {signature.name}({arguments}) AS x"


def read_back(signature: Signature, value: Any) -> Any:
    """An answer as the case states it (jsonb decoded)."""
    return jsonb.decode(value) if value is not None and signature.returns == DICT_JSONB else value


def test_every_function_has_a_case() -> None:
    assert set(CASES) == set(SIGNATURES)


@pytest.mark.parametrize(("signature", "types"), calls())
def test_function_takes_the_type(uri: str, signature: Signature, types: tuple[pa.DataType, ...]) -> None:  # noqa: F811
    sql = call_sql(signature, types)
    expected = CASES[signature.name].expected
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
    assert table.schema.field("x").type == plain(signature.returns)  # dictionaries are unpacked unless asked
    assert read_back(signature, table.column("x")[0].as_py()) == expected
    table = micromegas.connect(uri, preserve_dictionary=True).query_arrow(sql)
    assert table.schema.field("x").type == signature.returns
    assert read_back(signature, table.column("x")[0].as_py()) == expected


def plain(data_type: pa.DataType) -> pa.DataType:
    """A dictionary type's value type; any other type as it is."""
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def test_spanlake_properties_columns_reach_the_list_functions(uri: str) -> None:  # noqa: F811
    sql = (
        "SELECT properties_to_dict(properties) AS d, properties_to_array(properties) AS a,"
        " property_get(properties, 'thread-name') AS name FROM processes ORDER BY name, properties_length(properties)"
    )
    rows = micromegas.connect(uri).query_arrow(sql).to_pylist()
    io = [{"key": "count", "value": "4"}, {"key": "thread-name", "value": "io"}]
    assert (rows[0]["d"], rows[0]["a"]) == (io, io)
    assert [row["name"] for row in rows] == ["io", "main", "main"]
    main_keys = [entry["key"] for entry in rows[1]["a"]]
    assert main_keys == ["Count", "doc", "thread-name"]


def test_one_function_with_two_types_in_one_query_is_refused(uri: str) -> None:  # noqa: F811
    plain = typed_sql(JSONB, OBJECT, pa.binary())
    dictionary = typed_sql(JSONB, OBJECT, DICT_JSONB)
    assert_invalid(
        uri,
        f"SELECT jsonb_as_i64(jsonb_get({plain}, 'a')) AS x, jsonb_get({dictionary}, 'b') AS y",
        "in one query: arrow_cast one of them",
    )
    _, text = failure(uri, f"SELECT jsonb_get({plain}, 'a') AS x, jsonb_get({dictionary}, 'b') AS y")
    assert "(Dictionary(Int32, Binary), Utf8)" in text and "(Binary, Utf8)" in text, text


def test_unaccepted_types_and_values_are_refused(uri: str) -> None:  # noqa: F811
    assert_invalid(uri, "SELECT properties_to_dict(jsonb_parse('[1]'))", "a properties value must be a jsonb object")
    assert_invalid(uri, "SELECT jsonb_get(1, 'a')", "jsonb_get(Int64, Utf8)")
    assert_invalid(
        uri, f"SELECT properties_length({typed_sql(PROPERTIES, PROPERTY_MAP, pa.binary())}, 1)", "properties_length"
    )


@pytest.mark.parametrize("data_type", JSONB.accepted, ids=type_text)
def test_array_functions_take_the_lists_answers(uri: str, data_type: pa.DataType) -> None:  # noqa: F811
    value = typed_sql(JSONB, OBJECT, data_type)
    sql = f"SELECT array_length(jsonb_object_keys({value})) AS n, jsonb_object_keys({value}) AS k"
    assert micromegas.connect(uri).query_arrow(sql).to_pylist() == [{"n": 3, "k": ["a", "b", "c"]}]
    sql = f"SELECT cardinality(properties_to_dict({value})) AS n"
    assert micromegas.connect(uri).query_arrow(sql).to_pylist() == [{"n": 3}]


@pytest.mark.parametrize("data_type", JSONB.accepted, ids=type_text)
def test_jsonb_table_functions_take_the_type(uri: str, data_type: pa.DataType) -> None:  # noqa: F811
    client = micromegas.connect(uri)
    each = client.query_arrow(
        f"SELECT key, jsonb_format_json(value) AS v FROM jsonb_each({typed_sql(JSONB, OBJECT, data_type)}) ORDER BY key"
    )
    assert each.to_pylist() == [{"key": "a", "v": "1"}, {"key": "b", "v": '"x"'}, {"key": "c", "v": "[1,2]"}]
    elements = client.query_arrow(
        f"SELECT jsonb_as_i64(value) AS v FROM jsonb_array_elements({typed_sql(JSONB, [3, 4], data_type)})"
    )
    assert elements.to_pylist() == [{"v": 3}, {"v": 4}]


def test_a_query_planned_again_runs_its_table_function_once(uri: str) -> None:  # noqa: F811
    # Binary jsonb plans a second time; the partitions retired by the first planning are still answered.
    value = typed_sql(JSONB, OBJECT, pa.binary())
    sql = (
        f"SELECT msg, jsonb_as_string(jsonb_get({value}, 'b')) AS b"
        " FROM retire_partitions('streams', 'global', '1970-01-01T00:00:00Z', '2100-01-01T00:00:00Z')"
    )
    rows = micromegas.connect(uri).query_arrow(sql).to_pylist()
    retired = int(rows[-1]["msg"].split()[1])
    assert rows[-1]["msg"] == f"retired {retired} partitions of streams/global" and retired >= 1
    assert {row["b"] for row in rows} == {"x"}
