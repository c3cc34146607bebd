"""Properties columns: flat `{str: str}` objects in databend-jsonb binary form, dictionary-encoded.

micromegas stores every `properties` / `process_properties` column as `Dictionary(Int32, Binary)` whose
values are objects serialized by the `jsonb` crate (0.5, databend's binary JSONB), not JSON text and not
PostgreSQL jsonb. The layout of an object with n members (all integers big-endian u32):

    header                       0x40000000 | n              (object container, n <= 0x1FFFFFFF)
    n key JEntries               0x10000000 | len(key)       (string entry, len < 2**28)
    n value JEntries             0x10000000 | len(value)     (string values; other types never occur here)
    key bytes, in order          UTF-8, keys sorted by bytes (the crate serializes a BTreeMap)
    value bytes, in order        UTF-8

Values written by spanlake's transit path are strings; OTLP attributes may be any JSON value
(views/jsonb.py), which reads back as its compact JSON text.

Lookups follow micromegas's `property_get`: an exact key match first, then the first ASCII
case-insensitive match; a missing key gives NULL. Only the distinct values of a dictionary column are
decoded, then the results are taken by the dictionary indices.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views import jsonb
from spanlake.views.schema_types import DICT_JSONB, DICT_UTF8

_OBJECT_CONTAINER = 0x40000000
_CONTAINER_TYPE_MASK = 0xE0000000
_CONTAINER_LEN_MASK = 0x1FFFFFFF
_STRING_ENTRY = 0x10000000
_ENTRY_TYPE_MASK = 0x70000000
_ENTRY_OFFSET_FLAG = 0x80000000
_ENTRY_LEN_MASK = 0x0FFFFFFF


class PropertiesError(ValueError):
    """A properties value is not a flat databend-jsonb object of strings, or has an unsupported type."""


def encode_jsonb_object(properties: Mapping[str, str]) -> bytes:
    """Serialize `{key: value}` strings exactly as micromegas does (jsonb crate, keys sorted by bytes)."""
    items = sorted((key.encode(), value.encode()) for key, value in properties.items())
    lengths = [len(key) for key, _ in items] + [len(value) for _, value in items]
    if any(length > _ENTRY_LEN_MASK for length in lengths):
        raise PropertiesError("a property key or value is longer than 2**28-1 bytes")
    entries = [_STRING_ENTRY | length for length in lengths]
    header = struct.pack(f">{1 + len(entries)}I", _OBJECT_CONTAINER | len(items), *entries)
    return header + b"".join(key for key, _ in items) + b"".join(value for _, value in items)


EMPTY_JSONB_OBJECT = encode_jsonb_object({})


def decode_jsonb_object(data: bytes) -> dict[str, str]:
    """A databend-jsonb object's members as text: strings as they are, any other value (OTLP attributes
    can be numbers, booleans, arrays...) as its compact JSON, which is what micromegas's property_get
    answers for them."""
    try:
        value = jsonb.decode(data)
    except jsonb.JsonbError as err:
        raise PropertiesError(str(err)) from None
    if not isinstance(value, dict):
        raise PropertiesError("jsonb value is not an object")
    return {key: item if isinstance(item, str) else jsonb.compact_json(item) for key, item in value.items()}


def _object_member_count(data: bytes) -> int | None:
    """The number of members of a jsonb object, or None when the value is some other jsonb type."""
    if len(data) < 4:
        raise PropertiesError(f"jsonb value of {len(data)} bytes has no header")
    (header,) = struct.unpack_from(">I", data, 0)
    if header & _CONTAINER_TYPE_MASK != _OBJECT_CONTAINER:
        return None
    return header & _CONTAINER_LEN_MASK


def _lookup(properties: Mapping[str, str], key: str) -> str | None:
    if key in properties:
        return properties[key]
    folded = _ascii_fold(key)
    return next((value for name, value in properties.items() if _ascii_fold(name) == folded), None)


def _ascii_fold(text: str) -> str:
    """Lower-case ASCII letters only (Rust's eq_ignore_ascii_case)."""
    return "".join(char.lower() if char.isascii() else char for char in text)


# ---------------------------------------------------------------------------------------------------
# Building columns


def jsonb_dictionary(codes: np.ndarray, distinct_properties: Sequence[Mapping[str, str]]) -> pa.Array:
    """`Dictionary(Int32, Binary)` rows `distinct_properties[codes[i]]`, equal sets sharing one value."""
    encoded = [encode_jsonb_object(properties) for properties in distinct_properties]
    unique_index: dict[bytes, int] = {}
    remap = np.array([unique_index.setdefault(value, len(unique_index)) for value in encoded], np.int32)
    indices = remap[np.asarray(codes, dtype=np.int64)] if len(remap) else np.zeros(0, np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(unique_index), pa.binary()))


def properties_dictionary_array(rows: Iterable[Mapping[str, str]]) -> pa.Array:
    """`Dictionary(Int32, Binary)` of one property map per row, deduplicated by content."""
    distinct: dict[tuple[tuple[str, str], ...], int] = {}
    codes = [distinct.setdefault(tuple(sorted(row.items())), len(distinct)) for row in rows]
    return jsonb_dictionary(np.array(codes, np.int64), [dict(items) for items in distinct])


def constant_properties_array(properties: Mapping[str, str], length: int) -> pa.Array:
    """The same property map repeated `length` times (a block-constant column)."""
    return jsonb_dictionary(np.zeros(length, np.int64), [properties])


# ---------------------------------------------------------------------------------------------------
# property_get / properties_length


def property_get(array: pa.Array | pa.ChunkedArray, key: str) -> pa.Array | pa.ChunkedArray:
    """The value of `key` in each row's properties, as `Dictionary(Int32, Utf8)` (NULL when absent).

    Accepts `Dictionary(Int32, Binary)` jsonb (the normal case), plain `Binary` jsonb,
    `List<Struct{key, value}>` (legacy) and a dictionary of such lists.
    """
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([property_get(chunk, key) for chunk in array.chunks], DICT_UTF8)
    if pa.types.is_dictionary(array.type):
        found = _distinct_lookups(array.dictionary, key)
        return _take_strings(found, array.indices)
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return property_get(pc.dictionary_encode(array), key)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return pc.dictionary_encode(_list_lookups(array, key))
    raise PropertiesError(f"property_get: unsupported properties type {array.type}")


def properties_length(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The number of properties of each row as Int32 (0 for a jsonb value that is not an object)."""
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([properties_length(chunk) for chunk in array.chunks], pa.int32())
    if pa.types.is_dictionary(array.type):
        lengths = _distinct_lengths(array.dictionary)
        return pc.take(lengths, array.indices)
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return properties_length(pc.dictionary_encode(array))
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return pc.list_value_length(array).cast(pa.int32())
    raise PropertiesError(f"properties_length: unsupported properties type {array.type}")


def _distinct_lookups(values: pa.Array, key: str) -> list[str | None]:
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return _list_lookups(values, key).to_pylist()
    return [None if value is None else _jsonb_lookup(value, key) for value in values.to_pylist()]


@functools.lru_cache(maxsize=4096)
def _jsonb_lookup(value: bytes, key: str) -> str | None:
    """Remembered per distinct value and key: every batch of a column repeats its dictionary."""
    return _lookup(decode_jsonb_object(value), key)


def _distinct_lengths(values: pa.Array) -> pa.Array:
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return pc.list_value_length(values).cast(pa.int32())
    return pa.array([_jsonb_length(value) for value in values.to_pylist()], pa.int32())


def _jsonb_length(value: bytes | None) -> int | None:
    """Like micromegas: NULL for NULL or unreadable bytes, 0 for a value that is not an object."""
    if value is None:
        return None
    try:
        return _object_member_count(value) or 0
    except PropertiesError:
        return None


def _list_lookups(lists: pa.Array, key: str) -> pa.Array:
    """First ASCII case-insensitive key match in each `List<Struct{key, value}>` row (micromegas's
    rule), as a string per row (NULL when absent)."""
    flat = pc.list_flatten(lists)
    matches = np.asarray(pc.equal(pc.ascii_lower(flat.field("key")), _ascii_fold(key)).fill_null(False))
    parents = np.asarray(pc.list_parent_indices(lists))
    matching_rows, first = np.unique(parents[matches], return_index=True)
    value_index = np.full(len(lists), -1, dtype=np.int64)
    value_index[matching_rows] = np.flatnonzero(matches)[first]
    return flat.field("value").take(pa.array(value_index, mask=value_index < 0))


def _take_strings(distinct: Sequence[str | None], indices: pa.Array) -> pa.Array:
    """Rows `distinct[indices[i]]` as `Dictionary(Int32, Utf8)`, NULL where the value is None."""
    unique_index: dict[str, int] = {}
    codes = np.array(
        [-1 if value is None else unique_index.setdefault(value, len(unique_index)) for value in distinct] + [-1],
        np.int32,
    )
    index_values = np.asarray(indices.fill_null(len(distinct)), dtype=np.int64)
    taken = codes[index_values]
    return pa.DictionaryArray.from_arrays(
        pa.array(taken, pa.int32(), mask=taken < 0), pa.array(list(unique_index), pa.utf8())
    )


__all__ = [
    "DICT_JSONB",
    "EMPTY_JSONB_OBJECT",
    "PropertiesError",
    "constant_properties_array",
    "decode_jsonb_object",
    "encode_jsonb_object",
    "jsonb_dictionary",
    "properties_dictionary_array",
    "properties_length",
    "property_get",
]
