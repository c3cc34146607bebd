"""The `images` view: one row per image an `image` stream carries (micromegas's `images_view.rs`,
`images_table.rs`, `image_block_processor.rs`).

Each transit `ImageEvent {time, name, format, data}` is a row: time by the block's own clock,
`payload_size` = the length of `data`. Per process, just in time; no global instance.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanlake.views.columns import Coded, block_identity_columns, dictionary_array, string_array, timestamp_array
from spanlake.views.decoded import BlockRowsError, DecodedBlock, ObjectGroup
from spanlake.views.meta import TRANSIT_FORMAT, BlockMeta, ProcessMeta
from spanlake.views.schema_types import BLOCK_EVENT_FIELDS, DICT_UTF8, required
from spanlake.views.time import TickConverter
from spanlake.views.view import HOUR_SECONDS, View, each_block_by_its_clock

VIEW_SET_NAME = "images"
FILE_SCHEMA_HASH = bytes([2])  # micromegas's SCHEMA_VERSION
IMAGE_EVENT = "ImageEvent"

SCHEMA = pa.schema(
    [
        *BLOCK_EVENT_FIELDS,
        required("name", pa.utf8()),
        required("format", DICT_UTF8),
        required("payload_size", pa.int64()),
        required("data", pa.binary()),
    ]
)


def build_batch(block: DecodedBlock, meta: BlockMeta, process: ProcessMeta, convert: TickConverter) -> pa.RecordBatch:
    """The images rows of one decoded `image` block (an empty batch when it holds no image)."""
    group = block.group(IMAGE_EVENT)
    if group is None:
        return pa.RecordBatch.from_pylist([], schema=SCHEMA)
    names = _typed(group, "name", str)
    formats = _typed(group, "format", str)
    data = _typed(group, "data", bytes)
    images = pa.array(data.values, pa.binary()).take(pa.array(data.codes, pa.int64()))
    length = len(group)
    columns = [
        *block_identity_columns(process, meta, length),
        timestamp_array(convert.ticks_to_ns(group.numeric("time"))),
        string_array(names),
        dictionary_array(formats),
        pa.array(np.array([len(d) for d in data.values], np.int64)[data.codes] if length else [], pa.int64()),
        images,
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _typed(group: ObjectGroup, name: str, kind: type) -> Coded:
    column = Coded.of(group.values(name))
    for value in column.values:
        if not isinstance(value, kind):
            raise BlockRowsError(f"{IMAGE_EVENT}.{name}: expected {kind.__name__}, got {type(value).__name__}")
    return column


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=False,
    stream_tags=("image",),
    time_columns=("time", "time"),
    rows_from_transit=each_block_by_its_clock(build_batch),
    max_partition_seconds=HOUR_SECONDS,
    blockwise_formats=frozenset([TRANSIT_FORMAT]),
)
