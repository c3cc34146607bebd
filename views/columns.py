"""Column helpers shared by the view builders: coded (dictionary-style) values and Arrow conversions."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

from spanlake.views.decoded import ValueColumn
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Coded(Generic[T]):
    """Rows `values[codes[i]]`: few distinct values, many rows (like an Arrow dictionary)."""

    codes: np.ndarray  # int64
    values: Sequence[T]

    @staticmethod
    def of(column: ValueColumn) -> Coded[Any]:
        """A decoded value column as codes and distinct values."""
        return Coded(np.asarray(column.indices, dtype=np.int64), list(column.values))

    @staticmethod
    def constant(value: T, length: int) -> Coded[T]:
        """`length` rows of one value."""
        return Coded(np.zeros(length, dtype=np.int64), [value])

    @staticmethod
    def concat(parts: Sequence[Coded[T]]) -> Coded[T]:
        """The rows of `parts` one after another (values are not deduplicated)."""
        offsets = np.cumsum([0] + [len(part.values) for part in parts])
        codes = [part.codes + offset for part, offset in zip(parts, offsets, strict=False)]
        values = [value for part in parts for value in part.values]
        return Coded(np.concatenate(codes) if codes else np.zeros(0, np.int64), values)

    def map(self, function: Callable[[T], U]) -> Coded[U]:
        """Apply `function` to each distinct value (not to each row)."""
        return Coded(self.codes, [function(value) for value in self.values])

    def take(self, order: np.ndarray) -> Coded[T]:
        """The rows at the positions `order`."""
        return Coded(self.codes[order], self.values)

    def numbers(self, dtype: type | np.dtype) -> np.ndarray:
        """Per-row numbers when the distinct values are numbers."""
        return np.array(self.values, dtype=dtype)[self.codes] if self.values else np.zeros(0, dtype)


def pair_codes(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (first, second) code pairs → (pair code per row, first and second code per pair)."""
    if len(first) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    width = int(second.max()) + 1
    pairs, inverse = np.unique(first.astype(np.int64) * width + second, return_inverse=True)
    return inverse.astype(np.int64), pairs // width, pairs % width


def dictionary_array(coded: Coded[str]) -> pa.Array:
    """`Dictionary(Int32, Utf8)` with deduplicated values."""
    unique: dict[str, int] = {}
    remap = np.array([unique.setdefault(value, len(unique)) for value in coded.values], dtype=np.int32)
    indices = remap[coded.codes] if len(remap) else np.zeros(0, np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(unique), pa.utf8()))


def string_array(coded: Coded[str]) -> pa.Array:
    """Plain `Utf8` array of the rows."""
    return pa.array(coded.values, pa.utf8()).take(pa.array(coded.codes, pa.int64()))


def constant_dictionary(value: str, length: int) -> pa.Array:
    """`Dictionary(Int32, Utf8)` of `length` rows of `value`."""
    return dictionary_array(Coded.constant(value, length))


def timestamp_array(nanoseconds: np.ndarray) -> pa.Array:
    """Int64 nanoseconds since the epoch as a TIMESTAMP array."""
    return pa.array(np.asarray(nanoseconds, dtype=np.int64), pa.int64()).view(TIMESTAMP)


def block_identity_columns(process: ProcessMeta, block: BlockMeta, length: int) -> list[pa.Array]:
    """process_id, stream_id, block_id, insert_time, exe, username, computer: the columns that
    log_entries and measures rows take from their block and process, constant per block."""
    return [
        constant_dictionary(process.process_id, length),
        constant_dictionary(block.stream_id, length),
        constant_dictionary(block.block_id, length),
        timestamp_array(np.full(length, block.insert_time_ns, dtype=np.int64)),
        constant_dictionary(process.exe, length),
        constant_dictionary(process.username, length),
        constant_dictionary(process.computer, length),
    ]


def run_identity_columns(
    process: ProcessMeta, blocks: Sequence[BlockMeta], starts: np.ndarray, positions: np.ndarray
) -> list[pa.Array]:
    """`block_identity_columns` of rows from consecutive blocks of one process, given each row's object
    position and each block's first position (`decoded.concat_blocks`)."""
    which = np.searchsorted(starts, positions, side="right") - 1
    length = len(positions)
    insert_times = np.array([block.insert_time_ns for block in blocks], dtype=np.int64)
    return [
        constant_dictionary(process.process_id, length),
        *block_columns(blocks, starts, positions),
        timestamp_array(insert_times[which]),
        constant_dictionary(process.exe, length),
        constant_dictionary(process.username, length),
        constant_dictionary(process.computer, length),
    ]


def block_columns(blocks: Sequence[BlockMeta], starts: np.ndarray, positions: np.ndarray) -> list[pa.Array]:
    """stream_id and block_id of rows from consecutive blocks, given each row's object position and
    each block's first position (`decoded.concat_blocks`)."""
    which = np.searchsorted(starts, positions, side="right") - 1
    return [
        dictionary_array(Coded(which, [block.stream_id for block in blocks])),
        dictionary_array(Coded(which, [block.block_id for block in blocks])),
    ]


def order_by_position(positions: Sequence[np.ndarray]) -> np.ndarray:
    """The permutation putting concatenated per-type rows back in block order."""
    return np.argsort(np.concatenate(positions) if positions else np.zeros(0, np.int64), kind="stable")


__all__ = [
    "DICT_UTF8",
    "Coded",
    "block_columns",
    "constant_dictionary",
    "dictionary_array",
    "order_by_position",
    "pair_codes",
    "run_identity_columns",
    "string_array",
    "timestamp_array",
]


def binary_dictionary(coded: Coded[bytes]) -> pa.Array:
    """`Dictionary(Int32, Binary)` with deduplicated values."""
    unique: dict[bytes, int] = {}
    remap = np.array([unique.setdefault(value, len(unique)) for value in coded.values], dtype=np.int32)
    indices = remap[coded.codes] if len(remap) else np.zeros(0, np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(unique), pa.binary()))


def matching_rows(keys: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key, the row of an equal candidate and whether there is one (a sorted search, no join)."""
    if not len(candidates):
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    order = np.argsort(candidates, kind="stable")
    slots = np.minimum(np.searchsorted(candidates[order], keys), len(candidates) - 1)
    return order[slots], candidates[order][slots] == keys


Columns = TypeVar("Columns")


def concat_columns(parts: Sequence[Columns]) -> tuple[Columns, np.ndarray]:
    """Dataclasses of per-row columns (numpy arrays, `Coded`, Arrow arrays, lists), one per block, as one with their
    rows one after another; and each part's first row."""
    first = parts[0]
    joined: dict[str, Any] = {}
    lengths = np.zeros(len(parts), np.int64)
    for column in dataclasses.fields(first):  # type: ignore[arg-type]
        values = [getattr(part, column.name) for part in parts]
        if isinstance(values[0], np.ndarray):
            lengths = np.array([len(value) for value in values], np.int64)
            joined[column.name] = np.concatenate(values)
        elif isinstance(values[0], Coded):
            joined[column.name] = Coded.concat(values)
        elif isinstance(values[0], pa.Array):
            joined[column.name] = pa.concat_arrays(values)
        else:
            joined[column.name] = list(itertools.chain.from_iterable(values))
    return dataclasses.replace(first, **joined), np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
