"""The CBOR bodies of the native ingestion API, as the micromegas sink sends them.

`parse_process`, `parse_stream` and `parse_block` turn a request body into the rows to store and
raise `WireError` with a message naming the offending field when the body is not what the sink sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import cbor2

from spanlake.lakehouse.errors import IngestRejected, cut, shown
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.timestamps import MAX_NS, MIN_NS, TimeOutOfRange, format_rfc3339_ns, parse_rfc3339_ns
from spanlake.lakehouse.transit.decode import DEFAULT_INFLATION, FrameCheck, InflationLimit, TransitError

RESERVED_PROPERTY_PREFIX = "micromegas."
_I64 = (MIN_NS, MAX_NS)
_NUL = "\x00"
# A block's stored payload: its own bytes, or a view of the request body holding them.
Payload = bytes | memoryview


class WireError(IngestRejected):
    """The body is not a valid ingestion message; the message is safe to return to the client."""


def _check_text(value: str, where: str) -> None:
    position = value.find(_NUL)
    if position >= 0:
        raise WireError(f"{where} contains a NUL character (at {position}), which cannot be stored")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise WireError(f"{where} is not valid Unicode (a lone surrogate)") from None


def _check_properties(properties: dict[str, str], where: str) -> None:
    for key, value in properties.items():
        _check_text(key, f"{where}: property key {shown(key)}")
        _check_text(value, f"{where}: property {shown(key)}")


def check_process(record: ProcessRecord) -> ProcessRecord:
    """`record`, unless a text of it cannot be stored (a NUL character, a lone surrogate): refused for
    good (400), where PostgreSQL would refuse it on every retry. Native and OTLP routes both check."""
    for name in ("exe", "username", "realname", "computer", "distro", "cpu_brand"):
        _check_text(getattr(record, name), f"ProcessInfo: '{name}'")
    _check_properties(record.properties, "ProcessInfo")
    return record


def check_stream(record: StreamRecord) -> StreamRecord:
    """`record`, unless a tag or property cannot be stored (see `check_process`)."""
    for tag in record.tags:
        _check_text(tag, f"StreamInfo: tag {shown(tag)}")
    _check_properties(record.properties, "StreamInfo")
    return record


def _decode_map(body: bytes, what: str) -> dict[str, Any]:
    if not body:
        raise WireError(f"empty body: expected a CBOR {what}")
    try:
        value = cbor2.loads(body)
    except Exception as err:  # cbor2 raises several types for malformed input
        raise WireError(f"malformed CBOR in {what}: {cut(str(err))}") from None
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a CBOR map, got {type(value).__name__}")
    return value


def _field(msg: dict[str, Any], name: str, what: str) -> Any:
    if name not in msg:
        raise WireError(f"{what}: missing field '{name}'")
    return msg[name]


def _uuid(msg: dict[str, Any], name: str, what: str) -> uuid.UUID:
    value = _field(msg, name, what)
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise WireError(f"{what}: '{name}' is not a UUID: {shown(value)}") from None


def _int(msg: dict[str, Any], name: str, what: str, low: int = _I64[0], high: int = _I64[1]) -> int:
    value = _field(msg, name, what)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WireError(f"{what}: '{name}' must be an integer in [{low}, {high}], got {shown(value)}")
    return value


def _str(msg: dict[str, Any], name: str, what: str) -> str:
    value = _field(msg, name, what)
    if not isinstance(value, str):
        raise WireError(f"{what}: '{name}' must be a string, got {type(value).__name__}")
    return value


def _time_ns(msg: dict[str, Any], name: str, what: str) -> int:
    value = _str(msg, name, what)
    try:
        return parse_rfc3339_ns(value)
    except TimeOutOfRange:
        # Views keep int64 nanoseconds: such a time would fail every partition it falls in.
        raise WireError(
            f"{what}: '{name}' {shown(value)} is outside the representable range"
            f" [{format_rfc3339_ns(MIN_NS)}, {format_rfc3339_ns(MAX_NS)}]"
        ) from None
    except ValueError as err:
        raise WireError(f"{what}: '{name}': {cut(str(err))}") from None


def _properties(msg: dict[str, Any], what: str) -> dict[str, str]:
    value = msg.get("properties", {})
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise WireError(f"{what}: 'properties' must be a map of strings to strings")
    # Keys under micromegas.* are reserved for the server (micromegas strips them too).
    return {k: v for k, v in value.items() if not k.startswith(RESERVED_PROPERTY_PREFIX)}


def parse_process(body: bytes) -> ProcessRecord:
    """A ProcessInfo CBOR body → its ProcessRecord (WireError if malformed)."""
    what = "ProcessInfo"
    msg = _decode_map(body, what)
    parent = msg.get("parent_process_id")
    parent_id = None if parent in (None, "") else _uuid(msg, "parent_process_id", what)
    record = ProcessRecord(
        process_id=_uuid(msg, "process_id", what),
        exe=_str(msg, "exe", what),
        username=_str(msg, "username", what),
        realname=_str(msg, "realname", what),
        computer=_str(msg, "computer", what),
        distro=_str(msg, "distro", what),
        cpu_brand=_str(msg, "cpu_brand", what),
        tsc_frequency=_int(msg, "tsc_frequency", what),
        start_time_ns=_time_ns(msg, "start_time", what),
        start_ticks=_int(msg, "start_ticks", what),
        parent_process_id=parent_id,
        properties=_properties(msg, what),
    )
    return check_process(record)


_UDT_FIELDS: dict[str, Callable[[Any], bool]] = {
    "name": lambda v: isinstance(v, str),
    "size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "members": lambda v: isinstance(v, list),
    "is_reference": lambda v: isinstance(v, bool),
}
_MEMBER_FIELDS: dict[str, Callable[[Any], bool]] = {
    "name": lambda v: isinstance(v, str),
    "type_name": lambda v: isinstance(v, str),
    "offset": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "is_reference": lambda v: isinstance(v, bool),
}


def _checked_map(value: Any, spec: dict[str, Callable[[Any], bool]], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{where} must be a map")
    for key, valid in spec.items():
        if key not in value or not valid(value[key]):
            raise WireError(f"{where}: missing or invalid '{key}'")
    return {key: value[key] for key in spec}


def _udt_list(msg: dict[str, Any], name: str, what: str) -> bytes:
    """Validates a `Vec<UserDefinedType>` and re-encodes it as micromegas stores it (fixed keys)."""
    udts = _field(msg, name, what)
    if not isinstance(udts, list):
        raise WireError(f"{what}: '{name}' must be an array of type descriptions")
    cleaned = []
    for i, udt in enumerate(udts):
        entry = _checked_map(udt, _UDT_FIELDS, f"{what}: {name}[{i}]")
        entry["members"] = [
            _checked_map(m, _MEMBER_FIELDS, f"{what}: {name}[{i}].members[{j}]") for j, m in enumerate(entry["members"])
        ]
        cleaned.append(entry)
    return cbor2.dumps(cleaned)


def parse_stream(body: bytes) -> StreamRecord:
    """A StreamInfo CBOR body → its StreamRecord, with the metadata checked (WireError if malformed)."""
    what = "StreamInfo"
    msg = _decode_map(body, what)
    tags = _field(msg, "tags", what)
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise WireError(f"{what}: 'tags' must be an array of strings")
    record = StreamRecord(
        stream_id=_uuid(msg, "stream_id", what),
        process_id=_uuid(msg, "process_id", what),
        dependencies_metadata=_udt_list(msg, "dependencies_metadata", what),
        objects_metadata=_udt_list(msg, "objects_metadata", what),
        tags=tags,
        properties=_properties(msg, what),
    )
    return check_stream(record)


def _payload_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    # Older sinks serialized byte buffers as arrays of small integers (serde_byte_buf accepts both).
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise WireError(f"Block: payload '{name}' must be a byte string (or an array of bytes)")


class _NotAsSinkWrites(Exception):
    """The body is not laid out as the sink writes it (or not valid): `cbor2` decodes it whole instead."""


# The most CBOR items `_item_end` walks for one value before leaving the value to cbor2's C decoder.
_WALK_ITEMS = 1000
_MAP, _TEXT, _BYTES, _ARRAY, _TAG = 5, 3, 2, 4, 6
# The CBOR head's additional information for an argument of 1, 2, 4 and 8 bytes.
_HEAD_WIDTHS = ((24, 1), (25, 2), (26, 4), (27, 8))
# The stored payload, as `cbor2.dumps` writes it: a map of 2 whose keys are these texts, in this order.
_STORED_KEYS = (cbor2.dumps("dependencies"), cbor2.dumps("objects"))


def _head(data: bytes | bytearray | memoryview, at: int) -> tuple[int, int, int]:
    """The CBOR head at `at`: (major type, argument, offset after it); indefinite lengths are not walked."""
    initial = data[at]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, at + 1
    if info > 27:
        raise _NotAsSinkWrites
    end = at + 1 + (1 << (info - 24))
    if end > len(data):
        raise _NotAsSinkWrites
    return major, int.from_bytes(data[at + 1 : end], "big"), end


def _item_end(data: bytes | bytearray, at: int) -> int:
    """The offset after the CBOR item at `at` (definite lengths, no tags, at most _WALK_ITEMS items)."""
    pending = 1
    for _ in range(_WALK_ITEMS):
        major, argument, at = _head(data, at)
        pending -= 1
        if major in (_BYTES, _TEXT):
            at += argument
        elif major == _ARRAY:
            pending += argument
        elif major == _MAP:
            pending += 2 * argument
        elif major == _TAG:  # shared values and string references span items: decoded whole
            raise _NotAsSinkWrites
        if not pending:
            break
    if pending or at > len(data):
        raise _NotAsSinkWrites
    return at


def _head_bytes(major: int, argument: int) -> bytes:
    """The shortest CBOR head of `major` type with `argument` (as cbor2 writes it)."""
    if argument < 24:
        return bytes((major << 5 | argument,))
    info, width = next((info, width) for info, width in _HEAD_WIDTHS if argument < 1 << (8 * width))
    return bytes((major << 5 | info,)) + argument.to_bytes(width, "big")


def _stored_payload(
    body: bytes | bytearray | memoryview, start: int, end: int
) -> tuple[memoryview, memoryview, memoryview]:
    """The payload map at `body[start:end]` and its two buffers, as views of the body: only when those
    bytes are what `cbor2.dumps({"dependencies": ..., "objects": ...})` writes (the sink writes that)."""
    view = memoryview(body)
    at, buffers = start + 1, []
    if body[start] != 0xA2:  # a map of two entries
        raise _NotAsSinkWrites
    for key in _STORED_KEYS:
        if view[at : at + len(key)] != key:
            raise _NotAsSinkWrites
        major, length, content = _head(body, at + len(key))
        if major != _BYTES or view[at + len(key) : content] != _head_bytes(_BYTES, length):
            raise _NotAsSinkWrites
        at = content + length
        buffers.append(view[content:at])
    if at != end:
        raise _NotAsSinkWrites
    return view[start:end], buffers[0], buffers[1]


def _block_fields(body: bytes | bytearray) -> tuple[dict[str, Any], tuple[int, int]]:
    """A block body's fields but its payload (decoded by cbor2 as one small map), and where its payload is."""
    major, entries, at = _head(body, 0)
    if major != _MAP:
        raise _NotAsSinkWrites
    fields, payload = [], None
    for _ in range(entries):
        key_start = at
        major, length, at = _head(body, at)
        if major != _TEXT:
            raise _NotAsSinkWrites
        key, at = body[at : at + length], at + length
        value_end = _item_end(body, at)
        if key == b"payload":
            payload = (at, value_end)
        else:
            fields.append(body[key_start:value_end])
        at = value_end
    if payload is None:
        raise _NotAsSinkWrites
    try:
        msg = cbor2.loads(_head_bytes(_MAP, len(fields)) + b"".join(fields))
    except Exception:  # cbor2 raises several types: the whole body's decoding says which
        raise _NotAsSinkWrites from None
    return msg, payload


def _located_block(body: bytes | bytearray) -> tuple[dict[str, Any], memoryview, memoryview, memoryview]:
    """A block body's fields but its payload, and its stored payload and buffers as views of the body:
    the payload's bytes are neither copied nor encoded again."""
    msg, payload = _block_fields(body)
    return msg, *_stored_payload(body, *payload)


def locate_payload(prefix: bytes | bytearray) -> tuple[int, int] | None:
    """Where a block body's stored payload starts and ends, from the body's first bytes `prefix`: known
    when the fields before the payload and the payload's heads up to its objects buffer's length are
    in `prefix`, as the sink writes them (else None: the body is read whole)."""
    try:
        major, entries, at = _head(prefix, 0)
        if major != _MAP:
            return None
        for _ in range(entries):
            major, length, at = _head(prefix, at)
            if major != _TEXT:
                return None
            key, at = prefix[at : at + length], at + length
            if key == b"payload":
                return at, _payload_end(prefix, at)
            at = _item_end(prefix, at)
    except (_NotAsSinkWrites, IndexError):
        return None
    return None


def _payload_end(prefix: bytes | bytearray, start: int) -> int:
    """The end of the stored payload starting at `start` (the map `_stored_payload` accepts), from its heads."""
    if prefix[start] != 0xA2:
        raise _NotAsSinkWrites
    at = start + 1
    for key in _STORED_KEYS:
        if prefix[at : at + len(key)] != key:
            raise _NotAsSinkWrites
        major, length, content = _head(prefix, at + len(key))
        if major != _BYTES:
            raise _NotAsSinkWrites
        at = content + length
    return at


def _decoded_block(body: bytes | bytearray) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """A block body's fields, its stored payload (encoded again as micromegas stores it) and its two
    buffers, through cbor2 (any body: legacy integer arrays, other key orders, invalid ones)."""
    what = "Block"
    msg = _decode_map(body, what)
    payload = _field(msg, "payload", what)
    if not isinstance(payload, dict) or set(payload) != {"dependencies", "objects"}:
        raise WireError("Block: 'payload' must be a map with exactly 'dependencies' and 'objects'")
    dependencies = _payload_bytes(payload["dependencies"], "dependencies")
    objects = _payload_bytes(payload["objects"], "objects")
    return msg, cbor2.dumps({"dependencies": dependencies, "objects": objects}), dependencies, objects


def parse_block(body: bytes | bytearray, inflation: InflationLimit = DEFAULT_INFLATION) -> tuple[BlockRecord, Payload]:
    """The block row and the object to store: CBOR `{dependencies: bstr, objects: bstr}`, both LZ4
    frames that inflate within `inflation`; times in the int64 nanosecond range, begin before end.
    A body as the sink writes it gives its payload as a view of `body` (keep `body` unchanged)."""
    try:
        msg, stored, dependencies, objects = _located_block(body)
    except (_NotAsSinkWrites, IndexError):
        msg, stored, dependencies, objects = _decoded_block(body)
    record = _block_record(msg, stored)
    run_check(FrameCheck(dependencies, objects, inflation))
    return record, stored


def parse_block_parts(
    prefix: bytes, payload: memoryview, tail: bytes, inflation: InflationLimit = DEFAULT_INFLATION
) -> tuple[BlockRecord, Payload, FrameCheck]:
    """`parse_block` of the body `prefix + payload + tail`, whose stored payload `locate_payload` found,
    but for the check of the payload's frames: returned to be run (`run_check`). The object to store is
    `payload` itself, never copied (unless the body is not as the sink writes it after all: then the
    payload is encoded again from the whole body and checked, as `parse_block` does)."""
    try:
        msg, _ = _block_fields(prefix + b"\xa0" + tail)  # an empty map where the payload is
        _, dependencies, objects = _stored_payload(payload, 0, len(payload))
    except (_NotAsSinkWrites, IndexError):
        return *parse_block(prefix + bytes(payload) + tail, inflation), FrameCheck(b"", b"")
    return _block_record(msg, payload), payload, FrameCheck(dependencies, objects, inflation)


def run_check(check: FrameCheck, budget: int | None = None) -> bool:
    """`check.run(budget)`: True once the payload's frames are checked; WireError if one is refused."""
    try:
        return check.run(budget)
    except TransitError as err:
        raise WireError(f"Block: payload: {err}") from None


def _block_record(msg: dict[str, Any], stored: Payload) -> BlockRecord:
    """The block row of a body's fields `msg` and stored payload, once its fields are checked."""
    what = "Block"
    record = BlockRecord(
        block_id=_uuid(msg, "block_id", what),
        stream_id=_uuid(msg, "stream_id", what),
        process_id=_uuid(msg, "process_id", what),
        begin_time_ns=_time_ns(msg, "begin_time", what),
        begin_ticks=_int(msg, "begin_ticks", what),
        end_time_ns=_time_ns(msg, "end_time", what),
        end_ticks=_int(msg, "end_ticks", what),
        nb_objects=_int(msg, "nb_objects", what, 0, 2**31 - 1),
        object_offset=_int(msg, "object_offset", what, 0),
        payload_size=len(stored),
    )
    check_block_range(record)
    return record


def check_block_range(record: BlockRecord) -> None:
    """WireError unless the block begins before it ends (in time and in ticks)."""
    if record.begin_time_ns > record.end_time_ns:
        raise WireError("Block: 'begin_time' is after 'end_time'")
    if record.begin_ticks > record.end_ticks:
        raise WireError(f"Block: 'begin_ticks' ({record.begin_ticks}) is after 'end_ticks' ({record.end_ticks})")
