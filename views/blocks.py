"""The `blocks` view: the join blocks ⋈ streams ⋈ processes, one row per block (the lakehouse fills it)."""

from __future__ import annotations

import pyarrow as pa

from spanlake.views.schema_types import DICT_JSONB, TIMESTAMP, optional, required

VIEW_SET_NAME = "blocks"
FILE_SCHEMA_HASH = bytes([3])

# The dotted names are literal column names. begin_ticks/end_ticks are relative to processes.start_ticks.
SCHEMA = pa.schema(
    [
        required("block_id", pa.utf8()),
        required("stream_id", pa.utf8()),
        required("process_id", pa.utf8()),
        required("begin_time", TIMESTAMP),
        required("begin_ticks", pa.int64()),
        required("end_time", TIMESTAMP),
        required("end_ticks", pa.int64()),
        required("nb_objects", pa.int32()),
        required("object_offset", pa.int64()),
        required("payload_size", pa.int64()),
        required("insert_time", TIMESTAMP),
        required("streams.dependencies_metadata", pa.binary()),
        required("streams.objects_metadata", pa.binary()),
        optional("streams.tags", pa.list_(pa.field("tag", pa.utf8(), nullable=False))),
        required("streams.properties", DICT_JSONB),
        required("streams.insert_time", TIMESTAMP),
        required("streams.format", pa.utf8()),
        required("processes.start_time", TIMESTAMP),
        required("processes.start_ticks", pa.int64()),
        required("processes.tsc_frequency", pa.int64()),
        required("processes.exe", pa.utf8()),
        required("processes.username", pa.utf8()),
        required("processes.realname", pa.utf8()),
        required("processes.computer", pa.utf8()),
        required("processes.distro", pa.utf8()),
        required("processes.cpu_brand", pa.utf8()),
        required("processes.insert_time", TIMESTAMP),
        required("processes.parent_process_id", pa.utf8()),
        required("processes.properties", DICT_JSONB),
    ]
)
