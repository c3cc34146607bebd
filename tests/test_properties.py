"""Properties columns: databend-jsonb objects, dictionary columns, property_get / properties_length."""

from __future__ import annotations

import pyarrow as pa
import pytest

from spanlake.views import jsonb
from spanlake.views.properties import (
    EMPTY_JSONB_OBJECT,
    PropertiesError,
    constant_properties_array,
    decode_jsonb_object,
    encode_jsonb_object,
    jsonb_dictionary,
    properties_dictionary_array,
    properties_length,
    property_get,
)
from spanlake.views.schema_types import DICT_JSONB, DICT_UTF8

LEGACY_TYPE = pa.list_(pa.struct([("key", pa.utf8()), ("value", pa.utf8())]))


def test_encoding_is_the_databend_jsonb_object_layout() -> None:
    # header 0x40000000|n, then the key entries 0x10000000|len (keys sorted), then the value entries,
    # then the key bytes, then the value bytes; all integers big-endian.
    header_and_entries = bytes.fromhex("40000002 10000001 10000001 10000003 10000001")
    assert encode_jsonb_object({"b": "v", "a": "xyz"}) == header_and_entries + b"ab" + b"xyzv"
    assert encode_jsonb_object({}) == EMPTY_JSONB_OBJECT == b"\x40\x00\x00\x00"


def test_keys_are_sorted_by_utf8_bytes() -> None:
    encoded = encode_jsonb_object({"é": "1", "z": "2", "Z": "3"})
    assert encoded.index(b"Z") < encoded.index(b"z") < encoded.index("é".encode())
    assert list(decode_jsonb_object(encoded)) == ["Z", "z", "é"]


def test_round_trip_of_unicode_and_empty_strings() -> None:
    properties = {"city": "Montréal", "": "empty key", "empty": "", "東京": "🗼"}
    assert decode_jsonb_object(encode_jsonb_object(properties)) == properties


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x40\x00", "has no header"),
        (bytes.fromhex("80000001 10000001") + b"a", "not an object"),
        (bytes.fromhex("40000001 10000001 10000005") + b"ab", "runs past"),
        (bytes.fromhex("40000001 10000001 20000001") + b"a\x40", "bad jsonb number 40"),
        (bytes.fromhex("40000002 10000001"), "truncated"),
    ],
)
def test_malformed_jsonb_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(PropertiesError, match=message):
        decode_jsonb_object(data)


def test_dictionary_columns_deduplicate_by_content() -> None:
    column = properties_dictionary_array([{"a": "1"}, {"b": "2"}, {"a": "1"}, {}])
    assert column.type == DICT_JSONB
    assert column.indices.to_pylist() == [0, 1, 0, 2]
    assert [decode_jsonb_object(value) for value in column.dictionary.to_pylist()] == [{"a": "1"}, {"b": "2"}, {}]
    # Equal sets given as distinct entries still share one dictionary value.
    coded = jsonb_dictionary([0, 1, 1, 2], [{"x": "1"}, {"x": "1"}, {"y": "2"}])
    assert coded.indices.to_pylist() == [0, 0, 0, 1]
    constant = constant_properties_array({"k": "v"}, 3)
    assert constant.indices.to_pylist() == [0, 0, 0]
    assert len(constant.dictionary) == 1


def test_property_get_on_jsonb_dictionary_decodes_each_distinct_value_once() -> None:
    column = properties_dictionary_array([{"thread-name": "main"}, {"Thread-Name": "io"}, {}, {"thread-name": "main"}])
    result = property_get(column, "thread-name")
    assert result.type == DICT_UTF8
    assert result.to_pylist() == ["main", "io", None, "main"]  # exact match first, then ASCII case-insensitive
    assert result.dictionary.to_pylist() == ["main", "io"]


def test_property_get_prefers_the_exact_key() -> None:
    column = properties_dictionary_array([{"KEY": "upper", "key": "lower"}])
    assert property_get(column, "key").to_pylist() == ["lower"]
    assert property_get(column, "Key").to_pylist() == ["upper"]  # first case-insensitive match in key order


def test_property_get_on_plain_binary_and_nulls() -> None:
    column = pa.array([encode_jsonb_object({"a": "1"}), None, encode_jsonb_object({"b": "2"})], pa.binary())
    assert property_get(column, "a").to_pylist() == ["1", None, None]
    assert properties_length(column).to_pylist() == [1, None, 1]


def test_property_get_on_legacy_lists() -> None:
    column = pa.array(
        [[{"key": "Name", "value": "x"}, {"key": "name", "value": "y"}], None, [], [{"key": "other", "value": "z"}]],
        LEGACY_TYPE,
    )
    assert property_get(column, "name").to_pylist() == ["x", None, None, None]  # case-insensitive, first match
    assert properties_length(column).to_pylist() == [2, None, 0, 1]
    dictionary_of_lists = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int32()), column.slice(0, 2))
    assert property_get(dictionary_of_lists, "NAME").to_pylist() == [None, "x", None]
    assert properties_length(dictionary_of_lists).to_pylist() == [None, 2, None]


def test_properties_length_on_jsonb_dictionary() -> None:
    column = properties_dictionary_array([{"a": "1", "b": "2"}, {}])
    not_an_object = pa.DictionaryArray.from_arrays(
        pa.array([0, 1], pa.int32()), pa.array([bytes.fromhex("80000000"), b"\x01"], pa.binary())
    )
    assert properties_length(column).to_pylist() == [2, 0]
    assert properties_length(not_an_object).to_pylist() == [0, None]  # an array has no keys; garbage is NULL


def test_chunked_arrays_are_handled_per_chunk() -> None:
    chunked = pa.chunked_array([properties_dictionary_array([{"a": "1"}]), properties_dictionary_array([{"a": "2"}])])
    assert property_get(chunked, "a").to_pylist() == ["1", "2"]
    assert properties_length(chunked).to_pylist() == [1, 1]


def test_unsupported_column_type_is_rejected() -> None:
    with pytest.raises(PropertiesError, match="unsupported properties type int64"):
        property_get(pa.array([1, 2]), "a")


def test_non_string_values_read_as_their_compact_json() -> None:
    # OTLP attributes keep their JSON types in the jsonb object (as micromegas stores them).
    value = jsonb.encode({"count": 3, "ok": False, "ratio": 0.5, "tags": ["a", {"k": 0}], "none": None, "s": "x"})
    assert decode_jsonb_object(value) == {
        "count": "3",
        "ok": "false",
        "ratio": "0.5",
        "tags": '["a",{"k":0}]',
        "none": "null",
        "s": "x",
    }
    column = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array([value], pa.binary()))
    assert property_get(column, "tags").to_pylist() == ['["a",{"k":0}]'] * 2
    assert properties_length(column).to_pylist() == [6, 6]
