"""micromegas's SQL functions (JSONB, properties, histograms, screen helpers) through a running
`spanlake serve`: values, NULLs and bad arguments, read with the micromegas client and ADBC.

Expected values follow micromegas's code and its own tests (rust/datafusion-extensions/tests): colormap
endpoints, rgba rounding, histogram binning, the `jsonb` crate's encodings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import adbc_driver_flightsql.dbapi as adbc
import cbor2
import micromegas
import pyarrow as pa
import pytest
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, running_server, wait_until
from test_flightsql_support import grpc_status

from spanlake.lakehouse.query.functions import columns
from spanlake.views import jsonb
from spanlake.views.schema_types import DICT_JSONB, DICT_UTF8

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
PROCESS_PROPERTIES = [
    {"thread-name": "main", "Count": "3", "doc": '{"a": [1, 2]}'},
    {"thread-name": "io", "count": "4"},
    {"thread-name": "main", "Count": "3", "doc": '{"a": [1, 2]}'},  # the same set again
]
HISTOGRAM_FIELDS = [
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("min", pa.float64()),
    ("max", pa.float64()),
    ("sum", pa.float64()),
    ("sum_sq", pa.float64()),
    ("count", pa.uint64()),
]


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("sql_functions")) as running:
        for properties in PROCESS_PROPERTIES:
            _ingest_process(running, properties)
        client = micromegas.connect(running.flightsql_url)
        wait_until(lambda: len(client.query("SELECT 1 FROM processes")) == 3, 60, "3 rows in the processes view")
        yield running


def _ingest_process(server: SpanlakeServer, properties: dict[str, str]) -> None:
    """One process of the Rust fixture under a new id with these properties, with one stream and block
    (the `processes` view is built from blocks)."""
    ids = {"process_id": str(uuid.uuid4()), "stream_id": str(uuid.uuid4())}
    expected = json.loads((RUST_FIXTURES / "expected.json").read_text())
    stream = expected["streams"][0]
    messages = [
        ("insert_process", {**_fixture("process.cbor"), "process_id": ids["process_id"], "properties": properties}),
        ("insert_stream", {**_fixture(stream["insert_stream_request"]), **ids}),
        (
            "insert_block",
            {**_fixture(stream["blocks"][0]["files"]["insert_block_request"]), **ids, "block_id": str(uuid.uuid4())},
        ),
    ]
    for endpoint, message in messages:
        assert post(f"{server.http_url}/ingestion/{endpoint}", cbor2.dumps(message))[0] == 200, endpoint


def _fixture(name: str) -> dict[str, Any]:
    return cbor2.loads((RUST_FIXTURES / name).read_bytes())


@pytest.fixture(scope="module")
def uri(server: SpanlakeServer) -> str:
    return server.flightsql_url


def rows(uri: str, sql: str) -> list[dict[str, Any]]:
    return micromegas.connect(uri).query_arrow(sql).to_pylist()


def one(uri: str, sql: str) -> Any:
    [row] = rows(uri, f"SELECT {sql} AS x")
    return row["x"]


def arrow(uri: str, sql: str) -> pa.Table:
    return micromegas.connect(uri, preserve_dictionary=True).query_arrow(sql)


def failure(uri: str, sql: str) -> tuple[str | None, str]:
    try:
        micromegas.connect(uri).query(sql)
    except Exception as err:
        assert "Traceback" not in str(err) and "PyErr" not in str(err), str(err)
        return grpc_status(err)
    raise AssertionError(f"expected {sql!r} to fail")


def assert_invalid(uri: str, sql: str, message: str) -> None:
    code, text = failure(uri, sql)
    assert (code, message in text) == ("INVALID_ARGUMENT", True), text


def parsed(text: str) -> str:
    return f"jsonb_parse('{text}')"


NESTED = parsed('{"b": 1, "a": {"z": 0}}')
OBJECT = parsed('{"b": [1], "a": 2}')
STRINGS = parsed('["x", "y"]')
MIXED = parsed('[1, "x", {}]')


# ------------------------------------------------------------------------------------------------
# JSONB


def test_jsonb_parse_writes_the_crates_encoding(uri: str) -> None:
    table = arrow(uri, "SELECT jsonb_parse('{\"b\": 200, \"a\": -2}') AS j, jsonb_parse('not json') AS bad")
    assert table.schema.field("j").type == DICT_JSONB
    # Keys sorted; a non-negative integer is unsigned (0x50, u8 here), a negative one signed (0x40).
    expected = bytes.fromhex("40000002 10000001 10000001 20000002 20000002") + b"ab" + b"\x40\xfe" + b"\x50\xc8"
    assert table.column("j").to_pylist() == [expected]
    assert table.column("bad").to_pylist() == [None]  # micromegas logs a warning and answers NULL
    assert one(uri, "jsonb_parse(NULL)") is None


def test_jsonb_format_json_is_compact_serde_json(uri: str) -> None:
    sql = parsed('{"b": [1, -2, 3.5, "x", null, true], "a": {"c": 18446744073709551615, "d": 1e3}}')
    table = arrow(uri, f"SELECT jsonb_format_json({sql}) AS x")
    assert table.schema.field("x").type == DICT_UTF8
    assert table.column("x").to_pylist() == ['{"a":{"c":18446744073709551615,"d":1000.0},"b":[1,-2,3.5,"x",null,true]}']
    assert one(uri, "jsonb_format_json(jsonb_parse(NULL))") is None


def test_jsonb_get_and_casts(uri: str) -> None:
    doc = parsed('{"Name": "v", "name2": 7, "f": 2.5, "big": 18446744073709551615, "t": true, "s": "12"}')
    [row] = rows(
        uri,
        f"SELECT jsonb_as_string(jsonb_get({doc}, 'name')) AS folded,"  # ASCII case-insensitive fallback
        f" jsonb_as_i64(jsonb_get({doc}, 'name2')) AS i, jsonb_as_f64(jsonb_get({doc}, 'name2')) AS i_as_f,"
        f" jsonb_as_f64(jsonb_get({doc}, 'f')) AS f, jsonb_as_i64(jsonb_get({doc}, 'f')) AS f_as_i,"
        f" jsonb_as_i64(jsonb_get({doc}, 'big')) AS big, jsonb_as_i64(jsonb_get({doc}, 't')) AS bool_as_i,"
        f" jsonb_as_f64(jsonb_get({doc}, 's')) AS string_as_f, jsonb_as_string(jsonb_get({doc}, 'name2')) AS n_as_s,"
        f" jsonb_get({doc}, 'missing') AS missing, jsonb_get({parsed('[1]')}, 'a') AS not_object",
    )
    assert row == {
        "folded": "v",
        "i": 7,
        "i_as_f": 7.0,
        "f": 2.5,
        "f_as_i": None,
        "big": None,
        "bool_as_i": None,
        "string_as_f": None,
        "n_as_s": None,
        "missing": None,
        "not_object": None,
    }
    # jsonb_get answers the member as jsonb of its own: a scalar in a one-member scalar container.
    assert one(uri, f"jsonb_get({doc}, 'Name')") == jsonb.encode("v") == bytes.fromhex("20000001 10000001") + b"v"


def test_jsonb_get_prefers_the_exact_key_and_takes_per_row_names(uri: str) -> None:
    doc = parsed('{"KEY": 1, "key": 2}')
    assert one(uri, f"jsonb_as_i64(jsonb_get({doc}, 'key'))") == 2
    assert one(uri, f"jsonb_as_i64(jsonb_get({doc}, 'Key'))") == 1
    table = rows(
        uri,
        'SELECT column1 AS name, jsonb_as_i64(jsonb_get(jsonb_parse(\'{"a": 1, "b": 2}\'), column1)) AS v'
        " FROM (VALUES ('a'), ('b'), ('c'), (NULL)) ORDER BY column1",
    )
    assert table == [{"name": "a", "v": 1}, {"name": "b", "v": 2}, {"name": "c", "v": None}, {"name": None, "v": None}]


def test_jsonb_array_length_and_object_keys(uri: str) -> None:
    table = arrow(
        uri,
        f"SELECT jsonb_array_length({parsed('[1, [2, 3], {}]')}) AS n, jsonb_array_length({parsed('{}')}) AS o,"
        f" jsonb_object_keys({NESTED}) AS k, jsonb_object_keys({parsed('[1]')}) AS nk,"
        f" jsonb_object_keys({parsed('{}')}) AS empty",
    )
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("k").type == pa.dictionary(pa.int32(), pa.list_(pa.utf8()))
    assert table.to_pylist() == [{"n": 3, "o": None, "k": ["a", "b"], "nk": None, "empty": []}]


def test_jsonb_path_query(uri: str) -> None:
    doc = parsed(
        '{"a": [{"p": 1, "n": "x"}, {"p": 5, "n": "yz"}, {"p": 9}], "b": {"c": {"d": 1}}, "k": [10, 20, 30, 40]}'
    )
    cases = {
        "$.a[*].p": "[1,5,9]",
        "$.a[*] ? (@.p > 2).p": "[5,9]",
        "$.k[last]": "[40]",
        "$.k[last-1]": "[30]",
        "$.k[1 to 2]": "[20,30]",
        "$.k[0, 3]": "[10,40]",
        "$.b.*": '[{"d":1}]',
        "$.**.d": "[1]",
        '$.a[*] ? (@.n starts with "y").p': "[5]",
        "$.a[*] ? (@.p == 1 || @.p == 9).p": "[1,9]",
        "$.k[*] ? (@ >= 20 && @ < 40)": "[20,30]",
        '$["b"].c': '[{"d":1}]',
        "$.k[10]": "[]",
        "$.x": "[]",
        "$.a[*].n": '["x","yz"]',
        "$.a[*] ? (exists(@.n)).p": "[1,5]",
        "$.a[*] ? (@.n != 1).p": "[1,5]",  # different kinds: != holds (databend's rule)
        "$.a[*] ? (@.n == 1 || @.p > 0).p": "[9]",  # ... make == unknown, dropping items that have an n
    }
    for path, expected in cases.items():
        quoted = path.replace("'", "''")
        assert one(uri, f"jsonb_format_json(jsonb_path_query({doc}, '{quoted}'))") == expected, path
    assert one(uri, f"jsonb_as_i64(jsonb_path_query_first({doc}, '$.k[*] ? (@ > 15)'))") == 20
    assert one(uri, f"jsonb_path_query_first({doc}, '$.nothing')") is None
    assert one(uri, "jsonb_path_query(jsonb_parse(NULL), '$')") is None


def test_jsonb_functions_read_properties_columns(uri: str) -> None:
    table = rows(
        uri,
        "SELECT jsonb_as_string(jsonb_get(properties, 'thread-name')) AS thread,"
        " jsonb_as_string(jsonb_get(properties, 'count')) AS count,"
        " jsonb_format_json(properties) AS text, jsonb_object_keys(properties) AS keys FROM processes ORDER BY thread",
    )
    main = {
        "thread": "main",
        "count": "3",  # 'Count': the ASCII case-insensitive fallback
        "text": '{"Count":"3","doc":"{\\"a\\": [1, 2]}","thread-name":"main"}',
        "keys": ["Count", "doc", "thread-name"],
    }
    io = {"thread": "io", "count": "4", "text": '{"count":"4","thread-name":"io"}', "keys": ["count", "thread-name"]}
    assert table == [io, main, main]
    nested = rows(
        uri,
        "SELECT jsonb_format_json(jsonb_path_query(jsonb_parse(property_get(properties, 'doc')), '$.a[1]')) AS x"
        " FROM processes ORDER BY x",
    )
    assert nested == [{"x": "[2]"}, {"x": "[2]"}, {"x": None}]  # a JSON text property, parsed


def test_jsonb_each_and_array_elements(uri: str) -> None:
    each = rows(uri, f"SELECT key, jsonb_format_json(value) AS v FROM jsonb_each({OBJECT})")
    assert each == [{"key": "a", "v": "2"}, {"key": "b", "v": "[1]"}]
    by_index = rows(uri, f"SELECT key, jsonb_as_string(value) AS v FROM jsonb_each({STRINGS})")
    assert by_index == [{"key": "0", "v": "x"}, {"key": "1", "v": "y"}]
    elements = rows(uri, f"SELECT jsonb_format_json(value) AS v FROM jsonb_array_elements({MIXED})")
    assert elements == [{"v": "1"}, {"v": '"x"'}, {"v": "{}"}]
    assert rows(uri, "SELECT * FROM jsonb_array_elements(jsonb_parse('[]'))") == []
    assert rows(uri, "SELECT * FROM jsonb_each(jsonb_parse(NULL))") == []


def test_table_functions_of_no_rows_can_be_sorted(uri: str) -> None:
    """An empty answer is a table of one empty partition, which a sort accepts (a pyarrow dataset of no
    rows has none, and DataFusion refused to plan ORDER BY over it)."""
    assert rows(uri, "SELECT * FROM jsonb_each(jsonb_parse('{}')) ORDER BY key") == []
    assert rows(uri, "SELECT * FROM jsonb_array_elements(jsonb_parse('[]')) ORDER BY value") == []
    no_histogram = (  # a scalar subquery of no row: a NULL histogram
        "SELECT * FROM expand_histogram((SELECT make_histogram(0.0, 10.0, 4, v) FROM (VALUES (1.0)) AS t(v)"
        " WHERE v > 5.0 GROUP BY v)) ORDER BY bin_center"
    )
    assert rows(uri, no_histogram) == []


def test_jsonb_each_of_a_subquery_over_a_view(uri: str) -> None:
    each = rows(
        uri,
        "SELECT key, jsonb_as_string(value) AS v FROM jsonb_each("
        "(SELECT properties FROM processes WHERE property_get(properties, 'thread-name') = 'io')) ORDER BY key",
    )
    assert each == [{"key": "count", "v": "4"}, {"key": "thread-name", "v": "io"}]
    nothing = "SELECT * FROM jsonb_each((SELECT properties FROM processes WHERE exe = 'none'))"
    assert rows(uri, nothing) == []
    # datafusion-python gives no subquery plan to run on its own: a scalar subquery has one row at most.
    several = "SELECT * FROM jsonb_each((SELECT properties FROM processes))"
    assert_invalid(uri, several, "jsonb_each: Execution error: Scalar subquery returned more than one row")


def test_jsonb_bad_arguments(uri: str) -> None:
    for path in ("a.b", "$.", "$[", "$.a[1", "$ ? (@.a >)", "$.a[x]"):
        message = f"jsonb_path_query: invalid JSONPath '{path}'"
        assert_invalid(uri, f"SELECT jsonb_path_query({parsed('{}')}, '{path}')", message)
    assert one(uri, f"jsonb_path_query_first({parsed('{}')}, NULL)") is None
    assert_invalid(uri, "SELECT jsonb_as_string(arrow_cast(X'0102', 'Dictionary(Int32, Binary)'))", "invalid jsonb")
    assert_invalid(uri, "SELECT jsonb_as_string(42)", "jsonb_as_string")
    assert_invalid(
        uri, "SELECT * FROM jsonb_each(jsonb_parse('3'))", "jsonb_each: input is not a JSONB object or array"
    )
    assert_invalid(uri, "SELECT * FROM jsonb_array_elements(jsonb_parse('{}'))", "input is not a JSONB array")
    assert_invalid(uri, "SELECT * FROM jsonb_each(1, 2)", "jsonb_each requires exactly one argument")
    assert_invalid(uri, "SELECT * FROM jsonb_each('text')", "jsonb_each argument must be Binary (JSONB)")


# ------------------------------------------------------------------------------------------------
# Properties


def test_properties_to_jsonb_passes_jsonb_through(uri: str) -> None:
    table = arrow(
        uri,
        "SELECT properties_to_jsonb(properties) AS j, properties"
        " FROM processes ORDER BY property_get(properties, 'thread-name')",
    )
    assert table.schema.field("j").type == DICT_JSONB
    assert table.column("j").to_pylist() == table.column("properties").to_pylist()
    assert jsonb.decode(table.column("j")[0].as_py()) == {"count": "4", "thread-name": "io"}


def test_properties_to_dict_deduplicates_lists(uri: str) -> None:
    table = arrow(
        uri,
        "SELECT properties_to_dict(p) AS d FROM (VALUES"
        " ([named_struct('key', 'a', 'value', '1'), named_struct('key', 'b', 'value', '2')]),"
        " ([named_struct('key', 'c', 'value', '3')]),"
        " ([named_struct('key', 'a', 'value', '1'), named_struct('key', 'b', 'value', '2')]),"
        " (NULL)) AS t(p)",
    )
    column = table.column("d").combine_chunks()
    value_type = pa.list_(
        pa.field(
            "Property",
            pa.struct([pa.field("key", pa.utf8(), False), pa.field("value", pa.utf8(), False)]),
            False,
        )
    )
    assert column.type == pa.dictionary(pa.int32(), value_type)
    ab = [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    assert column.to_pylist() == [ab, [{"key": "c", "value": "3"}], ab, None]
    assert column.indices.to_pylist() == [0, 1, 0, None] and len(column.dictionary) == 2
    # micromegas's documented round trip: back to plain lists for the array functions.
    lengths = rows(
        uri,
        "SELECT array_length(properties_to_array(properties_to_dict(p))) AS n FROM (VALUES"
        " ([named_struct('key', 'a', 'value', '1'), named_struct('key', 'b', 'value', '2')]), (NULL)) AS t(p)",
    )
    assert lengths == [{"n": 2}, {"n": None}]


def test_properties_bad_arguments(uri: str) -> None:
    assert_invalid(uri, "SELECT properties_to_array('x')", "properties_to_array")
    assert_invalid(uri, "SELECT properties_to_dict(1)", "properties_to_dict")


# ------------------------------------------------------------------------------------------------
# Histograms

VALUES = "(VALUES (1.0), (3.0), (9.5), (12.0), (-1.0), (NULL)) AS t(v)"


def test_make_histogram_bins_and_struct_type(uri: str) -> None:
    table = arrow(uri, f"SELECT make_histogram(0.0, 10.0, 5, v) AS h FROM {VALUES}")
    bins = pa.list_(pa.field("bin", pa.uint64(), nullable=False))
    expected = pa.struct(
        [*(pa.field(n, t, nullable=False) for n, t in HISTOGRAM_FIELDS), pa.field("bins", bins, False)]
    )
    assert table.schema.field("h").type.equals(expected), table.schema.field("h").type
    # Below the range: first bin; above: last bin; NULL skipped.
    assert table.column("h").to_pylist() == [
        {
            "start": 0.0,
            "end": 10.0,
            "min": -1.0,
            "max": 12.0,
            "sum": 24.5,
            "sum_sq": 1 + 9 + 90.25 + 144 + 1,
            "count": 5,
            "bins": [2, 1, 0, 0, 2],
        }
    ]


def test_histogram_accessors(uri: str) -> None:
    histogram = "(SELECT make_histogram(0.0, 10.0, 5, v) AS h FROM (VALUES (1.0), (3.0), (9.5)) AS t(v))"
    [row] = rows(
        uri,
        "SELECT quantile_from_histogram(h, 0.5) AS median, quantile_from_histogram(h, 1.0) AS top,"
        " quantile_from_histogram(h, 0.0) AS bottom, variance_from_histogram(h) AS variance,"
        f" count_from_histogram(h) AS n, sum_from_histogram(h) AS total FROM {histogram}",
    )
    # median: 1.5 of 3 values, in bin [2, 4) holding the 2nd value: halfway -> 3.0
    assert row["median"] == 3.0 and row["top"] == 10.0 and row["bottom"] == 0.0
    assert row["variance"] == pytest.approx(((1 + 9 + 90.25) / 3 - 4.5**2) * 1.5)
    assert (row["n"], row["total"]) == (3, 13.5)
    nulls = rows(
        uri,
        "SELECT count_from_histogram(h) AS n, quantile_from_histogram(h, 0.5) AS q FROM"
        " (SELECT make_histogram(0.0, 1.0, 2, v) AS h FROM (VALUES (1.0)) AS t(v) WHERE v > 5)",
    )
    assert nulls == [{"n": None, "q": None}]  # no rows: no histogram


def test_sum_histograms_per_group_and_expand(uri: str) -> None:
    grouped = rows(
        uri,
        "SELECT g, count_from_histogram(h) AS n FROM (SELECT g, make_histogram(0.0, 10.0, 2, v) AS h FROM"
        " (VALUES (1.0, 'a'), (2.0, 'b'), (7.0, 'a'), (8.0, 'a')) AS t(v, g) GROUP BY g) ORDER BY g",
    )
    assert grouped == [{"g": "a", "n": 3}, {"g": "b", "n": 1}]
    [total] = rows(
        uri,
        "SELECT sum_histograms(h) AS h FROM (SELECT g, make_histogram(0.0, 10.0, 2, v) AS h FROM"
        " (VALUES (1.0, 'a'), (2.0, 'b'), (7.0, 'a'), (8.0, 'a')) AS t(v, g) GROUP BY g)",
    )
    assert (total["h"]["bins"], total["h"]["count"], total["h"]["min"], total["h"]["max"]) == ([2, 2], 4, 1.0, 8.0)
    expanded = rows(
        uri,
        "SELECT bin_center, count FROM expand_histogram("
        "(SELECT make_histogram(0.0, 10.0, 4, v) FROM (VALUES (1.0), (3.0), (9.5), (9.9)) AS t(v)))",
    )
    assert expanded == [
        {"bin_center": 1.25, "count": 1},
        {"bin_center": 3.75, "count": 1},
        {"bin_center": 6.25, "count": 0},
        {"bin_center": 8.75, "count": 2},
    ]


def test_histogram_bad_arguments(uri: str) -> None:
    one_value = "(VALUES (1.0)) AS t(v)"
    assert_invalid(uri, f"SELECT make_histogram(0.0, 10.0, 0, v) FROM {one_value}", "nb_bins must be >= 1, got 0")
    assert_invalid(uri, f"SELECT make_histogram(5.0, 1.0, 2, v) FROM {one_value}", "start (5.0) must be <= end (1.0)")
    assert_invalid(uri, f"SELECT make_histogram(NULL, 1.0, 2, v) FROM {one_value}", "start argument is null")
    assert_invalid(
        uri, f"SELECT make_histogram(0.0, CAST('inf' AS DOUBLE), 2, v) FROM {one_value}", "end must be finite"
    )
    assert_invalid(
        uri,
        "SELECT sum_histograms(h) FROM (SELECT make_histogram(0.0, 10.0, 2, 1.0) AS h"
        " UNION ALL SELECT make_histogram(0.0, 10.0, 3, 1.0))",
        "Error merging incompatible histograms",
    )
    assert_invalid(uri, "SELECT count_from_histogram(1.0)", "count_from_histogram")
    assert_invalid(uri, "SELECT * FROM expand_histogram(1.0)", "expand_histogram argument must be a struct")


# ------------------------------------------------------------------------------------------------
# Helpers


def test_numeric_helpers(uri: str) -> None:
    [row] = rows(
        uri,
        "SELECT bin_center(7.4, 5.0) AS a, bin_center(-2.5, 5.0) AS b, bin_center(2.5, 5.0) AS c,"
        " lerp(1.0, 3.0, 0.5) AS d, lerp(1.0, 3.0, 2.0) AS e, unlerp(1.0, 3.0, 2.5) AS f,"
        " unlerp(1.0, 1.0, 2.0) AS g, lerp(NULL, 1.0, 0.5) AS h, bin_center(1, 2) AS i",
    )
    assert row == {"a": 5.0, "b": 0.0, "c": 5.0, "d": 2.0, "e": 5.0, "f": 0.75, "g": float("inf"), "h": None, "i": 2.0}


def test_color_helpers(uri: str) -> None:
    # The values of micromegas's own color tests.
    cases = {
        "rgba(1.0, 0.0, 0.0, 1.0)": 0xFF0000FF,
        "rgba(1.0, 0.0, 0.5, 1.0)": 0xFF0080FF,
        "rgba(2.0, -1.0, 0.0, 1.0)": 0xFF0000FF,
        "rgba(0.0, 0.0, 0.0, CAST('NaN' AS DOUBLE))": 0x00000000,
        "lerp_color(rgba(1, 0, 0, 0), rgba(0, 1, 0, 0), 0.5)": 0x80800000,
        "lerp_color(rgba(1, 0, 0, 0), rgba(0, 1, 0, 0), 7.0)": 0x00FF0000,
        "color_scale('viridis', 0.0, 1.0)": 0x440154FF,
        "color_scale('viridis', 1.0, 1.0)": 0xFDE725FF,
        "color_scale('magma', 0.0, 1.0)": 0x000004FF,
        "color_scale('magma', 1.0, 1.0)": 0xFCFDBFFF,
        "color_scale('plasma', 0.0, 1.0)": 0x0D0887FF,
        "color_scale('plasma', 1.0, 1.0)": 0xF0F921FF,
        "color_scale('inferno', 1.0, 1.0)": 0xFCFFA4FF,
        "color_scale('cividis', 0.0, 1.0)": 0x002051FF,
        "color_scale('cividis', 1.0, 1.0)": 0xFDE945FF,
        "color_scale('turbo', 0.0, 1.0)": 0x22171BFF,
        "color_scale('TURBO', 1.0, 1.0)": 0x900C00FF,
        "color_scale('viridis', 0.0, 0.5)": 0x44015480,
        "color_scale('viridis', -3.0, 1.5)": 0x440154FF,
        "color_scale('viridis', CAST('NaN' AS DOUBLE), 1.0)": 0x000000FF,  # colorous on NaN: 0 channels
    }
    [row] = rows(uri, "SELECT " + ", ".join(f"{sql} AS c{i}" for i, sql in enumerate(cases)))
    assert list(row.values()) == list(cases.values())
    assert one(uri, "rgba(NULL, 0.0, 0.0, 1.0)") is None
    assert arrow(uri, "SELECT rgba(1.0, 1.0, 1.0, 1.0) AS c").schema.field("c").type == pa.uint32()
    gradient = rows(uri, "SELECT color_scale(n, 0.5, 1.0) AS c FROM (VALUES ('viridis'), ('viridis'), (NULL)) AS t(n)")
    assert [r["c"] for r in gradient] == [gradient[0]["c"]] * 2 + [None]


def test_helper_bad_arguments(uri: str) -> None:
    assert_invalid(uri, "SELECT color_scale('not_a_scale', 0.5, 1.0)", "unknown colormap 'not_a_scale'. Recognized:")
    # Bare integers do not coerce to UInt32 (micromegas's Signature::exact contract).
    assert_invalid(uri, "SELECT lerp_color(4278190080, 65280, 0.5)", "lerp_color")
    assert_invalid(uri, "SELECT lerp(1.0, 2.0)", "lerp")


# ------------------------------------------------------------------------------------------------
# ADBC


def test_adbc_reads_functions_and_errors(uri: str) -> None:
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT jsonb_as_string(jsonb_get(properties, 'thread-name')) AS thread,"
            " count_from_histogram(make_histogram(0.0, 1.0, 4, 0.5)) AS n, rgba(0.0, 1.0, 0.0, 1.0) AS green"
            " FROM processes GROUP BY thread ORDER BY thread"
        )
        assert cur.fetch_arrow_table().to_pylist() == [
            {"thread": "io", "n": 1, "green": 0x00FF00FF},
            {"thread": "main", "n": 2, "green": 0x00FF00FF},
        ]
        with pytest.raises(adbc.Error, match=r"INVALID_ARGUMENT.*nb_bins must be >= 1"):
            cur.execute("SELECT make_histogram(0.0, 1.0, -1, 0.5)")
            cur.fetch_arrow_table()


def test_the_server_keeps_serving_after_errors(uri: str, server: SpanlakeServer) -> None:
    failure(uri, "SELECT color_scale('nope', 0.5, 1.0)")
    assert one(uri, "jsonb_as_i64(jsonb_parse('5'))") == 5
    assert server.process is not None and server.process.poll() is None


# ------------------------------------------------------------------------------------------------
# Vectorization: one Python call per distinct value, not per row


def test_functions_compute_once_per_distinct_value() -> None:
    calls: list[tuple] = []

    def length(value: bytes) -> int:
        calls.append((value,))
        return len(value)

    column = pa.DictionaryArray.from_arrays(
        pa.array([i % 3 for i in range(100_000)] + [None], pa.int32()), pa.array([b"a", b"bb", b"ccc"])
    )
    lengths = columns.per_entry(column, length, pa.int64(), dictionary=False)
    assert len(calls) == 3 and lengths.to_pylist() == [1, 2, 3] * 33_333 + [1, None]

    def pair(value: bytes, text: str) -> str | None:
        calls.append((value, text))
        return None if text == "none" else f"{value.decode()}:{text}"

    calls.clear()
    texts = pa.array(["x", "y", "none"] * 2 + ["x"] * 99_994 + [None])
    answers = columns.per_entry_and_text(column, texts, pair, pa.utf8(), dictionary=True)
    assert len(calls) == len(set(calls)) <= 9 and answers.type == DICT_UTF8
    assert answers.to_pylist()[:7] == ["a:x", "bb:y", None, "a:x", "bb:y", None, "a:x"]
    assert answers.to_pylist()[-1] is None
