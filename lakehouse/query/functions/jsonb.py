"""The JSONB UDFs over databend-jsonb values, as micromegas's (the `jsonb` crate's semantics):
jsonb_parse, jsonb_format_json, jsonb_get, jsonb_as_string, jsonb_as_f64, jsonb_as_i64,
jsonb_array_length, jsonb_object_keys, jsonb_path_query, jsonb_path_query_first.

Their jsonb argument is `Dictionary(Int32, Binary)` (every properties column and every jsonb these
functions answer), `Binary` or `LargeBinary` (signatures.py). A NULL gives NULL; bytes that are not jsonb
are an error; a value of the wrong JSON type gives NULL.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query.functions import jsonpath
from spanlake.lakehouse.query.functions.columns import per_entry, per_entry_and_text, spread
from spanlake.lakehouse.query.functions.signatures import JSONB, TEXT, Signature
from spanlake.views import jsonb
from spanlake.views.jsonb import JsonValue, UnsignedInt
from spanlake.views.schema_types import DICT_JSONB, DICT_UTF8

I64_MIN, I64_MAX, U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
# Answers are remembered per distinct input: every batch of a column repeats its dictionary.
ANSWERS = 4096
KEY_LIST = pa.list_(pa.field("item", pa.utf8(), nullable=True))
DICT_KEY_LIST = pa.dictionary(pa.int32(), KEY_LIST)


def decoded(function_name: str, data: bytes) -> JsonValue:
    """The JSON value of jsonb bytes; bad bytes are the caller's error."""
    try:
        return jsonb.decode(data)
    except jsonb.JsonbError as err:
        raise QueryError(f"{function_name}: invalid jsonb value: {err}") from None


@functools.cache
def _of_value(function_name: str, read: Callable[[JsonValue], Any]) -> Callable[[bytes], Any]:
    """`read` of the decoded value, remembered per jsonb value."""
    return functools.lru_cache(maxsize=ANSWERS)(lambda data: read(decoded(function_name, data)))


# -- jsonb_parse / jsonb_format_json -----------------------------------------------------------------


def jsonb_parse(texts: pa.Array) -> pa.Array:
    """JSON text as jsonb (`Dictionary(Int32, Binary)`); text that is not JSON gives NULL."""
    encoded = pc.dictionary_encode(texts)
    answers = [_parse(text) for text in encoded.dictionary.to_pylist()]
    return spread(answers, encoded.indices, pa.binary(), dictionary=True)


@functools.lru_cache(maxsize=ANSWERS)
def _parse(text: str) -> bytes | None:
    try:
        return jsonb.encode(json.loads(text, parse_int=_parsed_integer))
    except (ValueError, RecursionError):
        return None


def _parsed_integer(digits: str) -> int | float:
    """The crate's parser: non-negative integers are unsigned, negative ones signed, others floats."""
    value = int(digits)
    if 0 <= value <= U64_MAX:
        return UnsignedInt(value)
    return value if value >= I64_MIN else float(value)


def jsonb_format_json(column: pa.Array) -> pa.Array:
    """jsonb as compact JSON text (`Dictionary(Int32, Utf8)`); bytes that are not jsonb read as text."""
    return per_entry(column, _format, pa.utf8(), dictionary=True)


@functools.lru_cache(maxsize=ANSWERS)
def _format(data: bytes) -> str:
    try:
        return jsonb.compact_json(jsonb.decode(data))
    except jsonb.JsonbError:
        return data.decode("utf-8", errors="replace") if data else "null"


# -- accessors ----------------------------------------------------------------------------------------


def jsonb_get(column: pa.Array, names: pa.Array) -> pa.Array:
    """The member `name` of a jsonb object (exact key first, then ASCII case-insensitive), as jsonb."""
    return per_entry_and_text(column, names, _member, pa.binary(), dictionary=True)


@functools.lru_cache(maxsize=ANSWERS)
def _member(data: bytes, name: str) -> bytes | None:
    value = decoded("jsonb_get", data)
    if not isinstance(value, dict):
        return None
    if name in value:
        return jsonb.encode(value[name])
    folded = _ascii_lower(name)
    match = next((key for key in value if _ascii_lower(key) == folded), None)
    return None if match is None else jsonb.encode(value[match])


def _ascii_lower(text: str) -> str:
    return "".join(char.lower() if char.isascii() else char for char in text)


def _as_string(value: JsonValue) -> str | None:
    return value if isinstance(value, str) else None


def _as_f64(value: JsonValue) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _as_i64(value: JsonValue) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if I64_MIN <= value <= I64_MAX else None


def _array_length(value: JsonValue) -> int | None:
    return len(value) if isinstance(value, list) else None


def _object_keys(value: JsonValue) -> list[str] | None:
    return list(value) if isinstance(value, dict) else None


def jsonb_as_string(column: pa.Array) -> pa.Array:
    """A jsonb string's text (`Dictionary(Int32, Utf8)`); any other JSON type gives NULL."""
    return per_entry(column, _of_value("jsonb_as_string", _as_string), pa.utf8(), dictionary=True)


def jsonb_as_f64(column: pa.Array) -> pa.Array:
    """A jsonb number as Float64 (integers converted); any other JSON type gives NULL."""
    return per_entry(column, _of_value("jsonb_as_f64", _as_f64), pa.float64(), dictionary=False)


def jsonb_as_i64(column: pa.Array) -> pa.Array:
    """A jsonb integer as Int64; floats, integers beyond Int64 and other types give NULL."""
    return per_entry(column, _of_value("jsonb_as_i64", _as_i64), pa.int64(), dictionary=False)


def jsonb_array_length(column: pa.Array) -> pa.Array:
    """The number of elements of a jsonb array (Int64); NULL for anything else."""
    return per_entry(column, _of_value("jsonb_array_length", _array_length), pa.int64(), dictionary=False)


def jsonb_object_keys(column: pa.Array) -> pa.Array:
    """A jsonb object's keys in stored (sorted) order, `Dictionary(Int32, List<Utf8>)`; NULL otherwise."""
    return per_entry(column, _of_value("jsonb_object_keys", _object_keys), KEY_LIST, dictionary=True)


# -- JSONPath ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parsed_path(function_name: str, path: str) -> jsonpath.JsonPath:
    try:
        return jsonpath.parse(path)
    except jsonpath.JsonPathError as err:
        raise QueryError(f"{function_name}: invalid JSONPath '{path}': {err}") from None


def jsonb_path_query(column: pa.Array, paths: pa.Array) -> pa.Array:
    """Every match of a JSONPath, as one jsonb array (empty when nothing matches)."""
    return per_entry_and_text(column, paths, _matches, pa.binary(), dictionary=True)


def jsonb_path_query_first(column: pa.Array, paths: pa.Array) -> pa.Array:
    """The first match of a JSONPath as jsonb; NULL when nothing matches."""
    return per_entry_and_text(column, paths, _first_match, pa.binary(), dictionary=True)


@functools.lru_cache(maxsize=ANSWERS)
def _matches(data: bytes, path: str) -> bytes:
    return jsonb.encode(_parsed_path("jsonb_path_query", path).select(decoded("jsonb_path_query", data)))


@functools.lru_cache(maxsize=ANSWERS)
def _first_match(data: bytes, path: str) -> bytes | None:
    found = _parsed_path("jsonb_path_query_first", path).select(decoded("jsonb_path_query_first", data))
    return jsonb.encode(found[0]) if found else None


def signatures() -> list[Signature]:
    """The JSONB functions with micromegas's names, argument types and answer types."""
    return [
        Signature("jsonb_parse", jsonb_parse, (TEXT,), DICT_JSONB),
        Signature("jsonb_format_json", jsonb_format_json, (JSONB,), DICT_UTF8),
        Signature("jsonb_get", jsonb_get, (JSONB, TEXT), DICT_JSONB),
        Signature("jsonb_as_string", jsonb_as_string, (JSONB,), DICT_UTF8),
        Signature("jsonb_as_f64", jsonb_as_f64, (JSONB,), pa.float64()),
        Signature("jsonb_as_i64", jsonb_as_i64, (JSONB,), pa.int64()),
        Signature("jsonb_array_length", jsonb_array_length, (JSONB,), pa.int64()),
        Signature("jsonb_object_keys", jsonb_object_keys, (JSONB,), DICT_KEY_LIST),
        Signature("jsonb_path_query", jsonb_path_query, (JSONB, TEXT), DICT_JSONB),
        Signature("jsonb_path_query_first", jsonb_path_query_first, (JSONB, TEXT), DICT_JSONB),
    ]
