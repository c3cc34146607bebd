"""Arrow types shared by the view schemas (micromegas spells them the same way in every view)."""

from __future__ import annotations

import hashlib

import pyarrow as pa

UTC = "+00:00"
TIMESTAMP = pa.timestamp("ns", tz=UTC)
DICT_UTF8 = pa.dictionary(pa.int32(), pa.utf8())
# Properties columns hold databend-jsonb binary objects, dictionary-encoded (see views/properties.py).
DICT_JSONB = pa.dictionary(pa.int32(), pa.binary())


def required(name: str, type_: pa.DataType) -> pa.Field:
    """A non-nullable field."""
    return pa.field(name, type_, nullable=False)


def optional(name: str, type_: pa.DataType) -> pa.Field:
    """A nullable field."""
    return pa.field(name, type_, nullable=True)


# The leading columns of the views whose rows are events of one block (log_entries, measures, images),
# in micromegas's order: where the event came from, then when it happened.
BLOCK_EVENT_FIELDS = (
    required("process_id", DICT_UTF8),
    required("stream_id", DICT_UTF8),
    required("block_id", DICT_UTF8),
    required("insert_time", TIMESTAMP),
    required("exe", DICT_UTF8),
    required("username", DICT_UTF8),
    required("computer", DICT_UTF8),
    required("time", TIMESTAMP),
)


def schema_hash(schema: pa.Schema) -> bytes:
    """A stable 8-byte digest of a schema, for views whose file_schema_hash follows their schema.

    micromegas hashes those schemas with Rust's DefaultHasher, which Python cannot reproduce; spanlake
    only needs a value that changes when the schema changes.
    """
    text = "\n".join(f"{field.name}:{field.type}:{field.nullable}" for field in schema)
    return hashlib.sha256(text.encode()).digest()[:8]
