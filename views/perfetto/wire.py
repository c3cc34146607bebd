"""Protobuf wire format for the Perfetto writer: scalar fields, and whole columns of rows with numpy.

Scalar helpers build the few one-off messages (descriptors, interned entries). For span packets the
writer describes a row as a sequence of pieces, each either a constant byte string shared by every
row or a per-row column (varints, bytes), and `pack_rows` lays all rows out in one numpy pass: a
(rows x width) byte matrix, compacted with a mask only when some varint column has rows of different
lengths. No per-row Python code runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VARINT = 0
LENGTH_DELIMITED = 2
_UINT64_MASK = (1 << 64) - 1
_MAX_VARINT_BYTES = 10
# _VARINT_LIMITS[k] is the smallest value needing k + 2 bytes.
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, _MAX_VARINT_BYTES)], dtype=np.uint64)


def varint(value: int) -> bytes:
    """Base-128 varint; negative values are two's complement on 64 bits (protobuf int32/int64)."""
    value &= _UINT64_MASK
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    """The protobuf tag of a field: its number and wire type, as a varint."""
    return varint(field << 3 | wire_type)


def varint_field(field: int, value: int) -> bytes:
    """A varint field, tag included."""
    return key(field, VARINT) + varint(value)


def bytes_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field, tag included."""
    return key(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_field(field: int, text: str) -> bytes:
    """A UTF-8 string field, tag included."""
    return bytes_field(field, text.encode())


@dataclass(frozen=True)
class Column:
    """One piece per row: row i is `matrix[i, :lengths[i]]` (`lengths` None: every row is full width)."""

    matrix: np.ndarray
    lengths: np.ndarray | None

    @property
    def width(self) -> int:
        """Bytes per full row."""
        return self.matrix.shape[1]

    def row_lengths(self) -> np.ndarray:
        """Length of each row (the full width when `lengths` is None)."""
        if self.lengths is None:
            return np.full(len(self.matrix), self.width, dtype=np.int64)
        return self.lengths


Piece = bytes | Column


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes each uint64 value takes as a varint (int64)."""
    lengths = np.ones(len(values), dtype=np.int64)
    for limit in _VARINT_LIMITS:
        above = values >= limit
        if not above.any():
            break
        lengths += above
    return lengths


def varint_column(values: np.ndarray) -> Column:
    """The varint encoding of every value of a uint64 array, as a Column."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    lengths = varint_lengths(values)
    width = int(lengths.max()) if len(values) else 1
    matrix = np.empty((len(values), width), dtype=np.uint8)
    for k in range(width):
        matrix[:, k] = (values >> np.uint64(7 * k)).astype(np.uint8) & 0x7F
    uniform = bool((lengths == width).all())
    if uniform:
        matrix[:, : width - 1] |= 0x80
        return Column(matrix, None)
    # A byte has the continuation bit when more bytes of the same value follow it.
    continued = np.arange(width - 1) < (lengths[:, None] - 1)
    matrix[:, : width - 1] |= continued.view(np.uint8) << 7
    return Column(matrix, lengths)


def lookup_column(entries: Sequence[bytes], indices: np.ndarray) -> Column:
    """Row i is `entries[indices[i]]`: a few distinct byte strings picked per row."""
    lengths = np.array([len(entry) for entry in entries], dtype=np.int64)
    table = np.zeros((len(entries), int(lengths.max())), dtype=np.uint8)
    for row, entry in enumerate(entries):
        table[row, : len(entry)] = np.frombuffer(entry, dtype=np.uint8)
    row_lengths = lengths[indices]
    uniform = bool((row_lengths == table.shape[1]).all())
    return Column(table[indices], None if uniform else row_lengths)


def binary_column(values: pa.Array, every_other: bool = False) -> Column:
    """Row i is the bytes of `values[i]` (null: none); with `every_other`, row 2i is and row 2i + 1 is
    empty (the END packet after each BEGIN)."""
    values = pc.fill_null(values.cast(pa.binary()), b"")
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    buffer = values.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets).astype(np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    within = np.arange(width) < lengths[:, None]
    matrix = np.zeros((len(values), width), dtype=np.uint8)
    matrix[within] = data[(offsets[:-1, None] + np.arange(width))[within]]
    if every_other:
        matrix = np.repeat(matrix, 2, axis=0)
        lengths = np.repeat(lengths, 2)
        lengths[1::2] = 0
    return Column(matrix, lengths)


def byte_column(rows: np.ndarray) -> Column:
    """A fixed-width piece whose bytes vary per row (rows: uint8 matrix)."""
    return Column(np.ascontiguousarray(rows, dtype=np.uint8), None)


def piece_lengths(pieces: Sequence[Piece], rows: int) -> np.ndarray:
    """Per-row byte count of a sequence of pieces (int64)."""
    total = np.zeros(rows, dtype=np.int64)
    constant = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            constant += len(piece)
        elif piece.lengths is None:
            constant += piece.width
        else:
            total += piece.lengths
    return total + constant


def pack_rows(pieces: Sequence[Piece], rows: int) -> np.ndarray:
    """All rows, each the concatenation of its pieces, back to back in one flat uint8 array."""
    widths = [len(p) if isinstance(p, bytes) else p.width for p in pieces]
    row_width = sum(widths)
    matrix = np.empty((rows, row_width), dtype=np.uint8)
    # Bytes past a row's length in a varying piece: only the piece's last few bytes ever are.
    dropped: list[np.ndarray] = []
    offset = 0
    for piece, width in zip(pieces, widths, strict=True):
        span = slice(offset, offset + width)
        if isinstance(piece, bytes):
            matrix[:, span] = np.frombuffer(piece, dtype=np.uint8)
        else:
            matrix[:, span] = piece.matrix
            if piece.lengths is not None:
                for byte in range(int(piece.lengths.min()), width):
                    dropped.append(np.flatnonzero(piece.lengths <= byte) * row_width + (offset + byte))
        offset += width
    return np.delete(matrix.ravel(), np.concatenate(dropped)) if dropped else matrix.ravel()
