"""The few protobuf wire-format pieces spanlake writes or walks by hand: varints and length-delimited fields.

Imports nothing: the Flight SQL client commands use it without loading the lakehouse."""

from __future__ import annotations

LENGTH_DELIMITED = 2  # the wire type of messages, strings and bytes


def encode_varint(value: int) -> bytes:
    """`value` (not negative) as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` holding `payload` (a message, string or bytes)."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at `position` of `data` and the position after it."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
