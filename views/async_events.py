"""The `async_events` view: one row per async span begin or end event of a `cpu` stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spanlake.views.columns import (
    Coded,
    block_columns,
    constant_dictionary,
    dictionary_array,
    order_by_position,
    pair_codes,
    timestamp_array,
)
from spanlake.views.decoded import DecodedBlock, ObjectGroup, concat_blocks
from spanlake.views.meta import OTLP_TRACES_FORMAT, TRANSIT_FORMAT, BlockMeta
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP, required
from spanlake.views.scope import Scope, scope_hash, span_desc_scope, span_location_scope
from spanlake.views.time import TickConverter
from spanlake.views.view import OtlpBlock, TransitBlock, View, each_run

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
    return _batch(block, convert, lambda positions: block_columns([meta], np.zeros(1, np.int64), positions))


def run_batch(run: Sequence[TransitBlock]) -> pa.RecordBatch:
    """The async_events rows of consecutive decoded blocks sharing one clock, built at once."""
    block, starts = concat_blocks([transit.decoded for transit in run])
    metas = [transit.block for transit in run]
    return _batch(block, run[0].latest, lambda positions: block_columns(metas, starts, positions))


def _batch(
    block: DecodedBlock, convert: TickConverter, ids_of: Callable[[np.ndarray], list[pa.Array]]
) -> pa.RecordBatch:
    """The rows of a decoded block (or run of blocks); `ids_of` gives stream_id and block_id of each
    row from its object position."""
    parts = [
        _AsyncRows(group.positions, group, event_type == END, _scopes(group, named))
        for type_name, (event_type, named) in ASYNC_EVENT_TYPES.items()
        if (group := block.group(type_name))
    ]
    order = order_by_position([part.positions for part in parts])
    positions = np.concatenate([part.positions for part in parts])[order] if parts else np.zeros(0, np.int64)

    def column(name: str, dtype: type) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype)
        return np.concatenate([part.group.numeric(name).astype(dtype, copy=False) for part in parts])[order]

    is_end = np.concatenate([np.full(len(part.positions), part.is_end) for part in parts])[order] if parts else []
    scopes = Coded.concat([part.scopes for part in parts]).take(order)
    columns = [
        *ids_of(positions),
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


# ---------------------------------------------------------------------------------------------------
# Rows of OTLP trace blocks (micromegas has no OTLP source for async_events; spanlake adds one). Each
# span gives a `begin` row at its start and an `end` row at its end, a block's rows ordered by time.
# `span_id` / `parent_span_id` are the 8 id bytes read as a big-endian two's-complement int64 (0: no
# valid parent, like a native root); name = the span name, target = the scope name, filename = "",
# line = 0, hash = the scope hash of those four. OTLP spans name only their parent, which an exporter
# may send in an earlier request (another block): `depth` counts the span's ancestors found among all
# the spans of the partition with the same trace id.


@dataclass(frozen=True)
class SpanColumns:
    """The spans of one OTLP traces block (with a start, an end and W3C-sized ids), in payload order."""

    start_ns: np.ndarray  # int64
    end_ns: np.ndarray  # int64
    trace_id: np.ndarray  # S16
    span_id: np.ndarray  # int64
    parent_span_id: np.ndarray  # int64, 0 without a valid parent
    name: Coded[str]
    target: Coded[str]


def otlp_batches(blocks: Iterable[OtlpBlock[SpanColumns]]) -> Iterator[pa.RecordBatch]:
    """The async_events rows of OTLP traces blocks, one batch per block, depths resolved over them all."""
    blocks = list(blocks)
    if not blocks:
        return
    depths = span_depths(
        np.concatenate([b.columns.trace_id for b in blocks]),
        np.concatenate([b.columns.span_id for b in blocks]),
        np.concatenate([b.columns.parent_span_id for b in blocks]),
    )
    offset = 0
    for block in blocks:
        n = len(block.columns.span_id)
        yield otlp_batch(block, depths[offset : offset + n])
        offset += n


def otlp_batch(spans: OtlpBlock[SpanColumns], depths: np.ndarray) -> pa.RecordBatch:
    """The rows of one block's spans, given each span's depth."""
    columns, block = spans.columns, spans.block
    n = len(columns.start_ns)
    times = np.concatenate([columns.start_ns, columns.end_ns])
    order = np.argsort(times, kind="stable")  # begins come first among equal times
    span_rows = np.concatenate([np.arange(n), np.arange(n)])[order]
    is_end = (np.arange(2 * n) >= n)[order]
    hashes = _scope_hashes(columns.name, columns.target)[span_rows]
    arrays = [
        constant_dictionary(block.stream_id, 2 * n),
        constant_dictionary(block.block_id, 2 * n),
        timestamp_array(times[order]),
        dictionary_array(Coded(is_end.astype(np.int64), [BEGIN, END])),
        pa.array(columns.span_id[span_rows], pa.int64()),
        pa.array(columns.parent_span_id[span_rows], pa.int64()),
        pa.array(np.asarray(depths, np.uint32)[span_rows], pa.uint32()),
        pa.array(hashes, pa.uint32()),
        dictionary_array(columns.name.take(span_rows)),
        constant_dictionary("", 2 * n),
        dictionary_array(columns.target.take(span_rows)),
        pa.array(np.zeros(2 * n, np.uint32), pa.uint32()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def span_depths(trace_ids: np.ndarray, span_ids: np.ndarray, parent_ids: np.ndarray) -> np.ndarray:
    """Each span's number of ancestors: its parent is the span of the same trace id whose span id is its
    parent id (0: none). A parent missing from the spans makes a root; a cycle gives depth 0."""
    n = len(span_ids)
    if n == 0:
        return np.zeros(0, np.uint32)
    keys = _trace_keys(trace_ids, span_ids)
    wanted = _trace_keys(trace_ids, parent_ids)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    slots = np.minimum(np.searchsorted(sorted_keys, wanted), n - 1)
    found = (sorted_keys[slots] == wanted) & (parent_ids != 0)
    return chain_depths(np.where(found, order[slots], -1))


def _trace_keys(trace_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """trace id ‖ span id (big-endian) as one 24-byte key per span, sortable and comparable."""
    n = len(ids)
    raw = np.empty((n, 24), np.uint8)
    raw[:, :16] = np.frombuffer(np.ascontiguousarray(trace_ids, "S16").tobytes(), np.uint8).reshape(n, 16)
    raw[:, 16:] = np.ascontiguousarray(ids, ">i8").view(np.uint8).reshape(n, 8)
    return raw.view("S24").reshape(n)


def chain_depths(parents: np.ndarray) -> np.ndarray:
    """Number of ancestors of each row following `parents` (-1 = none), by pointer jumping.

    Each round adds the depth gathered by the row's current ancestor and jumps to that ancestor's
    ancestor, so chains of any length resolve in log2(n)+1 rounds. Rows whose chain loops (corrupt
    parent ids) never reach a root: they are given depth 0.
    """
    n = len(parents)
    depth = (parents >= 0).astype(np.int64)
    jump = parents.astype(np.int64)
    for _ in range(max(1, int(n).bit_length() + 1)):
        active = jump >= 0
        if not active.any():
            break
        targets = jump[active]
        depth[active] += depth[targets]
        jump[active] = jump[targets]
    depth[jump >= 0] = 0
    return depth.astype(np.uint32)


def _scope_hashes(names: Coded[str], targets: Coded[str]) -> np.ndarray:
    """scope_hash(name, "", target, 0) per span, computed once per distinct (name, target)."""
    if len(names.codes) == 0:
        return np.zeros(0, np.uint32)
    width = len(targets.values)
    pairs, inverse = np.unique(names.codes * width + targets.codes, return_inverse=True)
    hashes = [scope_hash(names.values[pair // width], "", targets.values[pair % width], 0) for pair in pairs.tolist()]
    return np.array(hashes, dtype=np.uint32)[inverse.reshape(-1)]


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=False,
    stream_tags=("cpu", "trace"),
    time_columns=("time", "time"),
    rows_from_transit=each_run(run_batch),
    rows_from_otlp=otlp_batches,
    otlp_format=OTLP_TRACES_FORMAT,
    blockwise_formats=frozenset([TRANSIT_FORMAT]),  # OTLP span depths span blocks
)
