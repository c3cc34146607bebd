"""Protobuf's wire format read with numpy: the fields of many messages at once, never a Python step per
message or per field.

A message body is a chain of fields, each field's start given by the previous one's end, so finding
them is sequential by nature. Two walks share that work out over arrays (`read_fields`):

* stepping: the next field of every body at once, one array step per field rank; the first `_STEPS`
  fields of every body are read so (cheap for many short bodies: spans, key-values, values);
* pointer doubling, for the rest of longer bodies (a scope's thousands of spans): every byte that
  could start a field is read as if it did (`_Candidates`), those whose field cannot end on another
  candidate are pruned, and the true chain from each body's cursor is followed by doubling: after k
  rounds the known fields are those within 2^k steps, so F fields take log2(F) rounds. The bytes tried
  first are those equal to the first tag byte of a field of the message type (`tags`); a field of
  another tag (an unknown field, another wire type) sends the body back through the walk over every byte.

Semantics follow the protobuf runtime: a singular field given twice keeps its last value (`Fields.last`),
a singular message given twice is merged (its bodies share an owner, `Fields.merged`), a field of an
unexpected wire type is an unknown field. Groups (wire types 3 and 4), a varint of more than 10 bytes, a
field running past its message or a field number of 0 or past 2^29 - 1 are malformed: `WireError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


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
    of where fields start: any other field makes the walk try every byte). WireError if malformed.

    The first `_STEPS` fields of every body are read by stepping all bodies at once (cheap when bodies
    are many and short, as spans); the rest of a longer body (a list of spans) by pointer doubling."""
    lengths = bodies.end - bodies.start
    if np.any(lengths < 0) or (len(lengths) and (bodies.start.min() < 0 or bodies.end.max() > buffer.size)):
        raise WireError("a message runs past its enclosing message")
    parts, cursor = _stepped(buffer, bodies)
    rest = np.flatnonzero(cursor < bodies.end)
    if len(rest):
        tails = Bodies(cursor[rest], bodies.end[rest], rest, bodies.count)
        chained = _doubled(buffer, tails, tags)
        parts.append(dataclasses.replace(chained, body=rest[chained.body]))
    return _fields(bodies, parts)


_STEPS = 12
_MAX_FIELD_NUMBER = np.uint64(2**29 - 1)  # protobuf's largest; a key naming a larger one is malformed
_VALID_WIRE = np.isin(np.arange(8), (VARINT, FIXED64, LEN, FIXED32))


@dataclass(frozen=True)
class _Candidates:
    """Positions that may start a field, each read as if it did: its key, value and end."""

    position: np.ndarray  # int64, increasing within a body
    body: np.ndarray  # int64: the body holding the position
    key: np.ndarray  # uint64
    value_at: np.ndarray  # int64: past the key
    value: np.ndarray  # uint64: the varint after the key (a VARINT's value, a LEN's length)
    value_length: np.ndarray  # int64: that varint's bytes (0: malformed)
    end: np.ndarray  # int64: where the field would end
    ok: np.ndarray  # bool: well formed and within its body

    @staticmethod
    def at(buffer: Buffer, bodies: Bodies, position: np.ndarray, body: np.ndarray) -> _Candidates:
        """Fields read as if they started at `position`, in `body`."""
        key, key_length = _varints(buffer.data, position)
        wire = (key & np.uint64(7)).astype(np.int64)
        value_at = position + key_length
        value, value_length = _varints(buffer.data, value_at)
        room = bodies.end[body] - value_at
        size = np.where(wire == FIXED64, 8, np.where(wire == FIXED32, 4, value_length))
        is_len = wire == LEN
        # A length that does not fit in the room left: compared before adding, as it may be near 2^64.
        fits = ~is_len | ((value_length > 0) & (value <= np.maximum(room - value_length, 0).astype(np.uint64)))
        size = np.where(is_len & fits, value_length + np.minimum(value, np.uint64(2**62)).astype(np.int64), size)
        number = key >> np.uint64(3)
        ok = (key_length > 0) & (number > 0) & (number <= _MAX_FIELD_NUMBER) & _VALID_WIRE[wire]
        ok &= (value_length > 0) | (wire == FIXED64) | (wire == FIXED32)
        ok &= fits & (size <= room)
        return _Candidates(position, body, key, value_at, value, value_length, value_at + size, ok)

    def take(self, rows: np.ndarray) -> _Candidates:
        """The candidates at `rows`."""
        return _Candidates(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))


def _malformed(candidates: _Candidates) -> WireError:
    at = int(candidates.position[~candidates.ok][0])
    return WireError(f"malformed field (truncated, or of an invalid tag or length) at byte {at}")


def _stepped(buffer: Buffer, bodies: Bodies) -> tuple[list[_Candidates], np.ndarray]:
    """The first `_STEPS` fields of every body, one step of every unfinished body at a time, and
    where each body's next field starts."""
    cursor = bodies.start.copy()
    active = np.flatnonzero(cursor < bodies.end)
    parts = []
    for _ in range(_STEPS):
        if not len(active):
            break
        step = _Candidates.at(buffer, bodies, cursor[active], active)
        if not step.ok.all():
            raise _malformed(step)
        parts.append(step)
        cursor[active] = step.end
        active = active[step.end < bodies.end[active]]
    return parts, cursor


def _doubled(buffer: Buffer, bodies: Bodies, tags: frozenset[int]) -> _Candidates:
    """The fields of bodies, by pointer doubling over the bytes that may start one: first those of
    `tags`, then, if a field of another tag hides a field start, every byte."""
    likely = np.zeros(256, bool)
    likely[list(tags)] = True
    fields = _chain(bodies, _likely_candidates(buffer, bodies, likely))
    if fields is None:
        fields = _chain(bodies, _likely_candidates(buffer, bodies, np.ones(256, bool)))
    assert fields is not None  # every byte of a body is a candidate: nothing is missed
    return fields


def _likely_candidates(buffer: Buffer, bodies: Bodies, likely: np.ndarray) -> _Candidates:
    return _Candidates.at(buffer, bodies, *_likely_positions(buffer, bodies, likely))


def _likely_positions(buffer: Buffer, bodies: Bodies, likely: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions within bodies whose byte is `likely`, and the body of each."""
    lengths = bodies.end - bodies.start
    if int(lengths.sum()) * 4 < buffer.size:  # bodies cover little of the buffer: only their bytes
        positions = ranges(bodies.start, lengths)
        body_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        guessed = likely[buffer.data[positions]]
        return positions[guessed], body_of[guessed]
    # Bodies cover most of it: one pass over the whole buffer, then the positions outside bodies dropped.
    positions = np.flatnonzero(likely[buffer.data[: buffer.size]])
    nonempty = np.flatnonzero(lengths)
    body_of = nonempty[np.maximum(np.searchsorted(bodies.start[nonempty], positions, "right") - 1, 0)]
    inside = (positions >= bodies.start[body_of]) & (positions < bodies.end[body_of])
    return positions[inside], body_of[inside]


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


def _chain(bodies: Bodies, candidates: _Candidates) -> _Candidates | None:
    """The candidates that start the fields of each body, found by pointer doubling from each body's
    first byte; None when a field ends where no candidate starts (the guess missed a field)."""
    count = len(candidates.position)
    end_sink, bad_sink, missed_sink = count, count + 1, count + 2
    ends = candidates.end
    slot = np.minimum(np.searchsorted(candidates.position, ends), max(count - 1, 0))
    hit = (candidates.position[slot] == ends) if count else np.zeros(0, bool)
    at_end = ends == bodies.end[candidates.body]
    jump = np.where(~candidates.ok, bad_sink, np.where(at_end, end_sink, np.where(hit, slot, missed_sink)))
    jump = np.concatenate([jump, [end_sink, bad_sink, missed_sink]]).astype(np.int64)
    starts = bodies.start[bodies.end > bodies.start]
    firsts = np.minimum(np.searchsorted(candidates.position, starts), max(count - 1, 0))
    if len(starts) and (count == 0 or np.any(candidates.position[firsts] != starts)):
        return None
    jump, firsts, rows = _pruned(jump, firsts)
    count = len(rows)
    end_sink, bad_sink, missed_sink = count, count + 1, count + 2
    is_field = np.zeros(count + 3, bool)
    is_field[firsts] = True
    known = firsts
    while True:
        reached = jump[known]
        if np.any(reached == bad_sink):
            at = int(candidates.position[rows[known[reached == bad_sink][0]]])
            raise WireError(f"malformed field (truncated, or of an invalid tag or length) after byte {at}")
        if np.any(reached == missed_sink):
            return None
        reached = reached[reached < count]
        if not len(reached):
            break
        is_field[reached] = True
        known = np.concatenate([known, reached])
        jump = jump[jump]
    return candidates.take(rows[np.flatnonzero(is_field[:count])])


_PRUNING_PASSES = 3


def _pruned(jump: np.ndarray, firsts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph of candidates without those that cannot start a field of a well-formed body (their
    field is malformed or ends where no candidate starts), so that doubling walks few more than the
    true fields: most bytes that merely look like a tag go. A candidate whose field ended on a dropped
    one now ends on that one's sink (a true field there still errs or is missed, as before). Returns
    the jumps, the bodies' first candidates and the original index of each kept candidate."""
    count = len(jump) - 3
    rows = np.arange(count)
    for _ in range(_PRUNING_PASSES):
        dead = np.r_[jump[:count] > count, np.zeros(3, bool)]  # a sink other than the body's end
        dead[firsts] = False
        if not dead.any():
            break
        kept = np.flatnonzero(~dead[:count])
        renumbered = np.empty(count + 3, np.int64)
        renumbered[kept] = np.arange(len(kept))
        renumbered[count:] = len(kept) + np.arange(3)
        targets = jump[kept]
        targets = np.where(dead[targets], jump[targets], targets)
        jump = np.r_[renumbered[targets], len(kept) + np.arange(3)]
        firsts, rows, count = renumbered[firsts], rows[kept], len(kept)
    return jump, firsts, rows


def _fields(bodies: Bodies, parts: list[_Candidates]) -> Fields:
    """The fields of the parts (one per step, then the doubled rest) in byte order: a body's field of
    step k is its k-th; its doubled fields follow its `_STEPS` stepped ones, in position order."""
    if not parts:
        empty = np.zeros(0, np.int64)
        return Fields(empty, empty, empty, empty, empty, np.zeros(0, np.uint64), bodies.count)
    ranks = [np.full(len(part.body), k, np.int64) for k, part in enumerate(parts)]
    if len(parts) > _STEPS:  # the doubled rest: bodies in order, positions in order within a body
        doubled = parts[-1].body
        runs = np.bincount(doubled, minlength=len(bodies.start))
        ranks[-1] = _STEPS + np.arange(len(doubled)) - (np.cumsum(runs) - runs)[doubled]
    body = np.concatenate([p.body for p in parts])
    per_body = np.bincount(body, minlength=len(bodies.start))
    order = np.empty(len(body), np.int64)
    order[(np.cumsum(per_body) - per_body)[body] + np.concatenate(ranks)] = np.arange(len(body))
    key = np.concatenate([p.key for p in parts])[order]
    wire = (key & np.uint64(7)).astype(np.int64)
    value_at = np.concatenate([p.value_at for p in parts])[order]
    value_length = np.concatenate([p.value_length for p in parts])[order]
    return Fields(
        owner=bodies.owner[body[order]],
        number=(key >> np.uint64(3)).astype(np.int64),
        wire=wire,
        start=np.where(wire == LEN, value_at + value_length, value_at),
        end=np.concatenate([p.end for p in parts])[order],
        varint=np.concatenate([p.value for p in parts])[order],
        count=bodies.count,
    )
