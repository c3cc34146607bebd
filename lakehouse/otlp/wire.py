"""Protobuf's wire format read with numpy: the fields of many messages at once, never a Python step per
message or per field.

A message body is a chain of fields, each field's start given by the previous one's end, so finding
them is sequential by nature. Here every byte that could start a field gets the position where such a
field would end (`_next`), and the true chain from each body's first byte is then followed by pointer
doubling: after k rounds the known fields are those within 2^k steps of the start, so a body of F fields
takes log2(F) rounds of array operations over its bytes. Bytes that could start a field are first only
those whose value is the one-byte tag of a field of the message type (`tags`); a field of another tag
(an unknown field, another wire type) sends the body back through the same walk over every byte.

Semantics follow the protobuf runtime: a singular field given twice keeps its last value (`Fields.last`),
a singular message given twice is merged (its bodies share an owner, `Fields.merged`), a field of an
unexpected wire type is an unknown field. Groups (wire types 3 and 4), a varint of more than 10 bytes, a
field running past its message or a zero field number are malformed: `WireError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10
_SIZES = {FIXED64: 8, FIXED32: 4}


class WireError(ValueError):
    """Bytes that are not a protobuf message of the expected shape."""


def tag(number: int, wire: int) -> int:
    """The first byte of a field's tag (field numbers 1 to 15 take one byte)."""
    return ((number << 3) | wire) & 0xFF | (0x80 if number > 15 else 0)


@dataclass(frozen=True)
class Buffer:
    """A message's bytes as numpy, padded so that reading a varint never leaves the array."""

    data: np.ndarray  # uint8, `size` bytes then zero padding
    size: int

    @staticmethod
    def of(message: bytes) -> Buffer:
        """The buffer of a serialized message."""
        return Buffer(np.frombuffer(message + bytes(_MAX_VARINT_BYTES + 8), np.uint8), len(message))

    def fixed64(self, starts: np.ndarray) -> np.ndarray:
        """The little-endian 8-byte values at `starts` (uint64)."""
        window = self.data[np.asarray(starts, np.int64)[:, None] + np.arange(8)]
        return np.ascontiguousarray(window).view("<u8").reshape(len(starts))

    def binary(self, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
        """The byte strings `[starts, ends)` as one Arrow binary array."""
        lengths = np.asarray(ends, np.int64) - starts
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = self.data[ranges(starts, lengths)]
        return pa.Array.from_buffers(pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)])

    def fixed_width(self, starts: np.ndarray, width: int) -> np.ndarray:
        """`width` bytes at each of `starts`, as one row each (uint8, shape (n, width))."""
        return self.data[np.asarray(starts, np.int64)[:, None] + np.arange(width)]


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`arange(start, start + length)` of every range, concatenated (int64)."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    firsts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - firsts, lengths)


@dataclass(frozen=True)
class Bodies:
    """Bodies of messages of one type, in byte order; bodies of one owner are one message (merged)."""

    start: np.ndarray  # int64
    end: np.ndarray  # int64
    owner: np.ndarray  # int64, nondecreasing: the message each body belongs to
    count: int  # the number of messages (owners may have no body: an empty message)

    @staticmethod
    def whole(buffer: Buffer) -> Bodies:
        """The buffer as one message."""
        return Bodies(np.zeros(1, np.int64), np.full(1, buffer.size, np.int64), np.zeros(1, np.int64), 1)


@dataclass(frozen=True)
class Fields:
    """Every field of a set of messages, in byte order (so grouped by owner)."""

    owner: np.ndarray  # int64: the message holding the field
    number: np.ndarray  # int64 field number
    wire: np.ndarray  # int64 wire type
    start: np.ndarray  # int64: the value's first byte (for LEN, after its length)
    end: np.ndarray  # int64: past the value's last byte
    varint: np.ndarray  # uint64: the value of a VARINT field (else meaningless)
    count: int  # the number of messages

    def select(self, number: int, wire: int) -> np.ndarray:
        """Indexes of the fields of this number and wire type, in byte order."""
        return np.flatnonzero((self.number == number) & (self.wire == wire))

    def last(self, number: int, wire: int) -> np.ndarray:
        """Per message, the index of the last field of this number and wire type, -1 if none."""
        found = self.select(number, wire)
        owners = self.owner[found]
        final = np.r_[owners[1:] != owners[:-1], True] if len(found) else np.zeros(0, bool)
        index = np.full(self.count, -1, np.int64)
        index[owners[final]] = found[final]
        return index

    def repeated(self, number: int) -> tuple[Bodies, np.ndarray]:
        """The messages of a repeated message field, each its own, and the message each belongs to."""
        found = self.select(number, LEN)
        bodies = Bodies(self.start[found], self.end[found], np.arange(len(found), dtype=np.int64), len(found))
        return bodies, self.owner[found]

    def merged(self, number: int) -> Bodies:
        """The message of a singular message field, one per message here (absent: an empty one)."""
        found = self.select(number, LEN)
        return Bodies(self.start[found], self.end[found], self.owner[found], self.count)


def read_fields(buffer: Buffer, bodies: Bodies, tags: frozenset[int]) -> Fields:
    """The fields of every body; `tags` are the first tag bytes of the message type's fields (a guess
    of where fields start: any other field makes the walk try every byte). WireError if malformed."""
    lengths = bodies.end - bodies.start
    if np.any(lengths < 0) or (len(lengths) and (bodies.start.min() < 0 or bodies.end.max() > buffer.size)):
        raise WireError("a message runs past its enclosing message")
    likely = np.zeros(256, bool)
    likely[list(tags)] = True
    found = _chain(buffer, bodies, *_candidates(buffer, bodies, likely))
    if found is None:  # a field of another tag: every byte may start one
        found = _chain(buffer, bodies, *_candidates(buffer, bodies, np.ones(256, bool)))
    assert found is not None  # every byte of a body is a candidate: nothing is missed
    nodes, candidate_positions, candidate_bodies = found
    return _fields(buffer, bodies, candidate_positions[nodes], candidate_bodies[nodes])


def _candidates(buffer: Buffer, bodies: Bodies, likely: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions within bodies whose byte is `likely` to start a field, and the body of each."""
    lengths = bodies.end - bodies.start
    if int(lengths.sum()) * 4 < buffer.size:  # bodies cover little of the buffer: only their bytes
        positions = ranges(bodies.start, lengths)
        body_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        guessed = likely[buffer.data[positions]]
        return positions[guessed], body_of[guessed]
    # Bodies cover most of it: a pass over the whole buffer, cheaper than listing their bytes.
    nonempty = np.flatnonzero(lengths)
    size = buffer.size
    edges = np.bincount(bodies.start[nonempty], minlength=size + 1) - np.bincount(
        bodies.end[nonempty], minlength=size + 1
    )
    inside = np.cumsum(edges[:size]) > 0
    positions = np.flatnonzero(inside & likely[buffer.data[:size]])
    return positions, nonempty[np.searchsorted(bodies.start[nonempty], positions, "right") - 1]


def _varints(data: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The varints at `positions`: values (uint64) and byte lengths (0 for one of more than 10 bytes)."""
    first = data[positions]
    values = (first & 0x7F).astype(np.uint64)
    lengths = np.ones(len(positions), np.int64)
    going = np.flatnonzero(first & 0x80)
    for shift in range(1, _MAX_VARINT_BYTES):
        if not len(going):
            break
        byte = data[positions[going] + shift]
        values[going] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * shift)
        lengths[going] += 1
        going = going[(byte & 0x80) != 0]
    lengths[going] = 0
    return values, lengths


def _field_ends(buffer: Buffer, positions: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a field starting at each position would end, and whether it is well formed and within its
    body's end."""
    key, key_length = _varints(buffer.data, positions)
    wire = (key & np.uint64(7)).astype(np.int64)
    value_at = positions + key_length
    value, value_length = _varints(buffer.data, value_at)
    room = ends - value_at
    size = np.where(wire == FIXED64, 8, np.where(wire == FIXED32, 4, value_length))
    is_len = wire == LEN
    # A length that does not fit in the room left: compared before adding, as it may be near 2^64.
    fits = ~is_len | ((value_length > 0) & (value <= np.maximum(room - value_length, 0).astype(np.uint64)))
    size = np.where(is_len & fits, value_length + np.minimum(value, np.uint64(2**62)).astype(np.int64), size)
    ok = (key_length > 0) & ((key >> np.uint64(3)) > 0) & np.isin(wire, (VARINT, FIXED64, LEN, FIXED32))
    ok &= (value_length > 0) | (wire == FIXED64) | (wire == FIXED32)
    ok &= fits & (value_at + size <= ends)
    return value_at + size, ok


def _chain(
    buffer: Buffer, bodies: Bodies, positions: np.ndarray, body_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The candidates (of `positions`) that start the fields of each body, followed by pointer doubling;
    None when a field ends where no candidate starts (the guess missed a field)."""
    count = len(positions)
    end_sink, bad_sink, missed_sink = count, count + 1, count + 2
    ends = bodies.end[body_of]
    following, ok = _field_ends(buffer, positions, ends)
    slot = np.minimum(np.searchsorted(positions, following), max(count - 1, 0))
    hit = (positions[slot] == following) if count else np.zeros(0, bool)
    jump = np.where(~ok, bad_sink, np.where(following == ends, end_sink, np.where(hit, slot, missed_sink)))
    jump = np.concatenate([jump, [end_sink, bad_sink, missed_sink]]).astype(np.int64)
    nonempty = bodies.end > bodies.start
    starts = bodies.start[nonempty]
    firsts = np.searchsorted(positions, starts)
    if len(firsts) and (count == 0 or np.any(positions[np.minimum(firsts, count - 1)] != starts)):
        return None
    known = firsts.astype(np.int64)
    while True:
        reached = jump[known]
        if np.any(reached == bad_sink):
            at = int(positions[known[reached == bad_sink][0]])
            raise WireError(f"malformed field (truncated, or of an invalid tag or length) after byte {at}")
        if np.any(reached == missed_sink):
            return None
        reached = reached[reached < count]
        if not len(reached):
            break
        known = np.concatenate([known, reached])
        jump = jump[jump]
    return np.sort(known), positions, body_of


def _fields(buffer: Buffer, bodies: Bodies, positions: np.ndarray, body_of: np.ndarray) -> Fields:
    key, key_length = _varints(buffer.data, positions)
    wire = (key & np.uint64(7)).astype(np.int64)
    value_at = positions + key_length
    value, value_length = _varints(buffer.data, value_at)
    length_bytes = np.where(wire == LEN, value_length, 0)
    start = value_at + length_bytes
    size = np.where(
        wire == LEN, value.astype(np.int64), np.where(wire == VARINT, value_length, np.where(wire == FIXED64, 8, 4))
    )
    return Fields(
        owner=bodies.owner[body_of],
        number=(key >> np.uint64(3)).astype(np.int64),
        wire=wire,
        start=start,
        end=start + size,
        varint=value,
        count=bodies.count,
    )
