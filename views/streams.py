"""The `streams` view: one row per stream, aggregated from the `blocks` view (the lakehouse fills it)."""

from __future__ import annotations

import pyarrow as pa

from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required, schema_hash

VIEW_SET_NAME = "streams"

# The schema DataFusion infers for micromegas's aggregation over `blocks` (first_value/max are nullable).
SCHEMA = pa.schema(
    [
        required("stream_id", pa.utf8()),
        optional("process_id", pa.utf8()),
        optional("dependencies_metadata", pa.binary()),
        optional("objects_metadata", pa.binary()),
        optional("tags", pa.list_(pa.field("tag", pa.utf8(), nullable=False))),
        optional("properties", DICT_JSONB),
        optional("insert_time", TIMESTAMP),
        optional("format", pa.utf8()),
        optional("last_update_time", TIMESTAMP),
    ]
)
FILE_SCHEMA_HASH = schema_hash(SCHEMA)
