"""The `images` view: one row per image an `image` stream carries (micromegas's `images_view.rs`,
`images_table.rs`, `image_block_processor.rs`).

Each transit `ImageEvent {time, name, format, data}` is a row: time by the block's own clock,
`payload_size` = the length of `data`. Per process, just in time; no global instance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views.columns import Coded, dictionary_array, string_array, timestamp_array
from spanlake.views.decoded import BlockRowsError, DecodedBlock, ObjectGroup
from spanlake.views.meta import TRANSIT_FORMAT, BlockMeta, ProcessMeta
from spanlake.views.schema_types import BLOCK_EVENT_FIELDS, DICT_UTF8, required
from spanlake.views.time import TickConverter
from spanlake.views.view import HOUR_SECONDS, TransitBlock, View, block_rows, each_run, own_clock, run_rows

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
    return block_rows(_batch, block, meta, process, convert)


def run_batch(run: Sequence[TransitBlock]) -> pa.RecordBatch:
    """The images rows of consecutive decoded blocks of one process sharing one clock, built at once."""
    return run_rows(_batch, run)


def _batch(
    block: DecodedBlock, process: ProcessMeta, convert: TickConverter, ids_of: Callable[[np.ndarray], list[pa.Array]]
) -> pa.RecordBatch:
    """The rows of a decoded block (or run of blocks); `ids_of` gives the block identity columns of the
    rows from their object positions."""
    group = block.group(IMAGE_EVENT)
    if group is None:
        return pa.RecordBatch.from_pylist([], schema=SCHEMA)
    data = _typed(group, "data", bytes)
    images = pa.array(data.values, pa.binary()).take(pa.array(data.codes, pa.int64()))
    columns = [
        *ids_of(group.positions),
        timestamp_array(convert.ticks_to_ns(group.numeric("time"))),
        string_array(_typed(group, "name", str)),
        dictionary_array(_typed(group, "format", str)),
        pc.binary_length(images).cast(pa.int64()),
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
    rows_from_transit=each_run(run_batch, own_clock),
    max_partition_seconds=HOUR_SECONDS,
    blockwise_formats=frozenset([TRANSIT_FORMAT]),
)
