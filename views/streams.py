"""The `streams` view: one row per stream, aggregated from the rows of the `blocks` view.

A partition holds one row per stream seen in its blocks; a query collapses the rows of all partitions
(`BlockSummary.collapse`), as micromegas's merge query does.
"""

from __future__ import annotations

import pyarrow as pa

from spanlake.views.blocks import BlockSummary
from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required, schema_hash
from spanlake.views.view import View

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

_COLUMNS = {  # streams column ← blocks column
    "stream_id": "stream_id",
    "process_id": "process_id",
    "dependencies_metadata": "streams.dependencies_metadata",
    "objects_metadata": "streams.objects_metadata",
    "tags": "streams.tags",
    "properties": "streams.properties",
    "insert_time": "streams.insert_time",
    "format": "streams.format",
}
_LATEST = {"last_update_time": "insert_time"}


SUMMARY = BlockSummary("stream_id", _COLUMNS, _LATEST, SCHEMA)

VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind=None,
    has_global_instance=True,
    stream_tags=(),
    time_columns=("insert_time", "last_update_time"),
    rows_from_blocks=SUMMARY.rows,
    merge=SUMMARY.collapse,
)
