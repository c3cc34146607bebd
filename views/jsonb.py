"""databend-jsonb, the binary JSON of micromegas's properties columns (the `jsonb` crate 0.5): encode
any JSON value, decode it back, and render it as serde_json's compact text (what `property_get`
answers for a non-string value)."""

from __future__ import annotations

import json
import struct
from decimal import Decimal
from typing import Any

JsonValue = str | bool | int | float | None | list[Any] | dict[str, Any]


class JsonbError(ValueError):
    """Bytes that are not a databend-jsonb value."""


class UnsignedInt(int):
    """An integer under the unsigned number tag (0x50): how the `jsonb` crate's parser stores every
    non-negative integer; decoded as such so that it encodes back to the same bytes."""


# --- databend-jsonb of any JSON value (the properties encoding, as the `jsonb` crate 0.5 writes it) ---
# A container is a big-endian u32 header (type | count), one u32 JEntry (type | byte length) per
# member (objects: all keys, then all values), then the members' bytes in the same order. Object keys
# are sorted by their UTF-8 bytes (a BTreeMap). Numbers: 0x00 for integer zero, 0x40 + the smallest
# big-endian signed width holding an integer, 0x60 + f64 for floats, 0x10/0x20/0x30 for NaN/inf/-inf.

JSONB_ARRAY, JSONB_OBJECT, _SCALAR = 0x80000000, 0x40000000, 0x20000000
JENTRY_NULL, JENTRY_STRING, JENTRY_NUMBER, JENTRY_FALSE, JENTRY_TRUE, JENTRY_CONTAINER = (
    0x00000000,
    0x10000000,
    0x20000000,
    0x30000000,
    0x40000000,
    0x50000000,
)
_INT_WIDTHS = ((1, ">b", 0x7F), (2, ">h", 0x7FFF), (4, ">i", 0x7FFFFFFF), (8, ">q", 0x7FFFFFFFFFFFFFFF))


def encode(value: JsonValue) -> bytes:
    """The databend-jsonb bytes of a JSON value (a top-level scalar gets a one-member scalar container)."""
    if isinstance(value, dict):
        return _object(value)
    if isinstance(value, list):
        return _array(value)
    entry, data = _member(value)
    return struct.pack(">II", _SCALAR | 1, entry) + data


def _object(value: dict[str, JsonValue]) -> bytes:
    # Hot path (one object per row): members inlined rather than one call per member.
    keys = [key.encode() for key in sorted(value)]  # str order is UTF-8 byte order
    entries = [JENTRY_STRING | len(key) for key in keys]
    data = []
    for key in sorted(value):
        item = value[key]
        kind = type(item)
        if kind is str:
            encoded = item.encode()
            entries.append(JENTRY_STRING | len(encoded))
            data.append(encoded)
        elif kind is bool:
            entries.append(JENTRY_TRUE if item else JENTRY_FALSE)
        else:
            entry, encoded = _member(item)
            entries.append(entry)
            data.append(encoded)
    return struct.pack(f">{1 + len(entries)}I", JSONB_OBJECT | len(keys), *entries) + b"".join(keys) + b"".join(data)


def _array(value: list[JsonValue]) -> bytes:
    members = [_member(item) for item in value]
    entries = struct.pack(f">{1 + len(members)}I", JSONB_ARRAY | len(members), *(entry for entry, _ in members))
    return entries + b"".join(data for _, data in members)


def _member(value: JsonValue) -> tuple[int, bytes]:
    if value is None:
        return JENTRY_NULL, b""
    if isinstance(value, bool):
        return (JENTRY_TRUE if value else JENTRY_FALSE), b""
    if isinstance(value, str):
        data = value.encode()
        return JENTRY_STRING | len(data), data
    if isinstance(value, UnsignedInt):
        data = _unsigned(value)
        return JENTRY_NUMBER | len(data), data
    if isinstance(value, int):
        data = _integer(value)
        return JENTRY_NUMBER | len(data), data
    if isinstance(value, float):
        data = _float(value)
        return JENTRY_NUMBER | len(data), data
    data = _object(value) if isinstance(value, dict) else _array(value)
    return JENTRY_CONTAINER | len(data), data


def _integer(value: int) -> bytes:
    if value == 0:
        return b"\x00"
    for _, fmt, limit in _INT_WIDTHS:
        if -limit - 1 <= value <= limit:
            return b"\x40" + struct.pack(fmt, value)
    if 0 < value < 1 << 64:  # above i64: the crate's UInt64 (0x50), as a transit u64 can be
        return b"\x50" + struct.pack(">Q", value)
    raise ValueError(f"integer {value} does not fit in an int64 or a uint64")


def _unsigned(value: int) -> bytes:
    if value == 0:
        return b"\x00"
    for width in (1, 2, 4, 8):
        if value < 1 << (8 * width):
            return b"\x50" + value.to_bytes(width, "big")
    raise ValueError(f"integer {value} does not fit in a uint64")


def _float(value: float) -> bytes:
    if value != value:
        return b"\x10"
    if value in (float("inf"), float("-inf")):
        return b"\x20" if value > 0 else b"\x30"
    return b"\x60" + struct.pack(">d", value)


def compact_json(value: JsonValue) -> str:
    """serde_json's compact text of a jsonb value (keys sorted, floats as ryu writes them)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_string(k)}:{compact_json(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(compact_json, value)) + "]"
    if isinstance(value, float):
        return _ryu_f64(value)
    if isinstance(value, str):
        return _json_string(value)
    return json.dumps(value)


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _ryu_f64(number: float) -> str:
    """ryu's shortest form as serde_json writes it (non-finite numbers become null)."""
    if number != number or number in (float("inf"), float("-inf")):
        return "null"
    if number == 0:
        return "-0.0" if str(number).startswith("-") else "0.0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    point = len(mantissa) + exponent  # position of the decimal point within the digits
    if exponent >= 0 and point <= 16:
        text = mantissa + "0" * exponent + ".0"
    elif 0 < point <= 16:
        text = mantissa[:point] + "." + mantissa[point:]
    elif -5 < point <= 0:
        text = "0." + "0" * -point + mantissa
    else:
        text = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "") + f"e{point - 1}"
    return ("-" if sign else "") + text


_TYPE_MASK, _LENGTH_MASK, _OFFSET_FLAG = 0x70000000, 0x0FFFFFFF, 0x80000000
_CONTAINER_MASK, _COUNT_MASK = 0xE0000000, 0x1FFFFFFF


def decode(data: bytes) -> JsonValue:
    """The JSON value of databend-jsonb bytes (a one-member scalar container gives its scalar)."""
    if len(data) < 4:
        raise JsonbError(f"jsonb value of {len(data)} bytes has no header")
    (header,) = struct.unpack_from(">I", data, 0)
    kind, count = header & _CONTAINER_MASK, header & _COUNT_MASK
    if kind not in (JSONB_ARRAY, JSONB_OBJECT, _SCALAR) or (kind == _SCALAR and count != 1):
        raise JsonbError(f"bad jsonb container header 0x{header:08x}")
    nb_entries = 2 * count if kind == JSONB_OBJECT else count
    if len(data) < 4 + 4 * nb_entries:
        raise JsonbError(f"jsonb container of {count} members truncated at {len(data)} bytes")
    entries = struct.unpack_from(f">{nb_entries}I", data, 4)
    position, values = 4 + 4 * nb_entries, []
    for entry in entries:
        if entry & _OFFSET_FLAG:
            raise JsonbError(f"unsupported jsonb entry 0x{entry:08x} (offset form)")
        end = position + (entry & _LENGTH_MASK)
        if end > len(data):
            raise JsonbError(f"jsonb member at byte {position} runs past the {len(data)}-byte value")
        values.append(_scalar(entry & _TYPE_MASK, data[position:end]))
        position = end
    if kind == JSONB_OBJECT:
        return dict(zip(values[:count], values[count:], strict=True))
    return values[0] if kind == _SCALAR else values


def _scalar(kind: int, data: bytes) -> JsonValue:
    if kind == JENTRY_STRING:
        return data.decode("utf-8")
    if kind == JENTRY_NUMBER:
        return _number(data)
    if kind == JENTRY_CONTAINER:
        return decode(data)
    if kind in (JENTRY_NULL, JENTRY_TRUE, JENTRY_FALSE) and not data:
        return None if kind == JENTRY_NULL else kind == JENTRY_TRUE
    raise JsonbError(f"bad jsonb member type 0x{kind:08x}")


def _number(data: bytes) -> int | float:
    special = {b"\x00": 0, b"\x10": float("nan"), b"\x20": float("inf"), b"\x30": float("-inf")}
    if data in special:
        return special[data]
    tag, body = data[:1], data[1:]
    if tag == b"\x40" and len(body) in (1, 2, 4, 8):
        return int.from_bytes(body, "big", signed=True)
    if tag == b"\x50" and len(body) in (1, 2, 4, 8):
        return UnsignedInt(int.from_bytes(body, "big", signed=False))
    if tag == b"\x60" and len(body) == 8:
        return struct.unpack(">d", body)[0]
    raise JsonbError(f"bad jsonb number {data.hex()}")
