"""Computing a function once per distinct input and spreading the answers over the rows by index.

Every jsonb or properties column of spanlake is `Dictionary(Int32, Binary)`: a function of the value runs
once per dictionary entry (Python), then numpy/pyarrow take the answers by the row indices. A plain
`Binary` or `LargeBinary` column is dictionary-encoded first (hashing, no Python per row). A function of the
value and a text argument (a key, a path) runs once per distinct (entry, text) pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def per_entry(
    column: pa.Array, function: Callable[[bytes], Any], value_type: pa.DataType, dictionary: bool
) -> pa.Array:
    """`function(value)` for each row of a binary column; None answers (and NULL rows) are NULL.
    The result is dictionary-encoded over the answers when `dictionary`, else plain."""
    column = as_dictionary(column)
    answers = [None if value is None else function(value) for value in column.dictionary.to_pylist()]
    return spread(answers, column.indices, value_type, dictionary)


def per_entry_and_text(
    column: pa.Array,
    texts: pa.Array,
    function: Callable[[bytes, str], Any],
    value_type: pa.DataType,
    dictionary: bool,
) -> pa.Array:
    """`function(value, text)` for each row of a dictionary column and a text column (a constant
    argument reaches a UDF as a repeated column: it is recognized and applied per entry)."""
    column = as_dictionary(column)
    if len(texts) and texts.null_count == 0 and pc.all(pc.equal(texts, texts[0])).as_py():
        text = texts[0].as_py()
        return per_entry(column, lambda value: function(value, text), value_type, dictionary)
    encoded_texts = pc.dictionary_encode(texts)
    entry_codes = np.asarray(column.indices.fill_null(-1), dtype=np.int64)
    text_codes = np.asarray(encoded_texts.indices.fill_null(-1), dtype=np.int64)
    valid = (entry_codes >= 0) & (text_codes >= 0)
    pair_codes = np.where(valid, entry_codes * len(encoded_texts.dictionary) + text_codes, -1)
    distinct_pairs, inverse = np.unique(pair_codes[valid], return_inverse=True)
    values = column.dictionary.to_pylist()
    names = encoded_texts.dictionary.to_pylist()
    width = len(names)
    answers = [_call(function, values[pair // width], names[pair % width]) for pair in distinct_pairs.tolist()]
    codes = np.zeros(len(texts), dtype=np.int32)
    codes[valid] = inverse
    return spread(answers, pa.array(codes, pa.int32(), mask=~valid), value_type, dictionary)


def as_dictionary(column: pa.Array) -> pa.DictionaryArray:
    """A binary column as `Dictionary(Int32, Binary)`: as it is when it already is one."""
    if pa.types.is_dictionary(column.type):
        return column
    return pc.dictionary_encode(column.cast(pa.binary()))


def _call(function: Callable[[bytes, str], Any], value: bytes | None, text: str) -> Any:
    return None if value is None else function(value, text)


def spread(answers: list[Any], indices: pa.Array, value_type: pa.DataType, dictionary: bool) -> pa.Array:
    """Rows `answers[indices[i]]`, NULL where the index is NULL or the answer None."""
    values = pa.array(answers, value_type)
    if not dictionary:
        return values.take(indices)
    if values.null_count:  # a NULL answer makes its rows' indices NULL (DataFusion reads nulls off the keys)
        answered = pa.array([answer is not None for answer in answers], pa.bool_())
        keep = answered.take(indices).fill_null(False)
        indices = pc.if_else(keep, indices, pa.scalar(None, indices.type))
    return pa.DictionaryArray.from_arrays(indices, values)
