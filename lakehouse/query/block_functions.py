"""Raw blocks from SQL, as micromegas names them: `parse_block(block_id)`, a table of the block's
objects (`object_index` counted from the block's `object_offset`, `type_name`, `value` as JSONB: an
object is a map with its `__type`; an OTLP block's objects are its leaf records, see
`lakehouse/otlp/block_objects.py`), and the scalar `get_payload(process_id, stream_id, block_id)`,
the stored payload's bytes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datafusion import ScalarUDF, Table, udf

from spanlake.lakehouse.errors import OtlpBlockError, QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.block_objects import is_otlp_format, otlp_block_objects
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.transit import decode as transit
from spanlake.lakehouse.transit.metadata import TransitError
from spanlake.views import jsonb
from spanlake.views.decoded import TransitObject, Value
from spanlake.views.meta import OTLP_LOGS_FORMAT, OTLP_METRICS_FORMAT, OTLP_TRACES_FORMAT, TRANSIT_FORMAT
from spanlake.views.schema_types import DICT_JSONB

KNOWN_FORMATS = ", ".join(sorted([TRANSIT_FORMAT, OTLP_LOGS_FORMAT, OTLP_METRICS_FORMAT, OTLP_TRACES_FORMAT]))

PARSE_BLOCK_SCHEMA = pa.schema(
    [
        pa.field("object_index", pa.int64(), nullable=False),
        pa.field("type_name", pa.utf8(), nullable=False),
        # JSONB as spanlake's views hold it (micromegas: Binary; clients see Binary unless they keep
        # dictionaries): `jsonb_get(jsonb_get(value, 'a'), 'b')` then calls jsonb_get with one type only.
        pa.field("value", DICT_JSONB, nullable=False),
    ]
)


def _uuid(value: str, what: str, function: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise QueryError(f"{function}: '{value}' is not a valid {what}") from None


def to_json(value: Value) -> jsonb.JsonValue:
    """A transit value as micromegas renders it in JSONB: objects keep their type as `__type`, bytes
    become "<binary N bytes>"."""
    if isinstance(value, TransitObject):
        return {"__type": value.type_name, **{name: to_json(member) for name, member in value.members.items()}}
    if isinstance(value, bytes):
        return f"<binary {len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def parse_block(lake: Lake, block_id: str, read_scope: ReadScope | None = None) -> Table:
    """`parse_block(block_id)`: one row per object of the block, its values as JSONB (a block outside
    the read scope is not found)."""
    block = _uuid(block_id, "block id", "parse_block")
    row = lake.loop.run(lake.catalog.block_with_stream(block))
    if row is None or (read_scope is not None and not read_scope.process_readable(row["process_id"])):
        raise QueryError(f"parse_block: block '{block_id}' not found in `blocks`.")
    if row["format"] != TRANSIT_FORMAT and not is_otlp_format(row["format"]):
        raise QueryError(
            f"parse_block: no decoder for streams.format='{row['format']}' (known formats: {KNOWN_FORMATS})"
        )
    try:
        payload = lake.store.get(blob_key(row["process_id"], row["stream_id"], block))
    except FileNotFoundError:
        raise QueryError(f"parse_block: the payload of block '{block_id}' is missing") from None
    try:
        objects = _block_objects(row, payload)
    except (TransitError, OtlpBlockError) as err:
        raise QueryError(f"parse_block: parsing block {block_id}: {err}") from None
    table = pa.table(
        {
            "object_index": pa.array(range(row["object_offset"], row["object_offset"] + len(objects)), pa.int64()),
            "type_name": [type_name for type_name, _ in objects],
            "value": pa.array([jsonb.encode(value) for _, value in objects], pa.binary()).dictionary_encode(),
        },
        schema=PARSE_BLOCK_SCHEMA,
    )
    return lake.off_runtime.memory_table(table)


def _block_objects(row: Mapping[str, Any], payload: bytes) -> list[tuple[str, jsonb.JsonValue]]:
    """(type name, JSON value) of each object of a stored block, transit or OTLP."""
    if row["format"] != TRANSIT_FORMAT:
        return otlp_block_objects(row["format"], payload)
    layout = transit.stream_layout(row["dependencies_metadata"], row["objects_metadata"])
    decoded = transit.decode_block(payload, layout)
    # A debugging function over one block: one Python value per object is the point of it.
    values = transit.object_values(decoded)
    type_names = [""] * decoded.nb_objects
    for group in decoded.groups.values():
        for position in group.positions.tolist():
            type_names[position] = group.type_name
    return [(type_name, to_json(value)) for type_name, value in zip(type_names, values, strict=True)]


def get_payload_udf(lake: Lake, read_scope_of: Callable[[], ReadScope | None]) -> ScalarUDF:
    """`get_payload(process_id, stream_id, block_id)`: the stored payload of each block (a block of a
    process outside the read scope, `read_scope_of()` when called, has no payload stored, as an unknown one)."""

    def get_payload(process_ids: pa.Array, stream_ids: pa.Array, block_ids: pa.Array) -> pa.Array:
        keys = []
        for process_id, stream_id, block_id in zip(
            process_ids.to_pylist(), stream_ids.to_pylist(), block_ids.to_pylist(), strict=True
        ):
            if None in (process_id, stream_id, block_id):
                raise QueryError("get_payload: process_id, stream_id and block_id must not be NULL")
            keys.append(
                blob_key(
                    _uuid(process_id, "process id", "get_payload"),
                    _uuid(stream_id, "stream id", "get_payload"),
                    _uuid(block_id, "block id", "get_payload"),
                )
            )
        read_scope = read_scope_of()
        if read_scope is not None:
            _check_readable(read_scope, process_ids, keys)
        return pa.array([_payload(lake, key) for key in keys], pa.binary())

    return udf(get_payload, [pa.utf8(), pa.utf8(), pa.utf8()], pa.binary(), "immutable", "get_payload")


def _check_readable(read_scope: ReadScope, process_ids: pa.Array, keys: list[str]) -> None:
    """The first block of an unreadable process answers as a missing payload (checked once per process)."""
    unique_ids = pc.unique(process_ids).to_pylist()
    denied = {i for i in unique_ids if not read_scope.process_readable(uuid.UUID(i))}
    if denied:
        first = next(key for key, process_id in zip(keys, process_ids.to_pylist(), strict=True) if process_id in denied)
        raise QueryError(f"get_payload: no payload stored for block {first.rsplit('/', 1)[-1]}")


def _payload(lake: Lake, key: str) -> bytes:
    try:
        return lake.store.get(key)
    except FileNotFoundError:
        block = key.rsplit("/", 1)[-1]
        raise QueryError(f"get_payload: no payload stored for block {block}") from None
