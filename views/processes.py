"""The `processes` view: one row per process, aggregated from the rows of the `blocks` view.

A partition holds one row per process seen in its blocks; a query collapses the rows of all partitions
(`BlockSummary.collapse`), as micromegas's merge query does.
"""

from __future__ import annotations

import pyarrow as pa

from spanlake.views.blocks import BlockSummary
from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required, schema_hash
from spanlake.views.view import View

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

_COLUMNS = {  # processes column ← blocks column
    "process_id": "process_id",
    "exe": "processes.exe",
    "username": "processes.username",
    "realname": "processes.realname",
    "computer": "processes.computer",
    "distro": "processes.distro",
    "cpu_brand": "processes.cpu_brand",
    "tsc_frequency": "processes.tsc_frequency",
    "start_time": "processes.start_time",
    "start_ticks": "processes.start_ticks",
    "insert_time": "processes.insert_time",
    "parent_process_id": "processes.parent_process_id",
    "properties": "processes.properties",
}
_LATEST = {  # processes column ← the maximum of this blocks column
    "last_update_time": "insert_time",
    "last_block_end_ticks": "end_ticks",
    "last_block_end_time": "end_time",
}


SUMMARY = BlockSummary("process_id", _COLUMNS, _LATEST, SCHEMA)

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
