"""The `processes` view: one row per process, aggregated from the `blocks` view (the lakehouse fills it)."""

from __future__ import annotations

import pyarrow as pa

from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required, schema_hash

VIEW_SET_NAME = "processes"

# The schema DataFusion infers for micromegas's aggregation over `blocks` (first_value/max are nullable).
SCHEMA = pa.schema(
    [
        required("process_id", pa.utf8()),
        optional("exe", pa.utf8()),
        optional("username", pa.utf8()),
        optional("realname", pa.utf8()),
        optional("computer", pa.utf8()),
        optional("distro", pa.utf8()),
        optional("cpu_brand", pa.utf8()),
        optional("tsc_frequency", pa.int64()),
        optional("start_time", TIMESTAMP),
        optional("start_ticks", pa.int64()),
        optional("insert_time", TIMESTAMP),
        optional("parent_process_id", pa.utf8()),
        optional("properties", DICT_JSONB),
        optional("last_update_time", TIMESTAMP),
        optional("last_block_end_ticks", pa.int64()),
        optional("last_block_end_time", TIMESTAMP),
    ]
)
FILE_SCHEMA_HASH = schema_hash(SCHEMA)
