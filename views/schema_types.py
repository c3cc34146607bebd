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
    return pa.field(name, type_, nullable=False)


def optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


def schema_hash(schema: pa.Schema) -> bytes:
    """A stable 8-byte digest of a schema, for views whose file_schema_hash follows their schema.

    micromegas hashes those schemas with Rust's DefaultHasher, which Python cannot reproduce; spanlake
    only needs a value that changes when the schema changes.
    """
    text = "\n".join(f"{field.name}:{field.type}:{field.nullable}" for field in schema)
    return hashlib.sha256(text.encode()).digest()[:8]
