"""Properties conversions: `properties_to_dict`, `properties_to_jsonb`, `properties_to_array` (next to
`property_get` / `properties_length`, views/properties.py, registered by the session).

DataFusion's Python UDFs take one exact signature where micromegas's accept several encodings, so each
takes the one micromegas documents for it: `properties_to_dict` the legacy `List<Struct{key, value}>`
(from SQL literals or old columns), `properties_to_array` what `properties_to_dict` answers, and
`properties_to_jsonb` spanlake's `Dictionary(Int32, Binary)` jsonb columns (which it passes through).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import ScalarUDF, udf

from spanlake.views.schema_types import DICT_JSONB

# What SQL builds from `[named_struct('key', k, 'value', v)]`; old non-null columns cast to it.
PROPERTY_LIST_ARGUMENT = pa.list_(pa.struct([("key", pa.utf8()), ("value", pa.utf8())]))
PROPERTY = pa.struct([pa.field("key", pa.utf8(), nullable=False), pa.field("value", pa.utf8(), nullable=False)])
PROPERTY_LIST = pa.list_(pa.field("Property", PROPERTY, nullable=False))
DICT_PROPERTY_LIST = pa.dictionary(pa.int32(), PROPERTY_LIST)


def properties_to_dict(lists: pa.Array) -> pa.Array:
    """`List<Struct{key, value}>` rows as `Dictionary(Int32, List<Property>)`, equal lists sharing one
    dictionary value (compared by content, in order)."""
    lists = _normalized(lists)
    codes, first_rows = _distinct_lists(lists)
    values = lists.take(pa.array(first_rows, pa.int64())) if len(first_rows) else pa.array([], PROPERTY_LIST)
    return pa.DictionaryArray.from_arrays(codes, values)


def properties_to_jsonb(column: pa.Array) -> pa.Array:
    """Dictionary-encoded jsonb properties, as they are (micromegas passes jsonb through)."""
    return column


def properties_to_array(column: pa.Array) -> pa.Array:
    """A dictionary column's values row by row (`take(values, keys)`): the lists of `properties_to_dict`."""
    return column.dictionary.take(column.indices)


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


def scalar_udfs() -> list[ScalarUDF]:
    """The properties UDFs."""
    return [
        udf(properties_to_dict, [PROPERTY_LIST_ARGUMENT], DICT_PROPERTY_LIST, "immutable", "properties_to_dict"),
        udf(properties_to_jsonb, [DICT_JSONB], DICT_JSONB, "immutable", "properties_to_jsonb"),
        udf(properties_to_array, [DICT_PROPERTY_LIST], PROPERTY_LIST, "immutable", "properties_to_array"),
    ]
