"""The properties functions: `property_get`, `properties_length`, `properties_to_dict`,
`properties_to_jsonb`, `properties_to_array`.

Each takes properties in every encoding micromegas's take and spanlake's views produce (signatures.py):
jsonb objects as `Dictionary(Int32, Binary)` or `Binary`, legacy `List<Struct{key, value}>` lists and
dictionaries of them. Conversions between the encodings run once per distinct value.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query.functions.columns import as_dictionary
from spanlake.lakehouse.query.functions.signatures import (
    DICT_PROPERTY_LIST,
    PROPERTIES,
    PROPERTY,
    PROPERTY_LIST,
    TEXT,
    Signature,
)
from spanlake.views import properties
from spanlake.views.schema_types import DICT_JSONB, DICT_UTF8


def property_get(column: pa.Array, keys: pa.Array) -> pa.Array:
    """The value of a key (the first row's: micromegas's key is a constant), NULL when absent."""
    key = keys[0].as_py() if len(keys) else ""
    return properties.property_get(column, key)


def properties_length(column: pa.Array) -> pa.Array:
    """The number of properties of each row (Int32)."""
    return properties.properties_length(column)


def properties_to_dict(column: pa.Array) -> pa.Array:
    """Properties as `Dictionary(Int32, List<Property>)`, equal lists sharing one dictionary value
    (compared by content, in order)."""
    if _is_list(column.type):
        lists = _normalized(column)
        codes, first_rows = _distinct_lists(lists)
        values = lists.take(pa.array(first_rows, pa.int64())) if len(first_rows) else pa.array([], PROPERTY_LIST)
        return pa.DictionaryArray.from_arrays(codes, values)
    if pa.types.is_dictionary(column.type) and _is_list(column.type.value_type):
        return pa.DictionaryArray.from_arrays(column.indices.cast(pa.int32()), _normalized(column.dictionary))
    entries = as_dictionary(column)
    lists = [_property_list(value) for value in entries.dictionary.to_pylist()]
    return pa.DictionaryArray.from_arrays(entries.indices, pa.array(lists, PROPERTY_LIST))


def properties_to_jsonb(column: pa.Array) -> pa.Array:
    """Properties as jsonb objects, `Dictionary(Int32, Binary)` (jsonb passes through)."""
    if not _is_list(column.type) and not _is_list(_value_type(column.type)):
        return as_dictionary(column)
    lists = properties_to_dict(column)
    objects = [_jsonb_object(entries) for entries in lists.dictionary.to_pylist()]
    return pa.DictionaryArray.from_arrays(lists.indices, pa.array(objects, pa.binary()))


def properties_to_array(column: pa.Array) -> pa.Array:
    """Properties row by row as `List<Property>` (a dictionary's values taken by its keys)."""
    if _is_list(column.type):
        return _normalized(column)
    lists = properties_to_dict(column)
    return lists.dictionary.take(lists.indices)


def _is_list(data_type: pa.DataType) -> bool:
    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type)


def _value_type(data_type: pa.DataType) -> pa.DataType:
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def _property_list(value: bytes | None) -> list[dict[str, str]] | None:
    """A jsonb object's members as `Property` entries, in stored order."""
    if value is None:
        return None
    try:
        members = properties.decode_jsonb_object(value)
    except properties.PropertiesError as err:
        raise QueryError(f"a properties value must be a jsonb object: {err}") from None
    return [{"key": key, "value": text} for key, text in members.items()]


def _jsonb_object(entries: list[dict[str, str]] | None) -> bytes | None:
    """`Property` entries as one jsonb object (a repeated key keeps its last value, as micromegas)."""
    if entries is None:
        return None
    return properties.encode_jsonb_object({entry["key"]: entry["value"] for entry in entries})


def _normalized(lists: pa.Array) -> pa.ListArray:
    """The list rows with NULL entries dropped and NULL keys or values read as "" (as micromegas does),
    typed `List<Property>`."""
    valid_rows = lists.is_valid()
    entries = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    keep = entries.is_valid()
    entries, parents = entries.filter(keep), parents.filter(keep)
    keys = entries.field("key").fill_null("")
    values = entries.field("value").fill_null("")
    counts = np.bincount(np.asarray(parents, dtype=np.int64), minlength=len(lists))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    flat = pa.StructArray.from_arrays([keys, values], fields=list(PROPERTY))
    return pa.ListArray.from_arrays(offsets, flat, type=PROPERTY_LIST, mask=pc.invert(valid_rows))


def _distinct_lists(lists: pa.ListArray) -> tuple[pa.Array, np.ndarray]:
    """Dictionary codes of the rows (NULL for NULL lists) and the first row of each distinct list, found by
    hashing one text per row (entries joined with separators that property text does not contain)."""
    entries = lists.values
    pairs = pc.binary_join_element_wise(entries.field("key"), entries.field("value"), "\x00")
    texts = pc.binary_join(pa.ListArray.from_arrays(lists.offsets, pairs, mask=lists.is_null()), "\x01")
    encoded = pc.dictionary_encode(texts)
    indices = np.asarray(encoded.indices.fill_null(-1), dtype=np.int64)
    seen = indices >= 0
    _, first_rows = np.unique(indices[seen], return_index=True)
    return encoded.indices, np.flatnonzero(seen)[first_rows]


def signatures() -> list[Signature]:
    """The properties functions with micromegas's answer types."""
    return [
        Signature("property_get", property_get, (PROPERTIES, TEXT), DICT_UTF8),
        Signature("properties_length", properties_length, (PROPERTIES,), pa.int32()),
        Signature("properties_to_dict", properties_to_dict, (PROPERTIES,), DICT_PROPERTY_LIST),
        Signature("properties_to_jsonb", properties_to_jsonb, (PROPERTIES,), DICT_JSONB),
        Signature("properties_to_array", properties_to_array, (PROPERTIES,), PROPERTY_LIST),
    ]
