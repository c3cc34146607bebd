"""The `async_events` view: one row per async span begin or end event of a `cpu` stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spanlake.views.columns import (
    Coded,
    constant_dictionary,
    dictionary_array,
    order_by_position,
    pair_codes,
    timestamp_array,
)
from spanlake.views.decoded import DecodedBlock, ObjectGroup
from spanlake.views.meta import BlockMeta
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP, required
from spanlake.views.scope import Scope, span_desc_scope, span_location_scope
from spanlake.views.time import TickConverter

VIEW_SET_NAME = "async_events"
FILE_SCHEMA_HASH = bytes([3])

SCHEMA = pa.schema(
    [
        required("stream_id", DICT_UTF8),
        required("block_id", DICT_UTF8),
        required("time", TIMESTAMP),
        required("event_type", DICT_UTF8),
        required("span_id", pa.int64()),
        required("parent_span_id", pa.int64()),
        required("depth", pa.uint32()),
        required("hash", pa.uint32()),
        required("name", DICT_UTF8),
        required("filename", DICT_UTF8),
        required("target", DICT_UTF8),
        required("line", pa.uint32()),
    ]
)

# ---------------------------------------------------------------------------------------------------
# Rows
#
# One row per begin and per end event, in block order; nothing is paired here (spans are formed at
# query time by joining begins and ends on span_id). Static spans take their scope from `span_desc`
# (a SpanRecord); named spans from `span_location` plus their dynamic `name`. The producer's span_id,
# parent_span_id (u64, stored as i64) and depth are kept as they are. Thread span events are ignored.

BEGIN = "begin"
END = "end"

# type name → (event type, named?)
ASYNC_EVENT_TYPES = {
    "BeginAsyncSpanEvent": (BEGIN, False),
    "EndAsyncSpanEvent": (END, False),
    "BeginAsyncNamedSpanEvent": (BEGIN, True),
    "EndAsyncNamedSpanEvent": (END, True),
}


@dataclass(frozen=True)
class _AsyncRows:
    positions: np.ndarray
    group: ObjectGroup
    is_end: bool
    scopes: Coded[Scope]


def build_batch(block: DecodedBlock, meta: BlockMeta, convert: TickConverter) -> pa.RecordBatch:
    """The async_events rows of one decoded `cpu` block (`convert`: the process's latest timing)."""
    parts = [
        _AsyncRows(group.positions, group, event_type == END, _scopes(group, named))
        for type_name, (event_type, named) in ASYNC_EVENT_TYPES.items()
        if (group := block.group(type_name))
    ]
    order = order_by_position([part.positions for part in parts])
    length = len(order)

    def column(name: str, dtype: type) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype)
        return np.concatenate([part.group.numeric(name).astype(dtype, copy=False) for part in parts])[order]

    is_end = np.concatenate([np.full(len(part.positions), part.is_end) for part in parts])[order] if parts else []
    scopes = Coded.concat([part.scopes for part in parts]).take(order)
    columns = [
        constant_dictionary(meta.stream_id, length),
        constant_dictionary(meta.block_id, length),
        timestamp_array(convert.ticks_to_ns(column("time", np.int64))),
        pa.DictionaryArray.from_arrays(pa.array(is_end, pa.bool_()).cast(pa.int32()), pa.array([BEGIN, END])),
        pa.array(column("span_id", np.uint64).view(np.int64), pa.int64()),
        pa.array(column("parent_span_id", np.uint64).view(np.int64), pa.int64()),
        pa.array(column("depth", np.uint32), pa.uint32()),
        pa.array(scopes.map(lambda scope: scope.hash).numbers(np.uint32), pa.uint32()),
        dictionary_array(scopes.map(lambda scope: scope.name)),
        dictionary_array(scopes.map(lambda scope: scope.filename)),
        dictionary_array(scopes.map(lambda scope: scope.target)),
        pa.array(scopes.map(lambda scope: scope.line).numbers(np.uint32), pa.uint32()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _scopes(group: ObjectGroup, named: bool) -> Coded[Scope]:
    """The scope of each event, built once per distinct descriptor (and name)."""
    if not named:
        what = f"{group.type_name}.span_desc"
        return Coded.of(group.values("span_desc")).map(lambda desc: span_desc_scope(desc, what))
    location = Coded.of(group.values("span_location"))
    names = Coded.of(group.values("name"))
    pair, location_of_pair, name_of_pair = pair_codes(location.codes, names.codes)
    what = group.type_name
    scopes = [
        span_location_scope(location.values[location_code], names.values[name_code], what)
        for location_code, name_code in zip(location_of_pair.tolist(), name_of_pair.tolist(), strict=True)
    ]
    return Coded(pair, scopes)
