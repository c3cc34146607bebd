"""databend-jsonb values built many at once, as Arrow arrays: the same bytes as `views.jsonb.encode`
gives one value at a time, without a Python step per value.

A container's members are `Members`: one JEntry (type | byte length) and the bytes of each member.
`objects` and `arrays` group members by the row (`parent`) they belong to and lay each row out as the
`jsonb` crate does: a header, every JEntry (an object's keys first), then the members' bytes. Scalars
(`strings`, `integers`, `floats`, `booleans`, `nulls`) and nested containers (`containers`) are members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.lakehouse.otlp.wire import ranges
from spanlake.views.jsonb import (  # JEntry types and container headers: one encoding, written two ways
    JENTRY_CONTAINER,
    JENTRY_FALSE,
    JENTRY_NULL,
    JENTRY_NUMBER,
    JENTRY_STRING,
    JENTRY_TRUE,
    JSONB_ARRAY,
    JSONB_OBJECT,
)

_INT_PREFIX, _FLOAT_PREFIX, _NAN, _INFINITY, _NEGATIVE_INFINITY = 0x40, 0x60, 0x10, 0x20, 0x30
_BINARY = pa.large_binary()
_HEX = np.frombuffer(b"".join(f"{byte:02x}".encode() for byte in range(256)), np.uint8).reshape(256, 2)
_BASE64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8)


def binary_parts(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes (uint8) and offsets (int64, from 0) of a binary array without nulls."""
    values = values.cast(_BINARY)
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + len(values) + 1]
    data = values.buffers()[2]
    flat = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return flat[offsets[0] : offsets[-1]], offsets - offsets[0]


def binary_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A large binary array of `data` (uint8) cut at `offsets` (int64, from 0)."""
    count = len(offsets) - 1
    return pa.Array.from_buffers(
        _BINARY, count, [None, pa.py_buffer(np.ascontiguousarray(offsets, np.int64)), pa.py_buffer(data)]
    )


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _cut(rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Row i's bytes `rows.flat[starts[i] : starts[i] + lengths[i]]`, as a binary array."""
    return binary_array(rows.reshape(-1)[ranges(starts, lengths)], _offsets(lengths))


@dataclass(frozen=True)
class Members:
    """jsonb members: each one's JEntry and bytes (empty for null and booleans)."""

    entry: np.ndarray  # uint32
    data: pa.Array  # large binary

    def __len__(self) -> int:
        return len(self.entry)

    def take(self, rows: np.ndarray) -> Members:
        """The members at `rows`."""
        return Members(self.entry[rows], self.data.take(pa.array(rows, pa.int64())))

    @staticmethod
    def concat(parts: Sequence[Members]) -> Members:
        """The members of every part, in order."""
        return Members(
            np.concatenate([p.entry for p in parts]).astype(np.uint32),
            pa.concat_arrays([p.data.cast(_BINARY) for p in parts]),
        )


def _sized(kind: int, data: pa.Array) -> Members:
    lengths = np.diff(binary_parts(data)[1])
    return Members((kind | lengths).astype(np.uint32), data.cast(_BINARY))


def strings(data: pa.Array) -> Members:
    """String members of UTF-8 bytes."""
    return _sized(JENTRY_STRING, data)


def containers(data: pa.Array) -> Members:
    """Members that are jsonb containers (objects or arrays)."""
    return _sized(JENTRY_CONTAINER, data)


def booleans(values: np.ndarray) -> Members:
    """Boolean members."""
    return Members(np.where(values, JENTRY_TRUE, JENTRY_FALSE).astype(np.uint32), _empty(len(values)))


def nulls(count: int) -> Members:
    """Null members."""
    return Members(np.full(count, JENTRY_NULL, np.uint32), _empty(count))


def _empty(count: int) -> pa.Array:
    return binary_array(np.zeros(0, np.uint8), np.zeros(count + 1, np.int64))


def integers(values: np.ndarray) -> Members:
    """Integer members: 0x00 for zero, else 0x40 and the smallest big-endian signed width holding it."""
    values = np.asarray(values, np.int64)
    width = np.full(len(values), 8, np.int64)
    for size in (4, 2, 1):
        limit = 2 ** (8 * size - 1)
        width[(values >= -limit) & (values < limit)] = size
    width[values == 0] = 0
    rows = np.zeros((len(values), 9), np.uint8)
    rows[:, 1:] = values.astype(">i8").view(np.uint8).reshape(-1, 8)
    signed = np.flatnonzero(width)
    rows[signed, 8 - width[signed]] = _INT_PREFIX
    lengths = width + 1
    data = _cut(rows, np.arange(len(values)) * 9 + 8 - width, lengths)
    return Members((JENTRY_NUMBER | lengths).astype(np.uint32), data)


def floats(values: np.ndarray) -> Members:
    """Float members: 0x60 and the big-endian f64, or one byte for NaN and the infinities."""
    values = np.asarray(values, np.float64)
    rows = np.zeros((len(values), 9), np.uint8)
    rows[:, 0] = np.where(np.isnan(values), _NAN, np.where(np.isposinf(values), _INFINITY, _FLOAT_PREFIX))
    rows[np.isneginf(values), 0] = _NEGATIVE_INFINITY
    rows[:, 1:] = values.astype(">f8").view(np.uint8).reshape(-1, 8)
    lengths = np.where(np.isfinite(values), 9, 1)
    data = _cut(rows, np.arange(len(values)) * 9, lengths)
    return Members((JENTRY_NUMBER | lengths).astype(np.uint32), data)


def hex_strings(data: pa.Array) -> pa.Array:
    """Each byte string in lowercase hex."""
    flat, offsets = binary_parts(data)
    return binary_array(_HEX[flat].reshape(-1), offsets * 2)


def base64_strings(data: pa.Array) -> pa.Array:
    """Each byte string in standard base64, padded."""
    flat, offsets = binary_parts(data)
    lengths = np.diff(offsets)
    groups = (lengths + 2) // 3
    padded = np.zeros(int(groups.sum()) * 3, np.uint8)
    padded[ranges(3 * (np.cumsum(groups) - groups), lengths)] = flat
    triples = padded.reshape(-1, 3).astype(np.uint32)
    bits = triples[:, 0] << 16 | triples[:, 1] << 8 | triples[:, 2]
    sextets = np.stack([bits >> 18, bits >> 12, bits >> 6, bits], axis=1) & 63
    chars = _BASE64[sextets].reshape(-1)
    ends = 4 * np.cumsum(groups)
    remainder = lengths % 3
    chars[ends[remainder == 1] - 2] = ord("=")
    chars[ends[remainder != 0] - 1] = ord("=")
    return binary_array(chars, _offsets(4 * groups))


def arrays(members: Members, parent: np.ndarray, count: int) -> pa.Array:
    """One jsonb array per row of `count`: the members whose `parent` is that row, in order."""
    order = np.argsort(parent, kind="stable")
    return _lay_out(JSONB_ARRAY, None, members.take(order), parent[order], count)


def objects(keys: pa.Array, members: Members, parent: np.ndarray, count: int) -> pa.Array:
    """One jsonb object per row of `count` from the (key, member) pairs whose `parent` is that row: a
    key given twice keeps its later member, keys in UTF-8 byte order (a BTreeMap's)."""
    keys = keys.cast(_BINARY)
    sequence = np.arange(len(parent), dtype=np.int64)
    table = pa.table({"parent": pa.array(parent, pa.int64()), "key": keys, "sequence": sequence})
    order = pc.sort_indices(
        table, sort_keys=[("parent", "ascending"), ("key", "ascending"), ("sequence", "descending")]
    ).to_numpy()
    parent, keys = parent[order], keys.take(pa.array(order))
    if len(order) > 1:
        same_key = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
        kept = np.r_[True, ~((parent[1:] == parent[:-1]) & same_key)]
        kept_rows = np.flatnonzero(kept)
        order, parent, keys = order[kept_rows], parent[kept_rows], keys.take(pa.array(kept_rows))
    return _lay_out(JSONB_OBJECT, keys, members.take(order), parent, count)


def _lay_out(kind: int, keys: pa.Array | None, members: Members, parent: np.ndarray, count: int) -> pa.Array:
    """Rows of members already grouped by `parent` (and sorted by key): header, JEntries, bytes."""
    sizes = np.bincount(parent, minlength=count).astype(np.int64)
    bounds = _offsets(sizes)
    header = binary_array((kind | sizes).astype(">u4").view(np.uint8), np.arange(count + 1, dtype=np.int64) * 4)
    entries = binary_array(members.entry.astype(">u4").view(np.uint8), bounds * 4)
    values_data, values_offsets = binary_parts(members.data)
    values = binary_array(values_data, values_offsets[bounds])
    parts = [header]
    if keys is not None:
        key_data, key_offsets = binary_parts(keys)
        key_lengths = np.diff(key_offsets)
        parts += [binary_array((JENTRY_STRING | key_lengths).astype(">u4").view(np.uint8), bounds * 4)]
        parts += [entries, binary_array(key_data, key_offsets[bounds])]
    else:
        parts.append(entries)
    parts.append(values)
    return pc.binary_join_element_wise(*parts, pa.scalar(b"", _BINARY))
